//! Settings. The origin reads flat `DROPS_*` environment variables (README.md lists
//! them) into [`EnvSettings`], whose `Default` is the one place defaults are
//! written, and turns them into the nested, typed [`Settings`] the code uses: one
//! section per concern, and each provider choice (payments, cache purger, push) an
//! enum that carries its own secrets. The conversion validates in every environment
//! (a Stripe provider without a key does not start anywhere); production also
//! refuses development secrets and short ones, and push endpoints on private
//! addresses (`DROPS_PUSH_ALLOW_PRIVATE_ENDPOINTS`). Secrets are `SecretString`s: they
//! never reach a log or a Debug print.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

mod audit_keys;
mod database;
mod limits;
mod proxies;

pub use audit_keys::{AuditKey, AuditSettings, DEV_AUDIT_KEYS};
pub use database::DatabaseSettings;
pub use limits::{LimitSettings, Rate};
pub use proxies::parse_proxies;

pub const DEV_JWT_SECRET: &str = "dev-jwt-secret-change-me";
pub const DEV_EDGE_TO_ORIGIN_SECRET: &str = "dev-edge-to-origin-secret";
pub const DEV_ORIGIN_TO_EDGE_SECRET: &str = "dev-origin-to-edge-secret";
pub const DEV_WEBHOOK_SECRET: &str = "whsec_dev_sandbox_secret";
pub const DEV_PUSH_CALLBACK_SECRET: &str = "dev-push-callback-secret";

/// Where Stripe's API lives; a setting so tests can point it at a local double.
pub const STRIPE_API: &str = "https://api.stripe.com";
pub const CLOUDFLARE_API: &str = "https://api.cloudflare.com";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    Development,
    Production,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub environment: Environment,
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub redis: RedisSettings,
    pub edge: EdgeSettings,
    pub auth: AuthSettings,
    pub orders: OrderSettings,
    pub events: EventSettings,
    pub payments: PaymentSettings,
    pub cache_purger: CachePurger,
    pub push: PushProvider,
    pub notifications: NotificationSettings,
    pub limits: LimitSettings,
    pub log_format: LogFormat,
    pub audit: AuditSettings,
}

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub host: String,
    pub port: u16,
    /// Base URL buyers reach the origin at (checkout links point here).
    pub public_url: String,
    /// Slow clients (`startup`, `overload`): how long a client may take to send a
    /// request's line and headers (the connection is closed past it; the same bound
    /// applies to a kept-alive connection waiting for its next request), and its body
    /// (408 past it; the body is read before the request takes a slot).
    pub header_read_timeout_ms: u64,
    pub body_read_timeout_ms: u64,
    /// The operators' listener: `GET /metrics` (and `/healthz`, `/readyz`), apart from
    /// the public port; loopback unless set otherwise. Port 0: any free port.
    pub metrics_host: String,
    pub metrics_port: u16,
    /// How often one background task reads the gauges `/metrics` shows (orders by
    /// state, outbox and consumer lag) and checks readiness; a scrape reads neither.
    pub metrics_refresh_ms: u64,
    /// The load balancers and proxies in front of the origin, whose
    /// `X-Forwarded-For` names the client (`client_address`); nobody else's does.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

#[derive(Debug, Clone)]
pub struct RedisSettings {
    pub url: SecretString,
    /// Prefix of every Redis key (streams, sets), so environments can share a server.
    pub prefix: String,
}

#[derive(Debug, Clone)]
pub struct EdgeSettings {
    /// Base URL of the edge, for signed calls from the origin.
    pub url: String,
    /// Verifies calls from the edge.
    pub edge_to_origin_secret: SecretString,
    /// Signs calls to the edge.
    pub origin_to_edge_secret: SecretString,
}

#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// HS256 key of bearer tokens (the edge holds the same).
    pub jwt_secret: SecretString,
}

