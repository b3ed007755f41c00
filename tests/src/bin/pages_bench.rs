//! The drop-pages load tool: many readers on one cached card (and on the live list)
//! through `wrangler dev`. Prints requests/s and p50/p99 at the edge, how the answers
//! split between HIT, STALE and MISS, and how many requests reached the origin per
//! 1,000 edge requests.
//!
//! `cargo run --release -p drops-tests --bin pages-bench -- [requests] [concurrency]`
//! (defaults 20000 64).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use drops_tests::{DropSpec, Stack};
use futures::future::join_all;
use hdrhistogram::Histogram;
use tokio::sync::Semaphore;

async fn load(client: &drops_tests::Client, path: &str, route: &str, requests: usize, concurrency: usize) {
    let before = client.origin_requests("GET", route).await;
    let gate = Arc::new(Semaphore::new(concurrency));
    let started = Instant::now();
    let results = join_all((0..requests).map(|i| {
        let gate = gate.clone();
        // Visitors, each from an address of their own (the edge limits per address).
        let address = drops_tests::client::client_address(uuid::Uuid::from_u128(i as u128));
        async move {
            let _p = gate.acquire().await.expect("gate");
            let t = Instant::now();
            let a = client.get_from(path, &address).await;
            (a.status.as_u16(), a.header("x-cache").unwrap_or("-").to_owned(), t.elapsed())
        }
    }))
    .await;
    let elapsed = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await; // background refreshes land
    let origin = client.origin_requests("GET", route).await - before;
    let mut h = Histogram::<u64>::new(3).expect("histogram");
    let mut split = BTreeMap::new();
    for (status, cache, took) in &results {
        h.record(took.as_micros() as u64).expect("fits");
        *split.entry(format!("{status} {cache}")).or_insert(0usize) += 1;
    }
    let ms = |v: u64| v as f64 / 1000.0;
    println!(
        "{path:<28} {requests} req in {:.2}s = {:.0} req/s | p50 {:.2} ms  p99 {:.2} ms | origin {} = {:.2} per 1,000 | {split:?}",
        elapsed.as_secs_f64(),
        requests as f64 / elapsed.as_secs_f64(),
        ms(h.value_at_quantile(0.5)),
        ms(h.value_at_quantile(0.99)),
        origin,
        origin as f64 * 1000.0 / requests as f64,
    );
}

#[tokio::main]
async fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let requests = args.first().copied().unwrap_or(20_000);
    let concurrency = args.get(1).copied().unwrap_or(64);
    println!("starting the stack (origin in-process, edge under wrangler dev)...");
    let stack = Stack::get();
    let client = stack.client();
    let drop_id = client.create_drop(DropSpec::live(100, 1)).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    println!("{requests} requests, {concurrency} in flight; pages are fresh for 2 s, then stale-while-revalidate");
    load(&client, &format!("/v1/drops/{drop_id}"), "/v1/drops/{drop_id}", requests, concurrency).await;
    load(&client, "/v1/drops?status=live", "/v1/drops", requests, concurrency).await;
}
