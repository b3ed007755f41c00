//! The fan-out load tool: a creator with N followers (default 1,000,000), M of them
//! online (default 10,000) with a real WebSocket open on one of **two origin
//! processes**, every other one with a Web Push subscription pointing at a loopback
//! Web Push receiver in this process. A drop of theirs goes live; the tool prints, each
//! beside its target:
//! - online followers: `DropStarted` (its outbox time) → `drop_live` on the socket;
//! - `DropStarted` → every push durable (queued);
//! - pushes handed to the receiver per second, RFC 8291 encryption and VAPID included
//!   (the receiver decrypts a sample with the subscription's private key);
//! - the peak RSS of each origin process, and the CPU each used;
//!
//! and, measured in the same run as baselines: the receiver's ceiling (plain POSTs from
//! this process, no encryption) and the cost of preparing one push on one core.
//!
//! No edge: the origins are the system under test. Each runs as this binary again
//! (`fanout-bench --origin`, settings from `DROPS_*`), so its memory is its own.
//!
//! `cargo run --release -p drops-tests --bin fanout-bench -- [followers] [online]`

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Bytes;
use axum::http::StatusCode;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use drops_shared::auth::Role;
use drops_tests::client::token;
use drops_tests::{free_port, JWT_SECRET};
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;
use web_push_native::p256::elliptic_curve::rand_core::{OsRng, RngCore};

/// Whether the sockets' thread runs ahead of the origins (see `bench`).
static PHONES_RAISED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn main() -> anyhow::Result<()> {
    raise_fd_limit();
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--origin") {
        return run_origin();
    }
    let followers: i64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1_000_000);
    let online: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(10_000);
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(bench(followers, online))
}

/// 10,000 sockets open on each side of loopback need more descriptors than the default.
fn raise_fd_limit() {
    // SAFETY: plain system calls on a local struct.
    unsafe {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max.min(1 << 20);
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// An origin instance: this binary again, serving until its stdin closes (so it never
/// outlives the bench).
fn run_origin() -> anyhow::Result<()> {
    let settings = drops_origin::config::Settings::load()?;
    drops_origin::telemetry::init(&settings);
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(async move {
        let app = drops_origin::Application::build(settings).await?;
        app.run_until_stopped(async {
            use tokio::io::AsyncReadExt;
            let mut sink = Vec::new();
            let _ = tokio::io::stdin().read_to_end(&mut sink).await;
        })
        .await
    })
}

struct Origin {
    child: Child,
    url: String,
}

impl Origin {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident memory (VmHWM), MiB.
    fn peak_rss_mib(&self) -> f64 {
        status_field(self.pid(), "VmHWM:") / 1024.0
    }

    /// CPU seconds used so far (user + system).
    fn cpu_secs(&self) -> f64 {
        cpu_secs(self.pid())
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn status_field(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field)).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse().ok()))
        .unwrap_or(0.0)
}

fn cpu_secs(pid: u32) -> f64 {
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the command name (which may hold spaces) in parentheses.
            let rest = s.rsplit_once(')')?.1.split_whitespace().collect::<Vec<_>>();
            Some((rest.get(11)?.parse::<f64>().ok()? + rest.get(12)?.parse::<f64>().ok()?) / ticks)
        })
        .unwrap_or(0.0)
}

/// Busy and total jiffies of the whole machine.
fn machine_cpu() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<f64> =
        stat.lines().next().unwrap_or_default().split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    let total: f64 = fields.iter().sum();
    let idle = fields.get(3).copied().unwrap_or(0.0) + fields.get(4).copied().unwrap_or(0.0);
    (total - idle, total)
}

/// CPU seconds of every process whose command name starts with `name`.
fn cpu_of(name: &str) -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else { return 0.0 };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.starts_with(name)))
        .map(cpu_secs)
        .sum()
}

/// The loopback Web Push receiver: counts what it is handed, checks every request
/// carries a VAPID authorization and the aes128gcm encoding, and decrypts a sample
/// with the subscription's private key.
struct Receiver {
    started: Instant,
    received: AtomicU64,
    /// Nanoseconds since `started` of the first and the latest push.
    first_ns: AtomicU64,
    last_ns: AtomicU64,
    malformed: AtomicU64,
    decrypted: AtomicU64,
    undecryptable: AtomicU64,
    baseline: AtomicU64,
    ua_secret: web_push_native::p256::SecretKey,
    auth: [u8; 16],
}