#[derive(Debug, Clone)]
pub struct OrderSettings {
    /// How long a hold lasts before its units return to stock (a drop may set its own).
    pub hold_seconds: u32,
    /// How often reconciliation compares the edge's inventories with Postgres (0: never).
    pub reconcile_interval_secs: u64,
}

#[derive(Debug, Clone)]
pub struct EventSettings {
    /// How often the outbox relay looks for new events.
    pub relay_interval_ms: u64,
    /// How long an event may sit unacknowledged with a consumer before another takes it.
    pub bus_claim_idle_ms: u64,
    /// The consumer groups this instance runs a member of; None: every group.
    pub groups: Option<Vec<String>>,
    /// Events waiting this long to be published or finished make the event flow
    /// "stalled" (`/readyz`, `/metrics`).
    pub stall_after: Duration,
}

#[derive(Debug, Clone)]
pub struct PaymentSettings {
    /// Any of these may have signed a webhook (several during a rotation).
    pub webhook_secrets: Vec<SecretString>,
    pub provider: PaymentProvider,
}

#[derive(Debug, Clone)]
pub enum PaymentProvider {
    /// The provider simulated inside the origin (development and tests).
    Sandbox,
    Stripe {
        api_key: SecretString,
        api_base: String,
    },
}

#[derive(Debug, Clone)]
pub enum CachePurger {
    /// The edge's own signed purge route (what `wrangler dev` runs).
    Edge,
    /// Cloudflare's purge-by-URL API, for a zone in production.
    Cloudflare { zone_id: String, api_token: SecretString, public_edge_url: String, api_base: String },
}

#[derive(Debug, Clone)]
pub enum PushProvider {
    /// A signed HTTP POST to the subscription's endpoint.
    Callback { secret: SecretString },
    /// Web Push (RFC 8030 + VAPID, RFC 8291 encryption).
    WebPush { vapid_private_key: SecretString, contact: String },
}

#[derive(Debug, Clone)]
pub struct NotificationSettings {
    /// Lets push subscriptions name `http` endpoints and loopback, private or
    /// link-local addresses (the tests' receivers and local development listen on
    /// 127.0.0.1). Otherwise an endpoint must be `https` on a public address, checked
    /// when subscribing and again at each send: the origin must not be a way to reach
    /// its own network. Development only: production refuses to start with it.
    pub push_allow_private_endpoints: bool,
    /// How many live sockets one user may hold at once, across every origin instance
    /// (one more is refused with 429 before it is upgraded).
    pub max_sockets_per_user: u32,
}

/// The environment as the origin reads it: `DROPS_<FIELD>` for each field.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct EnvSettings {
    pub environment: Environment,
    pub host: String,
    pub port: u16,
    pub public_url: String,
    pub edge_url: String,
    pub database_url: SecretString,
    pub database_max_connections: u32,
    pub database_acquire_timeout_ms: u64,
    pub background_database_max_connections: u32,
    pub background_database_acquire_timeout_ms: u64,
    pub redis_url: SecretString,
    pub redis_prefix: String,
    pub jwt_secret: SecretString,
    pub edge_to_origin_secret: SecretString,
    pub origin_to_edge_secret: SecretString,
    /// Comma-separated.
    pub webhook_secrets: SecretString,
    pub audit_keys: SecretString,
    pub hold_seconds: u32,
    pub log_format: LogFormat,
    pub relay_interval_ms: u64,
    pub bus_claim_idle_ms: u64,
    /// Comma-separated group names, or `all`.
    pub consumer_groups: String,
    pub events_stall_after_ms: u64,
    pub reconcile_interval_secs: u64,
    /// `sandbox` or `stripe`.
    pub payment_provider: String,
    pub stripe_api_key: Option<SecretString>,
    pub stripe_api_base: String,
    /// `edge` or `cloudflare`.
    pub cache_purger: String,
    pub cloudflare_zone_id: Option<String>,
    pub cloudflare_api_token: Option<SecretString>,
    pub public_edge_url: Option<String>,
    /// `callback` or `webpush`.
    pub push_provider: String,
    pub push_callback_secret: SecretString,
    pub vapid_private_key: Option<SecretString>,
    pub vapid_contact: String,
    /// Unset: true in development, false in production (which refuses `true`).
    pub push_allow_private_endpoints: Option<bool>,
    pub max_sockets_per_user: u32,
    // Limits (`LimitSettings`). Unset: production's or development's default
    // (`PRODUCTION_LIMITS`, `DEVELOPMENT_LIMITS`).
    pub client_rate_per_minute: Option<u32>,
    pub client_burst: Option<u32>,
    pub edge_client_rate_per_minute: Option<u32>,
    pub edge_client_burst: Option<u32>,
    pub signed_rate_per_minute: Option<u32>,
    pub signed_burst: Option<u32>,
    pub max_in_flight: Option<u32>,
    pub max_queued: Option<u32>,
    pub queue_wait_ms: u64,
    pub internal_rate_per_minute: Option<u32>,
    pub internal_burst: Option<u32>,
    // Slow clients and the operators' listener (`ServerSettings`).
    pub header_read_timeout_ms: u64,
    pub body_read_timeout_ms: u64,
    pub metrics_host: String,
    pub metrics_port: u16,
    pub metrics_refresh_ms: u64,
    /// Comma-separated CIDRs.
    pub trusted_proxies: String,
}

