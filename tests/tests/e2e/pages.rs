//! Drop pages at the edge: the cache, its freshness, lists, the lifecycle on time,
//! PATCH before start, purges, and "sold out" answered without the inventory object.

use std::time::{Duration, Instant};

use chrono::Utc;
use drops_shared::auth::Role;
use drops_tests::client::token;
use drops_tests::{Buyer, DropSpec, Stack};
use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

async fn card(client: &drops_tests::Client, drop_id: Uuid) -> drops_tests::client::Answer {
    client.get(&format!("/v1/drops/{drop_id}"), None).await
}

/// Polls the card until `pred` holds; returns how long that took.
async fn wait_card(
    client: &drops_tests::Client,
    drop_id: Uuid,
    secs: u64,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        let a = card(client, drop_id).await;
        if a.status == StatusCode::OK && pred(&a.json()) {
            return started.elapsed();
        }
        assert!(started.elapsed() < Duration::from_secs(secs), "card never got there: {}", a.json());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn card_is_cached_with_etag_and_goes_live_on_time() {
    let stack = Stack::shared().await;
    let client = stack.client();
    let starts_in = chrono::Duration::seconds(4);
    let drop_id = client.create_drop(DropSpec { starts_in, ..DropSpec::live(5, 1) }).await;
    let starts_at = Utc::now() + starts_in;
    let first = card(&client, drop_id).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.json()["status"], "upcoming");
    assert!(matches!(first.header("x-cache"), Some("MISS") | Some("HIT")));
    let second = card(&client, drop_id).await;
    assert!(matches!(second.header("x-cache"), Some("HIT") | Some("MISS")), "a purge may land between the two reads");
    assert!(second.header("cache-control").unwrap().contains("max-age="));
    let etag = second.header("etag").unwrap().to_owned();
    let not_modified = client
        .send(client.http.get(format!("{}/v1/drops/{drop_id}", client.edge)).header("if-none-match", &etag))
        .await;
    assert_eq!(not_modified.status, StatusCode::NOT_MODIFIED);
    assert!(not_modified.body.is_empty());

    // Nobody purges by hand: the scheduler's DropStarted and the short lifetime do it.
    wait_card(&client, drop_id, 20, |c| c["status"] == "live").await;
    let late = Utc::now() - starts_at;
    println!("card showed `live` {} ms after starts_at", late.num_milliseconds());
    assert!(late < chrono::Duration::seconds(5), "live {late} after the start");
}

#[tokio::test]
async fn a_confirmed_order_shows_in_the_cards_stock_within_the_freshness_window() {
    let stack = Stack::shared().await;
    let client = stack.client();
    let drop_id = client.create_drop(DropSpec::live(5, 1)).await;
    assert_eq!(card(&client, drop_id).await.json()["stock"]["remaining"], 5);
    let p = client.purchase(drop_id).await;
    client.pay_event(&p, &format!("evt_{}", Uuid::now_v7().simple()), true).await;
    let took = wait_card(&client, drop_id, 10, |c| c["stock"]["remaining"] == 4).await;
    println!("stock on the card moved {took:?} after payment");
    assert!(took < Duration::from_secs(5));
}

