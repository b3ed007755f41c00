//! Events: the transactional outbox, the relay that publishes it to a Redis
//! Stream, and the consumer-group runner the areas plug their handlers into.
//!
//! An event is written in the same transaction as the change it describes, so no
//! change is ever without its event or vice versa. Delivery to consumers is at least
//! once; every consumer is idempotent on the event id (`processed_events`). The
//! outbox is kept: it is the durable, replayable log ([`relay::replay`]).

pub mod bus;
pub mod relay;

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

/// `/metrics` gauges: the outbox backlog and each consumer group's lag.
pub fn gauges(core: &Core) -> BoxFuture<'_, anyhow::Result<()>> {
    async move {
        let backlog = sqlx::query!(
            r#"SELECT count(*) AS "unpublished!", EXTRACT(EPOCH FROM now() - min(created_at))::float8 AS oldest
               FROM outbox WHERE published_at IS NULL"#
        )
        .fetch_one(&core.db)
        .await?;
        metrics::gauge!("drops_outbox_unpublished").set(backlog.unpublished as f64);
        metrics::gauge!("drops_outbox_lag_seconds").set(backlog.oldest.unwrap_or(0.0));
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
