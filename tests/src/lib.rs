//! The test harness: one real stack for the whole end-to-end suite (one test
//! binary, `tests/e2e`), as zero2prod keeps one `tests/api`.
//!
//! The stack starts once per process, on first use: a fresh Postgres database with
//! the migrations applied, the origin in-process (on its own runtime, so it outlives
//! each test's runtime, and can be stopped and started again on the same port), and
//! the edge under `wrangler dev` (workerd) with its own state directory. The
//! `wrangler` process group is killed when the test process exits.
//!
//! Tests create their own creators, drops and buyers, so they never see each
//! other's data and run concurrently: each holds a [`Stack::shared`] lease. A test
//! that stops the origin, or measures the origin's traffic, takes
//! [`Stack::exclusive`] instead and runs alone.

pub mod client;
pub mod files;
pub mod kill;
pub mod soak;
pub mod stripe_double;

use std::net::TcpListener;
use std::ops::Deref;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use drops_origin::config::{PaymentProvider, PushProvider, Settings};
use drops_origin::Application;
use secrecy::SecretString;
use tokio::sync::{oneshot, RwLock, RwLockReadGuard, RwLockWriteGuard};

pub use client::{Buyer, Client, DropSpec};

/// The messages a notification socket received, in order.
pub type Socket = std::sync::Arc<Mutex<Vec<serde_json::Value>>>;

pub const JWT_SECRET: &str = "test-jwt-secret-0123456789abcdef0123456789";
pub const EDGE_TO_ORIGIN_SECRET: &str = "test-edge-to-origin-secret-0123456789abcdef";
pub const ORIGIN_TO_EDGE_SECRET: &str = "test-origin-to-edge-secret-0123456789abcdef";
pub const WEBHOOK_SECRET: &str = "whsec_test_secret";
/// Signs the callback pushes the tests receive.
pub const PUSH_SECRET: &str = "test-push-callback-secret";
/// A second webhook secret, as during a rotation: both must be accepted.
pub const OLD_WEBHOOK_SECRET: &str = "whsec_test_old_secret";
/// Signs the edge's links to private media.
pub const MEDIA_LINK_SECRET: &str = "test-media-link-secret-0123456789abcdef";

pub struct Stack {
    pub edge_url: String,
    pub origin_url: String,
    /// The origin's operators' listener (`/metrics`), apart from its public port.
    pub metrics_url: String,
    pub database_url: String,
    /// The origin's settings as the stack configured them (tests tweak copies).
    pub settings: Settings,
    runtime: tokio::runtime::Runtime,
    origin: Mutex<Option<RunningOrigin>>,
}

struct RunningOrigin {
    stop: oneshot::Sender<()>,
    stopped: oneshot::Receiver<()>,
    app: drops_origin::App,
    /// Started with settings other than the stack's own.
    tweaked: bool,
}

static STACK: OnceLock<Stack> = OnceLock::new();
/// Shared by the tests that may run together; exclusive for one that may not.
static GATE: RwLock<()> = RwLock::const_new(());

/// A test's use of the stack; the stack is the test's alone while an
/// `Lease<Exclusive>` is held. An exclusive lease puts the origin back as the other
/// tests expect it (running, on the stack's settings) when it ends, even when its
/// test failed halfway.
pub struct Lease<G> {
    _gate: G,
    stack: &'static Stack,
    restore: bool,
}

impl<G> Drop for Lease<G> {
    fn drop(&mut self) {
        let stack = self.stack;
        if self.restore && !stack.origin_as_configured() {
            // On a thread of its own: this may run inside a test's runtime.
            let restored = std::thread::spawn(move || {
                stack.runtime.block_on(async {
                    stack.stop_origin().await;
                    stack.start_origin().await;
                })
            })
            .join();
            if restored.is_err() {
                eprintln!("the origin could not be restored after an exclusive test");
            }
        }
    }
}

pub type Shared = RwLockReadGuard<'static, ()>;
pub type Exclusive = RwLockWriteGuard<'static, ()>;

impl<G> Deref for Lease<G> {
    type Target = Stack;