impl Receiver {
    fn mark(&self) {
        let now = self.started.elapsed().as_nanos() as u64;
        let _ = self.first_ns.compare_exchange(0, now, Ordering::SeqCst, Ordering::SeqCst);
        self.last_ns.fetch_max(now, Ordering::SeqCst);
    }

    fn push(&self, headers: &axum::http::HeaderMap, body: Bytes) -> StatusCode {
        let n = self.received.fetch_add(1, Ordering::SeqCst) + 1;
        self.mark();
        let vapid =
            headers.get("authorization").and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("vapid t="));
        let encoded = headers.get("content-encoding").is_some_and(|v| v == "aes128gcm");
        if !vapid || !encoded {
            self.malformed.fetch_add(1, Ordering::Relaxed);
            return StatusCode::BAD_REQUEST;
        }
        if n % 997 == 1 {
            let auth = web_push_native::Auth::clone_from_slice(&self.auth);
            match web_push_native::decrypt(body.to_vec(), &self.ua_secret, &auth) {
                Ok(plain) if serde_json::from_slice::<Value>(&plain).is_ok_and(|v| v["kind"] == "drop_live") => {
                    self.decrypted.fetch_add(1, Ordering::Relaxed);
                }
                _ => {
                    self.undecryptable.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        StatusCode::CREATED
    }
}

async fn start_receiver() -> anyhow::Result<(u16, Arc<Receiver>)> {
    let receiver = Arc::new(Receiver {
        started: Instant::now(),
        received: AtomicU64::new(0),
        first_ns: AtomicU64::new(0),
        last_ns: AtomicU64::new(0),
        malformed: AtomicU64::new(0),
        decrypted: AtomicU64::new(0),
        undecryptable: AtomicU64::new(0),
        baseline: AtomicU64::new(0),
        ua_secret: web_push_native::p256::SecretKey::random(&mut OsRng),
        auth: {
            let mut auth = [0u8; 16];
            OsRng.fill_bytes(&mut auth);
            auth
        },
    });
    let (on_push, on_baseline) = (receiver.clone(), receiver.clone());
    let app = axum::Router::new()
        .route(
            "/push",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: Bytes| {
                let r = on_push.clone();
                async move { r.push(&headers, body) }
            }),
        )
        .route(
            "/baseline",
            axum::routing::post(move |_body: Bytes| {
                let r = on_baseline.clone();
                async move {
                    r.baseline.fetch_add(1, Ordering::Relaxed);
                    StatusCode::CREATED
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((port, receiver))
}

fn spawn_origin(env: &[(String, String)], port: u16) -> anyhow::Result<Origin> {
    let url = format!("http://127.0.0.1:{port}");
    let child = Command::new(std::env::current_exe()?)
        .arg("--origin")
        .envs(env.iter().cloned())
        .env("DROPS_PORT", port.to_string())
        .env("DROPS_PUBLIC_URL", &url)
        .stdin(Stdio::piped())
        .spawn()?;
    Ok(Origin { child, url })
}

async fn wait_healthy(http: &reqwest::Client, origin: &Origin) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = http.get(format!("{}/healthz", origin.url)).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "origin at {} never became healthy", origin.url);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// When each socket got `drop_live`, and how many times in all.
#[derive(Default)]
struct Heard {
    at: Vec<SystemTime>,
    messages: u64,
}

/// Opens a notification socket as `user` and records each `drop_live` it hears.
async fn listen(origin_url: &str, user: Uuid, heard: Arc<Mutex<Heard>>) -> anyhow::Result<()> {
    let mut request =
        format!("{}/v1/notifications/stream", origin_url.replace("http://", "ws://")).into_client_request()?;
    request.headers_mut().insert("authorization", format!("Bearer {}", token(user, Role::Buyer)).parse()?);
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await?;
    // Presence is recorded before the greeting is sent.
    match socket.next().await {
        Some(Ok(Message::Text(t))) if t.contains("hello") => {}
        other => anyhow::bail!("no greeting: {other:?}"),
    }
    tokio::spawn(async move {
        let mut counted = false;
        while let Some(Ok(message)) = socket.next().await {
            match message {
                Message::Text(t) if t.contains("drop_live") => {
                    let mut heard = heard.lock().expect("heard");
                    heard.messages += 1;
                    if !counted {
                        heard.at.push(SystemTime::now());
                        counted = true;
                    }
                }
                Message::Ping(p) => {
                    let _ = socket.send(Message::Pong(p)).await;
                }
                _ => {}
            }
        }
    });
    Ok(())
}

fn percentile_ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "MISSED"
    }
}

async fn bench(followers: i64, online_n: usize) -> anyhow::Result<()> {
    let admin_url =
        std::env::var("DROPS_TEST_POSTGRES").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let db_name = format!("drops_fanout_bench_{}", Uuid::new_v4().simple());
    {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&admin_url).await?;
        sqlx::query(&format!("CREATE DATABASE {db_name}")).execute(&mut conn).await?;
    }
    let database_url = format!("{}/{db_name}", admin_url.rsplit_once('/').map(|(base, _)| base).unwrap_or(&admin_url));
    let redis_url = std::env::var("DROPS_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let prefix = format!("drops-bench-{}", Uuid::new_v4().simple());
    let (receiver_port, receiver) = start_receiver().await?;
    let vapid = web_push_native::jwt_simple::algorithms::ES256KeyPair::generate();
    let env: Vec<(String, String)> = [
        ("DROPS_DATABASE_URL", database_url.clone()),
        ("DROPS_REDIS_URL", redis_url.clone()),
        ("DROPS_REDIS_PREFIX", prefix.clone()),
        ("DROPS_JWT_SECRET", JWT_SECRET.to_owned()),
        ("DROPS_PUSH_PROVIDER", "webpush".to_owned()),
        ("DROPS_VAPID_PRIVATE_KEY", URL_SAFE_NO_PAD.encode(vapid.to_bytes())),
        ("DROPS_PUSH_ALLOW_PRIVATE_ENDPOINTS", "true".to_owned()),
        ("DROPS_RECONCILE_INTERVAL_SECS", "0".to_owned()),
        // Nothing listens there: the edge is not part of this measurement.
        ("DROPS_EDGE_URL", "http://127.0.0.1:9".to_owned()),
        // One address opens every socket: the per-client limits are not under test.
        ("DROPS_CLIENT_RATE_PER_MINUTE", "100000000".to_owned()),
        ("DROPS_CLIENT_BURST", "1000000".to_owned()),
        ("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "error".into())),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let http = reqwest::Client::builder().pool_max_idle_per_host(256).build()?;
    println!("starting two origin processes (database {db_name})...");
    let a = spawn_origin(&env, free_port())?;
    wait_healthy(&http, &a).await?; // migrates first, alone
    let b = spawn_origin(&env, free_port())?;
    wait_healthy(&http, &b).await?;
    let db = sqlx::postgres::PgPoolOptions::new().max_connections(4).connect(&database_url).await?;

    // The creator, with a product, through the API.
    let admin = token(Uuid::now_v7(), Role::Admin);
    let creator_user = Uuid::now_v7();
    let created: Value = http
        .post(format!("{}/v1/creators", a.url))
        .bearer_auth(&admin)
        .json(&json!({"name": "Megastar", "user_id": creator_user}))
        .send()
        .await?
        .json()
        .await?;
    let creator_id = Uuid::parse_str(created["id"].as_str().unwrap_or_default())?;
    let creator_token = token(creator_user, Role::Creator);
    let product: Value = http
        .post(format!("{}/v1/products", a.url))
        .bearer_auth(&creator_token)
        .json(&json!({"title": "Tour tee", "description": ""}))
        .send()
        .await?
        .json()
        .await?;

    // The audience, in bulk.
    let seeding = Instant::now();
    sqlx::query(
        "WITH u AS (INSERT INTO users (id, role) SELECT gen_random_uuid(), 'buyer' FROM generate_series(1, $2) RETURNING id)
         INSERT INTO follows (creator_id, user_id, followed_at) SELECT $1, id, clock_timestamp() FROM u",
    )
    .bind(creator_id)
    .bind(followers)
    .execute(&db)
    .await?;
    let online: Vec<Uuid> =
        sqlx::query_scalar("SELECT user_id FROM follows WHERE creator_id = $1 ORDER BY random() LIMIT $2")
            .bind(creator_id)
            .bind(online_n as i64)
            .fetch_all(&db)
            .await?;
    let ua_public = {
        use web_push_native::p256::elliptic_curve::sec1::ToEncodedPoint;
        URL_SAFE_NO_PAD.encode(receiver.ua_secret.public_key().to_encoded_point(false).as_bytes())
    };
    let offline = sqlx::query(
        "INSERT INTO push_subscriptions (user_id, endpoint, p256dh, auth)
         SELECT user_id, $3, $4, $5 FROM follows WHERE creator_id = $1 AND NOT (user_id = ANY($2))",
    )
    .bind(creator_id)
    .bind(&online)
    .bind(format!("http://127.0.0.1:{receiver_port}/push"))
    .bind(&ua_public)
    .bind(URL_SAFE_NO_PAD.encode(receiver.auth))
    .execute(&db)
    .await?
    .rows_affected();
    // As autovacuum leaves tables that have been there a while.
    for table in ["follows", "push_subscriptions"] {
        sqlx::raw_sql(&format!("VACUUM ANALYZE {table}")).execute(&db).await?;
    }
    // The follower set, as the follow route and its consumer keep it.
    let members: Vec<(Uuid, DateTime<Utc>)> =
        sqlx::query_as("SELECT user_id, followed_at FROM follows WHERE creator_id = $1")
            .bind(creator_id)
            .fetch_all(&db)
            .await?;
    let mut redis = redis::Client::open(redis_url.as_str())?.get_multiplexed_async_connection().await?;
    let set = drops_origin::followers::set_key(&prefix, creator_id);
    for chunk in members.chunks(10_000) {
        let scored: Vec<(i64, String)> = chunk.iter().map(|(u, at)| (at.timestamp_micros(), u.to_string())).collect();
        redis::cmd("ZADD").arg(&set).arg(scored).query_async::<()>(&mut redis).await?;
    }
    drop(members);
    println!(
        "seeded {followers} followers ({} online-to-be, {offline} with a push subscription) in {:.1}s",
        online.len(),
        seeding.elapsed().as_secs_f64()
    );

    // The online ones open their sockets, half on each origin.
    let connecting = Instant::now();
    let heard = Arc::new(Mutex::new(Heard::default()));
    let origins = [a.url.clone(), b.url.clone()];
    // On a thread of their own, ahead of the origins' in the scheduler's queue (if this
    // process may raise a thread's priority): they stand for phones, which are other
    // machines, and must not wait for the origins' CPU to read what was sent them.
    let phones = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .on_thread_start(|| {
            // SAFETY: a plain system call; on Linux it sets the calling thread's nice value.
            let raised = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, -10) } == 0;
            PHONES_RAISED.store(raised, Ordering::SeqCst);
        })
        .enable_all()
        .build()?;
    let opened = futures::stream::iter(online.iter().enumerate())
        .map(|(i, user)| {
            let (url, heard, user) = (origins[i % 2].clone(), heard.clone(), *user);
            let opening = phones.spawn(async move { listen(&url, user, heard).await });
            async move { opening.await.map_err(anyhow::Error::from).and_then(|r| r) }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
    let failed = opened.iter().filter(|r| r.is_err()).count();
    if let Some(Err(e)) = opened.iter().find(|r| r.is_err()) {
        println!("  {failed} sockets failed to open, e.g.: {e:#}");
    }
    println!(
        "{} sockets open across two origins in {:.1}s ({}); origins' memory now {:.0} and {:.0} MiB",
        opened.len() - failed,
        connecting.elapsed().as_secs_f64(),
        if PHONES_RAISED.load(Ordering::SeqCst) {
            "read on a thread at nice -10"
        } else {
            "read on a thread of their own: its priority could not be raised, so their latency includes waiting for CPU"
        },
        status_field(a.pid(), "VmRSS:") / 1024.0,
        status_field(b.pid(), "VmRSS:") / 1024.0
    );

    // Baselines, in this run: the receiver's ceiling, and the cost of one push's crypto.
    let ceiling = {
        let window = Duration::from_secs(3);
        let until = Instant::now() + window;
        let url = format!("http://127.0.0.1:{receiver_port}/baseline");
        let body = vec![b'x'; 230];
        futures::stream::iter(0..128)
            .map(|_| {
                let (http, url, body) = (http.clone(), url.clone(), body.clone());
                async move {
                    while Instant::now() < until {
                        let _ = http.post(&url).body(body.clone()).send().await;
                    }
                }
            })
            .buffer_unordered(128)
            .collect::<Vec<_>>()
            .await;
        receiver.baseline.load(Ordering::SeqCst) as f64 / window.as_secs_f64()
    };
    let prepare_us = {
        use drops_origin::notifications::push::PushProvider;
        let provider = drops_origin::notifications::push::web_push::WebPush::new(
            &URL_SAFE_NO_PAD.encode(vapid.to_bytes()),
            "mailto:bench@drops.dev",
        )?;
        let subscription = drops_shared::api::PushSubscription {
            endpoint: format!("http://127.0.0.1:{receiver_port}/push"),
            keys: drops_shared::api::PushKeys {
                p256dh: ua_public.clone(),
                auth: URL_SAFE_NO_PAD.encode(receiver.auth),
            },
            expiration_time: None,
        };
        let payload = json!({"kind": "drop_live", "payload": {"drop_id": Uuid::nil(), "creator": {"id": creator_id, "name": "Megastar"}}, "id": Uuid::nil()}).to_string();
        let n = 2_000;
        let started = Instant::now();
        let url: reqwest::Url = subscription.endpoint.parse()?;
        for _ in 0..n {
            provider.prepare(&subscription, url.clone(), payload.as_bytes())?;
        }
        started.elapsed().as_secs_f64() * 1e6 / f64::from(n)
    };
    println!("baselines: the receiver takes {ceiling:.0} plain POSTs/s from this process; preparing one push (RFC 8291 encryption, the VAPID header cached per push service) takes {prepare_us:.0} µs on one core");

    // The drop goes live.
    let starts_at = Utc::now() + chrono::Duration::seconds(3);
    let created_drop: Value = http
        .post(format!("{}/v1/drops", a.url))
        .bearer_auth(&creator_token)
        .json(&json!({"product_id": product["id"], "price": {"amount": 3000, "currency": "EUR"}, "stock": 100, "max_per_user": 1,
                      "starts_at": starts_at, "ends_at": starts_at + chrono::Duration::hours(1)}))
        .send()
        .await?
        .json()
        .await?;
    let drop_id = Uuid::parse_str(created_drop["id"].as_str().unwrap_or_default())?;
    let cpu_before = (a.cpu_secs(), b.cpu_secs(), cpu_of("postgres"), cpu_secs(std::process::id()), machine_cpu());
    let started_at: DateTime<Utc> = loop {
        let at: Option<DateTime<Utc>> =
            sqlx::query_scalar("SELECT created_at FROM outbox WHERE aggregate_id = $1 AND event_type = 'DropStarted'")
                .bind(drop_id)
                .fetch_optional(&db)
                .await?;
        if let Some(at) = at {
            break at;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let started_system = SystemTime::UNIX_EPOCH + Duration::from_micros(started_at.timestamp_micros() as u64);

    // Online: every socket heard, or ten seconds.
    let expected_online = online.len() - failed;
    let online_deadline = Instant::now() + Duration::from_secs(10);
    while heard.lock().expect("heard").at.len() < expected_online && Instant::now() < online_deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut latency = Histogram::<u64>::new(3)?;
    let (heard_n, messages) = {
        let heard = heard.lock().expect("heard");
        for at in &heard.at {
            let us = at.duration_since(started_system).unwrap_or_default().as_micros() as u64;
            latency.record(us.max(1))?;
        }
        (heard.at.len(), heard.messages)
    };
    // Where the time went, by the origin's own marks: the consumer had found the online
    // followers when it recorded them, and opened the push job after telling them.
    let (recorded_online, recorded_ms, opened_ms): (i64, f64, f64) = sqlx::query_as(
        "SELECT f.online, EXTRACT(EPOCH FROM f.started_at - o.created_at)::float8 * 1000,
                coalesce(EXTRACT(EPOCH FROM f.online_sent_at - o.created_at)::float8 * 1000, -1)
         FROM fanouts f JOIN outbox o ON o.id = f.event_id WHERE o.aggregate_id = $1 AND o.event_type = 'DropStarted'",
    )
    .bind(drop_id)
    .fetch_optional(&db)
    .await?
    .unwrap_or((0, -1.0, -1.0));

    // Queued: every shard finished.
    let queue_deadline = Instant::now() + Duration::from_secs(300);
    let (queued, queued_secs): (i64, f64) = loop {
        let row: Option<(i64, Option<f64>)> = sqlx::query_as(
            "SELECT sum(j.queued_push)::bigint,
                    CASE WHEN bool_and(j.finished_at IS NOT NULL) THEN EXTRACT(EPOCH FROM max(j.finished_at) - $2)::float8 END
             FROM fanout_jobs j WHERE j.drop_id = $1 HAVING count(*) > 0",
        )
        .bind(drop_id)
        .bind(started_at)
        .fetch_optional(&db)
        .await?;
        if let Some((queued, Some(secs))) = row {
            break (queued, secs);
        }
        anyhow::ensure!(Instant::now() < queue_deadline, "the pushes were not all queued within 300 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let batches: i64 = sqlx::query_scalar("SELECT count(*) FROM push_batches").fetch_one(&db).await?;

    // Handed over: the receiver has them all, or nothing more came for 30 s.
    let mut last = (0, Instant::now());
    loop {
        let got = receiver.received.load(Ordering::SeqCst);
        if got >= queued as u64 {
            break;
        }
        if got != last.0 {
            last = (got, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(30) {
            println!("  the receiver stalled at {got} of {queued} pushes");
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cpu_after = (a.cpu_secs(), b.cpu_secs(), cpu_of("postgres"), cpu_secs(std::process::id()), machine_cpu());
    let pushed = receiver.received.load(Ordering::SeqCst);
    let first = Duration::from_nanos(receiver.first_ns.load(Ordering::SeqCst));
    let last_push = Duration::from_nanos(receiver.last_ns.load(Ordering::SeqCst));
    let push_window = (last_push.saturating_sub(first)).as_secs_f64().max(1e-3);
    let push_rate = pushed as f64 / push_window;
    let elapsed_total = Utc::now() - started_at;
    let (busy, total) = (cpu_after.4 .0 - cpu_before.4 .0, cpu_after.4 .1 - cpu_before.4 .1);

    println!();
    println!(
        "fan-out of one DropStarted: {followers} followers, {expected_online} online over two origins, {queued} pushes"
    );
    println!("| figure | measured | target | |");
    println!("|---|---|---|---|");
    println!(
        "| online: DropStarted → drop_live on the socket | p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms ({heard_n}/{expected_online} sockets, {messages} messages; {recorded_online} recorded online) | p99 < 1 s | {} |",
        percentile_ms(&latency, 0.5),
        percentile_ms(&latency, 0.99),
        latency.max() as f64 / 1000.0,
        verdict(heard_n == expected_online && percentile_ms(&latency, 0.99) < 1000.0 && messages == heard_n as u64)
    );
    println!(
        "| (online step, by the origin's marks) | online followers found and being recorded {recorded_ms:.0} ms after DropStarted; push job opened at {opened_ms:.0} ms | | |"
    );
    println!(
        "| DropStarted → every push durable | {queued_secs:.2} s ({queued} users in {batches} batch rows in the queue then) | < 5 s | {} |",
        verdict(queued_secs < 5.0 && queued as u64 == offline)
    );
    println!(
        "| pushes handed to the receiver | {pushed} in {push_window:.1} s = {push_rate:.0}/s (encrypted + VAPID; decrypted sample: {} ok, {} failed; {} malformed) | ≥ 10,000/s | {} |",
        receiver.decrypted.load(Ordering::SeqCst),
        receiver.undecryptable.load(Ordering::SeqCst),
        receiver.malformed.load(Ordering::SeqCst),
        verdict(push_rate >= 10_000.0 && pushed >= queued as u64)
    );
    let (rss_a, rss_b) = (a.peak_rss_mib(), b.peak_rss_mib());
    println!(
        "| peak RSS per origin process | {rss_a:.0} MiB and {rss_b:.0} MiB | < 256 MiB | {} |",
        verdict(rss_a < 256.0 && rss_b < 256.0)
    );
    println!();
    println!(
        "from DropStarted to the last push: {:.1} s. CPU over it (of {:.0} core-seconds on {} cores, {:.0}% busy): origin A {:.1} s, origin B {:.1} s, Postgres {:.1} s, this process (sockets, receiver) {:.1} s",
        elapsed_total.num_milliseconds() as f64 / 1000.0,
        total / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        100.0 * busy / total.max(1.0),
        cpu_after.0 - cpu_before.0,
        cpu_after.1 - cpu_before.1,
        cpu_after.2 - cpu_before.2,
        cpu_after.3 - cpu_before.3,
    );
    println!(
        "baselines in this run: receiver ceiling {ceiling:.0} POSTs/s (pushes at {:.2}× of it); {prepare_us:.0} µs of crypto per push on one core (= {:.0}/s per core)",
        push_rate / ceiling,
        1e6 / prepare_us
    );
    drop((a, b));
    phones.shutdown_background();
    let _ = redis::cmd("DEL").arg(&set).query_async::<()>(&mut redis).await;
    // A million followers take some hundreds of MB: not left behind.
    db.close().await;
    use sqlx::Connection;
    let mut admin_conn = sqlx::PgConnection::connect(&admin_url).await?;
    sqlx::query(&format!("DROP DATABASE {db_name} WITH (FORCE)")).execute(&mut admin_conn).await?;
    Ok(())
}
