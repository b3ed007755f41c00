//! One kill scenario: a drop, a rush on it, one component SIGKILLed a moment into
//! the rush (and, but for an origin instance, started again after a while), then
//! the wait for quiet and the checks.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::check::{self, Check, DropUnderTest};
use super::rush::{self, Class, Http, RushSpec, Tally, Told};
use super::stack::{KillStack, REDIS_PREFIX};
use crate::client::{Client, DropSpec};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    Postgres,
    Redis,
    Origin,
    Workerd,
    /// Nothing is killed: the baseline, to tell the faults' effects from the rush's.
    Nothing,
}

impl Component {
    pub const ALL: [Component; 4] = [Component::Postgres, Component::Redis, Component::Origin, Component::Workerd];

    pub fn name(self) -> &'static str {
        match self {
            Component::Postgres => "postgres",
            Component::Redis => "redis",
            Component::Origin => "origin",
            Component::Workerd => "workerd",
            Component::Nothing => "none",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Component::Postgres => "the Postgres postmaster",
            Component::Redis => "Redis (AOF, fsync every second)",
            Component::Origin => "one of the two origin instances (not restarted)",
            Component::Workerd => "wrangler dev and its workerd (the whole process group)",
            Component::Nothing => "nothing (the baseline)",
        }
    }
}

impl std::str::FromStr for Component {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        Component::ALL
            .into_iter()
            .chain([Component::Nothing])
            .find(|c| c.name() == s)
            .ok_or_else(|| anyhow::anyhow!("unknown component `{s}` (postgres, redis, origin, workerd, none)"))
    }
}

#[derive(Debug, Clone)]
pub struct Spec {
    pub buyers: usize,
    pub units: u32,
    /// Buyers arrive evenly over this long.
    pub arrival: Duration,
    pub fans: usize,
    /// When into the rush the component is killed.
    pub kill_at: Duration,
    pub down: Duration,
    /// How long a client waits for an answer: beyond it, a hang.
    pub client_timeout: Duration,
    /// How long, after the component's return, everything may take to hold.
    pub quiet_within: Duration,
}

/// What Redis had just before the kill and just after it came back.
#[derive(Debug, Clone, Default)]
pub struct RedisLoss {
    pub stream_before: u64,
    pub stream_after: u64,
    pub set_before: u64,
    pub set_after: u64,
    /// Times the relay found the stream had lost entries it published, and
    /// republished them from the outbox.
    pub losses_noticed: i64,
}

pub struct Outcome {
    pub component: Component,
    pub spec: Spec,
    pub buyers: Value,
    pub while_down: Tally,
    /// The slowest answer (or wait for none) per family in that window.
    pub slowest_while_down: std::collections::BTreeMap<&'static str, Duration>,
    pub errors_while_down: Vec<String>,
    /// Lost answers, settled with the same key: (orders replayed, new orders, refusals).
    pub settled: (usize, usize, usize),
    pub checks: Vec<Check>,
    /// When each check first held, from the same moment as `held_after`.
    pub first_held: HashMap<&'static str, Duration>,
    /// When the last client was done (bought, paid or walked away, delivered its
    /// webhooks), from the same moment.
    pub clients_done: Duration,
    /// From the component's return (or the kill, for an origin instance) to every check holding.
    pub held_after: Option<Duration>,
    pub redis: Option<RedisLoss>,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }

    /// 5xx other than 503s, and hangs, while the component was down.
    pub fn bad_answers(&self) -> usize {
        self.while_down
            .values()
            .flat_map(|m| m.iter())
            .filter(|(c, _)| matches!(c, Class::ServerError | Class::Timeout))
            .map(|(_, n)| n)
            .sum()
    }
}

async fn redis_sample(stack: &KillStack, creator_id: uuid::Uuid) -> (u64, u64) {
    let Ok(mut conn) = stack.redis_conn().await else { return (0, 0) };
    let stream = drops_origin::events::stream_key(REDIS_PREFIX);
    let set = drops_origin::followers::set_key(REDIS_PREFIX, creator_id);
    let len: u64 = redis::cmd("XLEN").arg(stream).query_async(&mut conn).await.unwrap_or_default();
    let members: u64 = redis::cmd("ZCARD").arg(set).query_async(&mut conn).await.unwrap_or_default();
    (len, members)
}

