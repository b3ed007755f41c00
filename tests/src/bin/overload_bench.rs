//! Overload, in one run on one machine (issue 11's targets), one table:
//!
//! 1. what the buy path sustains: buys by distinct buyers, closed loop;
//! 2. well-behaved buyers alone: each buys once, from an address of their own;
//! 3. the same buyers while one abusive client (one address, one account) floods
//!    the same drop's buy path, open loop, at a multiple of (1);
//! 4. the origin with its pool exhausted (a small pool, every connection held):
//!    how fast requests are refused, at the configured acquire timeout and at 100 ms.
//!
//! Then: the abuser's answers, any 5xx but 503, and the drop's invariants (units
//! held or sold = 201s answered ≤ stock; every 201 an order at the origin).
//!
//! `cargo run --release -p drops-tests --bin overload-bench -- [good buyers] [flood multiple] [sustain buys]`
//! (defaults 200 5 2000).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use drops_tests::client::client_address;
use drops_tests::{Buyer, DropSpec, Stack};
use futures::future::join_all;
use hdrhistogram::Histogram;
use tokio::sync::Semaphore;
use uuid::Uuid;

struct Phase {
    name: String,
    requests: usize,
    elapsed: Duration,
    latencies: Histogram<u64>,
    statuses: BTreeMap<u16, usize>,
}

impl Phase {
    fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            requests: 0,
            elapsed: Duration::ZERO,
            latencies: Histogram::new(3).expect("histogram"),
            statuses: BTreeMap::new(),
        }
    }

    fn record(&mut self, status: u16, took: Duration) {
        self.requests += 1;
        self.latencies.record(took.as_micros() as u64).expect("latency fits");
        *self.statuses.entry(status).or_insert(0) += 1;
    }

    fn ms(&self, q: f64) -> f64 {
        self.latencies.value_at_quantile(q) as f64 / 1000.0
    }

    fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    fn row(&self) -> String {
        format!(
            "| {} | {} | {:.0} | {:.1} | {:.1} | {:.1} | {:?} |",
            self.name,
            self.requests,
            self.rate(),
            self.ms(0.5),
            self.ms(0.99),
            self.latencies.max() as f64 / 1000.0,
            self.statuses
        )
    }
}

/// Each of `buyers` buys one unit of `drop_id` once, `in_flight` at a time.
async fn well_behaved(client: &drops_tests::Client, drop_id: Uuid, buyers: &[Buyer], name: &str) -> (Phase, Vec<Uuid>) {
    let gate = Semaphore::new(20);
    let started = Instant::now();
    let results = join_all(buyers.iter().map(|b| {
        let gate = &gate;
        async move {
            let _slot = gate.acquire().await.expect("gate");
            let t = Instant::now();
            let a = client.buy(b, drop_id, &format!("good-{}", b.id), 1).await;
            let order = a.json()["order_id"].as_str().and_then(|s| s.parse::<Uuid>().ok());
            (a.status.as_u16(), t.elapsed(), order)
        }
    }))
    .await;
    let mut phase = Phase::new(name);
    phase.elapsed = started.elapsed();
    let mut orders = Vec::new();
    for (status, took, order) in results {
        phase.record(status, took);
        orders.extend(order);
    }
    (phase, orders)
}

