//! The soak (issue 22): mixed traffic through the edge for a long while at about
//! half of what the stack sustains, with everything that could grow sampled as it
//! goes, and the ceiling Worker under the same `wrangler dev` receiving as many
//! trivial requests, so that the runtime's own memory has a baseline beside ours.
//!
//! - [`traffic`]: the mix (browse, follow, buy, rush, pay, cancel, expire, inbox,
//!   media), sent open-loop at a rate, and the capacity probe;
//! - [`sample`]: one sample of memory (each process, the Workers' wasm memory),
//!   Postgres, Redis, the event flow and p99 per route family;
//! - [`stats`]: latencies and answers per route family;
//! - [`report`]: the tables and whether memory stayed flat;
//! - [`chart`]: the PNG of memory and p99 over time.
//!
//! The bin (`src/bin/soak.rs`) runs it for minutes on a stack of its own; the
//! end-to-end suite (`tests/e2e/soak.rs`) for seconds on the suite's.

pub mod chart;
pub mod report;
pub mod sample;
pub mod stats;
pub mod traffic;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sample::{Sample, Sampler, Watched};
use traffic::World;

use crate::Client;

pub struct Options {
    pub duration: Duration,
    /// Requests a second; `None`: half of what the capacity probe measures.
    pub rate: Option<f64>,
    pub sample_every: Duration,
    /// How long the capacity probe runs.
    pub probe: Duration,
    /// Drops' `hold_seconds`: short, so that abandoned holds expire during the run.
    pub hold_seconds: u32,
    /// How often a creator starts a small drop that the rush sells out.
    pub rush_every: Duration,
    /// Requests in flight at most, of ours and of the ceiling's each.
    pub in_flight: usize,
}

/// Where the stack under soak is.
pub struct Target {
    /// Through the edge, for the set-up (creators, products, the long drop).
    pub client: Client,
    /// The ceiling Worker, if it runs beside the edge.
    pub ceiling_url: Option<String>,
    /// The origin's operators' listener (`/metrics`).
    pub metrics_url: String,
    pub database_url: String,
    pub redis_url: String,
    pub redis_prefix: String,
    pub watched: Vec<Watched>,
}

pub struct Run {
    pub world: Arc<World>,
    pub samples: Vec<Sample>,
    pub rate: f64,
    /// What the probe measured, when it ran.
    pub capacity: Option<f64>,
}

fn progress(s: &Sample) -> String {
    let procs: Vec<String> =
        s.procs.iter().filter(|p| p.rss_mib >= 5.0).map(|p| format!("{} {:.0}", p.label, p.rss_mib)).collect();
    let p99 = |f: stats::Family| {
        s.window.get(&f).filter(|w| w.count > 0).map_or("—".into(), |w| format!("{:.0}", w.p99_ms))
    };
    format!(
        "[{:5.1} min] {} req; RSS MiB: {}; wasm MiB edge {:.1?} ceiling {:.1?}; PG conns {}; Redis {:.1} MiB; \
         unpublished {:.0} ({:.1} s), unfinished {:.0} ({:.1} s); p99 ms card {} buy {} pay {} ceiling {}; errors {:?}; edge census {}",
        s.at_secs / 60.0,
        s.requests,
        procs.join(", "),
        s.edge_wasm_mib,
        s.ceiling_wasm_mib,
        s.pg_connections,
        s.redis_used_mib,
        s.outbox_unpublished,
        s.outbox_lag_secs,
        s.events_unfinished,
        s.events_unfinished_secs,
        p99(stats::Family::Card),
        p99(stats::Family::Buy),
        p99(stats::Family::Pay),
        p99(stats::Family::Ceiling),
        s.errors,
        s.edge_census.as_deref().unwrap_or("—"),
    )
}

