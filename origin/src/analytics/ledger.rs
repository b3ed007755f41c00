//! The analytics ledger: how one event changes the figures, applied in the
//! transaction that records the event as applied, and the rebuild from the outbox.
//!
//! Each order is kept as its events told it ([`OrderFacts`]). An event moves an order
//! only if it is later in the outbox (its `seq`) than the event that set the order's
//! state: every change of an order happens under the order's row lock and writes its
//! event in the same transaction, so outbox order is the order the changes really
//! happened in, and a late, repeated or out-of-order event changes nothing it should
//! not. `OrderReserved` always fills in what only it carries (the amount, the moment
//! of the hold), whenever it arrives. The drop's counters and buckets then move by
//! the difference between what the order contributed before and after ([`delta`]),
//! so they are always the sum over the orders in their latest states, whatever the
//! order the events came in.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use drops_shared::api::OrderStatus;
use drops_shared::events::{DomainEvent, EventEnvelope};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// The outbox `event_type`s the analytics learn from ([`super::interested`] says the same).
pub const EVENT_TYPES: &[&str] =
    &["DropCreated", "DropUpdated", "OrderReserved", "OrderConfirmed", "OrderFailed", "OrderCancelled", "OrderExpired"];

/// What an order event says about its order.
#[derive(Debug, Clone, PartialEq)]
pub struct OrderChange {
    pub order_id: Uuid,
    pub drop_id: Uuid,
    pub status: OrderStatus,
    pub quantity: i32,
    pub amount: Option<(i64, String)>,
    pub reserved_at: Option<DateTime<Utc>>,
}

impl OrderChange {
    pub fn of(event: &DomainEvent) -> Option<Self> {
        let change = |order_id: &Uuid, drop_id: &Uuid, status, quantity: &u32| OrderChange {
            order_id: *order_id,
            drop_id: *drop_id,
            status,
            quantity: i32::try_from(*quantity).unwrap_or(i32::MAX),
            amount: None,
            reserved_at: None,
        };
        Some(match event {
            DomainEvent::OrderReserved { order_id, drop_id, quantity, amount, reserved_at, .. } => OrderChange {
                amount: amount.as_ref().map(|m| (m.amount, m.currency.clone())),
                reserved_at: *reserved_at,
                ..change(order_id, drop_id, OrderStatus::Reserved, quantity)
            },
            DomainEvent::OrderConfirmed { order_id, drop_id, quantity, .. } => {
                change(order_id, drop_id, OrderStatus::Confirmed, quantity)
            }
            DomainEvent::OrderFailed { order_id, drop_id, quantity, .. } => {
                change(order_id, drop_id, OrderStatus::Failed, quantity)
            }
            DomainEvent::OrderCancelled { order_id, drop_id, quantity, .. } => {
                change(order_id, drop_id, OrderStatus::Cancelled, quantity)
            }
            DomainEvent::OrderExpired { order_id, drop_id, quantity, .. } => {
                change(order_id, drop_id, OrderStatus::Expired, quantity)
            }
            _ => return None,
        })
    }
}

/// An order as the analytics know it (a row of `analytics_orders`).
#[derive(Debug, Clone, PartialEq)]
pub struct OrderFacts {
    pub drop_id: Uuid,
    pub status: OrderStatus,
    /// The outbox seq of the event `status` came from.
    pub status_seq: i64,
    pub quantity: i32,
    pub amount: Option<i64>,
    pub currency: Option<String>,
    pub reserved_at: Option<DateTime<Utc>>,
    /// When the order entered `status` (None while reserved).
    pub settled_at: Option<DateTime<Utc>>,
}

