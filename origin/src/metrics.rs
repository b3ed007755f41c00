//! `GET /metrics` in Prometheus text. Counters are kept as things happen; the
//! gauges (orders by state, outbox lag, consumer lag) are read at scrape time from
//! Postgres and Redis, so they are true even after a restart.

use std::sync::OnceLock;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::startup::AppState;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

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

pub fn webhook(outcome: &'static str) {
    metrics::counter!("drops_webhook_events_total", "outcome" => outcome).increment(1);
}

pub fn push(outcome: &'static str) {
    metrics::counter!("drops_push_deliveries_total", "outcome" => outcome).increment(1);
}

pub fn repair(kind: &'static str) {
    metrics::counter!("drops_reconcile_repairs_total", "repair" => kind).increment(1);
}

/// Counts every request by route template (`/v1/drops/{drop_id}`, not the id),
/// so tests and benches can see how many requests reached the origin.
pub async fn count_requests(req: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().as_str().to_owned();
    let resp = next.run(req).await;
    metrics::counter!("drops_http_requests_total", "method" => method, "route" => route).increment(1);
    resp
}

pub fn router() -> Router<AppState> {
    Router::new().route("/metrics", get(scrape))
}

async fn scrape(State(state): State<AppState>) -> impl IntoResponse {
    if let Err(e) = refresh_gauges(&state).await {
        tracing::warn!(error = %e, "metrics gauges could not be read");
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], handle().render())
}

async fn refresh_gauges(state: &AppState) -> anyhow::Result<()> {
    let by_state: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM orders GROUP BY status").fetch_all(&state.db).await?;
    for status in ["reserved", "confirmed", "failed", "cancelled", "expired"] {
        let n = by_state.iter().find(|(s, _)| s == status).map(|(_, n)| *n).unwrap_or(0);
        metrics::gauge!("drops_orders", "state" => status).set(n as f64);
    }
    let (unpublished, oldest): (i64, Option<f64>) = sqlx::query_as(
        "SELECT count(*), EXTRACT(EPOCH FROM now() - min(created_at))::float8 FROM outbox WHERE published_at IS NULL",
    )
    .fetch_one(&state.db)
    .await?;
    metrics::gauge!("drops_outbox_unpublished").set(unpublished as f64);
    metrics::gauge!("drops_outbox_lag_seconds").set(oldest.unwrap_or(0.0));
    let mut conn = state.redis.get_multiplexed_async_connection().await?;
    let stream = crate::events::stream_key(&state.settings.redis_prefix);
    let groups: redis::RedisResult<redis::streams::StreamInfoGroupsReply> =
        redis::cmd("XINFO").arg("GROUPS").arg(&stream).query_async(&mut conn).await;
    if let Ok(groups) = groups {
        for g in groups.groups {
            metrics::gauge!("drops_consumer_pending", "group" => g.name.clone()).set(g.pending as f64);
            if let Some(lag) = g.lag {
                metrics::gauge!("drops_consumer_lag", "group" => g.name).set(lag as f64);
            }
        }
    }
    Ok(())
}
