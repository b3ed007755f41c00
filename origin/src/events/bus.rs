//! Consumer groups on the event stream. Each business consumer (edge sync, cache
//! purge, fan-out, notifications, ...) is a group; each origin process runs one
//! member of it. A member first reclaims entries another member left pending longer than
//! `bus_claim_idle_ms` (it died mid-batch), then reads new ones. An entry is
//! acknowledged only after its handler succeeded and the event id was recorded in
//! `processed_events`; a redelivered event that is recorded is acknowledged unread.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use drops_shared::events::{DomainEvent, EventEnvelope};
use redis::aio::ConnectionManager;
use redis::streams::{StreamAutoClaimOptions, StreamAutoClaimReply, StreamId, StreamReadOptions, StreamReadReply};
use redis::AsyncCommands;
use sqlx::PgPool;

use crate::state::LazyRedis;
use crate::tasks::{Next, Workers};

/// A future a [`Consumer`] answers with.
pub type Handled<'a> = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send + 'a>>;

/// One area's reaction to the event stream, run as a consumer group: each area
/// that reacts to events implements it, and `startup` lists them.
pub trait Consumer: Send + Sync + 'static {
    /// The group's name: in Redis, in `processed_events`, in logs.
    fn group(&self) -> &'static str;
    /// Whether the group acts on `event`; the others are acknowledged unread, with
    /// no database work (most of a rush's events concern one group or two).
    fn interested(&self, event: &DomainEvent) -> bool;
    /// Acts on one event. It may come again (a member that died before recording
    /// it), so acting twice must change nothing more than acting once.
    fn handle<'a>(&'a self, event: &'a EventEnvelope) -> Handled<'a>;
}

/// One member of a consumer group, in this process.
#[derive(Clone)]
pub struct Member {
    pub stream: String,
    pub group: &'static str,
    /// This member's name; unique per process.
    pub name: String,
    pub claim_idle_ms: u64,
    pub batch: usize,
    consumer: Arc<dyn Consumer>,
}

impl Member {
    pub fn new(stream: String, consumer: Arc<dyn Consumer>, claim_idle_ms: u64) -> Self {
        let group = consumer.group();
        let name = format!("{group}-{}-{}", std::process::id(), uuid::Uuid::new_v4().simple());
        Self { stream, group, name, claim_idle_ms, batch: 64, consumer }
    }

    /// Creates the group (reading from the start of the stream) unless it exists.
    pub async fn ensure_group(&self, conn: &mut ConnectionManager) -> redis::RedisResult<()> {
        let created: redis::RedisResult<()> = conn.xgroup_create_mkstream(&self.stream, self.group, "0").await;
        match created {
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            other => other,
        }
    }

    /// Entries other members left pending too long, now ours.
    pub async fn reclaim(&self, conn: &mut ConnectionManager) -> redis::RedisResult<Vec<StreamId>> {
        let reply: StreamAutoClaimReply = conn
            .xautoclaim_options(
                &self.stream,
                self.group,
                &self.name,
                self.claim_idle_ms,
                "0-0",
                StreamAutoClaimOptions::default().count(self.batch),
            )
            .await?;
        Ok(reply.claimed)
    }

    /// New entries for this member (waits up to `block` for some).
    pub async fn read(&self, conn: &mut ConnectionManager, block: Duration) -> redis::RedisResult<Vec<StreamId>> {
        let opts = StreamReadOptions::default()
            .group(self.group, &self.name)
            .count(self.batch)
            .block(block.as_millis() as usize);
        let reply: Option<StreamReadReply> = conn.xread_options(&[&self.stream], &[">"], &opts).await?;
        Ok(reply.map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect()).unwrap_or_default())
    }

    /// Handles entries one by one, acknowledging those done. Returns how many the
    /// handler ran for.
    pub async fn process(
        &self,
        conn: &mut ConnectionManager,
        db: &PgPool,
        entries: Vec<StreamId>,
    ) -> anyhow::Result<usize> {
        let mut handled = 0;
        for entry in entries {
            let envelope = entry.get::<String>("event").and_then(|raw| {
                serde_json::from_str::<EventEnvelope>(&raw)
                    .map_err(|e| tracing::error!(id = %entry.id, error = %e, "undecodable event; dropped"))
                    .ok()
            });
            let Some(envelope) = envelope.filter(|e| self.consumer.interested(&e.event)) else {
                let _: i64 = conn.xack(&self.stream, self.group, &[&entry.id]).await?;
                continue;
            };
            let seen = sqlx::query_scalar!(
                "SELECT 1 FROM processed_events WHERE consumer = $1 AND event_id = $2",
                self.group,
                envelope.id
            )
            .fetch_optional(db)
            .await?;
            if seen.is_none() {
                let event_id = envelope.id;
                if let Err(e) = self.consumer.handle(&envelope).await {
                    // Left pending: this member or another takes it again after the idle time.
                    tracing::warn!(group = %self.group, %event_id, error = %e, "event handler failed; will retry");
                    continue;
                }
                handled += 1;
                sqlx::query!(
                    "INSERT INTO processed_events (consumer, event_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                    self.group,
                    event_id
                )
                .execute(db)
                .await?;
            }
            let _: i64 = conn.xack(&self.stream, self.group, &[&entry.id]).await?;
        }
        Ok(handled)
    }

    /// One round of this member: reclaim what others left, read what is new, handle
    /// both. Reading blocks up to half a second, so rounds can follow each other.
    pub async fn round(&self, redis: &LazyRedis, client: &redis::Client, db: &PgPool) -> anyhow::Result<Next> {
        let outcome = async {
            let (mut conn, fresh) = redis.get(client).await?;
            if fresh {
                self.ensure_group(&mut conn).await?;
            }
            let stale = self.reclaim(&mut conn).await?;
            self.process(&mut conn, db, stale).await?;
            let new = self.read(&mut conn, Duration::from_millis(500)).await?;
            self.process(&mut conn, db, new).await?;
            anyhow::Ok(())
        }
        .await;
        match outcome {
            Ok(()) => Ok(Next::Now),
            Err(e) => {
                redis.reset().await;
                Err(e.context(format!("consumer group {}", self.group)))
            }
        }
    }

    /// Runs this member among `workers` until they stop.
    pub fn spawn(self, workers: &Workers, client: redis::Client, db: PgPool) {
        let redis = LazyRedis::default();
        workers.every("event consumer", Duration::from_millis(500), move || {
            let (member, redis, client, db) = (self.clone(), redis.clone(), client.clone(), db.clone());
            async move { member.round(&redis, &client, &db).await }
        });
    }
}
