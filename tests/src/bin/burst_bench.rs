//! Whose is "Your worker restarted mid-request"? `wrangler dev` sometimes answers a
//! plain-text 503 saying so under bursts. This bursts two Workers under `wrangler
//! dev`, one after the other, with the same number of requests at once, each
//! request one Durable Object write:
//!
//! - the ceiling Worker (`ceiling/`: a few lines; its object does one SQLite
//!   insert per request), `POST /write`;
//! - the same ceiling Worker on a route it answers itself (`POST /none`, a 404
//!   with no binding touched), to tell the Durable Object's part from the proxy's;
//! - the edge (ours), the buy path: every request a distinct buyer buying one unit
//!   of a drop with stock for all, so every request is one purchase written by
//!   the drop's inventory object.
//!
//! For each it counts the answers: 2xx, our own 503s (problem+json, `overloaded`),
//! the proxy's plain-text 503s (with their text), other statuses, and requests that
//! got no answer; and it reads each Worker's wasm memory and the moment its
//! instance started, before and after (the edge's `/healthz` in development, the
//! ceiling's `/memory`), and looks in each `wrangler dev` log for a panic or an
//! exceeded memory limit. A Worker that restarted would show another start; one
//! that grew toward its 128 MB would show it in its memory.
//!
//! `cargo run --release -p drops-tests --bin burst-bench -- [requests] [at-once] [rounds]`
//! (defaults 2000 500 3).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use drops_tests::client::client_address;
use drops_tests::{free_port, wrangler_dev, Buyer, DropSpec, Stack};
use futures::future::join_all;
use tokio::sync::Semaphore;
use uuid::Uuid;

/// How long a request may wait for its answer.
const TIMEOUT: Duration = Duration::from_secs(30);

/// How one burst was answered.
#[derive(Default)]
struct Tally {
    ok: usize,
    our_503: usize,
    proxy_503: usize,
    other: BTreeMap<u16, usize>,
    /// No answer within the client's timeout.
    timed_out: usize,
    /// The connection failed or was reset.
    unanswered: usize,
    proxy_texts: BTreeMap<String, usize>,
    elapsed: Duration,
}

impl Tally {
    fn add(&mut self, answer: reqwest::Result<(u16, Vec<u8>)>) {
        match answer {
            Ok((status, _)) if (200..300).contains(&status) => self.ok += 1,
            Ok((503, body)) if serde_json::from_slice::<serde_json::Value>(&body).is_ok() => self.our_503 += 1,
            Ok((503, body)) => {
                self.proxy_503 += 1;
                let text = String::from_utf8_lossy(&body).chars().take(160).collect::<String>();
                *self.proxy_texts.entry(text).or_default() += 1;
            }
            Ok((status, _)) => *self.other.entry(status).or_default() += 1,
            Err(e) if e.is_timeout() => self.timed_out += 1,
            Err(_) => self.unanswered += 1,
        }
    }
}

/// A Worker's wasm memory and when its instance started.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Instance {
    memory_bytes: u64,
    started_ms: f64,
}

async fn instance(http: &reqwest::Client, url: &str) -> anyhow::Result<Instance> {
    let resp = http.get(url).header("cf-connecting-ip", "10.9.9.9").send().await?;
    let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let memory = header("x-dev-wasm-memory-bytes").and_then(|v| v.parse().ok());
    let started = header("x-dev-instance-started-ms").and_then(|v| v.parse().ok());
    match (memory, started) {
        (Some(memory_bytes), Some(started_ms)) => Ok(Instance { memory_bytes, started_ms }),
        _ => anyhow::bail!("{url} says nothing of its instance (is ENVIRONMENT development?)"),
    }
}

/// Sends `requests` requests made by `make(i)`, `at_once` at a time.
async fn burst<F, Fut>(requests: usize, at_once: usize, make: F) -> Tally
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = reqwest::Result<reqwest::Response>>,
{
    let gate = Arc::new(Semaphore::new(at_once));
    let started = Instant::now();
    let answers = join_all((0..requests).map(|i| {
        let gate = gate.clone();
        let request = make(i);
        async move {
            let _permit = gate.acquire().await.expect("gate");
            let resp = request.await?;
            let status = resp.status().as_u16();
            Ok((status, resp.bytes().await?.to_vec()))
        }
    }))
    .await;
    let mut tally = Tally { elapsed: started.elapsed(), ..Tally::default() };
    for answer in answers {
        tally.add(answer);
    }
    tally
}

/// What a `wrangler dev` log says of panics, memory and restarts.
fn log_findings(port: u16) -> Vec<String> {
    let log =
        std::fs::read_to_string(std::env::temp_dir().join(format!("drops-wrangler-{port}.log"))).unwrap_or_default();
    let mut found: BTreeMap<String, usize> = BTreeMap::new();
    for line in log.lines() {
        let lower = line.to_lowercase();
        for needle in ["panicked", "unreachable", "memory limit", "exceeded", "restart", "network connection lost"] {
            if lower.contains(needle) {
                *found.entry(line.chars().take(200).collect()).or_default() += 1;
            }
        }
    }
    found.into_iter().map(|(line, n)| format!("{n} x {line}")).collect()
}