/// Sets up the traffic's users and drops, finds the rate (or takes it), then sends
/// the mix for `options.duration`, sampling every `options.sample_every` (and once
/// at the start and once at the end).
pub async fn run(target: &Target, options: &Options) -> anyhow::Result<Run> {
    let world = World::new(&target.client, target.ceiling_url.clone(), options.hold_seconds).await;
    let capacity = match options.rate {
        Some(_) => None,
        None => {
            println!("measuring what the mix sustains ({} s, 32 clients back to back)...", options.probe.as_secs());
            Some(traffic::capacity(world.clone(), 32, options.probe).await)
        }
    };
    let rate = options.rate.or(capacity.map(|c| c / 2.0)).unwrap_or(10.0).max(1.0);
    if let Some(c) = capacity {
        println!("capacity {c:.0} req/s; soaking at half: {rate:.0} req/s");
    }
    let redis = redis::Client::open(target.redis_url.as_str())?.get_multiplexed_async_connection().await?;
    let mut sampler = Sampler {
        // Node's HTTP server (wrangler dev) closes a connection idle for 5 s, the
        // smoke's sampling period: a pooled one could be reused as it closes.
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(2))
            .build()?,
        edge_url: target.client.edge.clone(),
        ceiling_url: target.ceiling_url.clone(),
        metrics_url: target.metrics_url.clone(),
        db: sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(&target.database_url).await?,
        redis,
        redis_prefix: target.redis_prefix.clone(),
        watched: target.watched.clone(),
    };
    let started = Instant::now();
    let until = started + options.duration;
    let driver = tokio::spawn(traffic::drive(world.clone(), rate, until, options.in_flight, options.rush_every));
    let mut samples = vec![sampler.sample(0.0, &world.stats).await];
    println!("{}", progress(&samples[0]));
    loop {
        let next = started + options.sample_every * samples.len() as u32;
        if next > until {
            break;
        }
        tokio::time::sleep_until(next.into()).await;
        let s = sampler.sample(started.elapsed().as_secs_f64(), &world.stats).await;
        println!("{}", progress(&s));
        samples.push(s);
    }
    driver.await?;
    if samples.last().is_some_and(|s| s.at_secs + 2.0 < options.duration.as_secs_f64()) {
        let s = sampler.sample(started.elapsed().as_secs_f64(), &world.stats).await;
        println!("{}", progress(&s));
        samples.push(s);
    }
    Ok(Run { world, samples, rate, capacity })
}

/// Orders of the run's database by status.
pub async fn orders_by_status(db: &sqlx::PgPool) -> anyhow::Result<BTreeMap<String, i64>> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM orders GROUP BY status").fetch_all(db).await?;
    Ok(rows.into_iter().collect())
}

/// Waits until the run is quiet: no hold of its drops still running (each paid,
/// failed, cancelled or expired, and the origin told), and every event about its
/// drops and orders published and finished by every consumer group (below the
/// relay's watermark, `event_stream_progress`). Answers how long that took.
pub async fn settle(
    db: &sqlx::PgPool,
    redis_prefix: &str,
    drop_ids: &[uuid::Uuid],
    within: Duration,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        let (reserved, unfinished): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM orders WHERE status = 'reserved' AND drop_id = ANY($1)),
                    (SELECT count(*) FROM outbox o
                      WHERE (o.aggregate_id = ANY($1)
                             OR o.aggregate_id IN (SELECT id FROM orders WHERE drop_id = ANY($1)))
                        AND (o.published_seq IS NULL OR o.published_seq >= coalesce(
                              (SELECT finished_below FROM event_stream_progress WHERE stream = $2), 0)))",
        )
        .bind(drop_ids)
        .bind(format!("{redis_prefix}:events"))
        .fetch_one(db)
        .await?;
        if reserved == 0 && unfinished == 0 {
            return Ok(started.elapsed());
        }
        anyhow::ensure!(
            started.elapsed() < within,
            "not quiet after {within:?}: {reserved} holds running, {unfinished} events not finished by every group"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
