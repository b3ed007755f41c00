//! The origin's own defences (issue 11), through the real stack: a client over its
//! limit is told to wait (429 `rate_limited`, `Retry-After`) while other clients are
//! served, and naming another client without the edge's signature buys nothing;
//! the payment webhook is held to a bound of its own, not to the client's; past the
//! concurrency limit and its short queue, and with the database pool exhausted, the
//! answer is 503 `overloaded` with `Retry-After`, at once; each refusal is counted on
//! `/metrics`.
//!
//! Each test restarts the origin with low limits of its own, so each runs alone
//! ([`Stack::exclusive`]; the lease puts the stack's settings back).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use chrono::Utc;
use drops_origin::config::Rate;
use drops_shared::auth::Role;
use drops_shared::client_address::{self, CLIENT_HEADER, CLIENT_SIGNATURE_HEADER};
use drops_shared::problem::PROBLEM_CONTENT_TYPE;
use drops_tests::client::{token, Answer, Client};
use drops_tests::{DropSpec, Stack, EDGE_TO_ORIGIN_SECRET};
use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

/// A public route of the origin that reads the database and answers 404 for an
/// unknown id: cheap, and any answer but 429 means "served".
const CREATOR_ROUTE: &str = "/v1/creators/{creator_id}";

fn creator_path() -> String {
    format!("/v1/creators/{}", Uuid::now_v7())
}

/// `GET path` straight at the origin, with `headers`.
async fn origin_get(client: &Client, path: &str, headers: &[(&str, String)]) -> Answer {
    let mut req = client.http.get(format!("{}{path}", client.origin));
    for (name, value) in headers {
        req = req.header(*name, value);
    }
    client.send(req).await
}

/// The client headers the edge sends for `address`, signed now with `secret`.
fn vouched(address: &str, secret: &str) -> Vec<(&'static str, String)> {
    client_address::headers(secret.as_bytes(), address, Utc::now().timestamp()).to_vec()
}

/// `drops_http_refusals_total` for `route` and `reason`, as `/metrics` shows it now.
async fn refusals(client: &Client, route: &str, reason: &str) -> u64 {
    client.counter("drops_http_refusals_total", &[("route", route), ("reason", reason)]).await
}

/// A problem answer with `status` and `code`, carrying a `Retry-After` of at least a second.
fn assert_refused(a: &Answer, status: StatusCode, code: &str) -> u64 {
    assert_eq!((a.status, a.code().as_str()), (status, code), "{:?}", a.json());
    assert_eq!(a.header("content-type"), Some(PROBLEM_CONTENT_TYPE));
    let wait: u64 = a.header("retry-after").and_then(|v| v.parse().ok()).expect("Retry-After in seconds");
    assert!(wait >= 1, "Retry-After: {wait}");
    wait
}

fn assert_served(a: &Answer, what: &str) {
    assert_ne!(a.status, StatusCode::TOO_MANY_REQUESTS, "{what}: {:?}", a.json());
    assert_eq!(a.status, StatusCode::NOT_FOUND, "{what}: served (an unknown creator): {:?}", a.json());
}

