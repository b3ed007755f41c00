//! The edge's rate limits (`wrangler.toml`, `edge/src/limits.rs`): per client
//! address on every public route, per user on writes (and per address on
//! `/internal/`: `edge_hardening.rs`). Each
//! is driven past its window by a burst larger than two windows allow, wherever
//! the burst falls across a window's edge. The refusals show on the origin's
//! `/metrics`.

use drops_shared::auth::Role;
use drops_tests::client::{token, Answer, Client};
use drops_tests::{Buyer, DropSpec, Stack};
use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::json;

/// Two windows of `CLIENT_LIMITER` (600 a 10 s window) and some.
const ADDRESS_BURST: usize = 1_300;
/// Two windows of `WRITER_LIMITER` (60 a 10 s window) and some.
const WRITER_BURST: usize = 130;

fn refused(answers: &[Answer]) -> Vec<&Answer> {
    answers.iter().filter(|a| a.status == StatusCode::TOO_MANY_REQUESTS).collect()
}

fn assert_rate_limited(answers: &[&Answer]) {
    for a in answers {
        assert_eq!(a.code(), "rate_limited");
        assert_eq!(a.header("content-type"), Some("application/problem+json"));
        assert!(a.header("retry-after").is_some_and(|s| s.parse::<u32>().is_ok_and(|n| n > 0)), "Retry-After");
    }
}

async fn burst(client: &Client, n: usize, request: impl Fn() -> reqwest::RequestBuilder) -> Vec<Answer> {
    let mut answers = Vec::with_capacity(n);
    // Waves of 100 in flight: a flood, without exhausting local sockets.
    for wave in 0..n.div_ceil(100) {
        let size = 100.min(n - wave * 100);
        answers.extend(join_all((0..size).map(|_| client.send(request()))).await);
    }
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_flooding_is_refused_and_others_are_served() {
    // Alone: a flood on a shared `wrangler dev` makes its local proxy drop others' requests.
    let stack = Stack::exclusive().await;
    let client = stack.client();
    let drop_id = client.create_drop(DropSpec::live(3, 1)).await;
    let url = format!("{}/v1/drops/{drop_id}/stock", client.edge);
    let flood = burst(&client, ADDRESS_BURST, || client.http.get(&url).header("cf-connecting-ip", "203.0.113.7")).await;
    let limited = refused(&flood);
    assert!(!limited.is_empty(), "{ADDRESS_BURST} requests from one address were all served");
    assert_rate_limited(&limited);
    assert!(flood.iter().all(|a| a.status == StatusCode::OK || a.status == StatusCode::TOO_MANY_REQUESTS));
    // Another address, meanwhile, is served.
    let other = client.send(client.http.get(&url).header("cf-connecting-ip", "203.0.113.8")).await;
    assert_eq!(other.status, StatusCode::OK);
    // The edge reports its refusals to the origin's /metrics (the next request
    // after `REFUSAL_REPORT_MS`, 500 ms in the tests, sends them).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let reported = edge_refusals(&client, "/v1/drops/{drop_id}/stock", "rate_limited").await;
        if reported >= limited.len() as u64 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{reported} of {} refusals on /metrics", limited.len());
        tokio::time::sleep(std::time::Duration::from_millis(600)).await;
        client.send(client.http.get(&url).header("cf-connecting-ip", "203.0.113.8")).await;
    }
}

/// `drops_edge_refusals_total` for `route` and `reason` on the origin's `/metrics`.
async fn edge_refusals(client: &Client, route: &str, reason: &str) -> u64 {
    client.counter("drops_edge_refusals_total", &[("route", route), ("reason", reason)]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_account_writing_too_fast_is_refused_and_others_write() {
    // Alone: a flood on a shared `wrangler dev` makes its local proxy drop others' requests.
    let stack = Stack::exclusive().await;
    let client = stack.client();
    let admin = token(uuid::Uuid::now_v7(), Role::Admin);
    let made = client
        .post_json("/v1/creators", Some(&admin), json!({"name": "Steady Studio", "user_id": uuid::Uuid::now_v7()}))
        .await;
    assert_eq!(made.status, StatusCode::CREATED);
    let creator_id = made.json()["id"].as_str().unwrap().to_owned();
    let follow = format!("{}/v1/creators/{creator_id}/follow", client.edge);
    let eager = Buyer::new();
    // From many addresses: only the account's own limit can refuse these.
    let n = std::sync::atomic::AtomicUsize::new(0);
    let answers = burst(&client, WRITER_BURST, || {
        let i = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        client
            .http
            .put(&follow)
            .bearer_auth(&eager.token)
            .header("cf-connecting-ip", format!("198.18.{}.{}", i / 250, i % 250 + 1))
    })
    .await;
    let limited = refused(&answers);
    assert!(!limited.is_empty(), "{WRITER_BURST} writes by one account were all let through");
    assert_rate_limited(&limited);
    assert!(answers.iter().all(|a| a.status == StatusCode::NO_CONTENT || a.status == StatusCode::TOO_MANY_REQUESTS));
    // Reads by that account, and another account's writes, go on.
    let read = client.get("/v1/me/following", Some(&eager.token)).await;
    assert_eq!(read.status, StatusCode::OK);
    let other = client.send(client.http.put(&follow).bearer_auth(&Buyer::new().token)).await;
    assert_eq!(other.status, StatusCode::NO_CONTENT);
}

/// A flood of drop ids that do not exist, from one address: what the address's
/// limit refuses never reaches the origin, and each id let through costs it one
/// fetch at most (the edge remembers the 404).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unknown_drops_costs_the_origin_no_more_than_the_limit_lets_through() {
    // Alone: it counts the origin's card fetches.
    let stack = Stack::exclusive().await;
    let client = stack.client();
    let route = "/v1/drops/{drop_id}";
    let before = client.origin_requests("GET", route).await;
    let answers = burst(&client, ADDRESS_BURST, || {
        client
            .http
            .get(format!("{}/v1/drops/{}", client.edge, uuid::Uuid::now_v7()))
            .header("cf-connecting-ip", "203.0.113.77")
    })
    .await;
    let limited = refused(&answers).len();
    assert!(limited > 0, "{ADDRESS_BURST} unknown ids from one address were all looked up");
    assert!(answers.iter().all(|a| a.status == StatusCode::NOT_FOUND || a.status == StatusCode::TOO_MANY_REQUESTS));
    let reached = (client.origin_requests("GET", route).await - before) as usize;
    assert!(reached <= ADDRESS_BURST - limited, "{reached} fetches for {} ids let through", ADDRESS_BURST - limited);
}
