//! The dashboard: a page for people (not apps) at `GET /dashboard`. A creator or an
//! admin pastes a token (kept in the page's session storage, sent only to this
//! origin), picks a drop and watches its sell-through draw live from
//! `GET /v1/drops/{drop_id}/analytics`, polled every second.
//!
//! Everything it needs is served from here: the page, its script and styles, and the
//! chart library (uPlot, vendored from npm by `build.rs`). The Content-Security-Policy
//! allows nothing else.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

const PAGE: &str = include_str!("index.html");
const SCRIPT: &str = include_str!("app.js");
const STYLE: &str = include_str!("app.css");
const CHART_SCRIPT: &str = include_str!(concat!(env!("OUT_DIR"), "/uPlot.iife.min.js"));
const CHART_STYLE: &str = include_str!(concat!(env!("OUT_DIR"), "/uPlot.min.css"));

/// Only this origin's own scripts, styles and API; no inline script, no framing.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

pub fn router() -> Router {
    Router::new()
        .route("/dashboard", get(|| async { asset("text/html; charset=utf-8", PAGE) }))
        .route("/dashboard/app.js", get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }))
        .route("/dashboard/app.css", get(|| async { asset("text/css; charset=utf-8", STYLE) }))
        .route("/dashboard/uPlot.iife.min.js", get(|| async { asset("text/javascript; charset=utf-8", CHART_SCRIPT) }))
        .route("/dashboard/uPlot.min.css", get(|| async { asset("text/css; charset=utf-8", CHART_STYLE) }))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            // Built into the binary: a new release is a new page; no stale script for long.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_what_the_origin_serves() {
        for src in
            ["/dashboard/uPlot.iife.min.js", "/dashboard/app.js", "/dashboard/app.css", "/dashboard/uPlot.min.css"]
        {
            assert!(PAGE.contains(src), "{src}");
        }
        assert!(!PAGE.contains("http://") && !PAGE.contains("https://"), "nothing from elsewhere");
        assert!(!PAGE.contains("<script>"), "no inline script (the policy forbids it)");
        assert!(CHART_SCRIPT.contains("uPlot"), "the vendored chart library");
    }
}