/// Sends `n` requests from this test's own address (the peer 127.0.0.1), each served.
async fn spend(client: &Client, n: usize, headers: &[(&str, String)], what: &str) {
    for i in 0..n {
        assert_served(&origin_get(client, &creator_path(), headers).await, &format!("{what} #{}", i + 1));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_its_limit_is_told_to_wait_while_other_clients_are_served() {
    let stack = Stack::exclusive().await;
    stack.stop_origin().await;
    // One request a minute after a burst of three: nothing refills during the test.
    let slow = Rate { per_minute: 1, burst: 3 };
    stack
        .start_origin_with(|s| {
            s.limits.direct = slow;
            s.limits.forwarded = slow;
        })
        .await;
    let client = stack.client();
    let before = refusals(&client, CREATOR_ROUTE, "rate_limited").await;

    spend(&client, 3, &[], "this test's address").await;
    let refused = origin_get(&client, &creator_path(), &[]).await;
    let wait = assert_refused(&refused, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    assert!(wait <= 60, "the next request passes within the minute: Retry-After {wait}");

    // Another address, as the TCP peer (Linux answers on all of 127/8): its own budget.
    let other_peer = Client {
        http: reqwest::Client::builder()
            .local_address(IpAddr::from([127, 0, 0, 2]))
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
        ..stack.client()
    };
    spend(&other_peer, 3, &[], "127.0.0.2").await;
    assert_refused(&origin_get(&other_peer, &creator_path(), &[]).await, StatusCode::TOO_MANY_REQUESTS, "rate_limited");

    // Clients the edge vouches for, on the peer whose own budget is spent: each has
    // a budget of its own, and is limited in turn.
    let alice = vouched("203.0.113.7", EDGE_TO_ORIGIN_SECRET);
    spend(&client, 3, &alice, "203.0.113.7 through the edge").await;
    assert_refused(&origin_get(&client, &creator_path(), &alice).await, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    let bob = vouched("2001:db8:7::1", EDGE_TO_ORIGIN_SECRET);
    spend(&client, 1, &bob, "2001:db8:7::1 through the edge").await;
    // The rest of the same /64 is the same client.
    let bob_again = vouched("2001:db8:7::2", EDGE_TO_ORIGIN_SECRET);
    spend(&client, 2, &bob_again, "2001:db8:7::2 through the edge").await;
    let bob_over = origin_get(&client, &creator_path(), &bob_again).await;
    assert_refused(&bob_over, StatusCode::TOO_MANY_REQUESTS, "rate_limited");

    let after = refusals(&client, CREATOR_ROUTE, "rate_limited").await;
    assert_eq!(after - before, 4, "each 429 counted under its route and reason");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_header_without_the_edges_signature_buys_no_fresh_budget() {
    let stack = Stack::exclusive().await;
    stack.stop_origin().await;
    stack
        .start_origin_with(|s| {
            s.limits.direct = Rate { per_minute: 1, burst: 2 };
            s.limits.forwarded = Rate { per_minute: 1, burst: 100 };
        })
        .await;
    let client = stack.client();
    spend(&client, 2, &[], "this test's address").await;
    assert_refused(&origin_get(&client, &creator_path(), &[]).await, StatusCode::TOO_MANY_REQUESTS, "rate_limited");

    let now = Utc::now().timestamp();
    let secret = EDGE_TO_ORIGIN_SECRET.as_bytes();
    let for_carol = client_address::sign(secret, "198.51.100.1", now);
    let forged: Vec<(&str, Vec<(&str, String)>)> = vec![
        ("no signature", vec![(CLIENT_HEADER, "198.51.100.2".into())]),
        ("another secret", vouched("198.51.100.3", "not-the-edges-secret")),
        (
            "a signature for another address",
            vec![(CLIENT_HEADER, "198.51.100.4".into()), (CLIENT_SIGNATURE_HEADER, for_carol)],
        ),
        (
            "an hour-old signature",
            vec![
                (CLIENT_HEADER, "198.51.100.5".into()),
                (CLIENT_SIGNATURE_HEADER, client_address::sign(secret, "198.51.100.5", now - 3_600)),
            ],
        ),
        (
            "a signature of garbage",
            vec![(CLIENT_HEADER, "198.51.100.6".into()), (CLIENT_SIGNATURE_HEADER, "t=1,v1=00".into())],
        ),
        ("an address that is not one", vouched("not-an-address", EDGE_TO_ORIGIN_SECRET)),
    ];
    for (what, headers) in &forged {
        let a = origin_get(&client, &creator_path(), headers).await;
        assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS, "{what}: counted against the peer, already spent");
    }
    // The real thing, from the same peer: served.
    spend(&client, 1, &vouched("198.51.100.7", EDGE_TO_ORIGIN_SECRET), "a client the edge vouches for").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_is_held_to_its_own_bound_not_the_clients_and_health_to_none() {
    let stack = Stack::exclusive().await;
    stack.stop_origin().await;
    stack
        .start_origin_with(|s| {
            s.limits.direct = Rate { per_minute: 1, burst: 1 };
            s.limits.signed = Rate { per_minute: 1, burst: 4 };
        })
        .await;
    let client = stack.client();
    let before = refusals(&client, "/v1/webhooks/payments", "rate_limited").await;
    spend(&client, 1, &[], "this test's address").await;
    assert_refused(&origin_get(&client, &creator_path(), &[]).await, StatusCode::TOO_MANY_REQUESTS, "rate_limited");

    // The same peer's webhooks reach the webhook's own check (a bad signature here)...
    let body = br#"{"id":"evt_x","type":"payment_intent.succeeded","data":{"object":{"id":"pi_x"}}}"#;
    for i in 0..4 {
        let a = client.webhook_with_header(body, Some("t=1,v1=00")).await;
        assert_eq!((a.status, a.code().as_str()), (StatusCode::BAD_REQUEST, "invalid_signature"), "webhook #{i}");
    }
    // ...until the webhook's own bound.
    let over = client.webhook_with_header(body, Some("t=1,v1=00")).await;
    assert_refused(&over, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    // The internal routes have a budget of their own (`origin_hardening`): an
    // unsigned call from the same peer is still just unsigned.
    let internal =
        client.send(client.http.post(format!("{}/internal/v1/reservations", client.origin)).body("{}")).await;
    assert_eq!(internal.status, StatusCode::UNAUTHORIZED);

    for path in ["/healthz", "/readyz"] {
        assert_eq!(origin_get(&client, path, &[]).await.status, StatusCode::OK, "{path} is never limited");
    }
    let scrape = client.send(client.http.get(format!("{}/metrics", client.metrics))).await;
    assert_eq!(scrape.status, StatusCode::OK, "/metrics, on its own listener, is never limited");
    assert_eq!(refusals(&client, "/v1/webhooks/payments", "rate_limited").await - before, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_concurrency_limit_and_its_short_queue_the_answer_is_503_at_once() {
    let stack = Stack::exclusive().await;
    let client = stack.client();
    let upcoming = DropSpec { starts_in: chrono::Duration::hours(1), ..DropSpec::live(5, 1) };
    let drop_id = client.create_drop(upcoming).await;
    stack.stop_origin().await;
    stack
        .start_origin_with(|s| {
            s.limits.max_in_flight = 2;
            s.limits.max_queued = 1;
            s.limits.queue_wait_ms = 200;
        })
        .await;
    let before = refusals(&client, CREATOR_ROUTE, "overloaded").await;

    // The test holds the drop's row: two edits of it take both slots and wait.
    let db = stack.db().await;
    let mut lock = db.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM drops WHERE id = $1 FOR UPDATE").bind(drop_id).execute(&mut *lock).await.unwrap();
    let admin = token(Uuid::now_v7(), Role::Admin);
    let held: Vec<_> = (0..2)
        .map(|_| {
            let (client, admin) = (client.clone(), admin.clone());
            tokio::spawn(async move {
                let edit = client
                    .http
                    .patch(format!("{}/v1/drops/{drop_id}", client.origin))
                    .bearer_auth(admin)
                    .json(&json!({"hold_seconds": 300}));
                client.send(edit).await
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&db)
        .await
        .unwrap();
        if waiting == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "the two edits never reached the lock ({waiting} waiting)");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Two more: one waits its 200 ms in the queue, the other finds the queue full.
    let (one, two) = (creator_path(), creator_path());
    let (a, b) = tokio::join!(origin_get(&client, &one, &[]), origin_get(&client, &two, &[]));
    for answer in [&a, &b] {
        assert_eq!(assert_refused(answer, StatusCode::SERVICE_UNAVAILABLE, "overloaded"), 1);
    }
    assert!(held.iter().all(|h| !h.is_finished()), "refused without waiting for the held requests");
    assert_eq!(origin_get(&client, "/healthz", &[]).await.status, StatusCode::OK, "health is never shed");

    lock.rollback().await.unwrap();
    for h in held {
        let edit = h.await.unwrap();
        assert_eq!(edit.status, StatusCode::OK, "the held requests finish once let go: {:?}", edit.json());
    }
    spend(&client, 1, &[], "once the slots are free").await;
    assert_eq!(refusals(&client, CREATOR_ROUTE, "overloaded").await - before, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_pool_answers_503_at_once_never_500_nor_a_long_wait() {
    let stack = Stack::exclusive().await;
    let client = stack.client();
    let drop_id = client.create_drop(DropSpec::live(5, 1)).await;
    stack.stop_origin().await;
    stack
        .start_origin_with(|s| {
            s.database.max_connections = 2;
            s.database.acquire_timeout_ms = 100;
        })
        .await;
    let card_route = "/v1/drops/{drop_id}";
    let before = refusals(&client, card_route, "pool_exhausted").await;
    let orders_before = refusals(&client, "/v1/orders/{order_id}", "pool_exhausted").await;
    assert_eq!(origin_get(&client, &format!("/v1/drops/{drop_id}"), &[]).await.status, StatusCode::OK);

    let mut held = stack.hold_pool(2).await;

    let started = Instant::now();
    let card = origin_get(&client, &format!("/v1/drops/{drop_id}"), &[]).await;
    assert_refused(&card, StatusCode::SERVICE_UNAVAILABLE, "overloaded");
    assert!(started.elapsed() < Duration::from_secs(3), "answered within the acquire timeout: {:?}", started.elapsed());
    // Through the edge, as an app sees it: the origin's 503 passes through.
    let buyer = drops_tests::Buyer::new();
    let order = client.get(&format!("/v1/orders/{}", Uuid::now_v7()), Some(&buyer.token)).await;
    assert_refused(&order, StatusCode::SERVICE_UNAVAILABLE, "overloaded");
    assert!(held.holding(), "refused while the connections were still held");

    held.release().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let card = origin_get(&client, &format!("/v1/drops/{drop_id}"), &[]).await;
        if card.status == StatusCode::OK {
            break;
        }
        assert!(Instant::now() < deadline, "the origin never recovered: {:?}", card.json());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(refusals(&client, card_route, "pool_exhausted").await > before, "counted on /metrics");
    assert!(refusals(&client, "/v1/orders/{order_id}", "pool_exhausted").await > orders_before);
}

/// Through the edge, the origin counts each client (the edge vouches for the
/// address Cloudflare gave it), not the edge: one client past the origin's limit
/// for it is refused, another client through the same edge is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_edge_the_origin_limits_each_client_not_the_edge() {
    let stack = Stack::exclusive().await;
    stack.stop_origin().await;
    stack
        .start_origin_with(|s| {
            s.limits.forwarded = Rate { per_minute: 1, burst: 3 };
        })
        .await;
    let client = stack.client();
    let through_edge = |address: &'static str| {
        let url = format!("{}{}", client.edge, creator_path());
        client.send(client.http.get(url).header("cf-connecting-ip", address))
    };
    for i in 0..3 {
        assert_served(&through_edge("203.0.113.50").await, &format!("request #{}", i + 1));
    }
    assert_refused(&through_edge("203.0.113.50").await, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    assert_served(&through_edge("203.0.113.51").await, "another client through the same edge");
    // A client cannot name itself someone else: its own headers are replaced.
    let forged = client.send(
        client
            .http
            .get(format!("{}{}", client.edge, creator_path()))
            .header("cf-connecting-ip", "203.0.113.50")
            .header(CLIENT_HEADER, "203.0.113.99")
            .header(CLIENT_SIGNATURE_HEADER, "t=1,v1=00"),
    );
    assert_refused(&forged.await, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
}

/// A drop's inventory object with a backlog answers 503 `overloaded` (`Retry-After: 1`)
/// to buys that waited too long, before deciding them; retried with the same key,
/// each is decided once. On an edge of its own (its own `wrangler dev`) with
/// `INVENTORY_MAX_WAIT_MS` at 20 ms, where three hundred buys at once on one drop
/// make the later ones wait longer than that; the stack's edge keeps the default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inventory_object_with_a_backlog_sheds_buys_and_a_retried_key_is_decided_once() {
    // Alone: a second `wrangler dev` starting and a burst beside the others' tests.
    let stack = Stack::exclusive().await;
    let client = stack.client();
    let drop_id = client.create_drop(DropSpec::live(100, 1)).await;
    let terms = stack.snapshot(drop_id).await.terms;
    let port = drops_tests::free_port();
    drops_tests::wrangler_dev("wrangler.toml", port, &stack.edge_vars(&["INVENTORY_MAX_WAIT_MS:20"]), "/healthz")
        .await
        .expect("an edge of the test's own");
    let mut settings = stack.settings.clone();
    settings.edge.url = format!("http://127.0.0.1:{port}");
    let edge = drops_origin::edge::EdgeClient::new(&settings).unwrap();
    edge.put_terms(drop_id, &terms).await.expect("the drop's terms on that edge");
    let busy = Client { edge: settings.edge.url.clone(), ..client.clone() };

    let buyers: Vec<drops_tests::Buyer> = (0..300).map(|_| drops_tests::Buyer::new()).collect();
    let key = |b: &drops_tests::Buyer| format!("backlog-{}", b.id);
    let first = futures::future::join_all(buyers.iter().map(|b| {
        let (busy, key) = (&busy, key(b));
        async move { busy.buy(b, drop_id, &key, 1).await }
    }))
    .await;
    let shed: Vec<&drops_tests::Buyer> = buyers
        .iter()
        .zip(&first)
        .filter(|(_, a)| a.status == StatusCode::SERVICE_UNAVAILABLE)
        .map(|(b, _)| b)
        .collect();
    assert!(!shed.is_empty(), "300 buys at once on one object: none waited past 20 ms");
    for a in first.iter().filter(|a| a.status == StatusCode::SERVICE_UNAVAILABLE) {
        assert_eq!(a.code(), "overloaded");
        assert_eq!(a.header("content-type"), Some(PROBLEM_CONTENT_TYPE));
        assert_eq!(a.header("retry-after"), Some("1"));
    }
    let mut orders: std::collections::HashSet<String> = std::collections::HashSet::new();
    for a in &first {
        match a.status {
            StatusCode::CREATED => assert!(orders.insert(a.json()["order_id"].as_str().unwrap().to_owned())),
            StatusCode::CONFLICT => assert_eq!(a.code(), "sold_out"),
            StatusCode::SERVICE_UNAVAILABLE => {}
            other => panic!("unexpected {other}: {:?}", a.json()),
        }
    }
    // Each shed buyer tries again with the same key, one at a time, as told.
    for b in &shed {
        let again = decided(&busy, b, drop_id, &key(b)).await;
        match again.status {
            StatusCode::CREATED => assert!(orders.insert(again.json()["order_id"].as_str().unwrap().to_owned())),
            StatusCode::CONFLICT => assert_eq!(again.code(), "sold_out"),
            other => panic!("a retry one at a time: {other} {:?}", again.json()),
        }
        // And once more: the same answer, replayed, never a second unit.
        let replay = decided(&busy, b, drop_id, &key(b)).await;
        assert_eq!(replay.status, again.status);
        assert_eq!(replay.json()["order_id"], again.json()["order_id"]);
    }
    let snapshot = edge.snapshot(drop_id).await.unwrap().expect("the drop on that edge");
    assert_eq!((snapshot.held + snapshot.sold) as usize, orders.len(), "one unit per order answered");
    assert!(orders.len() <= 100);
}

/// A buy sent again after `Retry-After` while it is shed (on two busy cores a request
/// alone can wait past 20 ms), until the inventory object decides it.
async fn decided(busy: &Client, buyer: &drops_tests::Buyer, drop_id: Uuid, key: &str) -> Answer {
    for _ in 0..20 {
        let answer = busy.buy(buyer, drop_id, key, 1).await;
        if answer.status != StatusCode::SERVICE_UNAVAILABLE {
            return answer;
        }
        assert_eq!(answer.code(), "overloaded");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    panic!("a buy retried one at a time was never decided");
}
