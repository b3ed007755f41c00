//! The routes the origin calls on the edge. Each call must carry a valid signature
//! made with the origin-to-edge secret; anything else is 401 and changes nothing.

use drops_shared::internal::{InternalRoute, PurgeRequest};
use drops_shared::problem::{ErrorCode, Problem};
use drops_shared::signing::{verify_internal, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use worker::{Env, Method, Request};

use crate::config::EdgeConfig;
use crate::http::{header, now_ms, EdgeResult};
use crate::inventory_object;

/// Internal bodies are small JSON documents; refuse anything large before verifying.
const MAX_INTERNAL_BODY: usize = 256 * 1024;

pub async fn handle(mut req: Request, env: &Env) -> EdgeResult {
    let cfg = EdgeConfig::from_env(env)?;
    let method = req.method().to_string();
    let url = req.url()?;
    let signed_path = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_owned(),
    };
    let route = InternalRoute::parse(&method, url.path()).ok_or(ErrorCode::NotFound)?;
    let body = req.bytes().await?;
    if body.len() > MAX_INTERNAL_BODY {
        return Err(ErrorCode::PayloadTooLarge.into());
    }
    verify_internal(
        cfg.origin_to_edge_secret.as_bytes(),
        &method,
        &signed_path,
        header(&req, TIMESTAMP_HEADER).as_deref(),
        header(&req, SIGNATURE_HEADER).as_deref(),
        &body,
        now_ms() / 1000,
    )
    .map_err(|e| Problem::new(ErrorCode::Unauthorized, Some(format!("internal call refused: {e}"))))?;

    let raw = |m, action: String| inventory_object::call_raw(env, m, action, body.clone());
    Ok(match route {
        InternalRoute::UpsertInventory { drop_id } => raw(Method::Put, format!("{drop_id}/terms")).await?,
        InternalRoute::InventorySnapshot { drop_id } => raw(Method::Get, format!("{drop_id}/snapshot")).await?,
        InternalRoute::Hold { drop_id, reservation_id, action } => {
            raw(Method::Post, format!("{drop_id}/holds/{reservation_id}/{}", action.as_str())).await?
        }
        InternalRoute::Purge => {
            let purge: PurgeRequest = drops_shared::json::from_slice(&body)?;
            let evicted = crate::pages::purge(env, &url, &purge.paths).await?;
            return crate::http::json(200, &serde_json::json!({ "evicted": evicted }));
        }
        InternalRoute::Reservations | InternalRoute::HoldExpired { .. } => return Err(ErrorCode::NotFound.into()),
    })
}
