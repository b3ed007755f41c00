//! Creators' audiences: follows, the follower graph, notifications, live sockets,
//! push for the offline, and "drop is live!" fanned out to every follower.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use drops_tests::{Buyer, Stack};
use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

/// The creator's follower count once it settles on `want` (it may be seconds old).
async fn follower_count(client: &drops_tests::Client, creator_id: Uuid, want: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n =
            client.get(&format!("/v1/creators/{creator_id}"), None).await.json()["follower_count"].as_u64().unwrap();
        if n == want || Instant::now() > deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn following_is_idempotent_and_counted_once() {
    let stack = Stack::shared().await;
    let client = stack.client();
    let (creator_id, _, _) = client.creator().await;
    let fan = Buyer::new();
    assert_eq!(client.follow(&fan, creator_id).await, StatusCode::NO_CONTENT);
    assert_eq!(client.follow(&fan, creator_id).await, StatusCode::NO_CONTENT);
    assert_eq!(follower_count(&client, creator_id, 1).await, 1);
    let mine = client.get("/v1/me/following", Some(&fan.token)).await.json();
    assert_eq!(mine["items"][0]["creator_id"], creator_id.to_string());
    assert_eq!(mine["items"][0]["name"], "Test Creator");
    let unfollow = || {
        client.send(
            client.http.delete(format!("{}/v1/creators/{creator_id}/follow", client.edge)).bearer_auth(&fan.token),
        )
    };
    assert_eq!(unfollow().await.status, StatusCode::NO_CONTENT);
    assert_eq!(unfollow().await.status, StatusCode::NO_CONTENT);
    assert_eq!(follower_count(&client, creator_id, 0).await, 0);
    assert_eq!(client.follow(&fan, Uuid::now_v7()).await, StatusCode::NOT_FOUND);
    let anonymous = client.send(client.http.put(format!("{}/v1/creators/{creator_id}/follow", client.edge))).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn paging_followers_while_200_follow_skips_and_repeats_no_one() {
    let stack = Stack::shared().await;
    let client = stack.client();
    let (creator_id, creator_token, _) = client.creator().await;
    let first: Vec<Buyer> = (0..100).map(|_| Buyer::new()).collect();
    for chunk in first.chunks(20) {
        join_all(chunk.iter().map(|b| client.follow(b, creator_id))).await;
    }
    let newcomers: Vec<Buyer> = (0..200).map(|_| Buyer::new()).collect();
    let landing = join_all(newcomers.iter().map(|b| client.follow(b, creator_id)));
    let paging = async {
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(c) => format!("/v1/creators/{creator_id}/followers?limit=7&cursor={c}"),
                None => format!("/v1/creators/{creator_id}/followers?limit=7"),
            };
            // The creator's own list: who follows whom is not public. A page refused
            // with 503 while 200 follows land (the pool is busy) is asked again, as an
            // app would after `Retry-After`.
            let page = loop {
                let page = client.get(&path, Some(&creator_token)).await;
                if page.status != StatusCode::SERVICE_UNAVAILABLE {
                    break page;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            assert_eq!(page.status, StatusCode::OK, "{path}: {:?}", page.json());
            let page = page.json();
            for f in page["items"].as_array().unwrap() {
                seen.push(Uuid::parse_str(f["user_id"].as_str().unwrap()).unwrap());
            }
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => return seen,
            }
        }
    };
    let (statuses, seen) = tokio::join!(landing, paging);
    assert!(statuses.iter().all(|s| *s == StatusCode::NO_CONTENT), "{statuses:?}");
    let unique: HashSet<Uuid> = seen.iter().copied().collect();
    assert_eq!(unique.len(), seen.len(), "no one listed twice");
    for b in &first {
        assert!(unique.contains(&b.id), "a follower who was there all along was skipped");
    }
    assert_eq!(follower_count(&client, creator_id, 300).await, 300);
}

/// A push receiver of the test's own: counts the signed callbacks it gets.
async fn push_receiver() -> (String, Arc<Mutex<Vec<Value>>>) {
    use axum::routing::post;
    let got: Arc<Mutex<Vec<Value>>> = Arc::default();
    let sink = got.clone();
    let app = axum::Router::new().route(
        "/push",
        post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
            let sink = sink.clone();
            async move {
                let sig = headers.get("x-drops-signature").and_then(|v| v.to_str().ok());
                let ok = drops_shared::signing::verify_stripe_signature(
                    sig,
                    &[drops_tests::PUSH_SECRET.as_bytes()],
                    &body,
                    Utc::now().timestamp(),
                );
                if ok.is_err() {
                    return axum::http::StatusCode::UNAUTHORIZED;
                }
                sink.lock().unwrap().push(serde_json::from_slice(&body).unwrap_or(Value::Null));
                axum::http::StatusCode::CREATED
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/push", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drop_live_reaches_online_followers_by_socket_and_offline_ones_by_one_push() {
    let stack = Stack::shared().await;
    let client = stack.client();
    let (creator_id, creator_token, product) = client.creator().await;
    let online = Buyer::new();
    let offline = Buyer::new();
    let not_a_follower = Buyer::new();
    client.follow(&online, creator_id).await;
    client.follow(&offline, creator_id).await;
    let (endpoint, pushes) = push_receiver().await;
    let subscription = json!({"endpoint": endpoint, "keys": {"p256dh": "BPlaceholderKey", "auth": "placeholder"}});
    let put = client.subscribe_push(&offline, &subscription).await;
    assert_eq!(put.status, StatusCode::NO_CONTENT);
    let (socket, task) = stack.listen(&online).await;
    let (stranger_socket, stranger_task) = stack.listen(&not_a_follower).await;

    let drop_id = client.drop_starting_in(&creator_token, product, 2).await;
    let started = Instant::now();
    loop {
        if socket
            .lock()
            .unwrap()
            .iter()
            .any(|m| m["kind"] == "drop_live" && m["payload"]["drop_id"] == drop_id.to_string())
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "no drop_live on the socket: {:?}",
            socket.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("drop_live reached the socket {:?} after the drop was created (it starts 2 s after)", started.elapsed());
    loop {
        if pushes.lock().unwrap().iter().any(|p| p["payload"]["drop_id"] == drop_id.to_string()) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "no push for the offline follower");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The same DropStarted again (a replay of the log): nobody is told twice.
    stack.replay_drop_started(drop_id).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ours = |v: &Value| v["payload"]["drop_id"] == drop_id.to_string();
    assert_eq!(pushes.lock().unwrap().iter().filter(|p| ours(p)).count(), 1, "exactly one push");
    assert_eq!(socket.lock().unwrap().iter().filter(|m| ours(m)).count(), 1, "exactly one socket message");
    assert!(!stranger_socket.lock().unwrap().iter().any(ours), "only followers hear of it");
    task.abort();
    stranger_task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirmed_order_leaves_one_notification_the_buyer_alone_can_read() {
    let stack = Stack::shared().await;
    let client = stack.client();
    let drop_id = client.create_drop(drops_tests::DropSpec::live(3, 1)).await;
    let p = client.purchase(drop_id).await;
    client.pay_event(&p, &format!("evt_{}", Uuid::now_v7().simple()), true).await;
    let started = Instant::now();
    let list = loop {
        let list = client.get("/v1/notifications", Some(&p.buyer.token)).await.json();
        if list["items"].as_array().is_some_and(|i| !i.is_empty()) {
            break list;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "no notification");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    assert_eq!(list["items"][0]["kind"], "order_confirmed");
    assert_eq!(list["items"][0]["payload"]["order_id"], p.order_id.to_string());
    assert_eq!(list["unread_count"], 1);
    let id = list["items"][0]["id"].as_str().unwrap().to_owned();

    // Someone else sees nothing, and cannot mark it.
    let other = Buyer::new();
    assert_eq!(client.get("/v1/notifications", Some(&other.token)).await.json()["items"].as_array().unwrap().len(), 0);
    let theirs = client.post_json(&format!("/v1/notifications/{id}/read"), Some(&other.token), json!({})).await;
    assert_eq!(theirs.status, StatusCode::NOT_FOUND);

    let read = client.post_json(&format!("/v1/notifications/{id}/read"), Some(&p.buyer.token), json!({})).await;
    assert_eq!(read.status, StatusCode::NO_CONTENT);
    let after = client.get("/v1/notifications", Some(&p.buyer.token)).await.json();
    assert_eq!(after["unread_count"], 0);
    assert!(after["items"][0]["read_at"].is_string());

    // Every event of the order delivered again: still one notification.
    let db = stack.db().await;
    let (from, to): (i64, i64) = sqlx::query_as("SELECT min(seq), max(seq) FROM outbox WHERE aggregate_id = $1")
        .bind(p.order_id)
        .fetch_one(&db)
        .await
        .unwrap();
    stack
        .with_origin(move |s| async move { drops_origin::events::relay::replay(&s.core, from, to).await })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let again = client.get("/v1/notifications", Some(&p.buyer.token)).await.json();
    assert_eq!(again["items"].as_array().unwrap().len(), 1);
    let all = client.post_json("/v1/notifications/read-all", Some(&p.buyer.token), json!({})).await;
    assert_eq!(all.status, StatusCode::NO_CONTENT);
}
