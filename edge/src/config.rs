//! Edge settings: every binding and variable the Worker reads, in one typed struct
//! parsed once per isolate ([`EdgeConfig::get`]). Plain vars live in `wrangler.toml`;
//! secrets come from `wrangler secret put` (or `.dev.vars` under `wrangler dev`).
//!
//! `ENVIRONMENT` is `production` unless set to `development`, which only `.dev.vars`
//! does (`wrangler dev` reads it; a deploy never carries it). Outside development a
//! secret that is a development default or shorter than 32 bytes refuses the whole
//! configuration: every request is answered 500 `internal_error` (naming nothing),
//! and the log says which setting and why, never its value.

use std::cell::RefCell;
use std::rc::Rc;

use drops_shared::problem::{ErrorCode, Problem};
use worker::Env;

use crate::http::EdgeError;

/// The Durable Object namespace of the drops' inventory objects.
pub const INVENTORY_BINDING: &str = "DROP_INVENTORY";

/// Where the Worker runs (`ENVIRONMENT`): development accepts any secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Environment {
    Development,
    Production,
}

/// The secrets' development defaults (`.dev.vars`, written by `scripts/setup`).
pub const DEV_SECRETS: [(&str, &str); 4] = [
    ("JWT_SECRET", "dev-jwt-secret-change-me"),
    ("EDGE_TO_ORIGIN_SECRET", "dev-edge-to-origin-secret"),
    ("ORIGIN_TO_EDGE_SECRET", "dev-origin-to-edge-secret"),
    ("MEDIA_LINK_SECRET", "dev-media-link-secret"),
];

/// The shortest secret production takes, in bytes.
pub const MIN_SECRET_BYTES: usize = 32;

/// Why settings were not taken. Says which setting, never its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    Missing(&'static str),
    /// A development default outside development.
    DevelopmentSecret(&'static str),
    /// Shorter than [`MIN_SECRET_BYTES`] outside development.
    ShortSecret(&'static str),
    UnknownEnvironment,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Missing(name) => write!(f, "setting {name} is missing"),
            Self::DevelopmentSecret(name) => {
                write!(f, "{name} is a development default; set a secret of its own with `wrangler secret put {name}`")
            }
            Self::ShortSecret(name) => write!(f, "{name} is shorter than {MIN_SECRET_BYTES} bytes"),
            Self::UnknownEnvironment => write!(f, "ENVIRONMENT is neither `development` nor `production`"),
        }
    }
}

