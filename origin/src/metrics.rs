//! `GET /metrics` in Prometheus text, on the operators' listener only (`startup`:
//! `server.metrics_host:metrics_port`, loopback by default), never on the public
//! port. Counters are kept as things happen (each area counts its own with the
//! `metrics` macros); gauges are read by the areas that own the data (orders by
//! state, outbox and consumer lag), so they are true even after a restart, by one
//! background task every `server.metrics_refresh_ms` ([`refresh_gauges`]): a
//! scrape only renders what is there, so scraping costs the database and Redis
//! nothing however often it comes.
//!
//! Every 429 and 503 is also counted as `drops_http_refusals_total{route, reason}`:
//! the reason a protection marked it with ([`Refusal`]: `rate_limited`,
//! `overloaded`, `pool_exhausted`), or for a refusal a handler made itself,
//! `rate_limited` (429) or `unavailable` (503).

use std::sync::OnceLock;

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::{get, on};
use axum::Router;
use drops_shared::internal::{Endpoint, RefusalsNoted, ReportRefusals};
use futures::future::BoxFuture;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::http::error::Refusal;
use crate::http::extract::{method_of, Answer, Signed};
use crate::state::Core;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Sets gauges from the data an area owns (run by [`refresh_gauges`]).
pub type GaugeSource = fn(&Core) -> BoxFuture<'_, anyhow::Result<()>>;

/// The process-wide recorder (installed once, however many apps a test process builds).
pub fn handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Counts every request by route template (`/v1/drops/{drop_id}`, not the id),
/// so tests and benches can see how many requests reached the origin, and every
/// refusal (429, 503) by route and reason.
pub async fn count_requests(req: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    // A label per method a client invents would be an unbounded set of series.
    let method: &'static str = match req.method().as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    };
    let resp = next.run(req).await;
    let status = resp.status().as_u16();
    if matches!(status, 429 | 503) {
        let reason = match resp.extensions().get::<Refusal>() {
            Some(refusal) => refusal.as_str(),
            None if status == 429 => "rate_limited",
            None => "unavailable",
        };
        metrics::counter!("drops_http_refusals_total", "route" => route.clone(), "reason" => reason).increment(1);
    }
    metrics::counter!("drops_http_requests_total", "method" => method, "route" => route).increment(1);
    resp
}

/// The edge's report of its refusals, on the public listener (a signed internal route).
pub fn router(core: Core) -> Router {
    Router::new().route(ReportRefusals::PATH, on(method_of::<ReportRefusals>(), edge_refusals)).with_state(core)
}

/// `GET /metrics`, for the operators' listener.
pub fn scrape_router() -> Router {
    Router::new().route("/metrics", get(scrape))
}

/// The edge's refusals (it has no `/metrics` of its own), counted as
/// `drops_edge_refusals_total{route, reason}`. Labels are bounded: a route must be a
/// public route template and a reason one of the two the edge gives.
async fn edge_refusals(call: Signed<ReportRefusals>) -> Answer<ReportRefusals> {
    let mut counted = 0;
    for c in &call.body.counts {
        let Some(route) = drops_shared::routes::PUBLIC.iter().find(|r| r.path == c.route) else { continue };
        let reason = match c.reason.as_str() {
            "rate_limited" => "rate_limited",
            "overloaded" => "overloaded",
            _ => continue,
        };
        metrics::counter!("drops_edge_refusals_total", "route" => route.path, "reason" => reason).increment(c.count);
        counted += c.count;
    }
    Ok(axum::Json(RefusalsNoted { counted }))
}

/// Reads every gauge from `gauges` once (a source that fails keeps its last values).
pub async fn refresh_gauges(core: &Core, gauges: &[GaugeSource]) {
    for source in gauges {
        if let Err(e) = source(core).await {
            tracing::warn!(error = %e, "metrics gauges could not be read");
        }
    }
}

async fn scrape() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], handle().render())
}