/// The order after `change` (the event at outbox `seq`, written at `at`), or None
/// when the event changes nothing.
pub fn advance(current: Option<&OrderFacts>, change: &OrderChange, seq: i64, at: DateTime<Utc>) -> Option<OrderFacts> {
    let reserved = change.status == OrderStatus::Reserved;
    let mut next = match current {
        Some(current) => current.clone(),
        None => OrderFacts {
            drop_id: change.drop_id,
            status: change.status,
            status_seq: seq,
            quantity: change.quantity,
            amount: None,
            currency: None,
            reserved_at: None,
            settled_at: (!reserved).then_some(at),
        },
    };
    if seq > next.status_seq {
        next.status = change.status;
        next.status_seq = seq;
        next.settled_at = (!reserved).then_some(at);
    }
    if reserved {
        // Only the reservation says these; it may come after a later event did.
        if next.reserved_at.is_none() {
            next.reserved_at = Some(change.reserved_at.unwrap_or(at));
        }
        if next.amount.is_none() {
            if let Some((amount, currency)) = &change.amount {
                next.amount = Some(*amount);
                next.currency = Some(currency.clone());
            }
        }
    }
    (current != Some(&next)).then_some(next)
}

/// A drop's figures, or a change of them: orders by state (in [`STATES`] order),
/// units held and sold, money taken.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Figures {
    pub orders: [i64; 5],
    pub held: i64,
    pub sold: i64,
    pub revenue: i64,
}

pub const STATES: [OrderStatus; 5] =
    [OrderStatus::Reserved, OrderStatus::Confirmed, OrderStatus::Failed, OrderStatus::Cancelled, OrderStatus::Expired];

/// Units reserved, confirmed and released, per second.
pub type Buckets = BTreeMap<DateTime<Utc>, [i64; 3]>;

/// The whole second `at` falls in.
pub fn second_of(at: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp(at.timestamp(), 0).unwrap_or(at)
}

/// What one order adds to its drop: counted once, in its state; its units reserved
/// in the second of its hold, and confirmed or released in the second it got there.
fn contribution(order: &OrderFacts, sign: i64, figures: &mut Figures, buckets: &mut Buckets) {
    let units = i64::from(order.quantity) * sign;
    if let Some(i) = STATES.iter().position(|s| *s == order.status) {
        figures.orders[i] += sign;
    }
    match order.status {
        OrderStatus::Reserved => figures.held += units,
        OrderStatus::Confirmed => {
            figures.sold += units;
            figures.revenue += order.amount.unwrap_or(0) * sign;
        }
        _ => {}
    }
    if let Some(at) = order.reserved_at {
        buckets.entry(second_of(at)).or_default()[0] += units;
    }
    let flow = match order.status {
        OrderStatus::Reserved => None,
        OrderStatus::Confirmed => Some(1),
        OrderStatus::Failed | OrderStatus::Cancelled | OrderStatus::Expired => Some(2),
    };
    if let (Some(flow), Some(at)) = (flow, order.settled_at) {
        buckets.entry(second_of(at)).or_default()[flow] += units;
    }
}

/// How the drop's figures and buckets move when an order goes from `before` to `after`.
pub fn delta(before: Option<&OrderFacts>, after: &OrderFacts) -> (Figures, Buckets) {
    let (mut figures, mut buckets) = (Figures::default(), Buckets::new());
    if let Some(before) = before {
        contribution(before, -1, &mut figures, &mut buckets);
    }
    contribution(after, 1, &mut figures, &mut buckets);
    buckets.retain(|_, b| b.iter().any(|n| *n != 0));
    (figures, buckets)
}

/// Applies one event in the caller's transaction, unless it was applied before;
/// returns whether it was new. `seq` is the event's place in the outbox.
pub async fn apply(conn: &mut PgConnection, seq: i64, event: &EventEnvelope) -> sqlx::Result<bool> {
    let fresh = sqlx::query!("INSERT INTO analytics_applied (event_id) VALUES ($1) ON CONFLICT DO NOTHING", event.id)
        .execute(&mut *conn)
        .await?
        .rows_affected()
        == 1;
    if !fresh {
        return Ok(false);
    }
    match &event.event {
        DomainEvent::DropCreated { drop_id, creator_id, stock, .. }
        | DomainEvent::DropUpdated { drop_id, creator_id, stock, .. } => {
            terms(conn, seq, event.occurred_at, *drop_id, *creator_id, *stock).await?
        }
        other => {
            if let Some(change) = OrderChange::of(other) {
                order(conn, seq, event.occurred_at, &change).await?;
            }
        }
    }
    Ok(true)
}

