//! The soak (issue 22): mixed traffic for minutes at about half of what the stack
//! sustains, sampling every 30 s the memory of each process (the origin, each
//! `workerd` and wrangler process of the edge and of the ceiling Worker beside it,
//! the Workers' own wasm memory), Postgres connections, Redis memory, the event
//! flow's lag and p99 per route family; at the end, a reconciliation run through the
//! origin's command line, the tables, whether memory stayed flat (each process at
//! the end within 10% of minute 5), and a chart under `target/soak/`.
//!
//! `cargo run --release -p drops-tests --bin soak -- [--minutes 30] [--rate <req/s>]
//! [--sample-secs 30] [--probe-secs 20] [--hold-secs 60] [--rush-secs 20]`
//!
//! It starts the tests' stack (a fresh database, Redis keys of its own, the edge
//! under `wrangler dev`), then runs the origin as a process of its own (this binary
//! again, `--origin serve`, configured from the environment as an operator would),
//! so that its memory is its own and not the load generator's; and the ceiling
//! Worker under a second `wrangler dev`, sent as many trivial requests as ours get,
//! so that the runtime's own memory has a baseline beside ours.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use drops_tests::soak::sample::Watched;
use drops_tests::soak::{self, chart, report, Options, Target};
use drops_tests::{free_port, wrangler_dev, Stack};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--origin") {
        return origin_command(&args[2..]);
    }
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(soak(&args[1..]))
}

/// The origin's own command line (`drops-origin <args>`), configured from the
/// environment: `serve` for the origin under soak, `reconcile` at the end.
fn origin_command(args: &[String]) -> anyhow::Result<()> {
    use clap::Parser;
    let cli =
        drops_origin::cli::Cli::parse_from(std::iter::once("drops-origin".to_owned()).chain(args.iter().cloned()));
    let settings = drops_origin::config::Settings::load()?;
    drops_origin::telemetry::init(&settings);
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(drops_origin::cli::run(cli, settings))
}

fn flag<T: std::str::FromStr>(args: &[String], name: &str) -> Option<T> {
    args.windows(2).find(|w| w[0] == name).and_then(|w| w[1].parse().ok())
}

/// The origin's settings as `DROPS_*` variables: the stack's database, Redis keys,
/// ports and secrets; otherwise the defaults an operator starts from (the
/// reconciliation loop included, every 60 s).
fn origin_env(stack: &Stack) -> Vec<(String, String)> {
    let s = &stack.settings;
    let redis = std::env::var("DROPS_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    [
        ("ENVIRONMENT", "development".to_owned()),
        ("PORT", s.server.port.to_string()),
        ("PUBLIC_URL", stack.origin_url.clone()),
        ("METRICS_PORT", s.server.metrics_port.to_string()),
        ("EDGE_URL", s.edge.url.clone()),
        ("DATABASE_URL", stack.database_url.clone()),
        ("REDIS_URL", redis),
        ("REDIS_PREFIX", s.redis.prefix.clone()),
        ("JWT_SECRET", drops_tests::JWT_SECRET.to_owned()),
        ("EDGE_TO_ORIGIN_SECRET", drops_tests::EDGE_TO_ORIGIN_SECRET.to_owned()),
        ("ORIGIN_TO_EDGE_SECRET", drops_tests::ORIGIN_TO_EDGE_SECRET.to_owned()),
        ("WEBHOOK_SECRETS", drops_tests::WEBHOOK_SECRET.to_owned()),
        ("PUSH_PROVIDER", "callback".to_owned()),
        ("PUSH_CALLBACK_SECRET", drops_tests::PUSH_SECRET.to_owned()),
        ("LOG_FORMAT", "json".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (format!("DROPS_{k}"), v))
    .chain([("RUST_LOG".to_owned(), "warn".to_owned())])
    .collect()
}

/// A child process that gets SIGTERM when this process dies, however it dies.
fn spawn_origin(env: &[(String, String)], args: &[&str], log: &std::path::Path) -> anyhow::Result<Child> {
    use std::os::unix::process::CommandExt;
    let log = std::fs::File::create(log)?;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("--origin").args(args).envs(env.iter().cloned()).stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
    // SAFETY: prctl only, between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    Ok(cmd.spawn()?)
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGTERM);
        }
        let _ = self.0.wait();
    }
}

