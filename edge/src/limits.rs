//! Who may call how often, from the Workers rate-limit bindings in `wrangler.toml`
//! (each a fixed window: `limit` calls per `period` seconds, per key):
//!
//! | binding | key | applies to |
//! | --- | --- | --- |
//! | `CLIENT_LIMITER` | the client address (`CF-Connecting-IP`) | every public route |
//! | `WRITER_LIMITER` | the user (a valid bearer token's `sub`) | writes other than buying |
//! | `BUYER_LIMITER` | the user | the buy path (stricter, its own window) |
//! | `INTERNAL_LIMITER` | the client address | `/internal/` (the origin's calls: generous), before the body is read |
//!
//! Past a limit the answer is 429 `rate_limited` with `Retry-After` (the window).
//! A key refused once is refused by this isolate, without asking the binding, for
//! the next second: a flood costs a map lookup per request, not a call.
//! The payment webhook is not served here (the provider calls the origin). Without a
//! binding (a misconfigured deploy) requests pass: a limiter must not take the
//! platform down with it.

use std::cell::RefCell;
use std::collections::HashMap;

use drops_shared::problem::{ErrorCode, Problem};
use uuid::Uuid;
use worker::{Env, Request};

use crate::http::now_ms;

/// How long this isolate remembers a refusal.
const REFUSAL_MEMORY_MS: i64 = 1_000;
/// Keys remembered at most (a flood of distinct keys forgets the oldest first).
const REFUSALS_KEPT: usize = 10_000;

thread_local! {
    /// `binding:key` → until when it is refused here.
    static REFUSED: RefCell<HashMap<String, i64>> = RefCell::new(HashMap::new());
}

/// Refusals this isolate remembers (expired ones included until pruned).
pub fn refusals_remembered() -> usize {
    REFUSED.with(|r| r.borrow().len())
}

fn remembered(memo: &str, now: i64) -> bool {
    REFUSED.with(|r| r.borrow().get(memo).is_some_and(|until| *until > now))
}

fn remember(memo: String, now: i64) {
    REFUSED.with(|r| {
        let mut refused = r.borrow_mut();
        if refused.len() >= REFUSALS_KEPT {
            refused.retain(|_, until| *until > now);
            if refused.len() >= REFUSALS_KEPT {
                refused.clear();
            }
        }
        refused.insert(memo, now + REFUSAL_MEMORY_MS);
    })
}

pub const CLIENT_LIMITER: &str = "CLIENT_LIMITER";
pub const WRITER_LIMITER: &str = "WRITER_LIMITER";
pub const BUYER_LIMITER: &str = "BUYER_LIMITER";
pub const INTERNAL_LIMITER: &str = "INTERNAL_LIMITER";

/// The address Cloudflare saw the request come from.
pub fn client_address(req: &Request) -> String {
    req.headers().get("cf-connecting-ip").ok().flatten().unwrap_or_else(|| "unknown".to_owned())
}

async fn check(env: &Env, binding: &str, key: String, detail: &str) -> Result<(), Problem> {
    let refused = || Problem::new(ErrorCode::RateLimited, Some(detail.to_owned()));
    let memo = format!("{binding}:{key}");
    if remembered(&memo, now_ms()) {
        return Err(refused());
    }
    let Ok(limiter) = env.rate_limiter(binding) else { return Ok(()) };
    match limiter.limit(key).await {
        Ok(outcome) if !outcome.success => {
            remember(memo, now_ms());
            Err(refused())
        }
        _ => Ok(()),
    }
}

pub async fn client(env: &Env, address: String) -> Result<(), Problem> {
    check(env, CLIENT_LIMITER, address, "too many requests from this address; retry in a few seconds").await
}

pub async fn writer(env: &Env, user_id: Uuid) -> Result<(), Problem> {
    check(env, WRITER_LIMITER, user_id.to_string(), "too many changes from this account; retry in a few seconds").await
}

/// `/internal/`, per address: the origin calls from its own, anyone else is
/// refused (401) after their body was read, so a flood is stopped before.
pub async fn internal(env: &Env, address: String) -> Result<(), Problem> {
    check(env, INTERNAL_LIMITER, address, "too many internal calls from this address; retry in a few seconds").await
}

pub async fn buyer(env: &Env, user_id: Uuid) -> Result<(), Problem> {
    check(env, BUYER_LIMITER, user_id.to_string(), "too many buy attempts from this account; retry in a few seconds")
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_is_remembered_for_a_second_and_the_memory_is_bounded() {
        remember("CLIENT_LIMITER:192.0.2.1".into(), 10_000);
        assert!(remembered("CLIENT_LIMITER:192.0.2.1", 10_999));
        assert!(!remembered("CLIENT_LIMITER:192.0.2.1", 11_000), "after a second the binding is asked again");
        assert!(!remembered("WRITER_LIMITER:192.0.2.1", 10_500), "per binding");
        for n in 0..(REFUSALS_KEPT + 10) {
            remember(format!("CLIENT_LIMITER:{n}"), 20_000);
        }
        assert!(REFUSED.with(|r| r.borrow().len()) <= REFUSALS_KEPT);
    }
}