/// A drop's terms: who sells it, how many units.
async fn terms(
    conn: &mut PgConnection,
    seq: i64,
    at: DateTime<Utc>,
    drop_id: Uuid,
    creator_id: Uuid,
    stock: u32,
) -> sqlx::Result<()> {
    // 0: an event written before drops said their stock; the figures take the
    // total from the catalogue then, and cannot tell when the drop sold out.
    let total = (stock > 0).then(|| i32::try_from(stock).unwrap_or(i32::MAX));
    sqlx::query!(
        "INSERT INTO analytics_drops (drop_id, creator_id, total, terms_seq) VALUES ($1, $2, $3, $4)
         ON CONFLICT (drop_id) DO UPDATE
           SET creator_id = EXCLUDED.creator_id, total = EXCLUDED.total, terms_seq = EXCLUDED.terms_seq
           WHERE analytics_drops.terms_seq < EXCLUDED.terms_seq",
        drop_id,
        creator_id,
        total,
        seq
    )
    .execute(&mut *conn)
    .await?;
    sqlx::query!(
        "UPDATE analytics_drops SET sold_out_at = $2
         WHERE drop_id = $1 AND sold_out_at IS NULL AND total IS NOT NULL AND held_units + sold_units >= total",
        drop_id,
        at
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// An order event: the order moves (or not), and its drop's figures with it.
async fn order(conn: &mut PgConnection, seq: i64, at: DateTime<Utc>, change: &OrderChange) -> sqlx::Result<()> {
    let drop_id = change.drop_id;
    // The drop's row first: every event of a drop waits here for the one before, so
    // its counters and buckets are only ever changed by one event at a time.
    sqlx::query!("INSERT INTO analytics_drops (drop_id) VALUES ($1) ON CONFLICT DO NOTHING", drop_id)
        .execute(&mut *conn)
        .await?;
    sqlx::query!("SELECT drop_id FROM analytics_drops WHERE drop_id = $1 FOR UPDATE", drop_id)
        .fetch_one(&mut *conn)
        .await?;
    let current = sqlx::query_as!(
        OrderFacts,
        r#"SELECT drop_id, status AS "status: OrderStatus", status_seq, quantity, amount, currency, reserved_at, settled_at
           FROM analytics_orders WHERE order_id = $1 FOR UPDATE"#,
        change.order_id
    )
    .fetch_optional(&mut *conn)
    .await?;
    let Some(next) = advance(current.as_ref(), change, seq, at) else { return Ok(()) };
    sqlx::query!(
        "INSERT INTO analytics_orders (order_id, drop_id, status, status_seq, quantity, amount, currency, reserved_at,
                                       settled_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         ON CONFLICT (order_id) DO UPDATE SET status = EXCLUDED.status, status_seq = EXCLUDED.status_seq,
             quantity = EXCLUDED.quantity, amount = EXCLUDED.amount, currency = EXCLUDED.currency,
             reserved_at = EXCLUDED.reserved_at, settled_at = EXCLUDED.settled_at",
        change.order_id,
        next.drop_id,
        next.status as OrderStatus,
        next.status_seq,
        next.quantity,
        next.amount,
        next.currency,
        next.reserved_at,
        next.settled_at
    )
    .execute(&mut *conn)
    .await?;
    let (d, buckets) = delta(current.as_ref(), &next);
    // The moment this event would make the drop sold out: when the hold was granted
    // for a reservation, when the event was written otherwise.
    let moment = if change.status == OrderStatus::Reserved { change.reserved_at.unwrap_or(at) } else { at };
    sqlx::query!(
        "UPDATE analytics_drops SET reserved = reserved + $2, confirmed = confirmed + $3, failed = failed + $4,
             cancelled = cancelled + $5, expired = expired + $6, held_units = held_units + $7,
             sold_units = sold_units + $8, revenue = revenue + $9,
             sold_out_at = CASE WHEN sold_out_at IS NULL AND total IS NOT NULL
                                     AND held_units + $7 + sold_units + $8 >= total
                                THEN $10 ELSE sold_out_at END
         WHERE drop_id = $1",
        drop_id,
        d.orders[0],
        d.orders[1],
        d.orders[2],
        d.orders[3],
        d.orders[4],
        d.held,
        d.sold,
        d.revenue,
        moment
    )
    .execute(&mut *conn)
    .await?;
    if !buckets.is_empty() {
        let seconds: Vec<DateTime<Utc>> = buckets.keys().copied().collect();
        let flows = |i: usize| buckets.values().map(|b| b[i]).collect::<Vec<i64>>();
        sqlx::query!(
            "INSERT INTO analytics_buckets (drop_id, second, reserved, confirmed, released)
             SELECT $1::uuid, * FROM UNNEST($2::timestamptz[], $3::int8[], $4::int8[], $5::int8[])
             ON CONFLICT (drop_id, second) DO UPDATE SET reserved = analytics_buckets.reserved + EXCLUDED.reserved,
                 confirmed = analytics_buckets.confirmed + EXCLUDED.confirmed,
                 released = analytics_buckets.released + EXCLUDED.released",
            drop_id,
            &seconds,
            &flows(0),
            &flows(1),
            &flows(2)
        )
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// How many outbox rows one read of the rebuild takes.
const REBUILD_BATCH: i64 = 1_000;

/// Empties the analytics tables and applies every relevant event of the outbox
/// again, in outbox order, in one transaction; returns how many it applied.
///
/// Safe while the consumer runs: the tables are locked against writes (reads go on,
/// seeing the old figures until the rebuild commits), so the consumer's next event
/// waits, then finds it applied (`analytics_applied`) or applies it on top.
pub async fn rebuild(db: &PgPool) -> anyhow::Result<u64> {
    let mut tx = db.begin().await?;
    sqlx::query!(
        "LOCK TABLE analytics_applied, analytics_drops, analytics_orders, analytics_buckets IN EXCLUSIVE MODE"
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query!("DELETE FROM analytics_applied").execute(&mut *tx).await?;
    sqlx::query!("DELETE FROM analytics_drops").execute(&mut *tx).await?;
    sqlx::query!("DELETE FROM analytics_orders").execute(&mut *tx).await?;
    sqlx::query!("DELETE FROM analytics_buckets").execute(&mut *tx).await?;
    let types: Vec<String> = EVENT_TYPES.iter().map(|t| (*t).to_owned()).collect();
    let (mut after, mut applied) = (0_i64, 0_u64);
    loop {
        let rows = sqlx::query!(
            r#"SELECT seq, payload::text AS "payload!" FROM outbox WHERE seq > $1 AND event_type = ANY($2)
               ORDER BY seq LIMIT $3"#,
            after,
            &types,
            REBUILD_BATCH
        )
        .fetch_all(&mut *tx)
        .await?;
        let Some(last) = rows.last() else { break };
        after = last.seq;
        for row in &rows {
            match serde_json::from_str::<EventEnvelope>(&row.payload) {
                Ok(event) => applied += u64::from(apply(&mut tx, row.seq, &event).await?),
                Err(e) => tracing::error!(seq = row.seq, error = %e, "undecodable outbox event; skipped"),
            }
        }
    }
    tx.commit().await?;
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use chrono::Duration;

    use super::*;

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    fn change(status: OrderStatus) -> OrderChange {
        OrderChange {
            order_id: Uuid::from_u128(1),
            drop_id: Uuid::from_u128(2),
            status,
            quantity: 2,
            amount: (status == OrderStatus::Reserved).then(|| (5000, "EUR".to_owned())),
            reserved_at: (status == OrderStatus::Reserved).then(|| t(0)),
        }
    }

    /// Applies `(seq, status, at)` in the order given; returns the order and the
    /// drop's figures and buckets summed from the deltas.
    fn run(events: &[(i64, OrderStatus, i64)]) -> (Option<OrderFacts>, Figures, Buckets) {
        let (mut order, mut figures, mut buckets) = (None::<OrderFacts>, Figures::default(), Buckets::new());
        for (seq, status, at) in events {
            if let Some(next) = advance(order.as_ref(), &change(*status), *seq, t(*at)) {
                let (d, b) = delta(order.as_ref(), &next);
                for i in 0..5 {
                    figures.orders[i] += d.orders[i];
                }
                figures.held += d.held;
                figures.sold += d.sold;
                figures.revenue += d.revenue;
                for (s, v) in b {
                    let e = buckets.entry(s).or_default();
                    for i in 0..3 {
                        e[i] += v[i];
                    }
                }
                order = Some(next);
            }
        }
        buckets.retain(|_, b| b.iter().any(|n| *n != 0));
        (order, figures, buckets)
    }

    use OrderStatus::*;

    #[test]
    fn a_paid_order_is_held_then_sold_and_counted_once() {
        let (order, figures, buckets) = run(&[(1, Reserved, 0), (2, Confirmed, 3)]);
        assert_eq!(order.unwrap().status, Confirmed);
        assert_eq!(figures, Figures { orders: [0, 1, 0, 0, 0], held: 0, sold: 2, revenue: 5000 });
        assert_eq!(buckets, Buckets::from([(t(0), [2, 0, 0]), (t(3), [0, 2, 0])]));
    }

    #[test]
    fn a_repeated_or_out_of_order_event_changes_nothing() {
        let in_order = run(&[(1, Reserved, 0), (2, Cancelled, 5)]);
        assert_eq!(run(&[(1, Reserved, 0), (2, Cancelled, 5), (2, Cancelled, 5), (1, Reserved, 0)]), in_order);
        // The cancel arrives first: the reservation still fills in its amount and
        // moment, and does not bring the order back.
        assert_eq!(run(&[(2, Cancelled, 5), (1, Reserved, 0)]), in_order);
        assert_eq!(in_order.1, Figures { orders: [0, 0, 0, 1, 0], held: 0, sold: 0, revenue: 0 });
        assert_eq!(in_order.2, Buckets::from([(t(0), [2, 0, 0]), (t(5), [0, 0, 2])]));
    }

    #[test]
    fn late_payments_move_units_between_states_without_leaving_traces() {
        // Expired, then a late payment honoured: confirmed, nothing released.
        let (order, figures, buckets) = run(&[(1, Reserved, 0), (2, Expired, 10), (3, Confirmed, 20)]);
        assert_eq!(order.unwrap().status, Confirmed);
        assert_eq!(figures, Figures { orders: [0, 1, 0, 0, 0], held: 0, sold: 2, revenue: 5000 });
        assert_eq!(buckets, Buckets::from([(t(0), [2, 0, 0]), (t(20), [0, 2, 0])]));
        // Confirmed, then refunded (no units left): failed, no revenue.
        let (_, figures, buckets) = run(&[(1, Reserved, 0), (3, Confirmed, 20), (4, Failed, 21), (2, Expired, 10)]);
        assert_eq!(figures, Figures { orders: [0, 0, 1, 0, 0], held: 0, sold: 0, revenue: 0 });
        assert_eq!(buckets, Buckets::from([(t(0), [2, 0, 0]), (t(21), [0, 0, 2])]));
    }

    #[test]
    fn whatever_the_delivery_order_the_end_is_the_same() {
        let events = [(1, Reserved, 0), (2, Failed, 4), (3, Confirmed, 9)];
        let expected = run(&events);
        for order in [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]] {
            let shuffled: Vec<_> = order.iter().map(|i| events[*i]).collect();
            assert_eq!(run(&shuffled), expected, "{order:?}");
        }
    }

    #[test]
    fn buckets_are_whole_seconds() {
        let at = t(7) + Duration::milliseconds(999);
        assert_eq!(second_of(at), t(7));
    }
}
