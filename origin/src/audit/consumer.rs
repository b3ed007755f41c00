//! The consumer group that writes every domain event to the log: one entry per
//! event, recorded under the event's id (so a redelivered or replayed event adds
//! nothing), with no actor (an event is a fact the platform observed; the users it
//! names stay in `data`).

use chrono::SecondsFormat;
use drops_shared::events::{DomainEvent, EventEnvelope};
use serde_json::Value;

use super::chain::{self, NewEntry};
use crate::state::Core;

pub const CONSUMER: &str = "audit";

/// The `audit` group: one audit entry per event.
pub struct AuditTrail(pub crate::state::Core);

impl crate::events::bus::Consumer for AuditTrail {
    fn group(&self) -> &'static str {
        CONSUMER
    }

    /// Every event is audited.
    fn interested(&self, _: &DomainEvent) -> bool {
        true
    }

    fn handle<'a>(&'a self, event: &'a EventEnvelope) -> crate::events::bus::Handled<'a> {
        Box::pin(handle(&self.0, event))
    }
}

/// One transaction per event: the append lock is held for one short insert.
pub async fn handle(core: &Core, envelope: &EventEnvelope) -> anyhow::Result<()> {
    let entry = entry_of(envelope)?;
    let mut tx = core.db.begin().await?;
    chain::append(&mut tx, vec![entry]).await?;
    tx.commit().await?;
    Ok(())
}

/// The entry recording `envelope`: its action named after the event's type, its
/// subject the entity the event is about, its data the event's fields and when it
/// occurred.
pub fn entry_of(envelope: &EventEnvelope) -> anyhow::Result<NewEntry> {
    let event = &envelope.event;
    let mut data = match serde_json::to_value(event)? {
        Value::Object(mut tagged) => tagged.remove("data").unwrap_or_else(|| Value::Object(Default::default())),
        other => anyhow::bail!("an event serialised to {other}, not an object"),
    };
    if let Value::Object(fields) = &mut data {
        let occurred_at = envelope.occurred_at.to_rfc3339_opts(SecondsFormat::AutoSi, true);
        fields.insert("occurred_at".into(), Value::String(occurred_at));
    }
    Ok(NewEntry {
        event_id: Some(envelope.id),
        ..NewEntry::system(action_of(event.type_name()), subject_kind(event), event.aggregate_id(), data)
    })
}

/// `OrderConfirmed` → `order.confirmed`, `PaymentRefunded` → `payment.refunded`: the
/// first word is the subject's kind, the rest what happened to it.
pub fn action_of(type_name: &str) -> String {
    let mut out = String::with_capacity(type_name.len() + 4);
    for (i, c) in type_name.char_indices() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push(if out.contains('.') { '_' } else { '.' });
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// The kind of the entity [`DomainEvent::aggregate_id`] names.
fn subject_kind(event: &DomainEvent) -> &'static str {
    match event {
        DomainEvent::DropCreated { .. }
        | DomainEvent::DropUpdated { .. }
        | DomainEvent::DropStarted { .. }
        | DomainEvent::DropEnded { .. } => "drop",
        DomainEvent::FollowChanged { .. } => "creator",
        DomainEvent::OrderReserved { .. }
        | DomainEvent::OrderConfirmed { .. }
        | DomainEvent::OrderFailed { .. }
        | DomainEvent::OrderCancelled { .. }
        | DomainEvent::OrderExpired { .. }
        | DomainEvent::PaymentSucceeded { .. }
        | DomainEvent::PaymentReady { .. }
        | DomainEvent::PaymentRefunded { .. } => "order",
    }
}

#[cfg(test)]
mod tests {
    use chrono::DateTime;
    use uuid::Uuid;

    use super::*;

    #[test]
    fn actions_are_named_after_the_event_type() {
        for (name, action) in [
            ("OrderConfirmed", "order.confirmed"),
            ("DropCreated", "drop.created"),
            ("FollowChanged", "follow.changed"),
            ("PaymentRefunded", "payment.refunded"),
            ("PaymentReady", "payment.ready"),
            ("SomethingVeryNew", "something.very_new"),
        ] {
            assert_eq!(action_of(name), action);
        }
    }

    #[test]
    fn an_event_becomes_one_entry_about_its_entity() {
        let (creator_id, user_id) = (Uuid::from_u128(2), Uuid::from_u128(3));
        let envelope = EventEnvelope {
            id: Uuid::from_u128(99),
            occurred_at: DateTime::from_timestamp(1_800_000_000, 5_000).unwrap(),
            event: DomainEvent::FollowChanged { creator_id, user_id, following: true },
        };
        let entry = entry_of(&envelope).unwrap();
        assert_eq!(entry.action, "follow.changed");
        assert_eq!((entry.subject_kind.as_str(), entry.subject_id), ("creator", creator_id.to_string()));
        assert_eq!(entry.event_id, Some(envelope.id));
        assert!(entry.actor.is_none() && entry.request_id.is_none());
        assert_eq!(
            entry.data,
            serde_json::json!({"creator_id": creator_id, "user_id": user_id, "following": true,
                               "occurred_at": "2027-01-15T08:00:00.000005Z"})
        );
        let order_id = Uuid::from_u128(1);
        let refunded = EventEnvelope {
            event: DomainEvent::PaymentRefunded {
                order_id,
                reference: "pi_1".into(),
                amount: 2500,
                currency: "EUR".into(),
            },
            ..envelope.clone()
        };
        let entry = entry_of(&refunded).unwrap();
        assert_eq!((entry.action.as_str(), entry.subject_kind.as_str()), ("payment.refunded", "order"));
        assert_eq!((entry.subject_id, &entry.data["amount"]), (order_id.to_string(), &serde_json::json!(2500)));
        let started = EventEnvelope { event: DomainEvent::DropStarted { drop_id: order_id, creator_id }, ..envelope };
        assert_eq!(entry_of(&started).unwrap().subject_kind, "drop");
    }
}
