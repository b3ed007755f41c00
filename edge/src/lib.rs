//! The drops edge: a Cloudflare Worker that apps talk to.
//!
//! Layout:
//! - [`router`]: matches the request line and sends it to one of the modules below.
//! - [`orders`]: the buy path (`POST /v1/drops/{id}/orders`): token, role, key and
//!   body checks, then the drop's inventory object decides.
//! - [`pages`]: drop cards and lists from the Cache API, stale-while-revalidate done here.
//! - [`inventory_object`]: the `DropInventory` Durable Object, one per drop: **where
//!   stock is decided** (with the rules in `drops_shared::inventory`), holds,
//!   idempotency records, and the queue of reservations the origin has not yet
//!   acknowledged. Split into its commands, routes, alarm and storage.
//! - [`media`]: uploads into R2, public files through the Cache API, signed private links.
//! - [`limits`]: who may call how often (per client address, per user on writes, per buyer).
//! - [`refusals`]: the edge's 429s and 503s, reported to the origin's `/metrics`.
//! - [`outbound`]: what an inventory object owes the origin, delivered until acknowledged.
//! - [`internal`]: the signed routes the origin calls (`/internal/v1/...`).
//! - [`origin`]: signed calls to the origin, and the proxy for routes the origin owns.
//! - [`http`]: responses, problems, request ids, bounded body reads, the clock.
//! - [`census`]: what the isolate holds (heap bytes, live objects, map entries), for `/healthz` in development.
//! - [`config`]: every binding, setting and secret, parsed once per isolate.

mod census;
mod config;
mod http;
mod internal;
mod inventory_object;
mod limits;
mod media;
mod orders;
mod origin;
mod pages;
mod refusals;
mod router;

pub use inventory_object::DropInventory;

#[global_allocator]
static ALLOCATOR: census::CountingAllocator = census::CountingAllocator;

use worker::{event, Context, Env, Request, Response, Result};

#[event(fetch)]
async fn fetch(req: Request, env: Env, ctx: Context) -> Result<Response> {
    // Fixed at the instance's first request: `/healthz` tells a restart by it.
    http::instance_started_ms();
    let request_id = http::request_id(&req);
    let path = req.path();
    let response = match router::handle(req, &env, &ctx, &request_id).await {
        Ok(resp) => Ok(resp),
        Err(http::EdgeError::Problem(problem)) => http::problem_response(&problem),
        Err(http::EdgeError::Worker(err)) => {
            worker::console_error!("request {request_id} failed: {err}");
            http::problem_response(&drops_shared::problem::ErrorCode::Internal.into())
        }
    };
    let response = response?;
    refusals::count(&path, response.status_code());
    if let Ok(cfg) = config::EdgeConfig::get(&env) {
        if let Some(report) = refusals::due(http::now_ms(), cfg.refusal_report_ms) {
            ctx.wait_until(async move { refusals::send(&cfg, report).await });
        }
    }
    http::with_request_id(response, &request_id).await
}
