//! The analytics ledger against a fresh Postgres database: events written to the
//! outbox as the areas write them, applied in any order and any number of times,
//! give the figures a rebuild from the outbox gives, and those are the orders'
//! latest states. (Through the edge, after a real rush: `tests/tests/e2e/analytics.rs`.)

mod support;

use chrono::{DateTime, Duration, Utc};
use drops_origin::analytics::{self, ledger};
use drops_origin::catalogue::facts::DropFacts;
use drops_origin::events;
use drops_shared::api::{DropAnalytics, Money};
use drops_shared::events::{DomainEvent, EventEnvelope};
use sqlx::{Connection, PgPool};
use uuid::Uuid;

async fn fresh_db() -> PgPool {
    support::fresh_pool("analytics").await
}

/// The outbox's events, in order, with their seqs.
async fn outbox(db: &PgPool) -> Vec<(i64, EventEnvelope)> {
    let rows: Vec<(i64, serde_json::Value)> =
        sqlx::query_as("SELECT seq, payload FROM outbox ORDER BY seq").fetch_all(db).await.unwrap();
    rows.into_iter().map(|(seq, payload)| (seq, serde_json::from_value(payload).unwrap())).collect()
}

async fn apply_all(db: &PgPool, events: &[(i64, EventEnvelope)]) -> u64 {
    let mut applied = 0;
    for (seq, event) in events {
        let mut tx = db.begin().await.unwrap();
        applied += u64::from(ledger::apply(&mut tx, *seq, event).await.unwrap());
        tx.commit().await.unwrap();
    }
    applied
}

async fn figures(db: &PgPool, facts: &DropFacts) -> DropAnalytics {
    analytics::figures(db, std::slice::from_ref(facts)).await.unwrap().pop().unwrap()
}

#[tokio::test]
async fn any_delivery_order_any_number_of_times_and_a_rebuild_give_the_same_exact_figures() {
    let db = fresh_db().await;
    let (drop_id, creator_id) = (Uuid::now_v7(), Uuid::now_v7());
    // Whole seconds, as Postgres keeps them (to the microsecond).
    let starts_at = DateTime::<Utc>::from_timestamp(Utc::now().timestamp() - 30, 0).unwrap();
    let facts = DropFacts { drop_id, creator_id, owner: Uuid::now_v7(), total: 4, currency: "EUR".into(), starts_at };
    let ends_at = starts_at + Duration::hours(1);
    let orders: Vec<Uuid> = (0..5).map(|_| Uuid::now_v7()).collect();
    let user_id = Uuid::now_v7();
    let reserved = |order_id: Uuid, quantity: u32| DomainEvent::OrderReserved {
        order_id,
        drop_id,
        user_id,
        quantity,
        amount: Some(Money { amount: 2500 * i64::from(quantity), currency: "EUR".into() }),
        reserved_at: Some(starts_at + Duration::seconds(1)),
    };
    let moved = |order_id: Uuid, to: &str| match to {
        "confirmed" => DomainEvent::OrderConfirmed { order_id, drop_id, user_id, quantity: 1 },
        "failed" => DomainEvent::OrderFailed { order_id, drop_id, user_id, quantity: 1, reason: "no".into() },
        "cancelled" => DomainEvent::OrderCancelled { order_id, drop_id, user_id, quantity: 1 },
        _ => DomainEvent::OrderExpired { order_id, drop_id, user_id, quantity: 1 },
    };
    // Each change in a transaction of its own, as the areas write them.
    let writes = vec![
        vec![DomainEvent::DropCreated { drop_id, creator_id, starts_at, ends_at, stock: 4 }],
        vec![reserved(orders[0], 1), reserved(orders[1], 1), reserved(orders[2], 1), reserved(orders[3], 1)],
        vec![moved(orders[0], "confirmed")],
        vec![moved(orders[1], "failed")],
        vec![moved(orders[2], "cancelled")],
        vec![reserved(orders[4], 1)],
        // Ran out, then paid late and honoured.
        vec![moved(orders[3], "expired")],
        vec![moved(orders[3], "confirmed")],
    ];
    let mut conn = db.acquire().await.unwrap();
    for events in writes {
        let mut tx = conn.begin().await.unwrap();
        events::record_all(&mut tx, events).await.unwrap();
        tx.commit().await.unwrap();
    }
    drop(conn);
    let log = outbox(&db).await;

    // Backwards, then everything again: each event counts once, in outbox order per order.
    let backwards: Vec<_> = log.iter().rev().cloned().collect();
    assert_eq!(apply_all(&db, &backwards).await, log.len() as u64);
    assert_eq!(apply_all(&db, &log).await, 0, "every event was applied already");
    let delivered = figures(&db, &facts).await;
    assert_eq!(
        (delivered.orders.reserved, delivered.orders.confirmed, delivered.orders.failed),
        (1, 2, 1),
        "{delivered:?}"
    );
    assert_eq!((delivered.orders.cancelled, delivered.orders.expired), (1, 0));
    assert_eq!(delivered.revenue, drops_shared::api::Revenue { amount: 5000, currency: "EUR".into() });
    assert_eq!((delivered.stock.total, delivered.stock.remaining), (4, 1));
    assert_eq!(delivered.conversion, 0.4);
    let reserved_units: u64 = delivered.timeline.iter().map(|b| b.reserved).sum();
    let released_units: u64 = delivered.timeline.iter().map(|b| b.released).sum();
    assert_eq!((reserved_units, released_units), (5, 2));

    // In outbox order every unit was held at once before any came back: sold out then.
    let rebuilt = ledger::rebuild(&db).await.unwrap();
    assert_eq!(rebuilt, log.len() as u64);
    let from_outbox = figures(&db, &facts).await;
    assert_eq!(from_outbox.sold_out_after_seconds, Some(1));
    assert_eq!(
        DropAnalytics { sold_out_after_seconds: None, ..from_outbox.clone() },
        DropAnalytics { sold_out_after_seconds: None, ..delivered },
        "delivered backwards, the moment it sold out is the only thing that may differ"
    );
    assert_eq!(ledger::rebuild(&db).await.unwrap(), log.len() as u64);
    assert_eq!(figures(&db, &facts).await, from_outbox, "a rebuild is repeatable");
}
