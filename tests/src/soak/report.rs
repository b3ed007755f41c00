//! The soak's tables and verdicts: memory per process over time, the event flow and
//! the stores, p99 per route family over time, answers by status, and whether each
//! process's memory stayed flat.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use super::sample::Sample;
use super::stats::{Family, Stats};

/// When the memory a process should keep is measured: minute 5 (warmed up).
pub const BASELINE_SECS: f64 = 300.0;
/// How much a process may grow from then to the end and still be flat.
pub const FLAT_TOLERANCE: f64 = 0.10;

/// The sample the end is compared with: the first at or after minute 5, or, in a
/// run too short for that, the one halfway through.
pub fn baseline(samples: &[Sample]) -> Option<&Sample> {
    samples
        .iter()
        .find(|s| s.at_secs >= BASELINE_SECS - 1.0)
        .filter(|s| !std::ptr::eq(*s, samples.last().unwrap()))
        .or_else(|| samples.get(samples.len() / 2).filter(|_| samples.len() > 2))
}

/// Every process label seen, in the order first seen.
pub fn process_labels(samples: &[Sample]) -> Vec<String> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for s in samples {
        for p in &s.procs {
            if seen.insert(p.label.clone()) {
                out.push(p.label.clone());
            }
        }
    }
    out
}

/// One process's memory from the baseline to the end.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub label: String,
    pub base_mib: f64,
    pub end_mib: f64,
    /// Growth from the baseline to the end, MiB a minute.
    pub per_minute: f64,
    pub flat: bool,
}

pub fn verdicts(samples: &[Sample]) -> Vec<Verdict> {
    let (Some(base), Some(end)) = (baseline(samples), samples.last()) else { return Vec::new() };
    let minutes = ((end.at_secs - base.at_secs) / 60.0).max(1e-9);
    let mut out = Vec::new();
    let mut add = |label: String, base_mib: f64, end_mib: f64| {
        out.push(Verdict {
            per_minute: (end_mib - base_mib) / minutes,
            flat: end_mib <= base_mib * (1.0 + FLAT_TOLERANCE),
            label,
            base_mib,
            end_mib,
        })
    };
    for label in process_labels(samples) {
        if let (Some(b), Some(e)) = (base.proc(&label), end.proc(&label)) {
            // A process that restarted in between is not the same memory.
            if b.pid == e.pid {
                add(label, b.rss_mib, e.rss_mib);
            } else {
                add(format!("{label} (restarted: pid {} -> {})", b.pid, e.pid), b.rss_mib, e.rss_mib);
            }
        }
    }
    if let (Some(b), Some(e)) = (base.edge_wasm_mib, end.edge_wasm_mib) {
        add("edge Worker's wasm memory".into(), b, e);
    }
    if let (Some(b), Some(e)) = (base.edge_heap_mib, end.edge_heap_mib) {
        add("edge Worker's Rust heap in use".into(), b, e);
    }
    if let (Some(b), Some(e)) = (base.ceiling_wasm_mib, end.ceiling_wasm_mib) {
        add("ceiling Worker's wasm memory".into(), b, e);
    }
    add("Postgres backends of the run (sum)".into(), base.pg_backends_rss_mib, end.pg_backends_rss_mib);
    add("Redis used_memory (whole server)".into(), base.redis_used_mib, end.redis_used_mib);
    out
}

fn opt(v: Option<f64>) -> String {
    v.map_or("—".into(), |v| format!("{v:.1}"))
}

/// The families shown over time (the rest are in the totals).
const OVER_TIME: [Family; 8] = [
    Family::Card,
    Family::List,
    Family::Stock,
    Family::Buy,
    Family::Pay,
    Family::Inbox,
    Family::Upload,
    Family::Ceiling,
];

