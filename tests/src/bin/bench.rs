//! The buy path against its ceilings, in one run on one machine, one table: every
//! figure means something only next to its baseline measured alongside it.
//!
//! - (a) write ceiling: a minimal Rust Worker whose Durable Object does one SQLite
//!   write per request (`ceiling/`), under the same `wrangler dev`;
//! - (b) the buy path while it sells (only requests that sell);
//! - (c) the buy path once sold out;
//! - (d) request ceiling: the same minimal Worker answering a fixed body;
//! - (e) Postgres, one hot row decremented (`UPDATE … WHERE remaining > 0`);
//! - (f) Redis, a Lua check-and-decrement.
//!
//! Then what the rush cost the origin: requests and Postgres rows written per unit
//! sold, and the lag from the 201 to the order row and to its payment being ready.
//!
//! `cargo run --release -p drops-tests --bin bench -- [buyers] [units] [in-flight] [requests]`
//! (defaults 10000 1000 100 5000: buyers on a drop of `units`, and `requests` for
//! each baseline).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use drops_tests::{free_port, wrangler_dev, Buyer, DropSpec, Stack};
use futures::future::join_all;
use hdrhistogram::Histogram;
use tokio::sync::Semaphore;
use uuid::Uuid;

/// An order id and when its 201 arrived.
type Answered = (Uuid, DateTime<Utc>);

/// One row of the table.
struct Row {
    name: &'static str,
    requests: usize,
    elapsed: Duration,
    latencies: Histogram<u64>,
    statuses: HashMap<u16, usize>,
}

impl Row {
    fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    fn ms(&self, q: f64) -> f64 {
        self.latencies.value_at_quantile(q) as f64 / 1000.0
    }
}