fn row(name: &str, round: usize, requests: usize, t: &Tally) {
    println!(
        "| {name} | {round} | {requests} | {:.0} | {} | {} | {} | {:?} | {} | {} |",
        requests as f64 / t.elapsed.as_secs_f64(),
        t.ok,
        t.our_503,
        t.proxy_503,
        t.other,
        t.timed_out,
        t.unanswered
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let requests = args.first().copied().unwrap_or(2_000);
    let at_once = args.get(1).copied().unwrap_or(500);
    let rounds = args.get(2).copied().unwrap_or(3);

    println!("starting the stack, and the ceiling Worker under a wrangler dev of its own...");
    let stack = Stack::get();
    let client = stack.client();
    let ceiling_port = free_port();
    wrangler_dev("ceiling/wrangler.toml", ceiling_port, &[], "/fixed").await?;
    let ceiling = format!("http://127.0.0.1:{ceiling_port}");
    let edge_port: u16 = stack.edge_url.rsplit(':').next().and_then(|p| p.parse().ok()).expect("the edge's port");
    let http = reqwest::Client::builder().pool_max_idle_per_host(at_once).timeout(TIMEOUT).build()?;

    let drop_id = client.create_drop(DropSpec::live((requests * rounds) as u32, 1)).await;
    let buyers: Vec<Buyer> = (0..requests * rounds).map(|_| Buyer::new()).collect();
    // Both warm (the first requests compile and start things).
    for _ in 0..20 {
        http.post(format!("{ceiling}/write")).send().await?;
    }
    let probe = Buyer::new();
    client.buy(&probe, drop_id, "burst-warm-up", 1).await;

    let ceiling_before = instance(&http, &format!("{ceiling}/memory")).await?;
    let edge_before = instance(&http, &format!("{}/healthz", stack.edge_url)).await?;
    println!("{requests} requests, {at_once} at once, {rounds} rounds; each request one Durable Object write");
    println!();
    println!(
        "| Worker | round | requests | req/s | 2xx | our 503 (problem) | proxy 503 (plain text) | other | no answer in {} s | connection failed |",
        TIMEOUT.as_secs()
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    let (mut ceiling_total, mut edge_total, mut no_binding_total) =
        (Tally::default(), Tally::default(), Tally::default());
    for round in 1..=rounds {
        let write = format!("{ceiling}/write");
        let t = burst(requests, at_once, |_| http.post(&write).send()).await;
        row("ceiling (`POST /write`)", round, requests, &t);
        merge(&mut ceiling_total, t);

        // The same burst on a route the Worker answers itself (404), no binding
        // touched: what is left is `wrangler dev`'s own path to the Worker.
        let none = format!("{ceiling}/none");
        let t = burst(requests, at_once, |_| http.post(&none).send()).await;
        row("ceiling (`POST /none`, no binding)", round, requests, &t);
        merge(&mut no_binding_total, t);

        let offset = (round - 1) * requests;
        let t = burst(requests, at_once, |i| {
            let buyer = &buyers[offset + i];
            http.post(format!("{}/v1/drops/{drop_id}/orders", stack.edge_url))
                .header("content-type", "application/json")
                .header("cf-connecting-ip", client_address(buyer.id))
                .header("idempotency-key", format!("burst-{}", Uuid::new_v4().simple()))
                .bearer_auth(&buyer.token)
                .body(r#"{"quantity":1}"#)
                .send()
        })
        .await;
        row("edge (buy path)", round, requests, &t);
        merge(&mut edge_total, t);
    }
    // A `wrangler dev` that stopped answering altogether says so here.
    let ceiling_after = instance(&http, &format!("{ceiling}/memory")).await;
    let edge_after = instance(&http, &format!("{}/healthz", stack.edge_url)).await;

    println!();
    println!(
        "ceiling, no binding: {} proxy 503s, {} timed out, {} failed in {} requests",
        no_binding_total.proxy_503,
        no_binding_total.timed_out,
        no_binding_total.unanswered,
        requests * rounds
    );
    for (name, total, before, after, port) in [
        ("ceiling", &ceiling_total, ceiling_before, ceiling_after, ceiling_port),
        ("edge", &edge_total, edge_before, edge_after, edge_port),
    ] {
        let after = match after {
            Ok(after) => after,
            Err(e) => {
                println!("{name}: no answer after the bursts ({e}); {} proxy 503s before that", total.proxy_503);
                continue;
            }
        };
        println!(
            "{name}: {} proxy 503s, {} timed out, {} failed in {} requests; wasm memory {:.1} MiB before, {:.1} MiB after; instance {} (started {} before, {} after)",
            total.proxy_503,
            total.timed_out,
            total.unanswered,
            requests * rounds,
            before.memory_bytes as f64 / 1048576.0,
            after.memory_bytes as f64 / 1048576.0,
            if before.started_ms == after.started_ms { "not restarted" } else { "RESTARTED" },
            before.started_ms,
            after.started_ms,
        );
        for (text, n) in &total.proxy_texts {
            println!("  {n} x {text:?}");
        }
        for line in log_findings(port) {
            println!("  log: {line}");
        }
    }
    Ok(())
}

fn merge(total: &mut Tally, t: Tally) {
    total.ok += t.ok;
    total.our_503 += t.our_503;
    total.proxy_503 += t.proxy_503;
    total.unanswered += t.unanswered;
    total.timed_out += t.timed_out;
    total.elapsed += t.elapsed;
    for (k, v) in t.other {
        *total.other.entry(k).or_default() += v;
    }
    for (k, v) in t.proxy_texts {
        *total.proxy_texts.entry(k).or_default() += v;
    }
}
