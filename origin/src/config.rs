//! Settings, layered: built-in development defaults, then `DROPS_*` environment
//! variables. Secrets are `SecretString`s: they never reach a log or a Debug print.
//! In production the origin refuses to start while any secret is a development default.

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

pub const DEV_JWT_SECRET: &str = "dev-jwt-secret-change-me";
pub const DEV_EDGE_TO_ORIGIN_SECRET: &str = "dev-edge-to-origin-secret";
pub const DEV_ORIGIN_TO_EDGE_SECRET: &str = "dev-origin-to-edge-secret";
pub const DEV_WEBHOOK_SECRET: &str = "whsec_dev_sandbox_secret";
pub const DEV_PUSH_CALLBACK_SECRET: &str = "dev-push-callback-secret";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    Development,
    Production,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub environment: Environment,
    pub host: String,
    pub port: u16,
    /// Base URL buyers reach the origin at (checkout links point here).
    pub public_url: String,
    /// Base URL of the edge, for signed calls from the origin.
    pub edge_url: String,
    pub database_url: SecretString,
    pub database_max_connections: u32,
    pub redis_url: SecretString,
    pub jwt_secret: SecretString,
    pub edge_to_origin_secret: SecretString,
    pub origin_to_edge_secret: SecretString,
    /// Comma-separated: several during a rotation, any may have signed a webhook.
    pub webhook_secrets: SecretString,
    /// How long a hold lasts before its units return to stock.
    pub hold_seconds: u32,
    /// `pretty` for humans, `json` for log pipelines.
    pub log_format: String,
    /// Prefix of every Redis key (streams, sets), so environments can share a server.
    pub redis_prefix: String,
    /// How often the outbox relay looks for new events.
    pub relay_interval_ms: u64,
    /// How long an event may sit unacknowledged with a consumer before another takes it.
    pub bus_claim_idle_ms: u64,
    /// How often reconciliation compares the edge's inventories with Postgres (0: never).
    pub reconcile_interval_secs: u64,
    /// `sandbox` (default) or `stripe`.
    pub payment_provider: String,
    /// Stripe secret key, for `payment_provider = stripe`.
    pub stripe_api_key: Option<SecretString>,
    /// How cached pages are evicted: `edge` (its signed purge route) or `cloudflare`.
    pub cache_purger: String,
    pub cloudflare_zone_id: Option<String>,
    pub cloudflare_api_token: Option<SecretString>,
    /// The public base URL apps reach the edge at (the URLs Cloudflare purges).
    pub public_edge_url: Option<String>,
    /// `callback` (signed HTTP POST to the subscription endpoint) or `webpush`.
    pub push_provider: String,
    /// Signs callback pushes.
    pub push_callback_secret: SecretString,
    /// VAPID private key (raw P-256, base64url), for `webpush`.
    pub vapid_private_key: Option<SecretString>,
    pub vapid_contact: String,
}

impl Settings {
    pub fn load() -> anyhow::Result<Self> {
        let settings: Settings = config::Config::builder()
            .set_default("environment", "development")?
            .set_default("host", "127.0.0.1")?
            .set_default("port", 8080)?
            .set_default("public_url", "http://127.0.0.1:8080")?
            .set_default("edge_url", "http://127.0.0.1:8787")?
            .set_default("database_url", "postgres://postgres@127.0.0.1:5432/drops_dev")?
            .set_default("database_max_connections", 20)?
            .set_default("redis_url", "redis://127.0.0.1:6379")?
            .set_default("jwt_secret", DEV_JWT_SECRET)?
            .set_default("edge_to_origin_secret", DEV_EDGE_TO_ORIGIN_SECRET)?
            .set_default("origin_to_edge_secret", DEV_ORIGIN_TO_EDGE_SECRET)?
            .set_default("webhook_secrets", DEV_WEBHOOK_SECRET)?
            .set_default("hold_seconds", 600)?
            .set_default("log_format", "pretty")?
            .set_default("redis_prefix", "drops")?
            .set_default("relay_interval_ms", 100)?
            .set_default("bus_claim_idle_ms", 30_000)?
            .set_default("reconcile_interval_secs", 60)?
            .set_default("payment_provider", "sandbox")?
            .set_default("cache_purger", "edge")?
            .set_default("push_provider", "callback")?
            .set_default("push_callback_secret", DEV_PUSH_CALLBACK_SECRET)?
            .set_default("vapid_contact", "mailto:ops@drops.dev")?
            .add_source(config::Environment::with_prefix("DROPS").try_parsing(true))
            .build()?
            .try_deserialize()?;
        settings.check()?;
        Ok(settings)
    }