    fn deref(&self) -> &Stack {
        self.stack
    }
}
/// Connections of the origin's pool a test holds ([`Stack::hold_pool`]).
pub struct PoolHold {
    release: tokio::sync::oneshot::Sender<()>,
    gone: tokio::sync::oneshot::Receiver<()>,
}

impl PoolHold {
    /// Whether the connections are still held.
    pub fn holding(&mut self) -> bool {
        self.gone.try_recv().is_err()
    }

    /// Gives the connections back, and waits until they are.
    pub async fn release(self) {
        let _ = self.release.send(());
        let _ = self.gone.await;
    }
}

/// The process groups of the `wrangler dev`s this process started.
static WRANGLER_GROUPS: Mutex<Vec<i32>> = Mutex::new(Vec::new());

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

pub fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

extern "C" fn kill_wranglers() {
    let groups = WRANGLER_GROUPS.lock().map(|g| g.clone()).unwrap_or_default();
    for pgid in &groups {
        unsafe {
            libc::kill(-pgid, libc::SIGTERM);
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    for pgid in &groups {
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }
}

/// Builds the Worker of `config` (relative to the repository root) with its
/// `[build] command`, and writes beside it a copy of the config without `[build]`,
/// whose path it returns. With a custom build, `wrangler dev` builds once to start,
/// then again when its file watcher is ready, and reloads the Worker seconds after it
/// first answered: a test then sees "Your worker restarted mid-request" (a 503).
///
/// Once per process and config: a `wrangler dev` already running watches its
/// config and its Worker's files, and would reload (or, reading a config being
/// written, stop) if a second one rebuilt them. The copy is written only when it
/// differs from what is there.
fn prebuilt(root: &std::path::Path, config: &str) -> anyhow::Result<String> {
    static PREBUILT: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());
    let mut prebuilt = PREBUILT.lock().expect("prebuilt configs");
    if let Some((_, copy)) = prebuilt.iter().find(|(c, _)| c == config) {
        return Ok(copy.clone());
    }
    let text = std::fs::read_to_string(root.join(config))?;
    let (mut command, mut kept, mut in_build) = (None, Vec::new(), false);
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            in_build = trimmed == "[build]";
        }
        if !in_build {
            kept.push(line);
        } else if let Some(value) = trimmed.strip_prefix("command").and_then(|r| r.trim_start().strip_prefix('=')) {
            command = Some(value.trim().trim_matches('"').to_owned());
        }
    }
    if let Some(command) = command {
        let built = Command::new("bash").arg("-c").arg(&command).current_dir(root).output()?;
        anyhow::ensure!(
            built.status.success(),
            "building the Worker (`{command}`) failed:\n{}",
            String::from_utf8_lossy(&built.stderr)
        );
    }
    let (dir, file) = config.rsplit_once('/').map_or(("", config), |(d, f)| (d, f));
    let name = format!(".{}.test.toml", file.trim_end_matches(".toml"));
    let copy = if dir.is_empty() { name } else { format!("{dir}/{name}") };
    let content = kept.join("\n") + "\n";
    if std::fs::read_to_string(root.join(&copy)).ok().as_deref() != Some(content.as_str()) {
        std::fs::write(root.join(&copy), content)?;
    }
    prebuilt.push((config.to_owned(), copy.clone()));
    Ok(copy)
}

/// Starts `wrangler dev` on `config` (relative to the repository root) at `port`,
/// with `vars`, its Worker built first (see [`prebuilt`]), and waits until
/// `ready_path` answers 2xx. Its process group is killed when this process exits.
pub async fn wrangler_dev(config: &str, port: u16, vars: &[String], ready_path: &str) -> anyhow::Result<()> {
    wrangler_dev_until(config, port, vars, ready_path, |resp| resp.status().is_success()).await
}

