//! The origin's HTTP serving under abuse (issue 21), through the real stack:
//!
//! - slow clients (slowloris): hundreds of connections that dribble their headers
//!   or their bodies hold no slot, so the payment webhook and the edge's hand-offs
//!   are still served; a slow body is cut off with 408, slow headers by closing the
//!   connection; the origin still stops gracefully with them connected; a WebSocket
//!   outlives the header timeout;
//! - `/metrics` is not on the public port; scrapes and readiness probes cost the
//!   database nothing (answered while `orders` is locked and the pool is held);
//!   requests, however many, share one Redis connection;
//! - the edge's signed internal calls have a budget of their own, which public
//!   traffic and unsigned junk from the edge's own address cannot drain.
//!
//! Each test restarts the origin with settings of its own, so each runs alone
//! ([`Stack::exclusive`]; the lease puts the stack's settings back).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use drops_origin::config::Rate;
use drops_shared::auth::Role;
use drops_shared::internal::{EdgeRefusals, Endpoint, ReportRefusals};
use drops_shared::problem::PROBLEM_CONTENT_TYPE;
use drops_shared::signing::{sign_internal, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use drops_tests::client::{token, Answer, Client};
use drops_tests::{Buyer, DropSpec, Stack, EDGE_TO_ORIGIN_SECRET, WEBHOOK_SECRET};
use reqwest::StatusCode;
use secrecy::ExposeSecret;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use uuid::Uuid;

/// The origin's `host:port`.
fn origin_addr(stack: &Stack) -> String {
    stack.origin_url.trim_start_matches("http://").to_owned()
}

/// A connection that sent a whole request head for the payment webhook, declaring a
/// body it sends only the start of.
async fn slow_body(addr: &str) -> TcpStream {
    let mut conn = TcpStream::connect(addr).await.expect("a connection to the origin");
    let head = "POST /v1/webhooks/payments HTTP/1.1\r\nhost: origin\r\ncontent-type: application/json\r\n\
                stripe-signature: t=1,v1=00\r\ncontent-length: 1000\r\n\r\n{\"id\":";
    conn.write_all(head.as_bytes()).await.expect("the head is sent");
    conn
}

/// A connection that sent the start of a request head, and no more.
async fn slow_head(addr: &str) -> TcpStream {
    let mut conn = TcpStream::connect(addr).await.expect("a connection to the origin");
    conn.write_all(b"POST /v1/webhooks/payments HTTP/1.1\r\nhost: origin\r\n").await.expect("half a head is sent");
    conn
}

/// Whether the origin has neither answered nor closed `conn`.
fn still_open(conn: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(conn.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// What the origin sends on `conn` until it closes it (within `within`; `None`: it
/// kept the connection open that long).
async fn until_closed(conn: &mut TcpStream, within: Duration) -> Option<String> {
    let mut got = Vec::new();
    let read = tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    read.ok().map(|()| String::from_utf8_lossy(&got).into_owned())
}

/// A signed provider event the webhook acknowledges and ignores (200).
async fn ignored_webhook(client: &Client) -> Answer {
    let body = json!({
        "id": format!("evt_{}", Uuid::new_v4().simple()),
        "type": "customer.created",
        "data": {"object": {"id": "cus_hardening"}},
    });
    let body = serde_json::to_vec(&body).unwrap();
    client.webhook(&body, WEBHOOK_SECRET, chrono::Utc::now().timestamp()).await
}

/// Buys one unit of `drop_id` through the edge and waits until the edge has handed
/// the reservation to the origin (the order row exists), at most `within`.
async fn handed_off(stack: &Stack, client: &Client, drop_id: Uuid, within: Duration) -> bool {
    let buyer = Buyer::new();
    let bought = client.buy(&buyer, drop_id, &format!("hardening-{}", buyer.id), 1).await;
    assert_eq!(bought.status, StatusCode::CREATED, "{:?}", bought.json());
    let order_id = Uuid::parse_str(bought.json()["order_id"].as_str().expect("an order id")).unwrap();
    let db = stack.db().await;
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let found: i64 = sqlx::query_scalar("SELECT count(*) FROM orders WHERE id = $1")
            .bind(order_id)
            .fetch_one(&db)
            .await
            .unwrap();
        if found == 1 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Slowloris: 300 connections dribbling their bodies and 300 dribbling their
/// headers, against an origin with 8 slots and 8 places in the queue. None of them
/// holds a slot, so the webhook and the edge's hand-off are served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_600_slow_clients_hold_connections_the_webhook_and_the_edges_hand_offs_are_served() {
    let stack = Stack::exclusive().await;
    let client = stack.client();
    let drop_id = client.create_drop(DropSpec::live(10, 1)).await;
    stack.stop_origin().await;
    stack
        .start_origin_with(|s| {
            s.limits.max_in_flight = 8;
            s.limits.max_queued = 8;
            // Long enough that the slow clients are still there when the others come.
            s.server.header_read_timeout_ms = 120_000;
            s.server.body_read_timeout_ms = 120_000;
        })
        .await;
    let addr = origin_addr(&stack);
    let mut slow = Vec::new();
    for _ in 0..300 {
        slow.push(slow_body(&addr).await);
        slow.push(slow_head(&addr).await);
    }
    // Let the origin take them all in (each is waiting on its body or its head).
    tokio::time::sleep(Duration::from_millis(500)).await;

    let webhook = ignored_webhook(&client).await;
    assert_eq!(webhook.status, StatusCode::OK, "the webhook, with 600 slow clients connected: {:?}", webhook.json());
    assert!(
        handed_off(&stack, &client, drop_id, Duration::from_secs(20)).await,
        "the edge's hand-off of a reservation never reached the origin while the slow clients were connected"
    );
    let open = slow.iter().filter(|c| still_open(c)).count();
    assert_eq!(open, slow.len(), "the slow clients were still connected, neither answered nor closed");
}

/// A body that does not arrive within the body timeout is answered 408 and its
/// connection closed; a head that does not arrive within the header timeout, or a
/// connection that sends nothing, is closed. The origin stops gracefully with slow
/// clients connected, and a WebSocket lives on past the header timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_get_408_slow_heads_are_closed_and_sockets_outlive_the_header_timeout() {
    let stack = Stack::exclusive().await;
    stack.stop_origin().await;
    stack
        .start_origin_with(|s| {
            s.server.header_read_timeout_ms = 1_000;
            s.server.body_read_timeout_ms = 1_000;
        })
        .await;
    let addr = origin_addr(&stack);
    let buyer = Buyer::new();
    let (_, socket) = drops_tests::listen_on(&stack.origin_url, &buyer).await;

    let mut body = slow_body(&addr).await;
    let answer = until_closed(&mut body, Duration::from_secs(20)).await.expect("a slow body is cut off");
    assert!(answer.starts_with("HTTP/1.1 408"), "a slow body is answered 408: {answer:?}");
    assert!(answer.to_ascii_lowercase().contains(PROBLEM_CONTENT_TYPE), "{answer:?}");
    let mut head = slow_head(&addr).await;
    assert!(until_closed(&mut head, Duration::from_secs(20)).await.is_some(), "a slow head is closed");
    let mut silent = TcpStream::connect(&addr).await.unwrap();
    assert!(until_closed(&mut silent, Duration::from_secs(20)).await.is_some(), "a silent connection is closed");

    assert!(!socket.is_finished(), "the notification socket outlived the header timeout several times over");

    // Stopping waits for no slow client.
    let (_body, _head) = (slow_body(&addr).await, slow_head(&addr).await);
    tokio::time::timeout(Duration::from_secs(60), stack.stop_origin())
        .await
        .expect("the origin stops with slow clients connected");
}

/// `/metrics` is on the operators' listener, not the public port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_on_the_operators_listener_only() {
    let stack = Stack::shared().await;
    let client = stack.client();
    let public = client.send(client.http.get(format!("{}/metrics", stack.origin_url))).await;
    assert_eq!(public.status, StatusCode::NOT_FOUND, "the public port has no /metrics");
    assert!(!String::from_utf8_lossy(&public.body).contains("drops_"), "nothing of the metrics on the public port");
    let scraped = client.get_raw_metrics().await;
    assert!(scraped.contains("drops_http_requests_total"), "{scraped}");
}

/// Scrapes and readiness probes, however many, do not touch the database: they are
/// answered while a transaction holds `orders` locked (which any count of orders
/// waits for) and while every pooled connection is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrapes_and_probes_are_answered_from_what_one_task_read() {
    let stack = Stack::exclusive().await;
    let client = stack.client();
    let ready = client.send(client.http.get(format!("{}/readyz", stack.origin_url))).await;
    assert_eq!(ready.status, StatusCode::OK, "ready to begin with: {:?}", ready.json());

    let db = stack.db().await;
    let mut lock = db.begin().await.unwrap();
    sqlx::query("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE").execute(&mut *lock).await.unwrap();
    let scrapes =
        futures::future::join_all((0..50).map(|_| client.send(client.http.get(format!("{}/metrics", client.metrics)))));
    let scrapes = tokio::time::timeout(Duration::from_secs(20), scrapes)
        .await
        .expect("scrapes were answered while the orders table was locked");
    assert!(scrapes.iter().all(|a| a.status == StatusCode::OK));
    lock.rollback().await.unwrap();

    let mut held = stack.hold_pool(stack.settings.database.max_connections as usize).await;
    let probes = futures::future::join_all(
        (0..50).map(|_| client.send(client.http.get(format!("{}/readyz", stack.origin_url)))),
    )
    .await;
    for probe in &probes {
        assert_eq!(probe.status, StatusCode::OK, "ready while the pool is busy: {:?}", probe.json());
    }
    assert!(held.holding(), "answered while every pooled connection was held");
    held.release().await;
}