impl Default for EnvSettings {
    fn default() -> Self {
        Self {
            environment: Environment::Development,
            host: "127.0.0.1".into(),
            port: 8080,
            public_url: "http://127.0.0.1:8080".into(),
            edge_url: "http://127.0.0.1:8787".into(),
            database_url: "postgres://postgres@127.0.0.1:5432/drops_dev".into(),
            database_max_connections: 20,
            database_acquire_timeout_ms: 250,
            background_database_max_connections: 10,
            background_database_acquire_timeout_ms: 10_000,
            redis_url: "redis://127.0.0.1:6379".into(),
            redis_prefix: "drops".into(),
            jwt_secret: DEV_JWT_SECRET.into(),
            edge_to_origin_secret: DEV_EDGE_TO_ORIGIN_SECRET.into(),
            origin_to_edge_secret: DEV_ORIGIN_TO_EDGE_SECRET.into(),
            webhook_secrets: DEV_WEBHOOK_SECRET.into(),
            audit_keys: DEV_AUDIT_KEYS.into(),
            hold_seconds: 600,
            log_format: LogFormat::Pretty,
            relay_interval_ms: 100,
            bus_claim_idle_ms: 30_000,
            consumer_groups: "all".into(),
            events_stall_after_ms: 30_000,
            reconcile_interval_secs: 60,
            payment_provider: "sandbox".into(),
            stripe_api_key: None,
            stripe_api_base: STRIPE_API.into(),
            cache_purger: "edge".into(),
            cloudflare_zone_id: None,
            cloudflare_api_token: None,
            public_edge_url: None,
            push_provider: "callback".into(),
            push_callback_secret: DEV_PUSH_CALLBACK_SECRET.into(),
            vapid_private_key: None,
            vapid_contact: "mailto:ops@drops.dev".into(),
            push_allow_private_endpoints: None,
            max_sockets_per_user: 5,
            client_rate_per_minute: None,
            client_burst: None,
            edge_client_rate_per_minute: None,
            edge_client_burst: None,
            signed_rate_per_minute: None,
            signed_burst: None,
            max_in_flight: None,
            max_queued: None,
            queue_wait_ms: 50,
            internal_rate_per_minute: None,
            internal_burst: None,
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 10_000,
            metrics_host: "127.0.0.1".into(),
            metrics_port: 9464,
            metrics_refresh_ms: 5_000,
            trusted_proxies: String::new(),
        }
    }
}

fn present(value: Option<SecretString>, name: &str, needed_by: &str) -> anyhow::Result<SecretString> {
    value.filter(|s| !s.expose_secret().trim().is_empty()).ok_or_else(|| anyhow::anyhow!("{needed_by} needs {name}"))
}

