//! The payments load tool: a mixed run through the real stack. Buyers reserve, then
//! pay, fail, fail-then-pay or cancel; every webhook is sent twice, shuffled. Prints
//! webhook throughput and latency, the outbox lag (commit → published on the
//! stream) and how long the edge sync took to drain.
//!
//! `cargo run --release -p drops-tests --bin lifecycle-bench -- [units] [concurrency]`
//! (defaults 400 50).

use std::sync::Arc;
use std::time::{Duration, Instant};

use drops_tests::client::Purchase;
use drops_tests::{DropSpec, Stack};
use futures::future::join_all;
use hdrhistogram::Histogram;
use rand::seq::SliceRandom;
use rand::Rng;
use tokio::sync::Semaphore;

#[tokio::main]
async fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let units = args.first().copied().unwrap_or(400) as u32;
    let concurrency = args.get(1).copied().unwrap_or(50);
    println!("starting the stack (origin in-process, edge under wrangler dev)...");
    let stack = Stack::get();
    let client = stack.client();
    let db = stack.db().await;
    let drop_id = client.create_drop(DropSpec { hold_seconds: Some(600), ..DropSpec::live(units, 1) }).await;

    let gate = Arc::new(Semaphore::new(concurrency));
    let purchases: Vec<Purchase> = join_all((0..units).map(|_| {
        let gate = gate.clone();
        let client = client.clone();
        async move {
            let _p = gate.acquire().await.expect("gate");
            client.purchase(drop_id).await
        }
    }))
    .await;
    println!("{} units reserved; sending webhooks ({} in flight)", purchases.len(), concurrency);

    let mut rng = rand::rng();
    let mut webhooks = Vec::new();
    let mut cancels = Vec::new();
    let mut confirmed = 0u32;
    for p in &purchases {
        let mut event = |ok: bool| {
            let id = format!("evt_bench_{}", uuid::Uuid::now_v7().simple());
            webhooks.push((p.clone(), id.clone(), ok));
            webhooks.push((p.clone(), id, ok));
        };
        match rng.random_range(0..4) {
            0 => {
                event(true);
                confirmed += 1;
            }
            1 => event(false),
            2 => {
                event(false);
                event(true);
                confirmed += 1;
            }
            _ => cancels.push(p.clone()),
        }
    }
    webhooks.shuffle(&mut rng);
    let started = Instant::now();
    let latencies = join_all(webhooks.iter().map(|(p, id, ok)| {
        let gate = gate.clone();
        let client = client.clone();
        async move {
            let _p = gate.acquire().await.expect("gate");
            let t = Instant::now();
            let a = client.pay_event(p, id, *ok).await;
            assert!(a.status.is_success(), "webhook answered {}", a.status);
            t.elapsed()
        }
    }))
    .await;
    let webhook_time = started.elapsed();
    join_all(cancels.iter().map(|p| client.cancel(&p.buyer, p.order_id))).await;

    let drained = loop {
        let s = stack.snapshot(drop_id).await;
        if s.sold == confirmed && s.held == 0 {
            break started.elapsed();
        }
        assert!(started.elapsed() < Duration::from_secs(300), "edge sync did not drain");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    let mut h = Histogram::<u64>::new(3).expect("histogram");
    for l in &latencies {
        h.record(l.as_micros() as u64).expect("fits");
    }
    let ms = |v: u64| v as f64 / 1000.0;
    println!(
        "webhooks   {:>6} in {:>6.2}s = {:>6.0} events/s | p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        latencies.len(),
        webhook_time.as_secs_f64(),
        latencies.len() as f64 / webhook_time.as_secs_f64(),
        ms(h.value_at_quantile(0.5)),
        ms(h.value_at_quantile(0.99)),
        ms(h.max())
    );
    let (p50, p99, max): (Option<f64>, Option<f64>, Option<f64>) = sqlx::query_as(
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY lag), percentile_cont(0.99) WITHIN GROUP (ORDER BY lag), max(lag)::float8
         FROM (SELECT (EXTRACT(EPOCH FROM published_at - created_at) * 1000)::float8 AS lag FROM outbox
               WHERE created_at >= now() - interval '10 minutes' AND published_at IS NOT NULL) l",
    )
    .fetch_one(&db)
    .await
    .expect("outbox lag");
    println!(
        "outbox lag (commit -> on the stream): p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
        p50.unwrap_or(0.0),
        p99.unwrap_or(0.0),
        max.unwrap_or(0.0)
    );
    println!(
        "edge sync drained {:.2}s after the first webhook: {} sold, {} returned",
        drained.as_secs_f64(),
        confirmed,
        units - confirmed
    );
}
