//! What every area stands on: the Postgres pool, the Redis client, the settings and
//! the client for the edge's signed routes. It sits below the areas and knows none
//! of them; an area that needs more (a payment provider, the live sockets) keeps it
//! in a state of its own that holds a [`Core`], and `startup` wires them together.

use std::sync::Arc;
use std::time::Duration;

use secrecy::ExposeSecret;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use crate::config::Settings;
use crate::edge::EdgeClient;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

#[derive(Clone)]
pub struct Core {
    pub db: PgPool,
    pub redis: redis::Client,
    pub settings: Arc<Settings>,
    pub edge: EdgeClient,
}

impl Core {
    /// Connects to Postgres (applying pending migrations) and prepares the clients
    /// for Redis and the edge. Used by the server and by the one-off commands.
    pub async fn connect(settings: Settings) -> anyhow::Result<Self> {
        let db = connect_db(&settings).await?;
        MIGRATOR.run(&db).await?;
        Ok(Core {
            db,
            redis: redis::Client::open(settings.redis.url.expose_secret())?,
            edge: EdgeClient::new(&settings)?,
            settings: Arc::new(settings),
        })
    }

    /// The prefix of every Redis key this deployment writes.
    pub fn redis_prefix(&self) -> &str {
        &self.settings.redis.prefix
    }
}

/// How long start-up waits for Postgres to hand out a first connection.
const CONNECT_WITHIN: Duration = Duration::from_secs(5);

/// The pool. A request waits for a connection at most
/// `database.acquire_timeout_ms` (then `sqlx::Error::PoolTimedOut`, which the error
/// type answers 503 `overloaded`); start-up alone waits longer for the first one.
pub async fn connect_db(settings: &Settings) -> anyhow::Result<PgPool> {
    let pool = PgPoolOptions::new()
        .max_connections(settings.database.max_connections)
        .acquire_timeout(Duration::from_millis(settings.database.acquire_timeout_ms))
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
        let conn = redis::aio::ConnectionManager::new(client.clone()).await?;
        *slot = Some(conn.clone());
        Ok((conn, true))
    }

    pub async fn reset(&self) {
        self.0.lock().await.take();
    }
}
