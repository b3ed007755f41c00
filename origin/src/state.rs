//! What every area stands on: the Postgres pool, the Redis client and the one
//! shared Redis connection, the settings and the client for the edge's signed routes. It sits below the areas and knows none
//! of them; an area that needs more (a payment provider, the live sockets) keeps it
//! in a state of its own that holds a [`Core`], and `startup` wires them together.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use secrecy::ExposeSecret;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use crate::config::Settings;
use crate::edge::EdgeClient;
use crate::tasks::Rounds;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

#[derive(Clone)]
pub struct Core {
    pub db: PgPool,
    /// For what needs a connection of its own (a blocking read, a subscription).
    pub redis: redis::Client,
    /// Everything else: see [`Core::redis_conn`].
    pub shared_redis: SharedRedis,
    pub settings: Arc<Settings>,
    pub edge: EdgeClient,
    /// The rounds of this instance's audit sequencer (`audit::sequencer`): a request
    /// that staged audit entries wakes it and waits for them to be chained.
    pub audit_sequencer: Rounds,
}

impl Core {
    /// Connects to Postgres (applying pending migrations) and prepares the clients
    /// for Redis and the edge. Used by the server and by the one-off commands.
    pub async fn connect(settings: Settings) -> anyhow::Result<Self> {
        let db = connect_db(&settings).await?;
        MIGRATOR.run(&db).await?;
        let redis = redis::Client::open(settings.redis.url.expose_secret())?;
        Ok(Core {
            db,
            shared_redis: SharedRedis::new(redis.clone()),
            redis,
            edge: EdgeClient::new(&settings)?,
            audit_sequencer: Rounds::default(),
            settings: Arc::new(settings),
        })
    }

    /// The instance's one multiplexed Redis connection, shared by every request and
    /// task that sends plain commands (no blocking reads, no subscriptions): a request
    /// never opens a connection of its own, so a flood cannot use up Redis's clients.
    pub async fn redis_conn(&self) -> redis::RedisResult<redis::aio::ConnectionManager> {
        self.shared_redis.get().await
    }

    /// The same, on the pool `db` (the background work's: see `startup`).
    pub fn on_pool(&self, db: PgPool) -> Core {
        Core { db, ..self.clone() }
    }

    /// The prefix of every Redis key this deployment writes.
    pub fn redis_prefix(&self) -> &str {
        &self.settings.redis.prefix
    }
}

/// How long start-up waits for Postgres to hand out a first connection.
const CONNECT_WITHIN: Duration = Duration::from_secs(5);

/// The requests' pool. A request waits for a connection at most
/// `database.acquire_timeout_ms` (then `sqlx::Error::PoolTimedOut`, which the error
/// type answers 503 `overloaded`); start-up alone waits longer for the first one.
pub async fn connect_db(settings: &Settings) -> anyhow::Result<PgPool> {
    let db = &settings.database;
    connect_pool(settings, db.max_connections, db.acquire_timeout_ms).await
}

/// The background work's pool (see `DatabaseSettings::background_max_connections`).
pub async fn connect_background_db(settings: &Settings) -> anyhow::Result<PgPool> {
    let db = &settings.database;
    connect_pool(settings, db.background_max_connections, db.background_acquire_timeout_ms).await
}

async fn connect_pool(settings: &Settings, max_connections: u32, acquire_timeout_ms: u64) -> anyhow::Result<PgPool> {
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_millis(acquire_timeout_ms))
        .connect_lazy(settings.database.url.expose_secret())?;
    let first = tokio::time::timeout(CONNECT_WITHIN, async {
        loop {
            match pool.acquire().await {
                Err(sqlx::Error::PoolTimedOut) => continue,
                other => return other.map(drop),
            }
        }
    });
    match first.await {
        Ok(connected) => connected?,
        Err(_) => anyhow::bail!("no connection to Postgres within {CONNECT_WITHIN:?}"),
    }
    Ok(pool)
}

/// A Redis connection made on first use and shared by clones of this handle; once
/// made it reconnects by itself, and [`LazyRedis::reset`] drops a broken one.
#[derive(Clone, Default)]
pub struct LazyRedis(Arc<tokio::sync::Mutex<Option<redis::aio::ConnectionManager>>>);

impl LazyRedis {
    /// The connection, and whether it was made just now.
    pub async fn get(&self, client: &redis::Client) -> redis::RedisResult<(redis::aio::ConnectionManager, bool)> {
        let mut slot = self.0.lock().await;
        if let Some(conn) = slot.as_ref() {
            return Ok((conn.clone(), false));
        }
        // Bounded: without a response timeout a command sent as Redis dies can wait for
        // ever, and the relay and every consumer group with it (seen: a Redis killed for
        // 10 s left them all stopped after it came back). A blocking read waits 0.5 s.
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(SHARED_REDIS_TIMEOUT)
            .set_response_timeout(SHARED_REDIS_TIMEOUT)
            .set_number_of_retries(1);
        let conn = redis::aio::ConnectionManager::new_with_config(client.clone(), config).await?;
        *slot = Some(conn.clone());
        Ok((conn, true))
    }

    pub async fn reset(&self) {
        self.0.lock().await.take();
    }
}

/// How long a command on the shared connection may wait for its answer, and a
/// connection attempt for Redis.
const SHARED_REDIS_TIMEOUT: Duration = Duration::from_secs(5);
/// After a failed attempt to connect, callers are refused at once this long, so a
/// Redis that is down costs a request nothing but the refusal.
const SHARED_REDIS_RETRY_AFTER: Duration = Duration::from_secs(1);

/// One Redis connection (a [`redis::aio::ConnectionManager`]: multiplexed, and it
/// reconnects by itself), made on first use so the origin starts while Redis is
/// down. Until it is made, one caller at a time tries, at most once a second; the
/// others are refused at once rather than queued behind the attempt.
#[derive(Clone)]
pub struct SharedRedis {
    client: redis::Client,
    conn: Arc<tokio::sync::OnceCell<redis::aio::ConnectionManager>>,
    failed_at: Arc<Mutex<Option<Instant>>>,
}

impl SharedRedis {
    pub fn new(client: redis::Client) -> Self {
        Self { client, conn: Arc::default(), failed_at: Arc::default() }
    }

    fn failed_lately(&self) -> bool {
        let failed_at = self.failed_at.lock().unwrap_or_else(|e| e.into_inner());
        failed_at.is_some_and(|at| at.elapsed() < SHARED_REDIS_RETRY_AFTER)
    }

    pub async fn get(&self) -> redis::RedisResult<redis::aio::ConnectionManager> {
        if let Some(conn) = self.conn.get() {
            return Ok(conn.clone());
        }
        let unreachable = || {
            redis::RedisError::from(std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                "Redis could not be reached a moment ago; not trying again yet",
            ))
        };
        if self.failed_lately() {
            return Err(unreachable());
        }
        let made = self
            .conn
            .get_or_try_init(|| async {
                if self.failed_lately() {
                    return Err(unreachable());
                }
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(SHARED_REDIS_TIMEOUT)
                    .set_response_timeout(SHARED_REDIS_TIMEOUT)
                    .set_number_of_retries(1);
                let made = redis::aio::ConnectionManager::new_with_config(self.client.clone(), config).await;
                if made.is_err() {
                    *self.failed_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
                }
                made
            })
            .await?;
        Ok(made.clone())
    }
}
