//! Domain events: what the origin writes to its outbox in the same transaction as
//! the change itself, and what the event bus carries to its consumers. Consumers
//! must be idempotent on [`EventEnvelope::id`]: delivery is at least once.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::api::Money;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr)]
#[serde(tag = "type", content = "data")]
pub enum DomainEvent {
    DropCreated {
        drop_id: Uuid,
        creator_id: Uuid,
        starts_at: DateTime<Utc>,
        ends_at: DateTime<Utc>,
        /// Units for sale (0 in events written before it was said).
        #[serde(default)]
        stock: u32,
    },
    /// Its terms changed before it started.
    DropUpdated {
        drop_id: Uuid,
        creator_id: Uuid,
        starts_at: DateTime<Utc>,
        ends_at: DateTime<Utc>,
        /// Units for sale (0 in events written before it was said).
        #[serde(default)]
        stock: u32,
    },
    /// It went live (emitted once, at `starts_at`).
    DropStarted { drop_id: Uuid, creator_id: Uuid },
    /// Its window closed (emitted once, at `ends_at`).
    DropEnded { drop_id: Uuid, creator_id: Uuid },
    /// Someone followed or unfollowed a creator (the ledger in Postgres says which).
    FollowChanged { creator_id: Uuid, user_id: Uuid, following: bool },
    OrderReserved {
        order_id: Uuid,
        drop_id: Uuid,
        user_id: Uuid,
        quantity: u32,
        /// What the order costs (absent from events written before it was said).
        #[serde(default)]
        amount: Option<Money>,
        /// When the edge granted the hold (absent likewise).
        #[serde(default)]
        reserved_at: Option<DateTime<Utc>>,
    },
    /// Paid: the hold must be sold at the edge.
    OrderConfirmed { order_id: Uuid, drop_id: Uuid, user_id: Uuid, quantity: u32 },
    /// Payment failed (or a late payment could not be honoured): the units return.
    OrderFailed { order_id: Uuid, drop_id: Uuid, user_id: Uuid, quantity: u32, reason: String },
    /// The buyer cancelled: the units return.
    OrderCancelled { order_id: Uuid, drop_id: Uuid, user_id: Uuid, quantity: u32 },
    /// The hold ran out unpaid: the units returned at the edge.
    OrderExpired { order_id: Uuid, drop_id: Uuid, user_id: Uuid, quantity: u32 },
    /// The provider says the buyer paid (whatever the order's state by then).
    PaymentSucceeded { order_id: Uuid, reference: String },
    /// The order's payment is prepared with the provider: the buyer can pay.
    PaymentReady { order_id: Uuid, user_id: Uuid },
    /// Money went back to the buyer.
    PaymentRefunded { order_id: Uuid, reference: String, amount: i64, currency: String },
}

impl DomainEvent {
    /// The order this event is about, if it is about one.
    pub fn order_id(&self) -> Option<Uuid> {
        match self {
            Self::DropCreated { .. }
            | Self::DropUpdated { .. }
            | Self::DropStarted { .. }
            | Self::DropEnded { .. }
            | Self::FollowChanged { .. } => None,
            other => Some(other.aggregate_id()),
        }
    }

    /// The event's type name, as stored in the outbox's `event_type` column (the
    /// same as its serde tag).
    pub fn type_name(&self) -> &'static str {
        self.into()
    }

    /// The entity the event is about; consumers partition and order by it.
    pub fn aggregate_id(&self) -> Uuid {
        match self {
            Self::DropCreated { drop_id, .. }
            | Self::DropUpdated { drop_id, .. }
            | Self::DropStarted { drop_id, .. }
            | Self::DropEnded { drop_id, .. } => *drop_id,
            Self::FollowChanged { creator_id, .. } => *creator_id,
            Self::OrderReserved { order_id, .. }
            | Self::OrderConfirmed { order_id, .. }
            | Self::OrderFailed { order_id, .. }
            | Self::OrderCancelled { order_id, .. }
            | Self::OrderExpired { order_id, .. }
            | Self::PaymentSucceeded { order_id, .. }
            | Self::PaymentReady { order_id, .. }
            | Self::PaymentRefunded { order_id, .. } => *order_id,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventEnvelope {
    pub id: Uuid,
    pub occurred_at: DateTime<Utc>,
    #[serde(flatten)]
    pub event: DomainEvent,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trips_with_type_tag() {
        let e = EventEnvelope {
            id: Uuid::from_u128(1),
            occurred_at: DateTime::from_timestamp(0, 0).unwrap(),
            event: DomainEvent::OrderReserved {
                order_id: Uuid::from_u128(2),
                drop_id: Uuid::from_u128(3),
                user_id: Uuid::from_u128(4),
                quantity: 1,
                amount: Some(Money { amount: 2500, currency: "EUR".into() }),
                reserved_at: DateTime::from_timestamp(1, 0),
            },
        };
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["type"], "OrderReserved");
        assert_eq!(e.event.type_name(), "OrderReserved", "the outbox names it as serde tags it");
        assert_eq!(serde_json::from_value::<EventEnvelope>(json).unwrap(), e);
    }

    #[test]
    fn events_written_before_a_field_was_added_still_read() {
        let old = serde_json::json!({
            "id": Uuid::from_u128(1), "occurred_at": "2026-01-01T00:00:00Z", "type": "OrderReserved",
            "data": {"order_id": Uuid::from_u128(2), "drop_id": Uuid::from_u128(3), "user_id": Uuid::from_u128(4), "quantity": 2}
        });
        match serde_json::from_value::<EventEnvelope>(old).unwrap().event {
            DomainEvent::OrderReserved { quantity: 2, amount: None, reserved_at: None, .. } => {}
            other => panic!("{other:?}"),
        }
        let old = serde_json::json!({
            "id": Uuid::from_u128(1), "occurred_at": "2026-01-01T00:00:00Z", "type": "DropCreated",
            "data": {"drop_id": Uuid::from_u128(3), "creator_id": Uuid::from_u128(4),
                     "starts_at": "2026-01-01T00:00:00Z", "ends_at": "2026-01-02T00:00:00Z"}
        });
        assert!(matches!(
            serde_json::from_value::<EventEnvelope>(old).unwrap().event,
            DomainEvent::DropCreated { stock: 0, .. }
        ));
    }
}