pub async fn run(stack: &mut KillStack, component: Component, spec: &Spec) -> anyhow::Result<Outcome> {
    stack.revive_origins().await?;
    let client = Client {
        http: reqwest::Client::new(),
        edge: stack.edge_url(),
        origin: stack.origin_url(),
        metrics: String::new(),
    };
    let (creator_id, creator_token, product_id) = client.creator().await;
    let card = client.create_drop_as(&creator_token, product_id, DropSpec::live(spec.units, 2)).await;
    let drop_id = card["id"].as_str().and_then(|s| s.parse().ok()).expect("drop id");
    let drop = DropUnderTest { drop_id, creator_id, creator_token, total: spec.units };
    let http = Http::new(stack.edge_url(), stack.origin_url(), spec.client_timeout);

    let rush_spec = RushSpec {
        buyers: spec.buyers,
        arrival: spec.arrival,
        fans: spec.fans,
        pay_within: spec.down + Duration::from_secs(120),
    };
    let rush = {
        let (http, double) = (http.clone(), stack.double.clone());
        tokio::spawn(async move { rush::run(&http, &double, drop_id, creator_id, &rush_spec).await })
    };
    tokio::time::sleep(spec.kill_at).await;
    let mut redis = None;
    if component == Component::Redis {
        let (stream_before, set_before) = redis_sample(stack, creator_id).await;
        redis = Some(RedisLoss { stream_before, set_before, ..RedisLoss::default() });
    }
    let killed = Instant::now();
    match component {
        Component::Postgres => stack.pg.kill(),
        Component::Redis => stack.redis.kill(),
        Component::Origin => stack.origins[0].kill(),
        Component::Workerd => stack.edge.kill(),
        Component::Nothing => {}
    }
    tokio::time::sleep(spec.down).await;
    match component {
        Component::Postgres => stack.pg.start().await?,
        Component::Redis => stack.redis.start().await?,
        Component::Origin => {}
        Component::Workerd => stack.edge.start().await?,
        Component::Nothing => {}
    }
    if let Some(loss) = redis.as_mut() {
        (loss.stream_after, loss.set_after) = redis_sample(stack, creator_id).await;
    }
    let back = Instant::now();
    let (mut runs, fans) = rush.await?;
    let clients_done = Instant::now();
    let buyers = rush::summary(&runs);

    let unknown: Vec<usize> = (0..runs.len()).filter(|i| matches!(runs[*i].told, Told::Unknown(_))).collect();
    rush::settle(&http, drop_id, &mut runs).await;
    let mut settled = (0, 0, 0);
    for i in unknown {
        match runs[i].told {
            Told::Created { replayed: true, .. } => settled.0 += 1,
            Told::Created { .. } => settled.1 += 1,
            _ => settled.2 += 1,
        }
    }

    let app = drops_origin::startup::App::connect(stack.settings.clone()).await?;
    let db = stack.db().await?;
    // A kill is measured from the component's return; an origin instance does not return.
    let stays_down = matches!(component, Component::Origin | Component::Nothing);
    let since = if stays_down { killed } else { back };
    // The clients' own retries may run long past the component's return: the wait
    // for quiet starts when they are done, and the checks run at least once.
    let deadline = Instant::now().max(since) + spec.quiet_within;
    let (mut checks, mut held_after) = (Vec::new(), None);
    let mut first_held: HashMap<&'static str, Duration> = HashMap::new();
    while checks.is_empty() || Instant::now() < deadline {
        match check::repeatable(stack, &app, &db, &http, &drop, &runs, &fans).await {
            Ok(found) => {
                for c in found.iter().filter(|c| c.ok) {
                    first_held.entry(c.name).or_insert_with(|| since.elapsed());
                }
                let all = found.iter().all(|c| c.ok);
                checks = found;
                if all {
                    held_after = Some(since.elapsed());
                    break;
                }
            }
            Err(e) => checks = vec![Check { name: "checks ran", ok: false, detail: format!("{e:#}") }],
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    checks.push(check::reconciliation(&app, &drop).await);
    if let Some(loss) = redis.as_mut() {
        loss.losses_noticed = sqlx::query_scalar("SELECT losses FROM event_stream_progress WHERE stream = $1")
            .bind(drops_origin::events::stream_key(REDIS_PREFIX))
            .fetch_optional(&db)
            .await?
            .unwrap_or_default();
    }
    let window_end = if stays_down { killed + spec.down } else { back };
    let (while_down, slowest_while_down, errors_while_down) = http.tally(killed, window_end);
    Ok(Outcome {
        component,
        spec: spec.clone(),
        buyers,
        while_down,
        slowest_while_down,
        errors_while_down,
        settled,
        checks,
        first_held,
        held_after,
        clients_done: clients_done.saturating_duration_since(since),
        redis,
    })
}

/// The scenario's table, as the bin prints it.
pub fn render(o: &Outcome) -> String {
    let mut s = String::new();
    let spec = &o.spec;
    let _ = writeln!(
        s,
        "\n== {}: SIGKILL of {} {:.1} s into the rush{} ==",
        o.component.name(),
        o.component.what(),
        spec.kill_at.as_secs_f64(),
        if matches!(o.component, Component::Origin | Component::Nothing) {
            String::new()
        } else {
            format!(", back after {:.0} s", spec.down.as_secs_f64())
        }
    );
    let _ = writeln!(
        s,
        "rush: {} buyers over {:.0} s on {} units (up to 2 each), {} fans following and reading their inbox",
        spec.buyers,
        spec.arrival.as_secs_f64(),
        spec.units,
        spec.fans
    );
    let _ = writeln!(s, "buyers: {}", o.buyers);
    let window = if matches!(o.component, Component::Origin | Component::Nothing) {
        "in the first seconds after the kill"
    } else {
        "while it was down"
    };
    let _ = writeln!(s, "answers to requests started {window}:");
    let _ = write!(s, "  {:<8}", "family");
    for c in Class::ALL {
        let _ = write!(s, "{:>11}", c.label());
    }
    let _ = writeln!(s, "{:>11}", "slowest");
    for (family, counts) in &o.while_down {
        let _ = write!(s, "  {family:<8}");
        for c in Class::ALL {
            let _ = write!(s, "{:>11}", counts.get(&c).copied().unwrap_or_default());
        }
        let slowest = o.slowest_while_down.get(family).copied().unwrap_or_default();
        let _ = writeln!(s, "{:>10.2}s", slowest.as_secs_f64());
    }
    for e in o.errors_while_down.iter().take(5) {
        let _ = writeln!(s, "  unexpected: {e}");
    }
    let (replayed, new, refused) = o.settled;
    let _ = writeln!(
        s,
        "lost answers settled with the same key: {} ({replayed} were orders, answered as a replay; {new} bought now; {refused} refused)",
        replayed + new + refused
    );
    if let Some(r) = &o.redis {
        let _ = writeln!(
            s,
            "redis: event stream {} entries before the kill, {} after the restart; follower set {} → {}; losses the relay noticed and republished from the outbox: {}",
            r.stream_before, r.stream_after, r.set_before, r.set_after, r.losses_noticed
        );
    }
    match o.held_after {
        Some(t) => {
            let _ = writeln!(s, "checks (all held {:.1} s after the {}):", t.as_secs_f64(), since_what(o.component));
        }
        None => {
            let _ = writeln!(s, "checks (NOT all held within {:.0} s):", spec.quiet_within.as_secs_f64());
        }
    }
    let _ = writeln!(s, "  (the clients were done {:.1} s after it)", o.clients_done.as_secs_f64());
    for c in &o.checks {
        let at = o.first_held.get(c.name).map(|t| format!(" (from {:.1} s)", t.as_secs_f64())).unwrap_or_default();
        let _ = writeln!(s, "  [{}] {}{at}: {}", if c.ok { "ok" } else { "FAIL" }, c.name, c.detail);
    }
    s
}

fn since_what(c: Component) -> &'static str {
    if matches!(c, Component::Origin | Component::Nothing) {
        "kill"
    } else {
        "component came back"
    }
}