async fn soak(args: &[String]) -> anyhow::Result<()> {
    let minutes: f64 = flag(args, "--minutes").unwrap_or(30.0);
    let options = Options {
        duration: Duration::from_secs_f64(minutes * 60.0),
        rate: flag(args, "--rate"),
        sample_every: Duration::from_secs(flag(args, "--sample-secs").unwrap_or(30)),
        probe: Duration::from_secs(flag(args, "--probe-secs").unwrap_or(20)),
        hold_seconds: flag(args, "--hold-secs").unwrap_or(60),
        rush_every: Duration::from_secs(flag(args, "--rush-secs").unwrap_or(20)),
        in_flight: 256,
    };
    let out_dir = drops_tests::repo_root().join("target/soak");
    std::fs::create_dir_all(&out_dir)?;
    let stamp = chrono::Utc::now().format("%Y%m%d-%H%M%S").to_string();

    println!("starting the stack...");
    let stack = Stack::get();
    // The origin, as a process of its own on the stack's port (the edge calls it there).
    stack.stop_origin().await;
    let env = origin_env(stack);
    let origin_log = out_dir.join(format!("soak-{stamp}-origin.log"));
    let origin = Killed(spawn_origin(&env, &["serve"], &origin_log)?);
    let http = reqwest::Client::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !http.get(format!("{}/healthz", stack.origin_url)).send().await.is_ok_and(|r| r.status().is_success()) {
        anyhow::ensure!(std::time::Instant::now() < deadline, "the origin did not start; see {}", origin_log.display());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("starting the ceiling Worker under a wrangler dev of its own...");
    let ceiling_port = free_port();
    wrangler_dev("ceiling/wrangler.toml", ceiling_port, &[], "/fixed").await?;
    let edge_port: u16 = stack.edge_url.rsplit(':').next().and_then(|p| p.parse().ok()).expect("the edge's port");

    let target = Target {
        client: stack.client(),
        ceiling_url: Some(format!("http://127.0.0.1:{ceiling_port}")),
        metrics_url: stack.metrics_url.clone(),
        database_url: stack.database_url.clone(),
        redis_url: env.iter().find(|(k, _)| k == "DROPS_REDIS_URL").map(|(_, v)| v.clone()).unwrap_or_default(),
        redis_prefix: stack.settings.redis.prefix.clone(),
        watched: vec![
            Watched::Pid { label: "origin".into(), pid: origin.0.id() },
            Watched::Wrangler { label: "edge".into(), port: edge_port },
            Watched::Wrangler { label: "ceiling".into(), port: ceiling_port },
            Watched::Pid { label: "soak (load)".into(), pid: std::process::id() },
        ],
    };
    println!(
        "soaking for {minutes} min, sampling every {} s (origin log: {})",
        options.sample_every.as_secs(),
        origin_log.display()
    );
    let run = soak::run(&target, &options).await?;

    let db = stack.db().await;
    let drops = run.world.drop_ids();
    let quiet =
        soak::settle(&db, &target.redis_prefix, &drops, Duration::from_secs(u64::from(options.hold_seconds) + 180))
            .await;
    let reconciled =
        spawn_origin(&env, &["reconcile"], &out_dir.join(format!("soak-{stamp}-reconcile.log")))?.wait()?;
    let reconcile_out = std::fs::read_to_string(out_dir.join(format!("soak-{stamp}-reconcile.log")))?;
    let final_repairs: Option<u64> =
        reconcile_out.lines().find_map(|l| l.strip_suffix(" repair(s)")).and_then(|n| n.trim().parse().ok());
    let loop_repairs: i64 =
        sqlx::query_scalar("SELECT count(*) FROM reconcile_audit").fetch_one(&db).await.unwrap_or(-1);
    // Which repairs the loop made, and why: drift in normal traffic is either the
    // loop racing the event flow or a fault, and the reasons tell which.
    let repairs_by_kind: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT repair, reason, count(*) FROM reconcile_audit GROUP BY repair, reason ORDER BY count(*) DESC",
    )
    .fetch_all(&db)
    .await
    .unwrap_or_default();
    drop(origin);

    let tables = report::tables(&run.samples, &run.world.stats);
    let chart_path = out_dir.join(format!("soak-{stamp}.png"));
    let title = format!("soak {minutes} min at {:.0} req/s", run.rate);
    let charted = chart::draw(&chart_path, &title, &run.samples);
    let o = &run.world.outcomes;
    let n = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    let mut summary = String::new();
    use std::fmt::Write as _;
    let _ = writeln!(summary, "\n## Soak {stamp}: {minutes} min at {:.0} req/s", run.rate);
    let _ = writeln!(summary, "\ncommand: soak {}", args.join(" "));
    if let Some(c) = run.capacity {
        let _ = writeln!(summary, "capacity measured: {c:.0} req/s (the mix, 32 clients back to back)");
    }
    let _ = writeln!(
        summary,
        "requests {}; reserved {}, paid {}, payment failed {}, cancelled {}, abandoned (left to expire) {}, \
         sold out answers {}, rush drops {}, uploads {}, ticks shed by the generator {}",
        run.world.stats.requests(),
        n(&o.reserved),
        n(&o.paid),
        n(&o.payment_failed),
        n(&o.cancelled),
        n(&o.abandoned),
        n(&o.sold_out),
        n(&o.drops_created),
        n(&o.uploads),
        n(&o.shed)
    );
    let _ = writeln!(summary, "orders by status: {:?}", soak::orders_by_status(&db).await?);
    match &quiet {
        Ok(took) => _ = writeln!(summary, "quiet {:.1} s after the traffic stopped", took.as_secs_f64()),
        Err(e) => _ = writeln!(summary, "NOT QUIET: {e:#}"),
    }
    let _ = writeln!(
        summary,
        "reconciliation at the end (drops-origin reconcile, exit {}): {} repair(s); the 60 s loop repaired {} during the run",
        reconciled,
        final_repairs.map_or("?".into(), |r| r.to_string()),
        loop_repairs
    );
    for (repair, reason, count) in &repairs_by_kind {
        let _ = writeln!(summary, "  {count} × {repair}: {reason}");
    }
    let _ = writeln!(
        summary,
        "errors (ours, 5xx or no answer): {:?}",
        run.world.stats.our_statuses().into_iter().filter(|(s, _)| soak::stats::is_error(*s)).collect::<Vec<_>>()
    );
    match &charted {
        Ok(()) => _ = writeln!(summary, "chart: {}", chart_path.display()),
        Err(e) => _ = writeln!(summary, "chart failed: {e}"),
    }
    let text = format!("{summary}\n{tables}");
    println!("{text}");
    std::fs::write(out_dir.join(format!("soak-{stamp}.md")), &text)?;
    anyhow::ensure!(quiet.is_ok(), "the platform did not become quiet");
    anyhow::ensure!(final_repairs == Some(0), "reconciliation found drift: {reconcile_out}");
    Ok(())
}
