//! Events: the transactional outbox, the relay that publishes it to a Redis
//! Stream, and the consumer-group runner the areas plug their handlers into.
//!
//! An event is written in the same transaction as the change it describes, so no
//! change is ever without its event or vice versa. Delivery to consumers is at least
//! once; every consumer is idempotent on the event id (`processed_events`). The
//! outbox is kept: it is the durable, replayable log ([`relay::replay`]), and what
//! the stream loses (Redis dies) is published from it again ([`relay`]).

pub mod bus;
pub mod relay;

use std::time::Duration;

use chrono::Utc;
use drops_shared::events::{DomainEvent, EventEnvelope};
use futures::future::BoxFuture;
use futures::FutureExt;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::state::Core;

/// The Redis Stream every domain event is published to.
pub fn stream_key(prefix: &str) -> String {
    format!("{prefix}:events")
}

/// Writes `event` to the outbox, in the caller's transaction.
pub async fn record(conn: &mut PgConnection, event: DomainEvent) -> sqlx::Result<()> {
    record_all(conn, vec![event]).await
}

/// Writes `events` to the outbox in one statement, in the caller's transaction.
pub async fn record_all(conn: &mut PgConnection, events: Vec<DomainEvent>) -> sqlx::Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let (mut ids, mut types, mut aggregates, mut payloads) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for event in events {
        let envelope = EventEnvelope { id: Uuid::now_v7(), occurred_at: Utc::now(), event };
        ids.push(envelope.id);
        types.push(envelope.event.type_name().to_owned());
        aggregates.push(envelope.event.aggregate_id());
        payloads.push(serde_json::to_value(&envelope).map_err(|e| sqlx::Error::Encode(Box::new(e)))?);
    }
    // In the order given: `seq` follows the row order of one insert.
    sqlx::query!(
        "INSERT INTO outbox (id, event_type, aggregate_id, payload)
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::uuid[], $4::jsonb[])",
        &ids,
        &types,
        &aggregates,
        &payloads
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// How the event flow is doing, read from Postgres alone (so it can be told while
/// Redis is down).
#[derive(Debug, Clone, Copy, Default)]
pub struct Flow {
    /// How long the oldest unpublished event has waited.
    pub unpublished_for: Option<Duration>,
    /// How long ago the oldest event some consumer group has not finished was
    /// published: the slowest group's lag (to within the second the watermark is
    /// read at).
    pub unfinished_for: Option<Duration>,
    /// Published events some group has not finished.
    pub unfinished: i64,
}

impl Flow {
    /// Why the flow counts as stalled, if it does.
    pub fn stalled(&self, after: Duration) -> Option<String> {
        if let Some(waited) = self.unpublished_for.filter(|w| *w >= after) {
            return Some(format!("events have waited {}s to be published", waited.as_secs()));
        }
        if let Some(waited) = self.unfinished_for.filter(|w| *w >= after) {
            return Some(format!(
                "{} published event(s) not finished by every consumer group for {}s",
                self.unfinished,
                waited.as_secs()
            ));
        }
        None
    }
}

pub async fn flow(conn: impl sqlx::PgExecutor<'_>, prefix: &str) -> sqlx::Result<Flow> {
    let row = sqlx::query!(
        r#"SELECT
             (SELECT EXTRACT(EPOCH FROM now() - created_at)::float8 FROM outbox
               WHERE published_at IS NULL ORDER BY seq LIMIT 1) AS unpublished_for,
             (SELECT EXTRACT(EPOCH FROM now() - o.published_at)::float8 FROM outbox o
               WHERE o.published_seq >= (SELECT finished_below FROM event_stream_progress WHERE stream = $1)
               ORDER BY o.published_seq LIMIT 1) AS unfinished_for,
             (SELECT coalesce((SELECT max(published_seq) FROM outbox) - p.finished_below + 1, 0)
                FROM event_stream_progress p WHERE p.stream = $1) AS unfinished"#,
        stream_key(prefix)
    )
    .fetch_one(conn)
    .await?;
    let secs = |s: Option<f64>| s.map(|s| Duration::from_secs_f64(s.max(0.0)));
    Ok(Flow {
        unpublished_for: secs(row.unpublished_for),
        unfinished_for: secs(row.unfinished_for),
        unfinished: row.unfinished.unwrap_or(0).max(0),
    })
}

/// `/metrics` gauges: the outbox backlog, the event flow's state and each consumer
/// group's lag.
pub fn gauges(core: &Core) -> BoxFuture<'_, anyhow::Result<()>> {
    async move {
        let backlog =
            sqlx::query_scalar!(r#"SELECT count(*) AS "unpublished!" FROM outbox WHERE published_at IS NULL"#)
                .fetch_one(&core.db)
                .await?;
        let flow = flow(&core.db, core.redis_prefix()).await?;
        let stalled = flow.stalled(core.settings.events.stall_after).is_some();
        metrics::gauge!("drops_outbox_unpublished").set(backlog as f64);
        metrics::gauge!("drops_outbox_lag_seconds").set(flow.unpublished_for.unwrap_or_default().as_secs_f64());
        metrics::gauge!("drops_events_unfinished").set(flow.unfinished as f64);
        metrics::gauge!("drops_events_unfinished_seconds").set(flow.unfinished_for.unwrap_or_default().as_secs_f64());
        metrics::gauge!("drops_events_stalled").set(if stalled { 1.0 } else { 0.0 });
        let mut conn = core.redis_conn().await?;
        let groups: redis::RedisResult<redis::streams::StreamInfoGroupsReply> =
            redis::cmd("XINFO").arg("GROUPS").arg(stream_key(core.redis_prefix())).query_async(&mut conn).await;
        if let Ok(groups) = groups {
            for g in groups.groups {
                metrics::gauge!("drops_consumer_pending", "group" => g.name.clone()).set(g.pending as f64);
                if let Some(lag) = g.lag {
                    metrics::gauge!("drops_consumer_lag", "group" => g.name).set(lag as f64);
                }
            }
        }
        Ok(())
    }
    .boxed()
}
