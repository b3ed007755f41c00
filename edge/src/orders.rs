//! The buy path at the edge. Checks run in the order API.md fixes (token, role,
//! `Idempotency-Key`, body), all before the inventory object is woken, so bad
//! requests cost the drop nothing; then the drop's object decides.

use drops_shared::api::{validate_idempotency_key, CreateOrderRequest};
use drops_shared::auth::{verify_bearer, Role};
use drops_shared::json;
use drops_shared::problem::{ErrorCode, Problem};
use uuid::Uuid;
use worker::{Env, Method, Request};

use crate::config::EdgeConfig;
use crate::http::{header, now_utc, read_body, EdgeResult};
use crate::inventory_object::{self, ReserveCommand};

pub async fn create(mut req: Request, env: &Env, drop_id: Uuid) -> EdgeResult {
    let cfg = EdgeConfig::from_env(env)?;
    let identity = verify_bearer(header(&req, "authorization").as_deref(), cfg.jwt_secret.as_bytes(), now_utc())?;
    identity.require(&[Role::Buyer])?;
    let key = header(&req, "idempotency-key").ok_or(ErrorCode::IdempotencyKeyMissing)?;
    validate_idempotency_key(&key)?;
    let body = read_body(&mut req).await?;
    let order: CreateOrderRequest = json::from_slice(&body)?;
    if order.quantity == 0 {
        return Err(Problem::new(ErrorCode::InvalidRequest, Some("field `quantity`: must be at least 1".into())).into());
    }
    let command = ReserveCommand { user_id: identity.user_id, idempotency_key: key, quantity: order.quantity };
    Ok(inventory_object::call(env, drop_id, Method::Post, "reserve", Some(&command)).await?)
}

pub async fn stock(env: &Env, drop_id: Uuid) -> EdgeResult {
    Ok(inventory_object::call::<()>(env, drop_id, Method::Get, "stock", None).await?)
}