#[tokio::test]
async fn patch_before_start_shows_up_and_is_refused_after() {
    let stack = Stack::shared().await;
    let client = stack.client();
    let (creator, product_id) = client.creator_with_product().await;
    let make = |starts_at: chrono::DateTime<Utc>| {
        json!({"product_id": product_id, "price": {"amount": 1000, "currency": "EUR"}, "stock": 10,
               "max_per_user": 1, "starts_at": starts_at, "ends_at": starts_at + chrono::Duration::hours(1)})
    };
    let later = client.post_json("/v1/drops", Some(&creator), make(Utc::now() + chrono::Duration::hours(1))).await;
    let later_id = later.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(client.get(&format!("/v1/drops/{later_id}"), None).await.json()["price"]["amount"], 1000);
    let patch = |id: &str, token: &str, body| {
        client.send(client.http.patch(format!("{}/v1/drops/{id}", client.edge)).bearer_auth(token).json(&body))
    };
    let patched = patch(&later_id, &creator, json!({"price": {"amount": 1500, "currency": "EUR"}, "stock": 12})).await;
    assert_eq!(patched.status, StatusCode::OK, "{:?}", patched.json());
    let id = Uuid::parse_str(&later_id).unwrap();
    wait_card(&client, id, 5, |c| c["price"]["amount"] == 1500 && c["stock"]["total"] == 12).await;
    assert_eq!(client.stock(id).await["total"], 12, "the inventory has the new terms");
    let bad = patch(&later_id, &creator, json!({"max_per_user": 0})).await;
    assert_eq!(bad.code(), "invalid_request");
    let unknown = patch(&later_id, &creator, json!({"colour": "red"})).await;
    assert_eq!(unknown.code(), "invalid_request");
    let buyer = Buyer::new();
    assert_eq!(patch(&later_id, &buyer.token, json!({"stock": 1})).await.status, StatusCode::FORBIDDEN);
    let stranger = token(Uuid::now_v7(), Role::Creator);
    assert_eq!(
        patch(&later_id, &stranger, json!({"stock": 1})).await.status,
        StatusCode::FORBIDDEN,
        "no creator profile"
    );

    let live = client.post_json("/v1/drops", Some(&creator), make(Utc::now() - chrono::Duration::minutes(1))).await;
    let live_id = live.json()["id"].as_str().unwrap().to_owned();
    let refused = patch(&live_id, &creator, json!({"stock": 20})).await;
    assert_eq!((refused.status, refused.code().as_str()), (StatusCode::CONFLICT, "drop_already_started"));
}