pub struct EdgeConfig {
    /// `ENVIRONMENT` is `development`: development-only diagnostics and routes
    /// (`/healthz`'s memory header, `/internal/dev/`) are served.
    pub development: bool,
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

thread_local! {
    /// Whether this isolate has logged why its settings were refused.
    static REFUSAL_LOGGED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl EdgeConfig {
    /// The settings of this isolate, parsed on first use. Settings that are not
    /// taken (a missing or refused secret) are an error every time (nothing
    /// half-parsed is kept): a 500 `internal_error` that names nothing, and one log
    /// line per isolate that says which setting and why.
    pub fn get(env: &Env) -> Result<Rc<EdgeConfig>, EdgeError> {
        if let Some(cfg) = PARSED.with(|p| p.borrow().clone()) {
            return Ok(cfg);
        }
        let cfg = Rc::new(Self::parse(|name| binding(env, name)).map_err(|refused| {
            if !REFUSAL_LOGGED.with(|l| l.replace(true)) {
                worker::console_error!("the edge's settings are refused, every request fails: {refused}");
            }
            EdgeError::Problem(Problem::new(
                ErrorCode::Internal,
                Some("the edge is not configured to serve".to_owned()),
            ))
        })?);
        PARSED.with(|p| p.replace(Some(cfg.clone())));
        Ok(cfg)
    }

    /// The settings from a lookup of bindings by name; `Err` names a missing or
    /// refused one.
    pub fn parse(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let environment = match lookup("ENVIRONMENT").as_deref().map(str::trim) {
            Some("development") => Environment::Development,
            Some("production") | Some("") | None => Environment::Production,
            Some(_) => return Err(ConfigError::UnknownEnvironment),
        };
        let required = |name: &'static str| lookup(name).filter(|v| !v.is_empty()).ok_or(ConfigError::Missing(name));
        let secret = |name: &'static str| {
            let value = required(name)?;
            if environment == Environment::Production {
                if DEV_SECRETS.iter().any(|(_, dev)| value == *dev) {
                    return Err(ConfigError::DevelopmentSecret(name));
                }
                if value.len() < MIN_SECRET_BYTES {
                    return Err(ConfigError::ShortSecret(name));
                }
            }
            Ok(value)
        };
        let number = |name: &str, default: i64| lookup(name).and_then(|v| v.trim().parse().ok()).unwrap_or(default);
        Ok(Self {
            development: environment == Environment::Development,
            origin_url: required("ORIGIN_URL")?.trim_end_matches('/').to_owned(),
            jwt_secret: secret("JWT_SECRET")?,
            edge_to_origin_secret: secret("EDGE_TO_ORIGIN_SECRET")?,
            origin_to_edge_secret: secret("ORIGIN_TO_EDGE_SECRET")?,
            media_link_secret: secret("MEDIA_LINK_SECRET")?,
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

    const SECRETS: [(&str, &str); 6] = [
        ("ENVIRONMENT", "development"),
        ("ORIGIN_URL", "http://origin/"),
        ("JWT_SECRET", "j"),
        ("EDGE_TO_ORIGIN_SECRET", "e"),
        ("ORIGIN_TO_EDGE_SECRET", "o"),
        ("MEDIA_LINK_SECRET", "m"),
    ];

    /// Production's: none a development default, each 32 bytes or more.
    const PRODUCTION: [(&str, &str); 6] = [
        ("ENVIRONMENT", "production"),
        ("ORIGIN_URL", "https://origin.example"),
        ("JWT_SECRET", "jwt-0123456789abcdef0123456789abcdef"),
        ("EDGE_TO_ORIGIN_SECRET", "e2o-0123456789abcdef0123456789abcdef"),
        ("ORIGIN_TO_EDGE_SECRET", "o2e-0123456789abcdef0123456789abcdef"),
        ("MEDIA_LINK_SECRET", "0123456789abcdef0123456789abcdef"),
    ];

    fn with(
        base: &[(&'static str, &'static str)],
        set: &[(&'static str, &'static str)],
    ) -> Vec<(&'static str, &'static str)> {
        let mut vars: Vec<_> = base.iter().filter(|(n, _)| !set.iter().any(|(s, _)| s == n)).copied().collect();
        vars.extend_from_slice(set);
        vars
    }

    #[test]
    fn production_refuses_development_and_short_secrets() {
        let cfg = EdgeConfig::parse(lookup(&PRODUCTION)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cfg.media_link_secret.len(), MIN_SECRET_BYTES, "exactly 32 bytes is enough");
        for (name, dev) in DEV_SECRETS {
            assert_eq!(
                EdgeConfig::parse(lookup(&with(&PRODUCTION, &[(name, dev)]))).err(),
                Some(ConfigError::DevelopmentSecret(name)),
                "{name}"
            );
            // Any development default, under any of the secrets' names.
            let padded = with(&PRODUCTION, &[(name, "dev-media-link-secret")]);
            assert_eq!(EdgeConfig::parse(lookup(&padded)).err(), Some(ConfigError::DevelopmentSecret(name)));
            let short = with(&PRODUCTION, &[(name, "0123456789abcdef0123456789abcde")]);
            assert_eq!(EdgeConfig::parse(lookup(&short)).err(), Some(ConfigError::ShortSecret(name)), "{name}");
        }
        // Unset is production; only `development` is not.
        let unset: Vec<_> = PRODUCTION.iter().filter(|(n, _)| *n != "ENVIRONMENT").copied().collect();
        assert!(EdgeConfig::parse(lookup(&unset)).is_ok());
        let dev_unset = with(&unset, &[("JWT_SECRET", "dev-jwt-secret-change-me")]);
        assert_eq!(EdgeConfig::parse(lookup(&dev_unset)).err(), Some(ConfigError::DevelopmentSecret("JWT_SECRET")));
        for other in ["staging", "Development", "dev"] {
            let odd = with(&PRODUCTION, &[("ENVIRONMENT", other)]);
            assert_eq!(EdgeConfig::parse(lookup(&odd)).err(), Some(ConfigError::UnknownEnvironment), "{other}");
        }
        // What the log says names the setting, never the value.
        let said = ConfigError::DevelopmentSecret("MEDIA_LINK_SECRET").to_string();
        assert!(said.contains("MEDIA_LINK_SECRET") && !said.contains("dev-media-link-secret"), "{said}");
    }

    #[test]
    fn development_takes_the_development_defaults() {
        let dev = with(&SECRETS, &DEV_SECRETS);
        let cfg = EdgeConfig::parse(lookup(&dev)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cfg.media_link_secret, "dev-media-link-secret");
        assert!(cfg.development);
        let cfg = EdgeConfig::parse(lookup(&PRODUCTION)).unwrap_or_else(|e| panic!("{e}"));
        assert!(!cfg.development, "production serves no development diagnostics");
    }

    #[test]
    fn defaults_fill_what_is_not_set_and_secrets_are_required() {
        let cfg = EdgeConfig::parse(lookup(&SECRETS)).unwrap_or_else(|m| panic!("{m}"));
        assert_eq!(cfg.origin_url, "http://origin");
        assert_eq!(cfg.pages, PagePolicy { fresh_ms: 2_000, grace_ms: 30_000, stale_if_error_ms: 86_400_000 });
        assert_eq!((cfg.forward_retry_max_ms, cfg.sold_out_memo_ms), (5_000, 1_000));
        assert_eq!(cfg.public_base_url, None);
        assert_eq!((cfg.inventory_max_wait_ms, cfg.refusal_report_ms), (1_000, 10_000));
        assert_eq!(EdgeConfig::parse(lookup(&SECRETS[..4])).err(), Some(ConfigError::Missing("ORIGIN_TO_EDGE_SECRET")));
        assert_eq!(EdgeConfig::parse(lookup(&SECRETS[..5])).err(), Some(ConfigError::Missing("MEDIA_LINK_SECRET")));
        let mut tuned = SECRETS.to_vec();
        tuned.extend([("PAGE_FRESH_SECS", "5"), ("SOLD_OUT_MEMO_MS", "oops")]);
        let cfg = EdgeConfig::parse(lookup(&tuned)).unwrap_or_else(|m| panic!("{m}"));
        assert_eq!((cfg.pages.fresh_ms, cfg.sold_out_memo_ms), (5_000, 1_000), "unparseable numbers keep the default");
    }
}
