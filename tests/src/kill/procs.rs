//! The processes of the private stack, each one the harness can SIGKILL and start
//! again: a Postgres cluster of its own (initdb into a temporary directory), a Redis
//! with the persistence we recommend for production, origin instances, and
//! `wrangler dev` on a persisted state directory.
//!
//! Every process is started in a process group of its own, and the groups are
//! killed when the harness process exits (an `atexit` hook) as well as when the
//! stack is dropped, so a panicking test leaves nothing behind. The machine's shared
//! Postgres and Redis are never touched.

use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// Process groups this harness started, killed at exit.
static GROUPS: Mutex<Vec<i32>> = Mutex::new(Vec::new());

extern "C" fn kill_groups() {
    for pgid in GROUPS.lock().map(|g| g.clone()).unwrap_or_default() {
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }
}

fn register(pgid: i32) {
    let mut groups = GROUPS.lock().expect("groups");
    if groups.is_empty() {
        unsafe {
            libc::atexit(kill_groups);
        }
    }
    groups.push(pgid);
}

fn unregister(pgid: i32) {
    GROUPS.lock().expect("groups").retain(|g| *g != pgid);
}

/// A child in its own process group.
struct Proc {
    child: Child,
}

impl Proc {
    fn spawn(mut cmd: Command, log: &Path) -> anyhow::Result<Proc> {
        let out = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
        cmd.stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out).process_group(0);
        let child = cmd.spawn().map_err(|e| anyhow::anyhow!("starting {cmd:?}: {e}"))?;
        register(child.id() as i32);
        Ok(Proc { child })
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// SIGKILL to the process alone (its children, if any, are left to notice).
    fn kill_leader(&mut self) {
        unsafe {
            libc::kill(self.pid(), libc::SIGKILL);
        }
        let _ = self.child.wait();
    }

    /// SIGKILL to the whole group.
    fn kill_group(&mut self) {
        unsafe {
            libc::kill(-self.pid(), libc::SIGKILL);
        }
        let _ = self.child.wait();
        unregister(self.pid());
    }

    fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// A Postgres cluster of the harness's own. Postgres refuses to run as root, and the
/// harness usually is root: the cluster belongs to the `postgres` user (initdb and
/// the server run under its uid), or to the harness's user when it is not root.
pub struct Postgres {
    dir: PathBuf,
    pub port: u16,
    owner: Option<(u32, u32)>,
    proc: Mutex<Option<Proc>>,
}

impl Postgres {
    pub fn init(root: &Path, port: u16) -> anyhow::Result<Postgres> {
        let dir = root.join("pg");
        std::fs::create_dir_all(&dir)?;
        let owner = if unsafe { libc::geteuid() } == 0 { Some(user_ids("postgres")?) } else { None };
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))?;
        }
        let mut initdb = Command::new(format!("{PG_BIN}/initdb"));
        initdb.args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync", "-D"]).arg(dir.join("data"));
        if let Some((uid, gid)) = owner {
            initdb.uid(uid).gid(gid);
        }
        let out = initdb.output()?;
        anyhow::ensure!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        Ok(Postgres { dir, port, owner, proc: Mutex::new(None) })
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    fn log(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    /// Starts the postmaster and waits until it takes connections. Just after a
    /// SIGKILL, the old backends may still hold the shared memory for a moment
    /// (they leave once they notice their postmaster is gone): then it tries again.
    pub async fn start(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut cmd = Command::new(format!("{PG_BIN}/postgres"));
            cmd.arg("-D").arg(self.dir.join("data"));
            cmd.args(["-p", &self.port.to_string(), "-c", "listen_addresses=127.0.0.1", "-k"]).arg(&self.dir);
            // Two origins' pools, the harness's checks, and reconnection storms after a restart.
            cmd.args(["-c", "max_connections=200", "-c", "shared_buffers=64MB"]);
            if let Some((uid, gid)) = self.owner {
                cmd.uid(uid).gid(gid);
            }
            let mut proc = Proc::spawn(cmd, &self.log())?;
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(20) && !proc.exited() {
                if ready(&self.url("postgres")).await {
                    *self.proc.lock().expect("postgres") = Some(proc);
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            proc.kill_group();
            anyhow::ensure!(Instant::now() < deadline, "postgres did not start; its log:\n{}", tail(&self.log()));
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// SIGKILL to the postmaster only, as when it crashes: its backends are left to
    /// find out.
    pub fn kill(&self) {
        if let Some(mut proc) = self.proc.lock().expect("postgres").take() {
            proc.kill_leader();
            // The backends leave by themselves; the group stays registered until then.
        }
    }

    pub fn stop(&self) {
        if let Some(mut proc) = self.proc.lock().expect("postgres").take() {
            proc.kill_group();
        }
    }
}

async fn ready(url: &str) -> bool {
    use sqlx::Connection;
    match tokio::time::timeout(Duration::from_secs(2), sqlx::PgConnection::connect(url)).await {
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
            true
        }
        _ => false,
    }
}

fn user_ids(name: &str) -> anyhow::Result<(u32, u32)> {
    let c = std::ffi::CString::new(name)?;
    let pw = unsafe { libc::getpwnam(c.as_ptr()) };
    anyhow::ensure!(!pw.is_null(), "no user `{name}` to run Postgres as (it refuses to run as root)");
    Ok(unsafe { ((*pw).pw_uid, (*pw).pw_gid) })
}

/// A Redis of the harness's own, with the persistence we recommend for production:
/// an append-only file fsynced every second (`appendonly yes`, `appendfsync
/// everysec`). Killed, it comes back from that file, short of at most about the
/// last second of writes.
pub struct Redis {
    dir: PathBuf,
    pub port: u16,
    proc: Mutex<Option<Proc>>,
}

impl Redis {
    pub fn new(root: &Path, port: u16) -> anyhow::Result<Redis> {
        let dir = root.join("redis");
        std::fs::create_dir_all(&dir)?;
        Ok(Redis { dir, port, proc: Mutex::new(None) })
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub async fn start(&self) -> anyhow::Result<()> {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--dir"]).arg(&self.dir);
        cmd.args(["--appendonly", "yes", "--appendfsync", "everysec", "--save", ""]);
        let log = self.dir.join("redis.log");
        let mut proc = Proc::spawn(cmd, &log)?;
        let client = redis::Client::open(self.url())?;
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) && !proc.exited() {
            if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
                // PING answers while the AOF is still loading (LOADING errors for the rest).
                if redis::cmd("GET").arg("drops-kill-probe").query_async::<Option<String>>(&mut conn).await.is_ok() {
                    *self.proc.lock().expect("redis") = Some(proc);
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        proc.kill_group();
        anyhow::bail!("redis did not start; its log:\n{}", tail(&log))
    }

    pub fn kill(&self) {
        if let Some(mut proc) = self.proc.lock().expect("redis").take() {
            proc.kill_group();
        }
    }
}

/// One origin instance: the origin's own command line (`serve`) in a process of its
/// own, so that it can be SIGKILLed alone.
pub struct Origin {
    pub port: u16,
    pub metrics_port: u16,
    log: PathBuf,
    proc: Mutex<Option<Proc>>,
}

impl Origin {
    /// Starts `exe origin serve` (see [`crate::kill::origin_main`]) with `env`,
    /// and waits until its `/healthz` answers.
    pub async fn start(
        exe: &Path,
        root: &Path,
        name: &str,
        env: &HashMap<String, String>,
        port: u16,
        metrics_port: u16,
    ) -> anyhow::Result<Origin> {
        let log = root.join(format!("{name}.log"));
        let mut cmd = Command::new(exe);
        cmd.args(["origin", "serve"]).envs(env);
        cmd.env("DROPS_PORT", port.to_string()).env("DROPS_METRICS_PORT", metrics_port.to_string());
        let mut proc = Proc::spawn(cmd, &log)?;
        let http = reqwest::Client::new();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(60) && !proc.exited() {
            let up = http.get(format!("http://127.0.0.1:{port}/healthz")).send().await;
            if up.is_ok_and(|r| r.status().is_success()) {
                return Ok(Origin { port, metrics_port, log, proc: Mutex::new(Some(proc)) });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        proc.kill_group();
        anyhow::bail!("origin {name} did not start; its log:\n{}", tail(&log))
    }

    pub fn kill(&self) {
        if let Some(mut proc) = self.proc.lock().expect("origin").take() {
            proc.kill_group();
        }
    }

    pub fn running(&self) -> bool {
        self.proc.lock().expect("origin").as_mut().is_some_and(|p| !p.exited())
    }

    pub fn log_tail(&self) -> String {
        tail(&self.log)
    }
}

/// `wrangler dev` on the project's Worker, on a fixed port and a state directory
/// kept across restarts (`--persist-to`): killed and started again, the Durable
/// Objects find their SQLite storage as they left it.
pub struct Edge {
    pub port: u16,
    state_dir: PathBuf,
    log: PathBuf,
    vars: Vec<String>,
    proc: Mutex<Option<Proc>>,
}

impl Edge {
    pub fn new(root: &Path, port: u16, vars: Vec<String>) -> Edge {
        Edge {
            port,
            state_dir: root.join("wrangler-state"),
            log: root.join("wrangler.log"),
            vars,
            proc: Mutex::new(None),
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub async fn start(&self) -> anyhow::Result<()> {
        let root = crate::repo_root();
        let config = crate::prebuilt(&root, "wrangler.toml")?;
        let mut cmd = Command::new(root.join("node_modules/.bin/wrangler"));
        cmd.current_dir(&root)
            .args(["dev", "-c", &config, "--ip", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--inspector-port", &crate::free_port().to_string()])
            .arg("--persist-to")
            .arg(&self.state_dir)
            .args(["--log-level", "warn", "--show-interactive-dev-session=false"])
            .env("WRANGLER_SEND_METRICS", "false")
            .env("CI", "true");
        for v in &self.vars {
            cmd.args(["--var", v]);
        }
        let mut proc = Proc::spawn(cmd, &self.log)?;
        let http = reqwest::Client::new();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(180) && !proc.exited() {
            let up = http.get(format!("{}/healthz", self.url())).send().await;
            if up.is_ok_and(|r| r.status().is_success()) {
                *self.proc.lock().expect("edge") = Some(proc);
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        proc.kill_group();
        anyhow::bail!("wrangler dev did not start; its log:\n{}", tail(&self.log))
    }

    /// SIGKILL to wrangler's whole process group: the node process and its workerd.
    pub fn kill(&self) {
        if let Some(mut proc) = self.proc.lock().expect("edge").take() {
            proc.kill_group();
        }
    }
}
