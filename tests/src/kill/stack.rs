//! The private stack a kill run works on (see [`super`]): its own Postgres and
//! Redis, two origin processes behind a [`Balancer`], `wrangler dev` with persisted
//! state, and the Stripe double as the payment provider. Nothing here is shared with
//! the end-to-end suite's [`crate::Stack`] or with the machine's servers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use drops_origin::config::{PaymentProvider, PushProvider, Settings};
use secrecy::SecretString;

use super::balancer::Balancer;
use super::procs::{Edge, Origin, Postgres, Redis};
use crate::stripe_double::StripeDouble;
use crate::{free_port, EDGE_TO_ORIGIN_SECRET, JWT_SECRET, ORIGIN_TO_EDGE_SECRET, PUSH_SECRET, WEBHOOK_SECRET};

pub const REDIS_PREFIX: &str = "drops-kill";
const DATABASE: &str = "drops";
const STRIPE_KEY: &str = "sk_test_kill_double";

pub struct KillStack {
    root: PathBuf,
    exe: PathBuf,
    pub pg: Postgres,
    pub redis: Redis,
    pub origins: Vec<Origin>,
    pub edge: Edge,
    pub balancer: Balancer,
    pub double: StripeDouble,
    pub database_url: String,
    /// The origins' settings, for the harness's own checks run in-process
    /// (snapshots, reconciliation, the audit chain).
    pub settings: Settings,
    env: HashMap<String, String>,
}