/// A TCP proxy in front of Redis that counts the connections made through it.
async fn counting_redis_proxy(redis: String) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let opened = Arc::new(AtomicUsize::new(0));
    let counted = opened.clone();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            let redis = redis.clone();
            tokio::spawn(async move {
                if let Ok(mut outbound) = TcpStream::connect(&redis).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    (format!("redis://{addr}"), opened)
}

/// Every request that needs Redis (a creator's follower count, the followers list,
/// readiness) uses the instance's one shared connection: a flood of them opens none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_requests_shares_one_redis_connection() {
    let stack = Stack::exclusive().await;
    let redis =
        stack.settings.redis.url.expose_secret().trim_start_matches("redis://").trim_end_matches('/').to_owned();
    let redis = redis.split('/').next().unwrap().to_owned();
    let (proxied, opened) = counting_redis_proxy(redis).await;
    stack.stop_origin().await;
    stack.start_origin_with(|s| s.redis.url = proxied.into()).await;
    let client = stack.client();
    let admin = token(Uuid::now_v7(), Role::Admin);
    let made = client
        .post_json("/v1/creators", Some(&admin), json!({"name": "Counted Studio", "user_id": Uuid::now_v7()}))
        .await;
    assert_eq!(made.status, StatusCode::CREATED, "{:?}", made.json());
    let creator_id = made.json()["id"].as_str().unwrap().to_owned();
    let origin = |path: String| client.send(client.http.get(format!("{}{path}", stack.origin_url)).bearer_auth(&admin));
    // Warm: the background tasks have their connections, and the shared one is made.
    for _ in 0..3 {
        assert_eq!(origin(format!("/v1/creators/{creator_id}")).await.status, StatusCode::OK);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let before = opened.load(Ordering::SeqCst);

    for _ in 0..4 {
        let wave = (0..50).flat_map(|_| {
            [
                origin(format!("/v1/creators/{creator_id}")),
                origin(format!("/v1/creators/{creator_id}/followers")),
                origin("/readyz".to_owned()),
            ]
        });
        for answer in futures::future::join_all(wave).await {
            assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.json());
        }
    }
    let during = opened.load(Ordering::SeqCst) - before;
    assert!(during <= 2, "600 requests opened {during} Redis connections");
}