/// Restarts the origin with a pool of two and `timeout_ms` to acquire, holds both
/// connections, and times 200 requests that need one; then puts the origin back.
async fn pool_exhausted(stack: &Stack, client: &drops_tests::Client, timeout_ms: u64) -> anyhow::Result<Phase> {
    stack.stop_origin().await;
    stack
        .start_origin_with(|s| {
            s.database.max_connections = 2;
            s.database.acquire_timeout_ms = timeout_ms;
        })
        .await;
    let held = stack.hold_pool(2).await;
    let mut phase =
        Phase::new(format!("(4) origin, pool exhausted, acquire timeout {timeout_ms} ms: GET /v1/creators/{{id}}"));
    let gate = Semaphore::new(10);
    let started = Instant::now();
    let results = join_all((0..200u128).map(|i| {
        let gate = &gate;
        async move {
            let _slot = gate.acquire().await.expect("gate");
            let t = Instant::now();
            let a = client
                .send(
                    client
                        .http
                        .get(format!("{}/v1/creators/{}", client.origin, Uuid::now_v7()))
                        .header("cf-connecting-ip", client_address(Uuid::from_u128(i))),
                )
                .await;
            (a.status.as_u16(), t.elapsed())
        }
    }))
    .await;
    phase.elapsed = started.elapsed();
    for (status, took) in results {
        phase.record(status, took);
    }
    held.release().await;
    stack.stop_origin().await;
    stack.start_origin().await;
    Ok(phase)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let good_n = args.first().copied().unwrap_or(200);
    let multiple = args.get(1).copied().unwrap_or(5);
    let sustain_n = args.get(2).copied().unwrap_or(2_000);
    let stack = Stack::get();
    let client = stack.client();

    // (1) What the buy path sustains, closed loop, 100 in flight.
    let sustain_drop = client.create_drop(DropSpec::live(sustain_n as u32, 1)).await;
    let sustainers: Vec<Buyer> = (0..sustain_n).map(|_| Buyer::new()).collect();
    let gate = Semaphore::new(100);
    let started = Instant::now();
    let results = join_all(sustainers.iter().map(|b| {
        let (gate, client) = (&gate, &client);
        async move {
            let _slot = gate.acquire().await.expect("gate");
            let t = Instant::now();
            let a = client.buy(b, sustain_drop, &format!("sustain-{}", b.id), 1).await;
            (a.status.as_u16(), t.elapsed())
        }
    }))
    .await;
    let mut sustain = Phase::new("(1) buy path, closed loop, 100 in flight");
    sustain.elapsed = started.elapsed();
    for (status, took) in results {
        sustain.record(status, took);
    }
    let flood_rate = sustain.rate() * multiple as f64;

    // (2) Well-behaved buyers alone.
    let stock = (good_n * 3) as u32;
    let quiet_drop = client.create_drop(DropSpec::live(stock, 1)).await;
    let quiet_buyers: Vec<Buyer> = (0..good_n).map(|_| Buyer::new()).collect();
    let (quiet, _) = well_behaved(&client, quiet_drop, &quiet_buyers, "(2) well-behaved buyers alone").await;

    // (3) The same, while one client floods the same drop's buy path, open loop.
    let flood_drop = client.create_drop(DropSpec::live(stock, 1)).await;
    let abuser = Buyer::new();
    let abuser_address = "192.0.2.66";
    let stop = Arc::new(AtomicBool::new(false));
    let abused: Arc<Mutex<Phase>> = Arc::new(Mutex::new(Phase::new(format!(
        "(3a) abuser: one address, one account, open loop at {multiple}× (1)"
    ))));
    let flooder = {
        let (client, stop, abused, abuser) = (client.clone(), stop.clone(), abused.clone(), abuser.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let interval = Duration::from_secs_f64(1.0 / flood_rate.max(1.0));
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut sent = 0u64;
            let mut in_flight = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                ticker.tick().await;
                sent += 1;
                let (client, abused, abuser) = (client.clone(), abused.clone(), abuser.clone());
                in_flight.push(tokio::spawn(async move {
                    let t = Instant::now();
                    let req = client
                        .http
                        .post(format!("{}/v1/drops/{flood_drop}/orders", client.edge))
                        .header("content-type", "application/json")
                        .header("cf-connecting-ip", abuser_address)
                        .header("idempotency-key", format!("flood-{sent:012}"))
                        .bearer_auth(&abuser.token)
                        .body(r#"{"quantity":1}"#);
                    let status = match req.send().await {
                        Ok(resp) => resp.status().as_u16(),
                        Err(_) => 0,
                    };
                    abused.lock().expect("abuser phase").record(status, t.elapsed());
                }));
            }
            join_all(in_flight).await;
            abused.lock().expect("abuser phase").elapsed = started.elapsed();
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await; // the flood is on
    let flood_buyers: Vec<Buyer> = (0..good_n).map(|_| Buyer::new()).collect();
    let (flooded, good_orders) =
        well_behaved(&client, flood_drop, &flood_buyers, "(3b) well-behaved buyers during the flood").await;
    stop.store(true, Ordering::Relaxed);
    flooder.await?;
    let abused = Arc::try_unwrap(abused).ok().expect("flood over").into_inner().expect("abuser phase");

    // Invariants on the flooded drop: what the edge holds or sold is what it
    // answered 201 for, within stock, and each 201 is an order at the origin.
    let abuser_created = abused.statuses.get(&201).copied().unwrap_or(0);
    let answered = good_orders.len() + abuser_created;
    let snapshot = stack.snapshot(flood_drop).await;
    let db = stack.db().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let at_origin = loop {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM orders WHERE drop_id = $1")
            .bind(flood_drop)
            .fetch_one(&db)
            .await?;
        if n as usize >= answered || Instant::now() > deadline {
            break n as usize;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let server_errors: usize = [&sustain, &quiet, &flooded, &abused]
        .iter()
        .flat_map(|p| p.statuses.iter())
        .filter(|(s, _)| **s >= 500 && **s != 503)
        .map(|(_, n)| n)
        .sum();

    // (4) The origin with its pool exhausted: at the configured acquire timeout,
    // then at 100 ms.
    let configured = stack.settings.database.acquire_timeout_ms;
    let mut exhausted = Vec::new();
    for timeout_ms in [configured, 100] {
        exhausted.push(pool_exhausted(stack, &client, timeout_ms).await?);
    }
    println!("\n| phase | requests | rate /s | p50 ms | p99 ms | max ms | statuses |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for phase in [&sustain, &quiet, &abused, &flooded].into_iter().chain(exhausted.iter()) {
        println!("{}", phase.row());
    }
    println!();
    println!(
        "flood: asked {flood_rate:.0}/s ({multiple}× (1)), sent {:.0}/s; the abuser got {} of {} refused (429)",
        abused.rate(),
        abused.statuses.get(&429).copied().unwrap_or(0),
        abused.requests
    );
    println!(
        "well-behaved p99 during the flood / alone: {:.2} (target ≤ 2); their statuses {:?} vs {:?}",
        flooded.ms(0.99) / quiet.ms(0.99),
        flooded.statuses,
        quiet.statuses
    );
    println!("5xx other than 503, all phases: {server_errors} (target 0)");
    println!(
        "flooded drop: stock {stock}, held {} + sold {} = {} units; 201s answered {answered}; orders at the origin {at_origin}",
        snapshot.held,
        snapshot.sold,
        snapshot.held + snapshot.sold
    );
    for phase in &exhausted {
        println!(
            "{}: p50 {:.1} ms, p99 {:.1} ms to the answer, statuses {:?} (target: 503 within 100 ms)",
            phase.name,
            phase.ms(0.5),
            phase.ms(0.99),
            phase.statuses
        );
    }
    Ok(())
}