impl KillStack {
    /// Starts everything; `exe` is a program whose `origin <command>` runs the
    /// origin's command line ([`super::origin_main`]).
    pub async fn start(exe: &Path) -> anyhow::Result<KillStack> {
        let root = std::env::temp_dir().join(format!("drops-kill-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&root)?;
        std::fs::set_permissions(&root, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        let pg = Postgres::init(&root, free_port())?;
        pg.start().await?;
        {
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(&pg.url("postgres")).await?;
            sqlx::query(&format!("CREATE DATABASE {DATABASE}")).execute(&mut conn).await?;
        }
        let database_url = pg.url(DATABASE);
        let redis = Redis::new(&root, free_port())?;
        redis.start().await?;
        let double = StripeDouble::default();
        let double_url = double.start().await;

        let (origin_ports, edge_port) = ([free_port(), free_port()], free_port());
        let backends: Vec<SocketAddr> = origin_ports.iter().map(|p| SocketAddr::from(([127, 0, 0, 1], *p))).collect();
        let balancer = Balancer::start(backends).await?;
        let edge_url = format!("http://127.0.0.1:{edge_port}");
        let env: HashMap<String, String> = [
            ("DROPS_HOST", "127.0.0.1".to_owned()),
            ("DROPS_PUBLIC_URL", balancer.url()),
            ("DROPS_EDGE_URL", edge_url.clone()),
            ("DROPS_DATABASE_URL", database_url.clone()),
            ("DROPS_REDIS_URL", redis.url()),
            ("DROPS_REDIS_PREFIX", REDIS_PREFIX.to_owned()),
            ("DROPS_JWT_SECRET", JWT_SECRET.to_owned()),
            ("DROPS_EDGE_TO_ORIGIN_SECRET", EDGE_TO_ORIGIN_SECRET.to_owned()),
            ("DROPS_ORIGIN_TO_EDGE_SECRET", ORIGIN_TO_EDGE_SECRET.to_owned()),
            ("DROPS_WEBHOOK_SECRETS", WEBHOOK_SECRET.to_owned()),
            ("DROPS_PUSH_CALLBACK_SECRET", PUSH_SECRET.to_owned()),
            ("DROPS_PAYMENT_PROVIDER", "stripe".to_owned()),
            ("DROPS_STRIPE_API_KEY", STRIPE_KEY.to_owned()),
            ("DROPS_STRIPE_API_BASE", double_url.clone()),
            ("DROPS_RELAY_INTERVAL_MS", "50".to_owned()),
            // A dead instance's unacknowledged events pass to the living one after this.
            ("DROPS_BUS_CLAIM_IDLE_MS", "1000".to_owned()),
            // Off: drift must be found by the harness's one reconciliation at the
            // end, not quietly repaired on the way.
            ("DROPS_RECONCILE_INTERVAL_SECS", "0".to_owned()),
            ("DROPS_EVENTS_STALL_AFTER_MS", "5000".to_owned()),
            ("DROPS_METRICS_REFRESH_MS", "1000".to_owned()),
            ("RUST_LOG", "warn".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let exe = exe.to_path_buf();
        let migrated = tokio::process::Command::new(&exe).args(["origin", "migrate"]).envs(&env).output().await?;
        anyhow::ensure!(migrated.status.success(), "migrate: {}", String::from_utf8_lossy(&migrated.stderr));

        let vars = crate::edge_vars_for(&balancer.url());
        let edge = Edge::new(&root, edge_port, vars);
        let mut origins = Vec::new();
        for (n, port) in origin_ports.iter().enumerate() {
            origins.push(Origin::start(&exe, &root, &format!("origin-{n}"), &env, *port, free_port()).await?);
        }
        edge.start().await?;

        let mut settings = Settings::development();
        settings.server.public_url = balancer.url();
        settings.server.metrics_port = 0;
        settings.edge.url = edge_url;
        settings.edge.edge_to_origin_secret = SecretString::from(EDGE_TO_ORIGIN_SECRET);
        settings.edge.origin_to_edge_secret = SecretString::from(ORIGIN_TO_EDGE_SECRET);
        settings.database.url = SecretString::from(database_url.clone());
        settings.database.acquire_timeout_ms = 5_000;
        settings.redis.url = SecretString::from(redis.url());
        settings.redis.prefix = REDIS_PREFIX.to_owned();
        settings.auth.jwt_secret = SecretString::from(JWT_SECRET);
        settings.payments.webhook_secrets = vec![SecretString::from(WEBHOOK_SECRET)];
        settings.payments.provider =
            PaymentProvider::Stripe { api_key: SecretString::from(STRIPE_KEY), api_base: double_url };
        settings.orders.reconcile_interval_secs = 0;
        settings.push = PushProvider::Callback { secret: SecretString::from(PUSH_SECRET) };
        Ok(KillStack { root, exe, pg, redis, origins, edge, balancer, double, database_url, settings, env })
    }

    pub fn edge_url(&self) -> String {
        self.edge.url()
    }

    /// Where the provider delivers webhooks: the balancer, as in production.
    pub fn origin_url(&self) -> String {
        self.balancer.url()
    }

    /// Runs one of the origin's operator commands (`reconcile`, `followers-rebuild`)
    /// against the stack, as an operator would; its standard output.
    pub async fn origin_command(&self, command: &str) -> anyhow::Result<String> {
        let out = tokio::process::Command::new(&self.exe).args(["origin", command]).envs(&self.env).output().await?;
        anyhow::ensure!(out.status.success(), "origin {command}: {}", String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Starts an origin instance again in the place of a dead one (between scenarios).
    pub async fn revive_origins(&mut self) -> anyhow::Result<()> {
        for (n, origin) in self.origins.iter_mut().enumerate() {
            if !origin.running() {
                let (port, metrics) = (origin.port, origin.metrics_port);
                *origin = Origin::start(&self.exe, &self.root, &format!("origin-{n}-again"), &self.env, port, metrics)
                    .await?;
            }
        }
        Ok(())
    }

    /// A pool on the private database, for the calling runtime.
    pub async fn db(&self) -> anyhow::Result<sqlx::PgPool> {
        Ok(sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(10))
            .connect(&self.database_url)
            .await?)
    }

    pub async fn redis_conn(&self) -> anyhow::Result<redis::aio::MultiplexedConnection> {
        Ok(redis::Client::open(self.redis.url())?.get_multiplexed_async_connection().await?)
    }

    /// Where the processes' logs and state are.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

impl Drop for KillStack {
    fn drop(&mut self) {
        self.edge.kill();
        for o in &self.origins {
            o.kill();
        }
        self.redis.kill();
        self.pg.stop();
        if std::env::var_os("DROPS_KILL_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}