/// Signs `body` for `POST path` as the edge does.
fn signed_by_edge(client: &Client, path: &str, body: &[u8]) -> reqwest::RequestBuilder {
    let now = chrono::Utc::now().timestamp();
    let signature = sign_internal(EDGE_TO_ORIGIN_SECRET.as_bytes(), "POST", path, now, body);
    client
        .http
        .post(format!("{}{path}", client.origin))
        .header("content-type", "application/json")
        .header(TIMESTAMP_HEADER, now.to_string())
        .header(SIGNATURE_HEADER, signature)
        .body(body.to_vec())
}

/// Junk from the edge's own address (in production, an egress other Workers share):
/// unsigned calls to the internal routes and bad webhooks spend nothing of the
/// edge's internal budget, so its hand-offs still land; unsigned is 401 however many.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_from_the_edges_address_cannot_drain_the_internal_budget() {
    let stack = Stack::exclusive().await;
    let client = stack.client();
    let drop_id = client.create_drop(DropSpec::live(10, 1)).await;
    stack.stop_origin().await;
    // Nothing refills during the test.
    let tight = Rate { per_minute: 1, burst: 5 };
    stack
        .start_origin_with(|s| {
            s.limits.direct = tight;
            s.limits.signed = tight;
            s.limits.internal = Rate { per_minute: 600, burst: 100 };
        })
        .await;

    // From 127.0.0.1, the edge's own address here.
    let mut junk = Vec::new();
    for _ in 0..50 {
        junk.push(
            client.send(client.http.post(format!("{}/internal/v1/reservations", client.origin)).body("{}")).await,
        );
    }
    for _ in 0..20 {
        client.webhook_with_header(b"{}", Some("t=1,v1=00")).await;
    }
    for _ in 0..20 {
        client.send(client.http.get(format!("{}/v1/creators/{}", client.origin, Uuid::now_v7()))).await;
    }
    assert!(
        handed_off(&stack, &client, drop_id, Duration::from_secs(20)).await,
        "the edge's hand-off never landed after junk from its address"
    );
    for (i, junk) in junk.iter().enumerate() {
        assert_eq!((junk.status, junk.code().as_str()), (StatusCode::UNAUTHORIZED, "unauthorized"), "junk #{i}");
    }
}

