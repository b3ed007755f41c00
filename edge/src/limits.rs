//! Who may call how often, from the Workers rate-limit bindings in `wrangler.toml`
//! (each a fixed window: `limit` calls per `period` seconds, per key):
//!
//! | binding | key | applies to |
//! | --- | --- | --- |
//! | `CLIENT_LIMITER` | the client address (`CF-Connecting-IP`) | every public route but the payment webhook |
//! | `WRITER_LIMITER` | the user (a valid bearer token's `sub`) | writes other than buying |
//! | `BUYER_LIMITER` | the user | the buy path (stricter, its own window) |
//!
//! Past a limit the answer is 429 `rate_limited` with `Retry-After` (the window).
//! The payment webhook is the provider's, signed; the origin bounds it. Without a
//! binding (a misconfigured deploy) requests pass: a limiter must not take the
//! platform down with it.

use drops_shared::problem::{ErrorCode, Problem};
use uuid::Uuid;
use worker::{Env, Request};

pub const CLIENT_LIMITER: &str = "CLIENT_LIMITER";
pub const WRITER_LIMITER: &str = "WRITER_LIMITER";
pub const BUYER_LIMITER: &str = "BUYER_LIMITER";

/// The address Cloudflare saw the request come from.
pub fn client_address(req: &Request) -> String {
    req.headers().get("cf-connecting-ip").ok().flatten().unwrap_or_else(|| "unknown".to_owned())
}

async fn check(env: &Env, binding: &str, key: String, detail: &str) -> Result<(), Problem> {
    let Ok(limiter) = env.rate_limiter(binding) else { return Ok(()) };
    match limiter.limit(key).await {
        Ok(outcome) if !outcome.success => Err(Problem::new(ErrorCode::RateLimited, Some(detail.to_owned()))),
        _ => Ok(()),
    }
}

pub async fn client(env: &Env, address: String) -> Result<(), Problem> {
    check(env, CLIENT_LIMITER, address, "too many requests from this address; retry in a few seconds").await
}

pub async fn writer(env: &Env, user_id: Uuid) -> Result<(), Problem> {
    check(env, WRITER_LIMITER, user_id.to_string(), "too many changes from this account; retry in a few seconds").await
}

pub async fn buyer(env: &Env, user_id: Uuid) -> Result<(), Problem> {
    check(env, BUYER_LIMITER, user_id.to_string(), "too many buy attempts from this account; retry in a few seconds")
        .await
}
