//! Events: the transactional outbox, the relay that publishes it to a Redis
//! Stream, and the consumer-group runner the business modules plug their handlers into.
//!
//! An event is written in the same transaction as the change it describes, so no
//! change is ever without its event or vice versa. Delivery to consumers is at least
//! once; every consumer is idempotent on the event id (`processed_events`). The
//! outbox is kept: it is the durable, replayable log ([`relay::replay`]).

pub mod bus;
pub mod relay;

/// The Redis Stream every domain event is published to.
pub fn stream_key(prefix: &str) -> String {
    format!("{prefix}:events")
}

use chrono::Utc;
use drops_shared::events::{DomainEvent, EventEnvelope};
use sqlx::PgConnection;
use uuid::Uuid;

pub async fn record(conn: &mut PgConnection, event: DomainEvent) -> sqlx::Result<Uuid> {
    let envelope = EventEnvelope { id: Uuid::now_v7(), occurred_at: Utc::now(), event };
    let payload = serde_json::to_value(&envelope).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    sqlx::query("INSERT INTO outbox (id, event_type, aggregate_id, payload) VALUES ($1, $2, $3, $4)")
        .bind(envelope.id)
        .bind(envelope.event.type_name())
        .bind(envelope.event.aggregate_id())
        .bind(payload)
        .execute(conn)
        .await?;
    Ok(envelope.id)
}