impl EnvSettings {
    /// Reads `DROPS_*` over the defaults.
    pub fn from_process_env() -> anyhow::Result<Self> {
        Ok(config::Config::builder()
            .add_source(config::Environment::with_prefix("DROPS").try_parsing(true))
            .build()?
            .try_deserialize()?)
    }

    /// The typed settings, or why these values cannot run.
    pub fn into_settings(self) -> anyhow::Result<Settings> {
        let limits = self.limits()?;
        let database = self.database()?;
        let trusted_proxies = parse_proxies(&self.trusted_proxies)?;
        let payment_provider = match self.payment_provider.as_str() {
            "sandbox" => PaymentProvider::Sandbox,
            "stripe" => PaymentProvider::Stripe {
                api_key: present(self.stripe_api_key, "DROPS_STRIPE_API_KEY", "DROPS_PAYMENT_PROVIDER=stripe")?,
                api_base: self.stripe_api_base.trim_end_matches('/').to_owned(),
            },
            other => anyhow::bail!("DROPS_PAYMENT_PROVIDER: unknown provider `{other}` (sandbox or stripe)"),
        };
        let cache_purger = match self.cache_purger.as_str() {
            "edge" => CachePurger::Edge,
            "cloudflare" => {
                let needed = "DROPS_CACHE_PURGER=cloudflare";
                let plain = |v: Option<String>, name: &str| {
                    v.filter(|s| !s.trim().is_empty()).ok_or_else(|| anyhow::anyhow!("{needed} needs {name}"))
                };
                CachePurger::Cloudflare {
                    zone_id: plain(self.cloudflare_zone_id, "DROPS_CLOUDFLARE_ZONE_ID")?,
                    api_token: present(self.cloudflare_api_token, "DROPS_CLOUDFLARE_API_TOKEN", needed)?,
                    public_edge_url: plain(self.public_edge_url, "DROPS_PUBLIC_EDGE_URL")?
                        .trim_end_matches('/')
                        .to_owned(),
                    api_base: CLOUDFLARE_API.into(),
                }
            }
            other => anyhow::bail!("DROPS_CACHE_PURGER: unknown purger `{other}` (edge or cloudflare)"),
        };
        let push = match self.push_provider.as_str() {
            "callback" => PushProvider::Callback { secret: self.push_callback_secret },
            "webpush" => PushProvider::WebPush {
                vapid_private_key: present(
                    self.vapid_private_key,
                    "DROPS_VAPID_PRIVATE_KEY",
                    "DROPS_PUSH_PROVIDER=webpush",
                )?,
                contact: self.vapid_contact,
            },
            other => anyhow::bail!("DROPS_PUSH_PROVIDER: unknown provider `{other}` (callback or webpush)"),
        };
        let webhook_secrets: Vec<SecretString> = self
            .webhook_secrets
            .expose_secret()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(SecretString::from)
            .collect();
        anyhow::ensure!(!webhook_secrets.is_empty(), "DROPS_WEBHOOK_SECRETS: at least one secret is needed");
        let audit = AuditSettings::parse(&self.audit_keys)?;
        anyhow::ensure!(self.max_sockets_per_user >= 1, "DROPS_MAX_SOCKETS_PER_USER: at least 1");
        anyhow::ensure!(self.header_read_timeout_ms >= 1, "DROPS_HEADER_READ_TIMEOUT_MS: at least 1");
        anyhow::ensure!(self.body_read_timeout_ms >= 1, "DROPS_BODY_READ_TIMEOUT_MS: at least 1");
        anyhow::ensure!(self.metrics_refresh_ms >= 100, "DROPS_METRICS_REFRESH_MS: at least 100");
        let settings = Settings {
            environment: self.environment,
            server: ServerSettings {
                host: self.host,
                port: self.port,
                public_url: self.public_url.trim_end_matches('/').to_owned(),
                header_read_timeout_ms: self.header_read_timeout_ms,
                body_read_timeout_ms: self.body_read_timeout_ms,
                metrics_host: self.metrics_host,
                metrics_port: self.metrics_port,
                metrics_refresh_ms: self.metrics_refresh_ms,
                trusted_proxies,
            },
            database,
            redis: RedisSettings { url: self.redis_url, prefix: self.redis_prefix },
            edge: EdgeSettings {
                url: self.edge_url.trim_end_matches('/').to_owned(),
                edge_to_origin_secret: self.edge_to_origin_secret,
                origin_to_edge_secret: self.origin_to_edge_secret,
            },
            auth: AuthSettings { jwt_secret: self.jwt_secret },
            orders: OrderSettings {
                hold_seconds: self.hold_seconds,
                reconcile_interval_secs: self.reconcile_interval_secs,
            },
            events: EventSettings {
                relay_interval_ms: self.relay_interval_ms,
                bus_claim_idle_ms: self.bus_claim_idle_ms,
                groups: match self.consumer_groups.trim() {
                    "all" => None,
                    only => Some(only.split(',').map(|g| g.trim().to_owned()).filter(|g| !g.is_empty()).collect()),
                },
                stall_after: Duration::from_millis(self.events_stall_after_ms),
            },
            payments: PaymentSettings { webhook_secrets, provider: payment_provider },
            cache_purger,
            push,
            notifications: NotificationSettings {
                push_allow_private_endpoints: self
                    .push_allow_private_endpoints
                    .unwrap_or(self.environment == Environment::Development),
                max_sockets_per_user: self.max_sockets_per_user,
            },
            limits,
            log_format: self.log_format,
            audit,
        };
        settings.check()?;
        Ok(settings)
    }
}

