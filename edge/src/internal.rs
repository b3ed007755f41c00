//! The routes the origin calls on the edge (`drops_shared::internal::EdgeRoute`).
//! Each call must carry a valid signature made with the origin-to-edge secret;
//! anything else is 401 and changes nothing. The signature covers the body, so
//! the body is read first: only after the caller's address passed its rate limit
//! (`INTERNAL_LIMITER`), and never past [`MAX_INTERNAL_BODY`].
//! In development only, [`DEV_PREFIX`] serves routes for tests (see [`DevRoute`]).

use drops_shared::internal::{Body, EdgeRoute, Endpoint, GetInventoryHolds, HoldsAfter, Purge, PurgeAck, PutTerms};
use drops_shared::problem::{ErrorCode, Problem};
use drops_shared::signing::{verify_internal, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use worker::{Env, Request};

use crate::config::EdgeConfig;
use crate::http::{header, now_ms, read_capped, EdgeResult};
use crate::inventory_object::{self, Command};
use crate::limits;

/// Internal bodies are small JSON documents; refuse anything large before verifying.
const MAX_INTERNAL_BODY: usize = 256 * 1024;

/// Where the development-only routes live: signed like the others, and served
/// only when `ENVIRONMENT` is `development` (404 otherwise, as for any unknown path).
pub const DEV_PREFIX: &str = "/internal/dev/";

/// The development-only routes, for tests of what production data cannot be made
/// to show on demand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DevRoute {
    /// `POST /internal/dev/drops/{drop_id}/inventory/v1-fixture` (a
    /// `V1Fixture`): rebuild the drop's inventory object as schema version 1, then
    /// open it as a fresh instance would; answers what came out.
    RebuildInventoryAsV1 { drop_id: uuid::Uuid },
}

impl DevRoute {
    /// `path` is what follows [`DEV_PREFIX`].
    fn parse(method: &str, path: &str) -> Option<Self> {
        match (method, path.split('/').collect::<Vec<_>>().as_slice()) {
            ("POST", ["drops", drop_id, "inventory", "v1-fixture"]) => {
                Some(Self::RebuildInventoryAsV1 { drop_id: drop_id.parse().ok()? })
            }
            _ => None,
        }
    }
}

pub async fn handle(mut req: Request, env: &Env) -> EdgeResult {
    limits::internal(env, limits::client_address(&req)).await?;
    let cfg = EdgeConfig::get(env)?;
    let method = req.method().to_string();
    let url = req.url()?;
    let signed_path = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_owned(),
    };
    // Development-only routes are not there at all elsewhere: 404 before anything is read.
    let dev = match url.path().strip_prefix(DEV_PREFIX) {
        Some(rest) if cfg.development => Some(DevRoute::parse(&method, rest).ok_or(ErrorCode::NotFound)?),
        _ => None,
    };
    let route = match dev {
        Some(_) => None,
        None => Some(EdgeRoute::parse(&method, url.path()).ok_or(ErrorCode::NotFound)?),
    };
    let body = read_capped(&mut req, MAX_INTERNAL_BODY).await?;
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

    let object = |drop_id, command| async move { inventory_object::call(env, drop_id, &command).await };
    let Some(route) = route else {
        return match dev {
            Some(DevRoute::RebuildInventoryAsV1 { drop_id }) => {
                let fixture = drops_shared::json::from_slice(&body)?;
                Ok(object(drop_id, Command::RebuildAsV1 { fixture }).await?)
            }
            None => Err(ErrorCode::NotFound.into()),
        };
    };
    Ok(match route {
        EdgeRoute::PutTerms(r) => {
            let terms = <PutTerms as Endpoint>::Request::from_bytes(&body)?;
            object(r.drop_id, Command::PutTerms { terms }).await?
        }
        EdgeRoute::GetInventory(r) => object(r.drop_id, Command::Snapshot).await?,
        EdgeRoute::GetInventoryHolds(r) => {
            let HoldsAfter { after, limit } = <GetInventoryHolds as Endpoint>::Request::from_bytes(&body)?;
            object(r.drop_id, Command::Holds { after, limit }).await?
        }
        EdgeRoute::MoveHold(r) => {
            object(r.drop_id, Command::MoveHold { reservation_id: r.reservation_id, action: r.action }).await?
        }
        EdgeRoute::Purge(_) => {
            let purge = <Purge as Endpoint>::Request::from_bytes(&body)?;
            let evicted = crate::pages::purge(env, &url, &purge.paths).await?;
            return crate::http::json(200, &PurgeAck { evicted });
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn development_routes_parse_strictly() {
        let id = uuid::Uuid::from_u128(7);
        let path = format!("drops/{id}/inventory/v1-fixture");
        assert_eq!(DevRoute::parse("POST", &path), Some(DevRoute::RebuildInventoryAsV1 { drop_id: id }));
        assert_eq!(DevRoute::parse("GET", &path), None);
        assert_eq!(DevRoute::parse("POST", "drops/nope/inventory/v1-fixture"), None);
        assert_eq!(DevRoute::parse("POST", &format!("{path}/x")), None);
    }
}
