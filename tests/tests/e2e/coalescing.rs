//! Coalescing, measured: an expiry or a miss under load costs the origin one fetch,
//! not one per request. The test runs alone (an exclusive lease), so the origin's
//! request counter counts only what it causes.

use std::time::Duration;

use drops_tests::{DropSpec, Stack};
use futures::future::join_all;
use reqwest::StatusCode;
use uuid::Uuid;

const CARD_ROUTE: &str = "/v1/drops/{drop_id}";
const REQUESTS: usize = 1000;

/// At most this many sockets at once: `wrangler dev`'s single local proxy process
/// stalls past that on a loaded 2-core machine, which says nothing about our code.
const IN_FLIGHT: usize = 500;

async fn rush(client: &drops_tests::Client, drop_id: Uuid) -> Vec<(StatusCode, String)> {
    let path = format!("/v1/drops/{drop_id}");
    let gate = tokio::sync::Semaphore::new(IN_FLIGHT);
    // A thousand readers are a thousand visitors: each from an address of its own.
    let (gate, path) = (&gate, &path);
    join_all((0..REQUESTS).map(|i| async move {
        let address = drops_tests::client::client_address(Uuid::from_u128(i as u128));
        let _slot = gate.acquire().await.expect("gate");
        let a = client.get_from(path, &address).await;
        (a.status, a.header("x-cache").unwrap_or("-").to_owned())
    }))
    .await
}

fn tally(answers: &[(StatusCode, String)]) -> std::collections::BTreeMap<String, usize> {
    let mut t = std::collections::BTreeMap::new();
    for (s, c) in answers {
        let c = format!("{} {c}", s.as_u16());
        *t.entry(c.to_string()).or_insert(0) += 1;
    }
    t
}

/// Both scenarios in one test: they must not overlap, or each would count the other's fetches.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_readers_cost_the_origin_one_fetch() {
    // It counts the origin's card fetches: nothing else may fetch cards meanwhile.
    let stack = Stack::exclusive().await;
    let client = stack.client();

    // Stale: the entry just passed its freshness; everyone is served, one refresh runs.
    let warm = client.create_drop(DropSpec::live(10, 1)).await;
    // Let the purges that creating and starting a drop cause go by first.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(client.get(&format!("/v1/drops/{warm}"), None).await.status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    let before = client.origin_requests("GET", CARD_ROUTE).await;
    let answers = rush(&client, warm).await;
    tokio::time::sleep(Duration::from_millis(1_000)).await; // let the background refresh land
    let stale_fetches = client.origin_requests("GET", CARD_ROUTE).await - before;
    println!(
        "stale entry: {REQUESTS} concurrent GETs -> {stale_fetches} origin fetch(es); x-cache {:?}",
        tally(&answers)
    );
    assert!(answers.iter().all(|(s, _)| *s == StatusCode::OK));
    assert!(stale_fetches <= 3, "{stale_fetches} origin fetches for one stale key");

    // Cold: nothing cached yet; concurrent misses share one fetch.
    let cold = client.create_drop(DropSpec::live(10, 1)).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let before = client.origin_requests("GET", CARD_ROUTE).await;
    let answers = rush(&client, cold).await;
    let miss_fetches = client.origin_requests("GET", CARD_ROUTE).await - before;
    assert!(answers.iter().all(|(s, _)| *s == StatusCode::OK));
    println!("cold miss: {REQUESTS} concurrent GETs -> {miss_fetches} origin fetch(es); x-cache {:?}", tally(&answers));
    assert!(miss_fetches <= 3, "{miss_fetches} origin fetches for one missing key");
}