    /// Refuses development secrets (and weak ones) in production.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.environment != Environment::Production {
            return Ok(());
        }
        let secrets = [
            ("DROPS_JWT_SECRET", &self.jwt_secret, DEV_JWT_SECRET),
            ("DROPS_EDGE_TO_ORIGIN_SECRET", &self.edge_to_origin_secret, DEV_EDGE_TO_ORIGIN_SECRET),
            ("DROPS_ORIGIN_TO_EDGE_SECRET", &self.origin_to_edge_secret, DEV_ORIGIN_TO_EDGE_SECRET),
            ("DROPS_PUSH_CALLBACK_SECRET", &self.push_callback_secret, DEV_PUSH_CALLBACK_SECRET),
        ];
        for (name, secret, dev) in secrets {
            let s = secret.expose_secret();
            if s == dev || s.len() < 32 {
                anyhow::bail!(
                    "{name} is a development default or shorter than 32 bytes; refusing to start in production"
                );
            }
        }
        if self.payment_provider == "stripe" && self.stripe_api_key.is_none() {
            anyhow::bail!("DROPS_PAYMENT_PROVIDER=stripe needs DROPS_STRIPE_API_KEY");
        }
        if self.webhook_secret_list().iter().any(|s| s == DEV_WEBHOOK_SECRET || s.is_empty()) {
            anyhow::bail!("DROPS_WEBHOOK_SECRETS holds the development default; refusing to start in production");
        }
        Ok(())
    }

    /// The development defaults (what `load` gives with no `DROPS_*` set, but for
    /// the database and Redis URLs and the ports): a base for tests to change.
    pub fn development() -> Settings {
        Settings {
            environment: Environment::Development,
            host: "127.0.0.1".into(),
            port: 8080,
            public_url: "http://127.0.0.1:8080".into(),
            edge_url: "http://127.0.0.1:8787".into(),
            database_url: "postgres://postgres@127.0.0.1:5432/drops_dev".into(),
            database_max_connections: 20,
            redis_url: "redis://127.0.0.1:6379".into(),
            jwt_secret: DEV_JWT_SECRET.into(),
            edge_to_origin_secret: DEV_EDGE_TO_ORIGIN_SECRET.into(),
            origin_to_edge_secret: DEV_ORIGIN_TO_EDGE_SECRET.into(),
            webhook_secrets: DEV_WEBHOOK_SECRET.into(),
            hold_seconds: 600,
            log_format: "pretty".into(),
            redis_prefix: "drops".into(),
            relay_interval_ms: 100,
            bus_claim_idle_ms: 30_000,
            reconcile_interval_secs: 60,
            payment_provider: "sandbox".into(),
            stripe_api_key: None,
            cache_purger: "edge".into(),
            cloudflare_zone_id: None,
            cloudflare_api_token: None,
            public_edge_url: None,
            push_provider: "callback".into(),
            push_callback_secret: DEV_PUSH_CALLBACK_SECRET.into(),
            vapid_private_key: None,
            vapid_contact: "mailto:ops@drops.dev".into(),
        }
    }

    pub fn webhook_secret_list(&self) -> Vec<String> {
        self.webhook_secrets.expose_secret().split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn production_refuses_dev_secrets() {
        assert!(Settings::development().check().is_ok());
        let mut prod = Settings { environment: Environment::Production, ..Settings::development() };
        assert!(prod.check().is_err());
        let strong = "s".repeat(40);
        prod.jwt_secret = strong.clone().into();
        prod.edge_to_origin_secret = format!("{strong}e").into();
        prod.origin_to_edge_secret = format!("{strong}o").into();
        prod.push_callback_secret = format!("{strong}p").into();
        assert!(prod.check().is_err(), "webhook secret is still the dev one");
        prod.webhook_secrets = "whsec_live_1,whsec_live_2".into();
        assert!(prod.check().is_ok());
    }

    #[test]
    fn secrets_do_not_show_in_debug() {
        let printed = format!("{:?}", Settings::development());
        assert!(!printed.contains(DEV_JWT_SECRET));
    }
}
