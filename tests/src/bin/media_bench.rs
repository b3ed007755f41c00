//! The media load tool, through `wrangler dev`: uploads of distinct files (each
//! stored in R2 and recorded by the origin), reads of one cached file (the Cache
//! API), and, as the baseline measured in the same run, the edge's `GET /healthz`
//! (what the local runtime serves at best). Prints files/s, MiB/s and p50/p99 for
//! each, how the answers split by status (and `x-cache`), and the cached read's
//! requests/s as a share of the baseline's.
//!
//! `cargo run --release -p drops-tests --bin media-bench -- [uploads] [upload-concurrency] [reads] [read-concurrency]`
//! (defaults 200 16 2000 32; files of 256 KiB).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use drops_shared::auth::Role;
use drops_shared::media::MediaKey;
use drops_tests::client::{client_address, token, Answer, Client};
use drops_tests::Stack;
use futures::future::join_all;
use hdrhistogram::Histogram;
use tokio::sync::Semaphore;
use uuid::Uuid;

const FILE_BYTES: usize = 256 * 1024;
/// Uploads per creator account: the edge allows 60 writes a 10 s window per user.
const UPLOADS_PER_CREATOR: usize = 10;

struct Run {
    label: String,
    elapsed: Duration,
    requests: usize,
    bytes: usize,
    latency: Histogram<u64>,
    split: BTreeMap<String, usize>,
}

impl Run {
    fn per_second(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    fn print(&self) {
        let ms = |v: u64| v as f64 / 1000.0;
        println!(
            "{:<34} {} in {:.2}s = {:.0}/s, {:.1} MiB/s | p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms | {:?}",
            self.label,
            self.requests,
            self.elapsed.as_secs_f64(),
            self.per_second(),
            self.bytes as f64 / (1024.0 * 1024.0) / self.elapsed.as_secs_f64(),
            ms(self.latency.value_at_quantile(0.5)),
            ms(self.latency.value_at_quantile(0.99)),
            ms(self.latency.max()),
            self.split,
        );
    }
}

/// Sends `requests` requests made by `make(i)`, `concurrency` at a time; `bytes`
/// is the payload that counts for each answer (sent or received) and `label` names
/// an answer for the split.
async fn load<M, F>(label: &str, requests: usize, concurrency: usize, make: M, bytes: impl Fn(&Answer) -> usize) -> Run
where
    M: Fn(usize) -> F,
    F: std::future::Future<Output = Answer>,
{
    let gate = Arc::new(Semaphore::new(concurrency));
    let started = Instant::now();
    let results = join_all((0..requests).map(|i| {
        let gate = gate.clone();
        let request = make(i);
        async move {
            let _p = gate.acquire().await.expect("gate");
            let t = Instant::now();
            let answer = request.await;
            (answer, t.elapsed())
        }
    }))
    .await;
    let elapsed = started.elapsed();
    let mut latency = Histogram::<u64>::new(3).expect("histogram");
    let mut split = BTreeMap::new();
    let mut total = 0;
    for (answer, took) in &results {
        latency.record(took.as_micros() as u64).expect("fits");
        let cache = answer.header("x-cache").map(|c| format!(" {c}")).unwrap_or_default();
        *split.entry(format!("{}{cache}", answer.status.as_u16())).or_insert(0usize) += 1;
        total += bytes(answer);
    }
    Run { label: label.to_owned(), elapsed, requests, bytes: total, latency, split }
}

async fn get(client: &Client, path: &str, i: usize) -> Answer {
    // Visitors, each from an address of their own (the edge limits per address).
    client.get_from(path, &client_address(Uuid::from_u128(i as u128))).await
}

#[tokio::main]
async fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let uploads = args.first().copied().unwrap_or(200);
    let upload_concurrency = args.get(1).copied().unwrap_or(16);
    let reads = args.get(2).copied().unwrap_or(2_000);
    let read_concurrency = args.get(3).copied().unwrap_or(32);
    println!("starting the stack (origin in-process, edge under wrangler dev)...");
    let stack = Stack::get();
    let client = stack.client();
    let creators: Vec<String> =
        (0..uploads.div_ceil(UPLOADS_PER_CREATOR)).map(|_| token(Uuid::now_v7(), Role::Creator)).collect();
    let files: Vec<Vec<u8>> = (0..uploads).map(|_| drops_tests::files::png_headed(FILE_BYTES)).collect();
    // The runtime warms up first (the first requests compile and start things).
    let warm = drops_tests::files::png_headed(FILE_BYTES);
    let warmed = client.upload(Some(&creators[0]), "", "image/png", &warm).await;
    assert_eq!(warmed.status.as_u16(), 201, "a first upload: {:?}", warmed.json());
    load("(warm-up)", 200, read_concurrency, |i| get(&client, "/healthz", i), |_| 0).await;

    println!(
        "{uploads} uploads of distinct {} KiB files, {upload_concurrency} in flight; {reads} reads, {read_concurrency} in flight",
        FILE_BYTES / 1024
    );
    let up = load(
        "POST /v1/media (256 KiB, distinct)",
        uploads,
        upload_concurrency,
        |i| {
            let req = client
                .http
                .post(format!("{}/v1/media", client.edge))
                .header("content-type", "image/png")
                .header("cf-connecting-ip", client_address(Uuid::from_u128(i as u128)))
                .bearer_auth(&creators[i / UPLOADS_PER_CREATOR])
                .body(files[i].clone());
            client.send_upload(req)
        },
        |a| if a.status.as_u16() == 201 { FILE_BYTES } else { 0 },
    )
    .await;
    up.print();

    let key = MediaKey::of(&warm).expect("a PNG");
    let path = key.public_path();
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.get(&path, None).await.header("x-cache") != Some("HIT") {
        assert!(Instant::now() < deadline, "the file is never served from the cache");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cached = load(
        "GET /v1/media/{key} (cached)",
        reads,
        read_concurrency,
        |i| get(&client, &path, i),
        |a| if a.status.as_u16() == 200 && a.body == warm { a.body.len() } else { 0 },
    )
    .await;
    cached.print();
    let intact = cached.bytes / FILE_BYTES;
    if intact != reads {
        println!("  only {intact} of {reads} reads were 200 with the exact bytes");
    }

    let baseline =
        load("GET /healthz (baseline)", reads, read_concurrency, |i| get(&client, "/healthz", i), |a| a.body.len())
            .await;
    baseline.print();
    println!(
        "cached media read ÷ healthz: {:.2} ({:.0} vs {:.0} req/s; each read carries {} KiB)",
        cached.per_second() / baseline.per_second(),
        cached.per_second(),
        baseline.per_second(),
        FILE_BYTES / 1024,
    );
}