#[tokio::test]
async fn lists_are_paged_in_a_stable_order() {
    let stack = Stack::shared().await;
    let client = stack.client();
    let mut ids = Vec::new();
    for minutes in [30, 10, 20] {
        let spec = DropSpec {
            starts_in: chrono::Duration::days(300) + chrono::Duration::minutes(minutes),
            ..DropSpec::live(3, 1)
        };
        ids.push((minutes, client.create_drop(spec).await));
    }
    ids.sort();
    // Upcoming, by starts_at: walk every page with limit=1 and find ours in order, once each.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/drops?status=upcoming&limit=1&cursor={c}"),
            None => "/v1/drops?status=upcoming&limit=1".to_owned(),
        };
        let page = client.get(&path, None).await;
        assert_eq!(page.status, StatusCode::OK, "{:?}", page.json());
        let page = page.json();
        for item in page["items"].as_array().unwrap() {
            seen.push(Uuid::parse_str(item["id"].as_str().unwrap()).unwrap());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let ours: Vec<Uuid> = seen.iter().copied().filter(|id| ids.iter().any(|(_, i)| i == id)).collect();
    assert_eq!(ours, ids.iter().map(|(_, i)| *i).collect::<Vec<_>>());
    let unique: std::collections::HashSet<_> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no duplicates across pages");

    // Live, by `ends_at`: other tests' drops (the fuzz run makes hundreds) may come
    // first; ours is on some page.
    let live = client.create_drop(DropSpec::live(3, 1)).await;
    let mut cursor: Option<String> = None;
    let mut found = false;
    for _ in 0..100 {
        let path = match &cursor {
            Some(c) => format!("/v1/drops?status=live&limit=100&cursor={c}"),
            None => "/v1/drops?status=live&limit=100".to_owned(),
        };
        let page = client.get(&path, None).await.json();
        found = page["items"].as_array().unwrap().iter().any(|c| c["id"] == live.to_string());
        match page["next_cursor"].as_str() {
            Some(c) if !found => cursor = Some(c.to_owned()),
            _ => break,
        }
    }
    assert!(found, "the live drop is listed");
    let bad = client.get("/v1/drops?status=sideways", None).await;
    assert_eq!((bad.status, bad.code().as_str()), (StatusCode::BAD_REQUEST, "invalid_request"));
    let tampered = client.get("/v1/drops?status=live&cursor=bm9wZQ", None).await;
    assert_eq!(tampered.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn purge_needs_a_signature() {
    let stack = Stack::shared().await;
    let resp = reqwest::Client::new()
        .post(format!("{}/internal/v1/purge", stack.edge_url))
        .body(r#"{"paths":["/v1/drops?status=live"]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    // Signed, it evicts: the next read is a miss.
    let client = stack.client();
    let drop_id = client.create_drop(DropSpec::live(3, 1)).await;
    // Creating and starting the drop purge its card too: let those go by first.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    card(&client, drop_id).await;
    assert_eq!(card(&client, drop_id).await.header("x-cache"), Some("HIT"));
    let path = format!("/v1/drops/{drop_id}");
    stack.with_origin(move |s| async move { s.core.edge.purge(&[path]).await }).await.unwrap();
    assert_eq!(card(&client, drop_id).await.header("x-cache"), Some("MISS"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rush_on_a_sold_out_drop_is_answered_by_the_worker() {
    let stack = Stack::shared().await;
    let client = stack.client();
    let drop_id = client.create_drop(DropSpec::live(2, 1)).await;
    let holder = Buyer::new();
    let kept = client.buy(&holder, drop_id, "holder-key-1", 1).await;
    assert_eq!(kept.status, StatusCode::CREATED);
    assert_eq!(client.buy(&Buyer::new(), drop_id, "other-key-01", 1).await.status, StatusCode::CREATED);
    let first = client.buy(&Buyer::new(), drop_id, "first-late-1", 1).await;
    assert_eq!(first.code(), "sold_out");
    let before = stack.snapshot(drop_id).await.decisions;
    let late: Vec<Buyer> = (0..200).map(|_| Buyer::new()).collect();
    let answers = join_all(late.iter().map(|b| client.buy(b, drop_id, "late-key-001", 1))).await;
    assert!(answers.iter().all(|a| a.status == StatusCode::CONFLICT && a.code() == "sold_out"));
    let reached = stack.snapshot(drop_id).await.decisions - before;
    println!("a rush of 200 on a sold-out drop woke the inventory object {reached} time(s)");
    assert!(reached < 20, "{reached} of 200 reached the object");
    // A holder's retry still gets its own answer back, not "sold out".
    let replay = client.buy(&holder, drop_id, "holder-key-1", 1).await;
    assert_eq!(replay.status, StatusCode::CREATED);
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!(replay.json()["order_id"], kept.json()["order_id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn starts_and_ends_are_announced_once_even_with_several_schedulers() {
    let stack = Stack::shared().await;
    let client = stack.client();
    let db = stack.db().await;
    let mut drops = Vec::new();
    for _ in 0..3 {
        drops.push(
            client
                .create_drop(DropSpec {
                    starts_in: chrono::Duration::seconds(1),
                    lasts: chrono::Duration::seconds(2),
                    ..DropSpec::live(2, 1)
                })
                .await,
        );
    }
    // Four more schedulers, as if four more origin instances ran, racing the real one.
    let racing = join_all((0..4).map(|_| {
        stack.with_origin(|s| async move {
            let until = Instant::now() + Duration::from_secs(5);
            while Instant::now() < until {
                drops_origin::catalogue::schedule::announce(&s.core).await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    }));
    racing.await;
    for drop_id in drops {
        for kind in ["DropStarted", "DropEnded"] {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE aggregate_id = $1 AND event_type = $2")
                .bind(drop_id)
                .bind(kind)
                .fetch_one(&db)
                .await
                .unwrap();
            assert_eq!(n, 1, "{kind} of {drop_id}");
        }
        assert_eq!(card(&client, drop_id).await.json()["status"], "ended");
    }
}