impl Settings {
    /// The settings of this process's environment.
    pub fn load() -> anyhow::Result<Self> {
        EnvSettings::from_process_env()?.into_settings()
    }

    /// The development defaults: a base for tests to change.
    pub fn development() -> Settings {
        EnvSettings::default().into_settings().expect("the development defaults are valid")
    }

    /// Refuses development secrets (and weak ones) in production.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.environment != Environment::Production {
            return Ok(());
        }
        let mut secrets = vec![
            ("DROPS_JWT_SECRET", &self.auth.jwt_secret, DEV_JWT_SECRET),
            ("DROPS_EDGE_TO_ORIGIN_SECRET", &self.edge.edge_to_origin_secret, DEV_EDGE_TO_ORIGIN_SECRET),
            ("DROPS_ORIGIN_TO_EDGE_SECRET", &self.edge.origin_to_edge_secret, DEV_ORIGIN_TO_EDGE_SECRET),
        ];
        if let PushProvider::Callback { secret } = &self.push {
            secrets.push(("DROPS_PUSH_CALLBACK_SECRET", secret, DEV_PUSH_CALLBACK_SECRET));
        }
        let dev_audit = AuditSettings::parse(&DEV_AUDIT_KEYS.into())?;
        for key in &self.audit.keys {
            secrets.push(("DROPS_AUDIT_KEYS", &key.secret, dev_audit.current().secret.expose_secret()));
        }
        for (name, secret, dev) in secrets {
            let s = secret.expose_secret();
            if s == dev || s.len() < 32 {
                anyhow::bail!(
                    "{name} is a development default or shorter than 32 bytes; refusing to start in production"
                );
            }
        }
        if matches!(self.payments.provider, PaymentProvider::Sandbox) {
            anyhow::bail!(
                "DROPS_PAYMENT_PROVIDER=sandbox confirms payments nobody made; refusing to start in production"
            );
        }
        if self.payments.webhook_secrets.iter().any(|s| s.expose_secret() == DEV_WEBHOOK_SECRET) {
            anyhow::bail!("DROPS_WEBHOOK_SECRETS holds the development default; refusing to start in production");
        }
        if self.notifications.push_allow_private_endpoints {
            anyhow::bail!(
                "DROPS_PUSH_ALLOW_PRIVATE_ENDPOINTS=true lets any user make the origin call its own network; \
                 refusing to start in production"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