/// Runs `requests` calls of `call` with `in_flight` at once; `call` answers a status.
async fn measure<F, Fut>(name: &'static str, requests: usize, in_flight: usize, call: F) -> Row
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = u16>,
{
    let gate = Arc::new(Semaphore::new(in_flight));
    let started = Instant::now();
    let results = join_all((0..requests).map(|i| {
        let gate = gate.clone();
        let call = &call;
        async move {
            let _permit = gate.acquire().await.expect("gate");
            let t = Instant::now();
            let status = call(i).await;
            (status, t.elapsed())
        }
    }))
    .await;
    let elapsed = started.elapsed();
    let mut latencies = Histogram::<u64>::new(3).expect("histogram");
    let mut statuses = HashMap::new();
    for (status, took) in results {
        latencies.record(took.as_micros() as u64).expect("latency fits");
        *statuses.entry(status).or_insert(0) += 1;
    }
    Row { name, requests, elapsed, latencies, statuses }
}

fn percentiles(mut values: Vec<f64>) -> (f64, f64) {
    if values.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    values.sort_by(f64::total_cmp);
    let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let buyers_n = args.first().copied().unwrap_or(10_000);
    let units = args.get(1).copied().unwrap_or(1_000);
    let in_flight = args.get(2).copied().unwrap_or(100);
    let baseline_n = args.get(3).copied().unwrap_or(5_000);
    anyhow::ensure!(buyers_n > units, "more buyers than units, so the drop sells out");

    println!("starting the stack, and the ceiling Worker under the same wrangler dev...");
    let stack = Stack::get();
    let client = stack.client();
    let ceiling_port = free_port();
    wrangler_dev("ceiling/wrangler.toml", ceiling_port, &[], "/fixed").await?;
    let ceiling = format!("http://127.0.0.1:{ceiling_port}");
    let http = reqwest::Client::builder().pool_max_idle_per_host(in_flight).build()?;
    let status = |r: reqwest::Result<reqwest::Response>| r.map(|r| r.status().as_u16()).unwrap_or(0);

    // (d) and (a): the runtime's ceilings.
    let fixed = format!("{ceiling}/fixed");
    let request_ceiling =
        measure("(d) request ceiling", baseline_n, in_flight, |_| async { status(http.get(&fixed).send().await) })
            .await;
    let write = format!("{ceiling}/write");
    let write_ceiling =
        measure("(a) write ceiling", baseline_n, in_flight, |_| async { status(http.post(&write).send().await) }).await;

    // (b): the buy path while it sells.
    let drop_id = client.create_drop(DropSpec::live(units as u32, 1)).await;
    let buyers: Vec<Buyer> = (0..buyers_n).map(|_| Buyer::new()).collect();
    let db = stack.db().await;
    let origin_before = client.origin_requests_total().await;
    let rows_before = rows_written(&db).await;
    let answered: Arc<std::sync::Mutex<Vec<Answered>>> = Arc::default();
    let selling = measure("(b) buy path, selling", units, in_flight, |i| {
        let (client, buyer, answered) = (&client, &buyers[i], answered.clone());
        async move {
            let a = client.buy(buyer, drop_id, &format!("bench-{}", buyer.id), 1).await;
            if let Some(id) = a.json()["order_id"].as_str().and_then(|s| s.parse().ok()) {
                answered.lock().expect("answers").push((id, Utc::now()));
            }
            a.status.as_u16()
        }
    })
    .await;

    // What selling cost the origin, once every order and payment has landed and the
    // event flow has caught up.
    let sold = selling.statuses.get(&201).copied().unwrap_or(0);
    let (orders, payments) = settle(&db, drop_id, sold).await?;
    tokio::time::sleep(Duration::from_secs(2)).await; // Postgres publishes its counters about once a second
    let origin_requests = client.origin_requests_total().await - origin_before;
    let rows = rows_written(&db).await - rows_before;
    let landed: HashMap<Uuid, (DateTime<Utc>, Option<DateTime<Utc>>)> = sqlx::query_as(
        "SELECT o.id, o.created_at, p.created_at FROM orders o LEFT JOIN payments p ON p.order_id = o.id
         WHERE o.drop_id = $1",
    )
    .bind(drop_id)
    .fetch_all(&db)
    .await?
    .into_iter()
    .map(|(id, order, payment): (Uuid, DateTime<Utc>, Option<DateTime<Utc>>)| (id, (order, payment)))
    .collect();
    let secs =
        |later: DateTime<Utc>, earlier: DateTime<Utc>| (later - earlier).num_microseconds().unwrap_or(0) as f64 / 1e6;
    let answers = answered.lock().expect("answers").clone();
    let to_order = percentiles(answers.iter().filter_map(|(id, at)| Some(secs(landed.get(id)?.0, *at))).collect());
    let to_payment = percentiles(answers.iter().filter_map(|(id, at)| Some(secs(landed.get(id)?.1?, *at))).collect());

    // (c): the rest of the buyers, on the sold-out drop.
    let sold_out = measure("(c) buy path, sold out", buyers_n - units, in_flight, |i| {
        let (client, buyer) = (&client, &buyers[units + i]);
        async move { client.buy(buyer, drop_id, &format!("bench-{}", buyer.id), 1).await.status.as_u16() }
    })
    .await;
    // (h): the Worker's floor on the buy path: no token, refused before anything else.
    let no_token = measure("(h) buy path, no token", baseline_n, in_flight, |_| async {
        client.buy_raw(None, drop_id, Some("no-token-key"), r#"{"quantity":1}"#).await.status.as_u16()
    })
    .await;

    // (b'): the same selling phase on a second drop with the origin stopped, so no
    // origin, Postgres or payment work competes for this machine's two cores; the
    // reservations wait at the edge and reach the origin once it is back.
    let quiet_drop = client.create_drop(DropSpec::live(units as u32, 1)).await;
    let quiet_buyers: Vec<Buyer> = (0..units).map(|_| Buyer::new()).collect();
    stack.stop_origin().await;
    let quiet = measure("(b') selling, origin stopped", units, in_flight, |i| {
        let (client, buyer) = (&client, &quiet_buyers[i]);
        async move { client.buy(buyer, quiet_drop, &format!("bench-{}", buyer.id), 1).await.status.as_u16() }
    })
    .await;
    stack.start_origin().await;
    let back = Instant::now();
    let quiet_sold = quiet.statuses.get(&201).copied().unwrap_or(0);
    settle(&db, quiet_drop, quiet_sold).await?;
    let drained = back.elapsed();

    // (g): the inventory object read through the Worker, no write: what a call to
    // the object costs before the decision writes anything.
    let stock_path = format!("/v1/drops/{drop_id}/stock");
    let object_read = measure("(g) stock via the object", baseline_n, in_flight, |i| {
        let address = drops_tests::client::client_address(uuid::Uuid::from_u128(i as u128));
        let (client, stock_path) = (&client, &stock_path);
        async move { client.get_from(stock_path, &address).await.status.as_u16() }
    })
    .await;

    // (e) and (f): the stores' baselines.
    sqlx::query("CREATE TABLE IF NOT EXISTS bench_hot_row (id int PRIMARY KEY, remaining bigint NOT NULL)")
        .execute(&db)
        .await?;
    sqlx::query("INSERT INTO bench_hot_row VALUES (1, $1) ON CONFLICT (id) DO UPDATE SET remaining = $1")
        .bind(baseline_n as i64 * 2)
        .execute(&db)
        .await?;
    let clients = 32;
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(clients).connect(&stack.database_url).await?;
    let postgres = measure("(e) Postgres hot row", baseline_n, in_flight, |_| async {
        let done = sqlx::query("UPDATE bench_hot_row SET remaining = remaining - 1 WHERE id = 1 AND remaining > 0")
            .execute(&pool)
            .await;
        if done.is_ok() {
            200
        } else {
            500
        }
    })
    .await;
    let redis_url = std::env::var("DROPS_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let redis = redis::Client::open(redis_url)?.get_multiplexed_async_connection().await?;
    let key = format!("drops-bench:{}", Uuid::new_v4().simple());
    let _: () = redis::cmd("SET").arg(&key).arg(baseline_n * 2).query_async(&mut redis.clone()).await?;
    let script = redis::Script::new(
        "local n = tonumber(redis.call('GET', KEYS[1])) if n and n > 0 then return redis.call('DECR', KEYS[1]) end return -1",
    );
    let lua = measure("(f) Redis Lua decrement", baseline_n, in_flight, |_| {
        let (mut conn, script, key) = (redis.clone(), &script, &key);
        async move {
            match script.key(key).invoke_async::<i64>(&mut conn).await {
                Ok(_) => 200,
                Err(_) => 500,
            }
        }
    })
    .await;

    println!();
    println!("| path | requests | req/s | p50 ms | p99 ms | ratio to its ceiling (req/s, p99) | answers |");
    println!("| --- | ---: | ---: | ---: | ---: | --- | --- |");
    let line = |row: &Row, ceiling: Option<&Row>| {
        let ratio = match ceiling {
            Some(c) => {
                format!("{:.2}× of {}, p99 {:.2}×", row.rate() / c.rate(), &c.name[..3], row.ms(0.99) / c.ms(0.99))
            }
            None => "—".to_owned(),
        };
        let mut statuses: Vec<_> = row.statuses.iter().collect();
        statuses.sort();
        println!(
            "| {} | {} | {:.0} | {:.1} | {:.1} | {ratio} | {statuses:?} |",
            row.name,
            row.requests,
            row.rate(),
            row.ms(0.5),
            row.ms(0.99)
        );
    };
    line(&write_ceiling, None);
    line(&selling, Some(&write_ceiling));
    line(&quiet, Some(&write_ceiling));
    line(&sold_out, Some(&request_ceiling));
    line(&request_ceiling, None);
    line(&no_token, Some(&request_ceiling));
    line(&object_read, Some(&write_ceiling));
    line(&postgres, None);
    line(&lua, None);
    println!();
    let per_unit = |n: f64| if sold == 0 { f64::NAN } else { n / sold as f64 };
    println!("{buyers_n} buyers on {units} units, {in_flight} in flight; Postgres {clients} clients");
    println!("units sold {sold}; orders in Postgres {orders}; payments ready {payments}");
    println!("origin requests per unit sold: {:.3} ({origin_requests} requests)", per_unit(origin_requests as f64));
    println!("Postgres rows written per unit sold: {:.1} ({rows} rows, event flow included)", per_unit(rows as f64));
    println!("201 -> order row: p50 {:.3} s, p99 {:.3} s", to_order.0, to_order.1);
    println!("201 -> payment ready: p50 {:.3} s, p99 {:.3} s", to_payment.0, to_payment.1);
    println!(
        "(b') {quiet_sold} reservations held at the edge reached the origin, with payments, {:.1} s after it came back",
        drained.as_secs_f64()
    );
    let remaining = client.remaining(drop_id).await as usize;
    println!("stock: sold {sold} + remaining {remaining} = {} of {units}", sold + remaining);
    anyhow::ensure!(sold + remaining == units, "stock not conserved");
    anyhow::ensure!(orders as usize == sold, "one order per unit sold");
    Ok(())
}

/// Waits until the drop's `sold` orders and their payments are in Postgres and the
/// outbox is published; returns (orders, payments).
async fn settle(db: &sqlx::PgPool, drop_id: Uuid, sold: usize) -> anyhow::Result<(i64, i64)> {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let (orders, payments, unpublished): (i64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM orders WHERE drop_id = $1),
                    (SELECT count(*) FROM payments p JOIN orders o ON o.id = p.order_id WHERE o.drop_id = $1),
                    (SELECT count(*) FROM outbox WHERE published_at IS NULL)",
        )
        .bind(drop_id)
        .fetch_one(db)
        .await?;
        if (orders as usize >= sold && payments as usize >= sold && unpublished == 0) || Instant::now() > deadline {
            return Ok((orders, payments));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Rows inserted, updated and deleted in the test database so far.
async fn rows_written(db: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT (tup_inserted + tup_updated + tup_deleted)::bigint FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_one(db)
    .await
    .unwrap_or(0)
}
