//! The edge's refusals (429 and 503 answers to public routes), counted by each
//! isolate and reported to the origin, which shows them on its `/metrics` as
//! `drops_edge_refusals_total{route, reason}`: the edge has no metrics endpoint.
//! A request that finds the last report older than `REFUSAL_REPORT_MS` sends the
//! counts in the background; counts a report failed to deliver wait for the next.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use drops_shared::internal::{Body, EdgeRefusals, RefusalCount, ReportRefusals};
use drops_shared::routes;

use crate::config::EdgeConfig;
use crate::origin;

/// (route template, reason) → refusals not yet reported.
type Counts = HashMap<(&'static str, &'static str), u64>;

thread_local! {
    static COUNTS: RefCell<Counts> = RefCell::new(HashMap::new());
    static LAST_REPORT_MS: Cell<i64> = const { Cell::new(0) };
}

/// Counts an answer of `status` to `path`, if it is a refusal of a public route.
pub fn count(path: &str, status: u16) {
    let reason = match status {
        429 => "rate_limited",
        503 => "overloaded",
        _ => return,
    };
    let Some(route) = routes::find(path) else { return };
    COUNTS.with(|c| *c.borrow_mut().entry((route.path, reason)).or_insert(0) += 1);
}

/// The counts to report now, if a report is due and there is anything to say.
pub fn due(now_ms: i64, every_ms: i64) -> Option<EdgeRefusals> {
    if now_ms - LAST_REPORT_MS.with(Cell::get) < every_ms || COUNTS.with(|c| c.borrow().is_empty()) {
        return None;
    }
    LAST_REPORT_MS.with(|l| l.set(now_ms));
    let taken = COUNTS.with(|c| std::mem::take(&mut *c.borrow_mut()));
    let counts = taken
        .into_iter()
        .map(|((route, reason), count)| RefusalCount { route: route.to_owned(), reason: reason.to_owned(), count })
        .collect();
    Some(EdgeRefusals { counts })
}

/// Puts back counts a report did not deliver.
fn restore(report: &EdgeRefusals) {
    for c in &report.counts {
        let Some(route) = routes::PUBLIC.iter().find(|r| r.path == c.route) else { continue };
        let reason = if c.reason == "rate_limited" { "rate_limited" } else { "overloaded" };
        COUNTS.with(|m| *m.borrow_mut().entry((route.path, reason)).or_insert(0) += c.count);
    }
}

/// Sends `report` to the origin; on failure its counts wait for the next report.
pub async fn send(cfg: &EdgeConfig, report: EdgeRefusals) {
    let delivered = match origin::signed(cfg, &ReportRefusals {}, &report.to_bytes()).await {
        Ok(resp) => (200..300).contains(&resp.status_code()),
        Err(_) => false,
    };
    if !delivered {
        restore(&report);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_of_public_routes_are_counted_by_template_and_reported_when_due() {
        count("/v1/drops/abc/stock", 429);
        count("/v1/drops/def/stock", 429);
        count("/v1/drops/abc/orders", 503);
        count("/v1/drops/abc/stock", 200);
        count("/nowhere", 429);
        assert!(due(5_000, 10_000).is_none(), "not due yet");
        let mut report = due(10_000, 10_000).expect("due");
        report.counts.sort_by(|a, b| a.route.cmp(&b.route));
        let got: Vec<(&str, &str, u64)> =
            report.counts.iter().map(|c| (c.route.as_str(), c.reason.as_str(), c.count)).collect();
        assert_eq!(
            got,
            [("/v1/drops/{drop_id}/orders", "overloaded", 1), ("/v1/drops/{drop_id}/stock", "rate_limited", 2)]
        );
        assert!(due(30_000, 10_000).is_none(), "nothing new to say");
        restore(&report);
        assert_eq!(due(40_000, 10_000).map(|r| r.counts.iter().map(|c| c.count).sum::<u64>()), Some(3));
    }
}