/// The internal budget bounds the signed calls themselves, all callers together;
/// an unsigned call is 401 whatever the budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_internal_calls_are_held_to_their_own_budget() {
    let stack = Stack::exclusive().await;
    stack.stop_origin().await;
    stack.start_origin_with(|s| s.limits.internal = Rate { per_minute: 1, burst: 3 }).await;
    let client = stack.client();
    let report = serde_json::to_vec(&EdgeRefusals { counts: vec![] }).unwrap();
    let mut answers = Vec::new();
    for _ in 0..10 {
        answers.push(client.send(signed_by_edge(&client, ReportRefusals::PATH, &report)).await);
    }
    let served = answers.iter().filter(|a| a.status == StatusCode::OK).count();
    assert!((1..=3).contains(&served), "{served} of 10 signed calls served on a burst of 3");
    let refused: Vec<&Answer> = answers.iter().filter(|a| a.status != StatusCode::OK).collect();
    assert_eq!(refused.len(), 10 - served);
    for a in refused {
        assert_eq!((a.status, a.code().as_str()), (StatusCode::TOO_MANY_REQUESTS, "rate_limited"), "{:?}", a.json());
        assert!(a.header("retry-after").is_some());
    }
    let unsigned =
        client.send(client.http.post(format!("{}{}", client.origin, ReportRefusals::PATH)).body(report)).await;
    assert_eq!(unsigned.status, StatusCode::UNAUTHORIZED, "unsigned: 401, not 429");
}
