//! One sample of everything the soak watches: the memory of each process (read from
//! `/proc`), the Workers' wasm memory, Postgres connections, Redis memory, the event
//! flow's lag, and the traffic's p99 per route family over the last window.

use std::collections::BTreeMap;
use std::time::Duration;

use super::stats::{Family, Figures, Stats};

/// Processes the soak watches, found again at every sample (a runtime that
/// restarts one shows up as a new pid).
#[derive(Debug, Clone)]
pub enum Watched {
    /// One process.
    Pid { label: String, pid: u32 },
    /// Every process of the process group of the `wrangler dev` serving `port`:
    /// wrangler's node processes and the `workerd`s it started.
    Wrangler { label: String, port: u16 },
}

#[derive(Debug, Clone)]
pub struct ProcSample {
    pub label: String,
    pub pid: u32,
    /// Resident memory, MiB.
    pub rss_mib: f64,
    /// Of which private, anonymous (the heap; not file-backed or shared pages), MiB.
    pub anon_mib: f64,
}

#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// Seconds since the traffic began.
    pub at_secs: f64,
    pub procs: Vec<ProcSample>,
    /// `x-dev-wasm-memory-bytes` of the edge's `/healthz`, MiB.
    pub edge_wasm_mib: Option<f64>,
    /// `x-dev-census` of the same answer: the Rust heap's bytes in use, the
    /// inventory objects alive in the isolate, and each in-memory map's entries.
    pub edge_census: Option<String>,
    /// The rust heap's bytes in use, from the census, MiB.
    pub edge_heap_mib: Option<f64>,
    /// The same of the ceiling Worker, MiB.
    pub ceiling_wasm_mib: Option<f64>,
    /// Connections to the run's database (`pg_stat_activity`).
    pub pg_connections: i64,
    /// Resident memory of the Postgres backends serving them, summed, MiB (shared
    /// buffers count in each backend that touched them).
    pub pg_backends_rss_mib: f64,
    /// The Redis server's `used_memory` (shared with whatever else uses that server), MiB.
    pub redis_used_mib: f64,
    /// Entries in the run's event stream.
    pub stream_len: u64,
    /// The origin's own view of the event flow (`/metrics`): events not yet
    /// published, the oldest one's age, events published but not finished by every
    /// consumer group, and the oldest of those's age.
    pub outbox_unpublished: f64,
    pub outbox_lag_secs: f64,
    pub events_unfinished: f64,
    pub events_unfinished_secs: f64,
    /// Each family's latencies over the window that ended with this sample.
    pub window: BTreeMap<Family, Figures>,
    /// Requests so far, and errors so far by status (ours, not the ceiling's).
    pub requests: u64,
    pub errors: BTreeMap<u16, u64>,
}

impl Sample {
    pub fn proc(&self, label: &str) -> Option<&ProcSample> {
        self.procs.iter().find(|p| p.label == label)
    }

    /// Resident memory of the processes whose label starts with `prefix`, MiB.
    pub fn rss_of(&self, prefix: &str) -> f64 {
        self.procs.iter().filter(|p| p.label.starts_with(prefix)).map(|p| p.rss_mib).sum()
    }
}

/// `/proc/<pid>/status` field `name` (in kB), if the process exists.
fn status_kib(status: &str, name: &str) -> Option<f64> {
    status.lines().find(|l| l.starts_with(name))?.split_whitespace().nth(1)?.parse().ok()
}

/// A process's resident and anonymous memory, MiB.
pub fn memory(pid: u32) -> Option<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some((status_kib(&status, "VmRSS:")? / 1024.0, status_kib(&status, "RssAnon:").unwrap_or(0.0) / 1024.0))
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).map(|c| c.trim().to_owned()).unwrap_or_default()
}

fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| b.split(|c| *c == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect())
        .unwrap_or_default()
}

/// The process group of `pid`.
fn pgrp(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) in parentheses: state, ppid, pgrp.
    stat.rsplit_once(')')?.1.split_whitespace().nth(2)?.parse().ok()
}

fn pids() -> Vec<u32> {
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")
        .map(|d| d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default();
    pids.sort_unstable();
    pids
}

/// The processes of the `wrangler dev` serving `port`, as (pid, comm), oldest first.
pub fn wrangler_processes(port: u16) -> Vec<(u32, String)> {
    let all = pids();
    let port = port.to_string();
    let serving = all.iter().copied().find(|pid| {
        let args = cmdline(*pid);
        args.iter().any(|a| a == "dev") && args.windows(2).any(|w| w[0] == "--port" && w[1] == port)
    });
    let Some(group) = serving.and_then(pgrp) else { return Vec::new() };
    all.into_iter().filter(|pid| pgrp(*pid) == Some(group)).map(|pid| (pid, comm(pid))).collect()
}

/// Resolves the watched processes to labelled pids. Within a `wrangler dev`, a
/// process is labelled by its group and command, numbered when there are several
/// (`edge workerd 1`, `edge workerd 2`), in pid order.
pub fn resolve(watched: &[Watched]) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    for w in watched {
        match w {
            Watched::Pid { label, pid } => out.push((label.clone(), *pid)),
            Watched::Wrangler { label, port } => {
                let procs = wrangler_processes(*port);
                let mut seen: BTreeMap<String, usize> = BTreeMap::new();
                for (_, c) in &procs {
                    *seen.entry(c.clone()).or_insert(0) += 1;
                }
                let mut numbered: BTreeMap<String, usize> = BTreeMap::new();
                for (pid, c) in procs {
                    let label = if seen[&c] > 1 {
                        let n = numbered.entry(c.clone()).or_insert(0);
                        *n += 1;
                        format!("{label} {c} {n}")
                    } else {
                        format!("{label} {c}")
                    };
                    out.push((label, pid));
                }
            }
        }
    }
    out
}

