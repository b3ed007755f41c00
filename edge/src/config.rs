//! Edge settings: every binding and variable the Worker reads, in one typed struct
//! parsed once per isolate ([`EdgeConfig::get`]). Plain vars live in `wrangler.toml`;
//! secrets come from `wrangler secret put` (or `.dev.vars` under `wrangler dev`).

use std::cell::RefCell;
use std::rc::Rc;

use worker::Env;

use crate::http::EdgeError;

/// The Durable Object namespace of the drops' inventory objects.
pub const INVENTORY_BINDING: &str = "DROP_INVENTORY";

pub struct EdgeConfig {
    /// `ORIGIN_URL`, without a trailing slash.
    pub origin_url: String,
    /// `JWT_SECRET`: verifies bearer tokens (HS256).
    pub jwt_secret: String,
    /// `EDGE_TO_ORIGIN_SECRET`: signs calls from the edge to the origin.
    pub edge_to_origin_secret: String,
    /// `ORIGIN_TO_EDGE_SECRET`: verifies calls from the origin to the edge.
    pub origin_to_edge_secret: String,
    /// `MEDIA_LINK_SECRET`: signs and verifies links to private media.
    pub media_link_secret: String,
    /// `FORWARD_RETRY_MAX_MS`: longest pause between retries of a message the
    /// origin has not acknowledged.
    pub forward_retry_max_ms: u64,
    pub pages: PagePolicy,
    /// `SOLD_OUT_MEMO_MS`: how long a Worker answers "sold out" itself.
    pub sold_out_memo_ms: i64,
    /// `PUBLIC_BASE_URL`: base URL of cache keys (the request's own when unset).
    pub public_base_url: Option<String>,
    /// `INVENTORY_MAX_WAIT_MS`: how long a buy or stock read may have waited for a
    /// drop's inventory object before the object answers 503 instead of deciding.
    pub inventory_max_wait_ms: i64,
    /// `REFUSAL_REPORT_MS`: how often at most an isolate reports its refusals to the origin.
    pub refusal_report_ms: i64,
}

/// How drop pages are cached (see `pages`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PagePolicy {
    /// `PAGE_FRESH_SECS`
    pub fresh_ms: i64,
    /// `PAGE_GRACE_SECS`
    pub grace_ms: i64,
    /// `STALE_IF_ERROR_SECS`
    pub stale_if_error_ms: i64,
}

thread_local! {
    static PARSED: RefCell<Option<Rc<EdgeConfig>>> = const { RefCell::new(None) };
}

/// Reads a binding as text: a secret, else a plain var.
fn binding(env: &Env, name: &str) -> Option<String> {
    env.secret(name).map(|s| s.to_string()).or_else(|_| env.var(name).map(|v| v.to_string())).ok()
}

impl EdgeConfig {
    /// The settings of this isolate, parsed on first use. A missing secret is an
    /// error every time (nothing half-parsed is kept).
    pub fn get(env: &Env) -> Result<Rc<EdgeConfig>, EdgeError> {
        if let Some(cfg) = PARSED.with(|p| p.borrow().clone()) {
            return Ok(cfg);
        }
        let cfg =
            Rc::new(Self::parse(|name| binding(env, name)).map_err(|missing| {
                EdgeError::Worker(worker::Error::RustError(format!("setting {missing} is missing")))
            })?);
        PARSED.with(|p| p.replace(Some(cfg.clone())));
        Ok(cfg)
    }

    /// The settings from a lookup of bindings by name; `Err` names a missing one.
    pub fn parse(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, &'static str> {
        let required = |name: &'static str| lookup(name).filter(|v| !v.is_empty()).ok_or(name);
        let number = |name: &str, default: i64| lookup(name).and_then(|v| v.trim().parse().ok()).unwrap_or(default);
        Ok(Self {
            origin_url: required("ORIGIN_URL")?.trim_end_matches('/').to_owned(),
            jwt_secret: required("JWT_SECRET")?,
            edge_to_origin_secret: required("EDGE_TO_ORIGIN_SECRET")?,
            origin_to_edge_secret: required("ORIGIN_TO_EDGE_SECRET")?,
            media_link_secret: required("MEDIA_LINK_SECRET")?,
            forward_retry_max_ms: number("FORWARD_RETRY_MAX_MS", 5_000).max(0) as u64,
            pages: PagePolicy {
                fresh_ms: number("PAGE_FRESH_SECS", 2) * 1000,
                grace_ms: number("PAGE_GRACE_SECS", 30) * 1000,
                stale_if_error_ms: number("STALE_IF_ERROR_SECS", 86_400) * 1000,
            },
            sold_out_memo_ms: number("SOLD_OUT_MEMO_MS", 1_000),
            public_base_url: lookup("PUBLIC_BASE_URL").filter(|v| !v.is_empty()),
            inventory_max_wait_ms: number("INVENTORY_MAX_WAIT_MS", 1_000).max(1),
            refusal_report_ms: number("REFUSAL_REPORT_MS", 10_000).max(100),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |name| vars.get(name).cloned()
    }

    const SECRETS: [(&str, &str); 5] = [
        ("ORIGIN_URL", "http://origin/"),
        ("JWT_SECRET", "j"),
        ("EDGE_TO_ORIGIN_SECRET", "e"),
        ("ORIGIN_TO_EDGE_SECRET", "o"),
        ("MEDIA_LINK_SECRET", "m"),
    ];

    #[test]
    fn defaults_fill_what_is_not_set_and_secrets_are_required() {
        let cfg = EdgeConfig::parse(lookup(&SECRETS)).unwrap_or_else(|m| panic!("{m}"));
        assert_eq!(cfg.origin_url, "http://origin");
        assert_eq!(cfg.pages, PagePolicy { fresh_ms: 2_000, grace_ms: 30_000, stale_if_error_ms: 86_400_000 });
        assert_eq!((cfg.forward_retry_max_ms, cfg.sold_out_memo_ms), (5_000, 1_000));
        assert_eq!(cfg.public_base_url, None);
        assert_eq!((cfg.inventory_max_wait_ms, cfg.refusal_report_ms), (1_000, 10_000));
        assert_eq!(EdgeConfig::parse(lookup(&SECRETS[..3])).err(), Some("ORIGIN_TO_EDGE_SECRET"));
        assert_eq!(EdgeConfig::parse(lookup(&SECRETS[..4])).err(), Some("MEDIA_LINK_SECRET"));
        let mut tuned = SECRETS.to_vec();
        tuned.extend([("PAGE_FRESH_SECS", "5"), ("SOLD_OUT_MEMO_MS", "oops")]);
        let cfg = EdgeConfig::parse(lookup(&tuned)).unwrap_or_else(|m| panic!("{m}"));
        assert_eq!((cfg.pages.fresh_ms, cfg.sold_out_memo_ms), (5_000, 1_000), "unparseable numbers keep the default");
    }
}