/// As [`wrangler_dev`], ready once `ready` holds of an answer to `GET ready_path`
/// (an edge that refuses its configuration answers, but not 2xx).
pub async fn wrangler_dev_until(
    config: &str,
    port: u16,
    vars: &[String],
    ready_path: &str,
    ready: impl Fn(&reqwest::Response) -> bool,
) -> anyhow::Result<()> {
    let root = repo_root();
    let config = &prebuilt(&root, config)?;
    let state_dir = std::env::temp_dir().join(format!("drops-wrangler-{}", uuid::Uuid::new_v4().simple()));
    let log_path = std::env::temp_dir().join(format!("drops-wrangler-{port}.log"));
    let log = std::fs::File::create(&log_path)?;
    let mut cmd = Command::new(root.join("node_modules/.bin/wrangler"));
    cmd.current_dir(&root)
        .args(["dev", "-c", config, "--ip", "127.0.0.1", "--port", &port.to_string()])
        .args(["--inspector-port", &free_port().to_string()])
        .arg("--persist-to")
        .arg(&state_dir)
        .args(["--log-level", "warn", "--show-interactive-dev-session=false"])
        .env("WRANGLER_SEND_METRICS", "false")
        .env("CI", "true")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    for v in vars {
        cmd.args(["--var", v]);
    }
    use std::os::unix::process::CommandExt;
    cmd.process_group(0);
    let child: Child = cmd.spawn()?;
    let first = {
        let mut groups = WRANGLER_GROUPS.lock().expect("wrangler groups");
        groups.push(child.id() as i32);
        groups.len() == 1
    };
    if first {
        unsafe {
            libc::atexit(kill_wranglers);
        }
    }
    let url = format!("http://127.0.0.1:{port}{ready_path}");
    let deadline = Instant::now() + Duration::from_secs(300);
    let http = reqwest::Client::new();
    while Instant::now() < deadline {
        if http.get(&url).send().await.is_ok_and(|r| ready(&r)) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    anyhow::bail!("wrangler dev ({config}) did not become ready on {port}; its log:\n{log}")
}

impl Stack {
    /// The stack of this process, started on first use (the benches use it alone).
    pub fn get() -> &'static Stack {
        STACK.get_or_init(|| {
            // Started on a thread of its own: the caller is usually inside a test's runtime.
            std::thread::spawn(Stack::start)
                .join()
                .expect("stack start thread")
                .unwrap_or_else(|e| panic!("could not start the stack: {e:#}"))
        })
    }

    /// The stack, alongside the other tests that hold a shared lease.
    pub async fn shared() -> Lease<Shared> {
        let gate = GATE.read().await;
        Lease { _gate: gate, stack: Self::get(), restore: false }
    }

    /// The stack, with no other test running until the lease is dropped.
    pub async fn exclusive() -> Lease<Exclusive> {
        let gate = GATE.write().await;
        Lease { _gate: gate, stack: Self::get(), restore: true }
    }

    fn start() -> anyhow::Result<Stack> {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        let admin_url = std::env::var("DROPS_TEST_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let db_name = format!("drops_test_{}", uuid::Uuid::new_v4().simple());
        runtime.block_on(async {
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(&admin_url).await?;
            sqlx::query(&format!("CREATE DATABASE {db_name}")).execute(&mut conn).await?;
            anyhow::Ok(())
        })?;
        let database_url = match admin_url.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{db_name}"),
            None => anyhow::bail!("DROPS_TEST_POSTGRES must end in /<database>"),
        };
        let edge_port = free_port();
        let mut settings = Settings::development();
        // The port is chosen before the origin starts: the links it hands out (the
        // sandbox checkout, its webhook) must name it.
        let origin_port = free_port();
        let origin_url = format!("http://127.0.0.1:{origin_port}");
        settings.server.port = origin_port;
        settings.server.public_url = origin_url.clone();
        // Chosen before too: the origin restarts on it.
        settings.server.metrics_port = free_port();
        let metrics_url = format!("http://127.0.0.1:{}", settings.server.metrics_port);
        settings.edge.url = format!("http://127.0.0.1:{edge_port}");
        settings.edge.edge_to_origin_secret = SecretString::from(EDGE_TO_ORIGIN_SECRET);
        settings.edge.origin_to_edge_secret = SecretString::from(ORIGIN_TO_EDGE_SECRET);
        settings.database.url = SecretString::from(database_url.clone());
        settings.redis.url =
            SecretString::from(std::env::var("DROPS_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into()));
        settings.redis.prefix = format!("drops-test-{}", uuid::Uuid::new_v4().simple());
        settings.auth.jwt_secret = SecretString::from(JWT_SECRET);
        settings.payments.webhook_secrets =
            vec![SecretString::from(WEBHOOK_SECRET), SecretString::from(OLD_WEBHOOK_SECRET)];
        settings.events.relay_interval_ms = 50;
        settings.events.bus_claim_idle_ms = 1_000;
        // Tests run reconciliation themselves, with no grace period.
        settings.orders.reconcile_interval_secs = 0;
        settings.push = PushProvider::Callback { secret: SecretString::from(PUSH_SECRET) };
        let app = runtime.block_on(Application::build(settings.clone()))?;

        let stack = Stack {
            edge_url: format!("http://127.0.0.1:{edge_port}"),
            origin_url,
            metrics_url,
            database_url,
            settings,
            runtime,
            origin: Mutex::new(None),
        };
        stack.serve(app, false);
        stack.start_wrangler(edge_port)?;
        Ok(stack)
    }

    fn serve(&self, app: Application, tweaked: bool) {
        let state = app.app().clone();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (done_tx, done_rx) = oneshot::channel::<()>();
        self.runtime.spawn(async move {
            let result = app
                .run_until_stopped(async {
                    let _ = stop_rx.await;
                })
                .await;
            if let Err(e) = result {
                eprintln!("origin stopped with error: {e:#}");
            }
            let _ = done_tx.send(());
        });
        *self.origin.lock().expect("origin lock") =
            Some(RunningOrigin { stop: stop_tx, stopped: done_rx, app: state, tweaked });
    }

    fn start_wrangler(&self, port: u16) -> anyhow::Result<()> {
        self.runtime.block_on(wrangler_dev("wrangler.toml", port, &self.edge_vars(&[]), "/healthz"))
    }

    /// The `--var`s the stack's edge runs with (its origin, its secrets), and `more`:
    /// for a test that needs an edge of its own, set otherwise.
    pub fn edge_vars(&self, more: &[&str]) -> Vec<String> {
        let mut vars = vec![
            // Said outright rather than left to a `.dev.vars` a checkout may lack:
            // the development-only diagnostics and routes the tests use need it.
            "ENVIRONMENT:development".to_owned(),
        ];
        vars.extend(edge_vars_for(&self.origin_url));
        vars.extend(more.iter().map(|v| (*v).to_owned()));
        vars
    }

    /// Stops the origin (graceful: in-flight requests finish) and waits until it has.
    pub async fn stop_origin(&self) {
        let running = self.origin.lock().expect("origin lock").take();
        if let Some(running) = running {
            let _ = running.stop.send(());
            let _ = running.stopped.await;
        }
    }

    /// Starts the origin again, on the same port.
    pub async fn start_origin(&self) {
        self.start_origin_on(|_| {}, false).await
    }

    /// The origin runs, on the stack's own settings.
    fn origin_as_configured(&self) -> bool {
        self.origin.lock().expect("origin lock").as_ref().is_some_and(|o| !o.tweaked)
    }

    /// Starts the origin again, on the same port, with its settings changed by
    /// `tweak` until the next start.
    pub async fn start_origin_with(&self, tweak: impl FnOnce(&mut Settings)) {
        self.start_origin_on(tweak, true).await
    }

    /// Restarts the origin with Stripe as its payment provider, at `api_base` (a
    /// [`stripe_double::StripeDouble`]'s). The lease puts the stack's own back.
    pub async fn restart_origin_with_stripe(&self, api_base: String) {
        self.stop_origin().await;
        self.start_origin_with(move |s| {
            s.payments.provider = PaymentProvider::Stripe { api_key: "sk_test_double".into(), api_base };
        })
        .await;
    }

    async fn start_origin_on(&self, tweak: impl FnOnce(&mut Settings), tweaked: bool) {
        let mut settings = self.settings.clone();
        tweak(&mut settings);
        let app = self
            .runtime
            .spawn(async move { Application::build(settings).await })
            .await
            .expect("origin build task")
            .expect("origin restarts on its port");
        self.serve(app, tweaked);
    }

    /// Runs `f` with the running origin's state, on the origin's runtime (its pools
    /// belong there), and returns what it returns.
    pub async fn with_origin<F, Fut, T>(&self, f: F) -> T
    where
        F: FnOnce(drops_origin::App) -> Fut,
        Fut: std::future::Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let state = self.origin.lock().expect("origin lock").as_ref().map(|o| o.app.clone()).expect("origin running");
        self.runtime.spawn(f(state)).await.expect("task on the origin runtime")
    }

    /// Takes `n` connections of the running origin's pool (its background workers
    /// use them too: retries until it has them) and holds them until released.
    pub async fn hold_pool(&self, n: usize) -> PoolHold {
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let (taken_tx, taken) = tokio::sync::oneshot::channel::<()>();
        let (gone_tx, gone) = tokio::sync::oneshot::channel::<()>();
        self.with_origin(move |app| async move {
            tokio::spawn(async move {
                let mut held = Vec::new();
                while held.len() < n {
                    if let Ok(conn) = app.core.db.acquire().await {
                        held.push(conn);
                    }
                }
                let _ = taken_tx.send(());
                let _ = released.await;
                drop(held);
                let _ = gone_tx.send(());
            });
        })
        .await;
        tokio::time::timeout(Duration::from_secs(20), taken).await.expect("the pool's connections").expect("held");
        PoolHold { release, gone }
    }

    /// The edge's inventory of a drop, as reconciliation sees it.
    pub async fn snapshot(&self, drop_id: uuid::Uuid) -> drops_shared::internal::InventorySnapshot {
        self.with_origin(move |s| async move { s.core.edge.snapshot(drop_id).await })
            .await
            .expect("snapshot call")
            .expect("the edge knows the drop")
    }

    /// The state of a reservation's hold at the edge.
    pub async fn hold_state(&self, drop_id: uuid::Uuid, order_id: uuid::Uuid) -> drops_shared::internal::HoldState {
        let snapshot = self.snapshot(drop_id).await;
        snapshot.holds.iter().find(|h| h.reservation_id == order_id).map(|h| h.state).expect("hold exists")
    }

    /// Waits for the hold to follow its order (the edge sync runs after the order changed).
    pub async fn wait_hold(&self, drop_id: uuid::Uuid, order_id: uuid::Uuid, want: drops_shared::internal::HoldState) {
        for _ in 0..200 {
            if self.hold_state(drop_id, order_id).await == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("hold {order_id} never became {want:?}");
    }

    /// Waits until consumer group `consumer` has handled every event about
    /// `aggregate_id` so far, and, for a drop that has started, its `DropStarted`.
    pub async fn wait_consumed(&self, aggregate_id: uuid::Uuid, consumer: &str) {
        let db = self.db().await;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (unannounced, pending): (bool, i64) = sqlx::query_as(
                "SELECT EXISTS (SELECT 1 FROM drops WHERE id = $1 AND starts_at <= now() AND started_announced_at IS NULL),
                        (SELECT count(*) FROM outbox o WHERE o.aggregate_id = $1 AND NOT EXISTS
                           (SELECT 1 FROM processed_events p WHERE p.consumer = $2 AND p.event_id = o.id))",
            )
            .bind(aggregate_id)
            .bind(consumer)
            .fetch_one(&db)
            .await
            .expect("outbox and consumer state");
            if !unannounced && pending == 0 {
                return;
            }
            assert!(Instant::now() < deadline, "{consumer} has {pending} event(s) of {aggregate_id} pending");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A fresh connection pool on the test database, for the calling test's runtime.
    pub async fn db(&self) -> sqlx::PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect(&self.database_url)
            .await
            .expect("test database")
    }

    pub fn client(&self) -> Client {
        Client::new(self)
    }

    /// Delivers the drop's `DropStarted` to the consumers again, as a replay of the log does.
    pub async fn replay_drop_started(&self, drop_id: uuid::Uuid) {
        let seq: i64 =
            sqlx::query_scalar("SELECT seq FROM outbox WHERE aggregate_id = $1 AND event_type = 'DropStarted'")
                .bind(drop_id)
                .fetch_one(&self.db().await)
                .await
                .expect("the drop started");
        self.with_origin(move |s| async move { drops_origin::events::relay::replay(&s.core, seq, seq).await })
            .await
            .expect("replayed");
    }

    /// Starts a second origin instance beside the stack's own, as behind a load
    /// balancer: the same database, Redis and settings, its own port, background
    /// workers and sockets.
    pub async fn extra_origin(&self) -> ExtraOrigin {
        let mut settings = self.settings.clone();
        let port = free_port();
        settings.server.port = port;
        settings.server.public_url = format!("http://127.0.0.1:{port}");
        settings.server.metrics_port = 0;
        let app = self
            .runtime
            .spawn(async move { Application::build(settings).await })
            .await
            .expect("origin build task")
            .expect("a second origin starts");
        let (stop, stop_rx) = oneshot::channel::<()>();
        let (done_tx, stopped) = oneshot::channel::<()>();
        self.runtime.spawn(async move {
            let _ = app
                .run_until_stopped(async {
                    let _ = stop_rx.await;
                })
                .await;
            let _ = done_tx.send(());
        });
        ExtraOrigin { url: format!("http://127.0.0.1:{port}"), stop, stopped }
    }

    /// Opens `who`'s notification socket through the edge, as a browser does (a
    /// ticket first, then the socket with `?ticket=`), and collects what arrives on
    /// it (once the server's hello says the user is present).
    pub async fn listen(&self, who: &Buyer) -> (Socket, tokio::task::JoinHandle<()>) {
        let ticket = self.client().stream_ticket(&who.token).await;
        assert_eq!(ticket.status, reqwest::StatusCode::CREATED, "stream ticket: {:?}", ticket.json());
        let ticket = ticket.json()["ticket"].as_str().expect("a ticket").to_owned();
        let url = format!("{}/v1/notifications/stream?ticket={ticket}", self.edge_url.replace("http", "ws"));
        let (socket, _) = tokio_tungstenite::connect_async(url).await.expect("the stream opens through the edge");
        collect(socket).await
    }
}

/// Opens `who`'s notification socket on one origin instance directly (bearer
/// header, as a native app does), and collects what arrives on it.
pub async fn listen_on(origin_url: &str, who: &Buyer) -> (Socket, tokio::task::JoinHandle<()>) {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = format!("{}/v1/notifications/stream", origin_url.replace("http", "ws"))
        .into_client_request()
        .expect("a socket request");
    request.headers_mut().insert("authorization", format!("Bearer {}", who.token).parse().expect("a header"));
    let (socket, _) = tokio_tungstenite::connect_async(request).await.expect("the stream opens on the origin");
    collect(socket).await
}

/// Collects what arrives on a notification socket, once its hello says the user is present.
async fn collect(
    mut socket: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
) -> (Socket, tokio::task::JoinHandle<()>) {
    use futures::StreamExt;
    let got: Socket = Socket::default();
    let sink = got.clone();
    let task = tokio::spawn(async move {
        while let Some(Ok(msg)) = socket.next().await {
            if let tokio_tungstenite::tungstenite::Message::Text(t) = msg {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&t) {
                    sink.lock().expect("socket messages").push(v);
                }
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while !got.lock().expect("socket messages").iter().any(|m| m["kind"] == "hello") {
        assert!(Instant::now() < deadline, "no hello on the socket");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (got, task)
}

/// A second origin instance ([`Stack::extra_origin`]).
pub struct ExtraOrigin {
    pub url: String,
    stop: oneshot::Sender<()>,
    stopped: oneshot::Receiver<()>,
}

impl ExtraOrigin {
    /// Stops it (graceful) and waits until it has.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.stopped.await;
    }
}

/// The edge's variables every test stack gives it: the origin at `origin_url`, the
/// tests' secrets, and short retry and report periods.
pub fn edge_vars_for(origin_url: &str) -> Vec<String> {
    vec![
        format!("ORIGIN_URL:{origin_url}"),
        format!("JWT_SECRET:{JWT_SECRET}"),
        format!("EDGE_TO_ORIGIN_SECRET:{EDGE_TO_ORIGIN_SECRET}"),
        format!("ORIGIN_TO_EDGE_SECRET:{ORIGIN_TO_EDGE_SECRET}"),
        format!("MEDIA_LINK_SECRET:{MEDIA_LINK_SECRET}"),
        "FORWARD_RETRY_MAX_MS:2000".to_owned(),
        "REFUSAL_REPORT_MS:500".to_owned(),
    ]
}