/// What the sampler reads from.
pub struct Sampler {
    pub http: reqwest::Client,
    pub edge_url: String,
    pub ceiling_url: Option<String>,
    /// The origin's operators' listener (`/metrics`).
    pub metrics_url: String,
    pub db: sqlx::PgPool,
    pub redis: redis::aio::MultiplexedConnection,
    pub redis_prefix: String,
    pub watched: Vec<Watched>,
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{')))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn wasm_mib(http: &reqwest::Client, url: &str) -> Option<f64> {
    edge_memory(http, url).await.0
}

/// The wasm memory (MiB) and the census a Worker's development headers report.
async fn edge_memory(http: &reqwest::Client, url: &str) -> (Option<f64>, Option<String>) {
    let Ok(resp) = http.get(url).timeout(Duration::from_secs(10)).send().await else { return (None, None) };
    let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let wasm = header("x-dev-wasm-memory-bytes").and_then(|v| v.parse::<f64>().ok()).map(|b| b / 1_048_576.0);
    (wasm, header("x-dev-census"))
}

/// One `key=value` figure of a census.
pub fn census_figure(census: &str, key: &str) -> Option<f64> {
    census.split(',').find_map(|pair| pair.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

impl Sampler {
    pub async fn sample(&mut self, at_secs: f64, stats: &Stats) -> Sample {
        let procs = resolve(&self.watched)
            .into_iter()
            .filter_map(|(label, pid)| {
                let (rss_mib, anon_mib) = memory(pid)?;
                Some(ProcSample { label, pid, rss_mib, anon_mib })
            })
            .collect();
        let (edge_wasm_mib, edge_census) = edge_memory(&self.http, &format!("{}/healthz", self.edge_url)).await;
        let edge_heap_mib =
            edge_census.as_deref().and_then(|c| census_figure(c, "heap_in_use")).map(|b| b / 1_048_576.0);
        let ceiling_wasm_mib = match &self.ceiling_url {
            Some(url) => wasm_mib(&self.http, &format!("{url}/fixed")).await,
            None => None,
        };
        let backends: Vec<i32> =
            sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
                .fetch_all(&self.db)
                .await
                .unwrap_or_default();
        let pg_backends_rss_mib = backends.iter().filter_map(|pid| memory(*pid as u32)).map(|(rss, _)| rss).sum();
        let info: String = redis::cmd("INFO").arg("memory").query_async(&mut self.redis).await.unwrap_or_default();
        let used: f64 = info
            .lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0);
        let stream_len: u64 = redis::cmd("XLEN")
            .arg(format!("{}:events", self.redis_prefix))
            .query_async(&mut self.redis)
            .await
            .unwrap_or(0);
        let metrics = match self.http.get(format!("{}/metrics", self.metrics_url)).send().await {
            Ok(resp) => resp.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        let statuses = stats.our_statuses();
        Sample {
            at_secs,
            procs,
            edge_wasm_mib,
            edge_census,
            edge_heap_mib,
            ceiling_wasm_mib,
            pg_connections: backends.len() as i64,
            pg_backends_rss_mib,
            redis_used_mib: used / 1_048_576.0,
            stream_len,
            outbox_unpublished: metric(&metrics, "drops_outbox_unpublished"),
            outbox_lag_secs: metric(&metrics, "drops_outbox_lag_seconds"),
            events_unfinished: metric(&metrics, "drops_events_unfinished"),
            events_unfinished_secs: metric(&metrics, "drops_events_unfinished_seconds"),
            window: stats.take_window(),
            requests: statuses.values().sum(),
            errors: statuses.into_iter().filter(|(s, _)| super::stats::is_error(*s)).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_read_by_exact_name_over_their_series() {
        let text = "drops_events_unfinished 3\ndrops_events_unfinished_seconds 1.5\n\
                    drops_consumer_pending{group=\"a\"} 2\ndrops_consumer_pending{group=\"b\"} 5\n";
        assert_eq!(metric(text, "drops_events_unfinished"), 3.0);
        assert_eq!(metric(text, "drops_events_unfinished_seconds"), 1.5);
        assert_eq!(metric(text, "drops_consumer_pending"), 7.0);
    }

    #[test]
    fn this_process_has_memory_and_a_group() {
        let pid = std::process::id();
        let (rss, anon) = memory(pid).expect("our own /proc entry");
        assert!(rss > 0.0 && anon > 0.0 && anon <= rss);
        assert!(pgrp(pid).is_some());
    }
}