pub fn tables(samples: &[Sample], stats: &Stats) -> String {
    let mut out = String::new();
    let labels = process_labels(samples);
    let _ = writeln!(out, "Memory (RSS, MiB; wasm: the Workers' own linear memory)\n");
    let _ = write!(out, "| min |");
    for l in &labels {
        let _ = write!(out, " {l} |");
    }
    let _ = writeln!(out, " edge wasm | ceiling wasm | PG backends | Redis |");
    let _ = writeln!(out, "|{}", " ---: |".repeat(labels.len() + 5));
    for s in samples {
        let _ = write!(out, "| {:.1} |", s.at_secs / 60.0);
        for l in &labels {
            let _ = write!(out, " {} |", opt(s.proc(l).map(|p| p.rss_mib)));
        }
        let _ = writeln!(
            out,
            " {} | {} | {:.0} | {:.1} |",
            opt(s.edge_wasm_mib),
            opt(s.ceiling_wasm_mib),
            s.pg_backends_rss_mib,
            s.redis_used_mib
        );
    }
    let _ = writeln!(out, "\nEvent flow, stores and p99 per route family over the last window (ms)\n");
    let _ = write!(out, "| min | req | PG conns | stream | unpublished | oldest s | unfinished | oldest s |");
    for f in OVER_TIME {
        let _ = write!(out, " {} |", f.name());
    }
    let _ = writeln!(out, " errors |");
    let _ = writeln!(out, "|{}", " ---: |".repeat(OVER_TIME.len() + 9));
    for s in samples {
        let _ = write!(
            out,
            "| {:.1} | {} | {} | {} | {:.0} | {:.1} | {:.0} | {:.1} |",
            s.at_secs / 60.0,
            s.requests,
            s.pg_connections,
            s.stream_len,
            s.outbox_unpublished,
            s.outbox_lag_secs,
            s.events_unfinished,
            s.events_unfinished_secs
        );
        for f in OVER_TIME {
            let p99 = s.window.get(&f).filter(|w| w.count > 0).map(|w| w.p99_ms);
            let _ = write!(out, " {} |", opt(p99));
        }
        let _ = writeln!(out, " {:?} |", s.errors);
    }
    let _ = writeln!(out, "\nWhole run, per route family\n");
    let _ = writeln!(out, "| family | requests | p50 ms | p99 ms | max ms | answers by status |");
    let _ = writeln!(out, "| --- | ---: | ---: | ---: | ---: | --- |");
    let statuses = stats.statuses();
    for (family, f) in stats.totals() {
        if f.count == 0 {
            continue;
        }
        let _ = writeln!(
            out,
            "| {} | {} | {:.1} | {:.1} | {:.1} | {:?} |",
            family.name(),
            f.count,
            f.p50_ms,
            f.p99_ms,
            f.max_ms,
            statuses.get(&family).cloned().unwrap_or_default()
        );
    }
    let verdicts = verdicts(samples);
    if let (Some(base), Some(end)) = (baseline(samples), samples.last()) {
        let _ = writeln!(
            out,
            "\nMemory flat? End (min {:.1}) within {:.0}% of min {:.1}\n",
            end.at_secs / 60.0,
            FLAT_TOLERANCE * 100.0,
            base.at_secs / 60.0
        );
        let _ = writeln!(out, "| what | then MiB | end MiB | MiB/min | |");
        let _ = writeln!(out, "| --- | ---: | ---: | ---: | --- |");
        for v in &verdicts {
            let _ = writeln!(
                out,
                "| {} | {:.1} | {:.1} | {:+.2} | {} |",
                v.label,
                v.base_mib,
                v.end_mib,
                v.per_minute,
                if v.flat { "PASS" } else { "MISS" }
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::soak::sample::ProcSample;

    fn at(secs: f64, rss: f64) -> Sample {
        let procs = vec![ProcSample { label: "edge workerd".into(), pid: 7, rss_mib: rss, anon_mib: rss }];
        Sample { at_secs: secs, procs, ..Sample::default() }
    }

    #[test]
    fn memory_is_judged_from_minute_five_to_the_end() {
        let samples: Vec<Sample> = (0..=20).map(|i| at(i as f64 * 30.0, 100.0 + 2.0 * i as f64)).collect();
        let v = &verdicts(&samples)[0];
        assert_eq!((v.base_mib, v.end_mib), (120.0, 140.0));
        assert!(!v.flat, "20 MiB over 120 is more than 10%");
        assert!((v.per_minute - 4.0).abs() < 1e-9);
        let within: Vec<Sample> = (0..=20).map(|i| at(i as f64 * 30.0, 100.0 + i as f64)).collect();
        assert!(verdicts(&within)[0].flat, "10 MiB over 110 is within 10%");
        let flat: Vec<Sample> = (0..=20).map(|i| at(i as f64 * 30.0, 100.0 + (i % 2) as f64)).collect();
        assert!(verdicts(&flat)[0].flat);
    }

    #[test]
    fn a_short_run_is_judged_from_its_middle() {
        let samples: Vec<Sample> = (0..5).map(|i| at(i as f64 * 5.0, 100.0)).collect();
        assert_eq!(baseline(&samples).map(|s| s.at_secs), Some(10.0));
        assert!(baseline(&samples[..2]).is_none(), "two samples say nothing of a trend");
    }
}
