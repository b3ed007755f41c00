//! The buy-path load tool: starts the real stack (as the tests do), opens a drop,
//! and sends a rush of distinct buyers at it through `wrangler dev`. Prints
//! requests/s and latency percentiles for the selling phase and for the sold-out
//! phase that follows, and checks the stock invariant at the end.
//!
//! `cargo run --release -p drops-tests --bin rush-bench -- [buyers] [stock] [concurrency]`
//! (defaults 2000 500 100).

use std::sync::Arc;
use std::time::{Duration, Instant};

use drops_tests::{Buyer, DropSpec, Stack};
use futures::future::join_all;
use hdrhistogram::Histogram;
use tokio::sync::Semaphore;

struct Phase {
    name: &'static str,
    latencies: Histogram<u64>,
    elapsed: Duration,
    statuses: std::collections::BTreeMap<u16, usize>,
}

impl Phase {
    fn print(&self) {
        let n = self.latencies.len();
        let ms = |q: f64| self.latencies.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "{:<10} {:>6} req in {:>6.2}s = {:>7.0} req/s | p50 {:>7.2} ms  p90 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms | {:?}",
            self.name,
            n,
            self.elapsed.as_secs_f64(),
            n as f64 / self.elapsed.as_secs_f64(),
            ms(0.50),
            ms(0.90),
            ms(0.99),
            self.latencies.max() as f64 / 1000.0,
            self.statuses
        );
    }
}

async fn rush(
    client: &drops_tests::Client,
    drop_id: uuid::Uuid,
    buyers: &[Buyer],
    concurrency: usize,
    name: &'static str,
) -> Phase {
    let gate = Arc::new(Semaphore::new(concurrency));
    let started = Instant::now();
    let results = join_all(buyers.iter().map(|b| {
        let gate = gate.clone();
        async move {
            let _permit = gate.acquire().await.expect("semaphore");
            let t = Instant::now();
            let a = client.buy(b, drop_id, &format!("bench-{}", b.id), 1).await;
            (a.status.as_u16(), t.elapsed())
        }
    }))
    .await;
    let elapsed = started.elapsed();
    let mut latencies = Histogram::<u64>::new(3).expect("histogram");
    let mut statuses = std::collections::BTreeMap::new();
    for (status, took) in results {
        latencies.record(took.as_micros() as u64).expect("latency fits");
        *statuses.entry(status).or_insert(0) += 1;
    }
    Phase { name, latencies, elapsed, statuses }
}

#[tokio::main]
async fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let buyers_n = args.first().copied().unwrap_or(2000);
    let stock = args.get(1).copied().unwrap_or(500) as u32;
    let concurrency = args.get(2).copied().unwrap_or(100);
    println!("starting the stack (origin in-process, edge under wrangler dev)...");
    let stack = Stack::get();
    let client = stack.client();
    let drop_id = client.create_drop(DropSpec::live(stock, 1)).await;
    println!("rush: {buyers_n} distinct buyers, {stock} units, {concurrency} in flight");

    let buyers: Vec<Buyer> = (0..buyers_n).map(|_| Buyer::new()).collect();
    let selling = rush(&client, drop_id, &buyers, concurrency, "rush").await;
    let late: Vec<Buyer> = (0..buyers_n).map(|_| Buyer::new()).collect();
    let sold_out = rush(&client, drop_id, &late, concurrency, "sold-out").await;
    selling.print();
    sold_out.print();

    let remaining = client.remaining(drop_id).await;
    let db = stack.db().await;
    let mut orders = 0i64;
    for _ in 0..100 {
        orders = sqlx::query_scalar("SELECT count(*) FROM orders WHERE drop_id = $1")
            .bind(drop_id)
            .fetch_one(&db)
            .await
            .expect("count orders");
        if orders as u64 + remaining >= u64::from(stock) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let created = selling.statuses.get(&201).copied().unwrap_or(0);
    println!("created {created}, remaining {remaining}, orders in Postgres {orders}, stock {stock}");
    assert_eq!(created as u64 + remaining, u64::from(stock), "stock conserved");
    assert_eq!(orders as usize, created, "one order per 201");
}
