//! The request line decides the module: the buy path and stock go to the drop's
//! inventory object, media to R2, `/internal/` to the signed internal routes, and every other
//! public route to the origin, which owns it. Paths and methods no public route
//! takes are answered here (404, or 405 with `Allow`), from `drops_shared::routes`.
//! The payment webhook is a public route of the origin's, called by the provider
//! there: the edge does not serve it (404, whatever the method).
//! Nothing is served on settings the edge refuses (see `config`).

use drops_shared::auth::verify_bearer;
use drops_shared::problem::{ErrorCode, Problem};
use drops_shared::routes::{self, PublicRoute};
use uuid::Uuid;
use worker::{Context, Env, Method, Request, Response};

use crate::config::EdgeConfig;
use crate::http::{self, EdgeResult};
use crate::{internal, limits, media, orders, origin, pages};

/// The provider's route to the origin, which the edge does not serve.
const PAYMENT_WEBHOOK: &str = "/v1/webhooks/payments";

pub async fn handle(req: Request, env: &Env, ctx: &Context, request_id: &str) -> EdgeResult {
    EdgeConfig::get(env)?;
    let path = req.path();
    if path.starts_with("/internal/") {
        return internal::handle(req, env).await;
    }
    if path.starts_with("/v1/") {
        // The raw name: the runtime's `Method` reads names it does not know as GET.
        let method = req.inner().method();
        let route = routes::find(&path).filter(|r| r.path != PAYMENT_WEBHOOK).ok_or(ErrorCode::NotFound)?;
        if !route.takes(&method) {
            return with_allow(
                http::problem_response(&Problem::new(
                    ErrorCode::MethodNotAllowed,
                    Some(format!("{method} is not a method of this route")),
                ))?,
                route,
            );
        }
        if method == "OPTIONS" {
            return with_allow(Response::empty()?.with_status(204), route);
        }
        limit(&req, env, route, &method).await?;
    }
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (req.method(), segments.as_slice()) {
        (Method::Post, ["v1", "drops", drop_id, "orders"]) => {
            let drop_id = parse_id(drop_id)?;
            orders::create(req, env, drop_id).await
        }
        (Method::Get | Method::Head, ["v1", "drops", drop_id, "stock"]) => orders::stock(env, parse_id(drop_id)?).await,
        (Method::Get | Method::Head, ["v1", "drops"]) => pages::list(&req, env, ctx).await,
        (Method::Get | Method::Head, ["v1", "drops", drop_id]) => pages::card(&req, env, ctx, parse_id(drop_id)?).await,
        (Method::Post, ["v1", "media"]) => media::upload(req, env, ctx).await,
        (Method::Get | Method::Head, ["v1", "media", key]) => media::public(&req, env, ctx, key).await,
        (Method::Get | Method::Head, ["v1", "private", key]) => media::private(&req, env, key).await,
        (Method::Post, ["v1", "private", key, "links"]) => media::mint_link(req, env, key).await,
        (_, ["v1", ..]) => origin::proxy(req, env, request_id).await,
        (Method::Get, ["healthz"]) => healthz(env),
        _ => Err(ErrorCode::NotFound.into()),
    }
}

/// `GET /healthz`. In development it also says how large this isolate's wasm
/// memory has grown (`x-dev-wasm-memory-bytes`): linear memory never shrinks, so
/// this is the high-water mark of everything the Worker and its objects held at
/// once, which tests hold against the isolate's 128 MB; and when the instance
/// started (`x-dev-instance-started-ms`), which changes if it is restarted; and
/// what the isolate holds (`x-dev-census`, see [`crate::census`]).
fn healthz(env: &Env) -> EdgeResult {
    let mut resp = http::json(200, &serde_json::json!({"status": "ok"}))?;
    if EdgeConfig::get(env)?.development {
        resp.headers_mut().set(http::WASM_MEMORY_HEADER, &http::wasm_memory_bytes().to_string())?;
        resp.headers_mut().set(http::INSTANCE_STARTED_HEADER, &http::instance_started_ms().to_string())?;
        resp.headers_mut().set(http::CENSUS_HEADER, &crate::census::header_value())?;
    }
    Ok(resp)
}

/// Every public route counts against the client's address; writes other than
/// buying (limited on their own) against the user too.
async fn limit(req: &Request, env: &Env, route: &PublicRoute, method: &str) -> EdgeResult<()> {
    let write = !matches!(method, "GET" | "HEAD" | "OPTIONS");
    let writer = if write && route.path != "/v1/drops/{drop_id}/orders" {
        let cfg = EdgeConfig::get(env)?;
        verify_bearer(http::header(req, "authorization").as_deref(), cfg.jwt_secret.as_bytes(), http::now_utc()).ok()
    } else {
        None
    };
    let client = limits::client(env, limits::client_address(req));
    match writer {
        Some(identity) => {
            let (by_address, by_user) = futures_util::join!(client, limits::writer(env, identity.user_id));
            by_address.and(by_user)?
        }
        None => client.await?,
    }
    Ok(())
}

fn with_allow(mut resp: Response, route: &PublicRoute) -> EdgeResult {
    resp.headers_mut().set("allow", &route.allow())?;
    Ok(resp)
}

/// A path id that is not a UUID names nothing that exists.
fn parse_id(segment: &str) -> EdgeResult<Uuid> {
    Uuid::parse_str(segment).map_err(|_| ErrorCode::NotFound.into())
}
