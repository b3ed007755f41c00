//! The request line decides the module: the buy path and stock go to the drop's
//! inventory object, `/internal/` to the signed internal routes, and every other
//! public route to the origin, which owns it.

use drops_shared::problem::{ErrorCode, Problem};
use uuid::Uuid;
use worker::{Context, Env, Method, Request};

use crate::http::{self, EdgeResult};
use crate::{internal, orders, origin, pages};

/// The methods this API uses. The runtime's `Method` reads any other name as GET,
/// so the raw name is checked first: an unknown method must not act as a read.
const KNOWN_METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

pub async fn handle(req: Request, env: &Env, ctx: &Context, request_id: &str) -> EdgeResult {
    let path = req.path();
    if !KNOWN_METHODS.contains(&req.inner().method().as_str()) {
        return method_not_allowed(None);
    }
    if path.starts_with("/internal/") {
        return internal::handle(req, env).await;
    }
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (req.method(), segments.as_slice()) {
        (Method::Post, ["v1", "drops", drop_id, "orders"]) => {
            let drop_id = parse_id(drop_id)?;
            orders::create(req, env, drop_id).await
        }
        (_, ["v1", "drops", _, "orders"]) => method_not_allowed(Some("POST")),
        (Method::Get, ["v1", "drops", drop_id, "stock"]) => orders::stock(env, parse_id(drop_id)?).await,
        (_, ["v1", "drops", _, "stock"]) => method_not_allowed(Some("GET")),
        (Method::Get, ["v1", "drops"]) => pages::list(req, env, ctx, request_id).await,
        (Method::Get, ["v1", "drops", drop_id]) => pages::card(&req, env, ctx, parse_id(drop_id)?).await,
        (_, ["v1", ..]) => origin::proxy(req, env, request_id).await,
        (Method::Get, ["healthz"]) => http::json(200, &serde_json::json!({"status": "ok"})),
        _ => Err(ErrorCode::NotFound.into()),
    }
}

/// 405 for a route the edge owns (the origin answers its own), naming what works.
fn method_not_allowed(allow: Option<&str>) -> EdgeResult {
    let problem = Problem::new(ErrorCode::MethodNotAllowed, Some("this route does not take this method".into()));
    let mut resp = http::problem_response(&problem)?;
    if let Some(allow) = allow {
        resp.headers_mut().set("allow", allow)?;
    }
    Ok(resp)
}

/// A path id that is not a UUID names nothing that exists.
fn parse_id(segment: &str) -> EdgeResult<Uuid> {
    Uuid::parse_str(segment).map_err(|_| ErrorCode::NotFound.into())
}
