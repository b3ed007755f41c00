//! Edge settings, read from the Worker's bindings: plain vars in `wrangler.toml`,
//! secrets through `wrangler secret put` (or `.dev.vars` under `wrangler dev`).

use worker::Env;

use crate::http::EdgeError;

pub struct EdgeConfig {
    pub origin_url: String,
    pub jwt_secret: String,
    /// Signs calls from the edge to the origin.
    pub edge_to_origin_secret: String,
    /// Verifies calls from the origin to the edge.
    pub origin_to_edge_secret: String,
    /// How long the buy path waits for the origin before answering without a payment.
    pub forward_timeout_ms: u64,
    /// Longest pause between retries of a reservation the origin has not acknowledged.
    pub forward_retry_max_ms: u64,
}

fn binding(env: &Env, name: &str) -> Option<String> {
    env.secret(name).map(|s| s.to_string()).or_else(|_| env.var(name).map(|v| v.to_string())).ok()
}

fn required(env: &Env, name: &str) -> Result<String, EdgeError> {
    match binding(env, name) {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(EdgeError::Worker(worker::Error::RustError(format!("setting {name} is missing")))),
    }
}

fn number(env: &Env, name: &str, default: u64) -> u64 {
    binding(env, name).and_then(|v| v.parse().ok()).unwrap_or(default)
}

impl EdgeConfig {
    pub fn from_env(env: &Env) -> Result<Self, EdgeError> {
        Ok(Self {
            origin_url: required(env, "ORIGIN_URL")?.trim_end_matches('/').to_owned(),
            jwt_secret: required(env, "JWT_SECRET")?,
            edge_to_origin_secret: required(env, "EDGE_TO_ORIGIN_SECRET")?,
            origin_to_edge_secret: required(env, "ORIGIN_TO_EDGE_SECRET")?,
            forward_timeout_ms: number(env, "FORWARD_TIMEOUT_MS", 2_000),
            forward_retry_max_ms: number(env, "FORWARD_RETRY_MAX_MS", 5_000),
        })
    }
}
