//! The order state machine. Every move happens under the order's row lock and writes
//! its event to the outbox in the same transaction.
//!
//! ```text
//! reserved ──► confirmed ──► failed        (paid too late and no units left: refunded)
//!    │            ▲
//!    ├──► failed ─┤                        (a payment that succeeds after all)
//!    ├──► expired ┘
//!    └──► cancelled
//! ```
//! Locks are always taken order first, then payment, so no two paths deadlock.

use drops_shared::api::OrderStatus;
use drops_shared::events::DomainEvent;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::events;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OrderState {
    pub id: Uuid,
    pub drop_id: Uuid,
    pub user_id: Uuid,
    pub quantity: i32,
    pub status: String,
    pub amount: i64,
    pub currency: String,
}

impl OrderState {
    pub fn status(&self) -> OrderStatus {
        OrderStatus::parse(&self.status).unwrap_or(OrderStatus::Reserved)
    }
}

/// Loads and locks an order until the transaction ends.
pub async fn lock(conn: &mut PgConnection, order_id: Uuid) -> sqlx::Result<Option<OrderState>> {
    sqlx::query_as(
        "SELECT id, drop_id, user_id, quantity, status, amount, currency FROM orders WHERE id = $1 FOR UPDATE",
    )
    .bind(order_id)
    .fetch_optional(conn)
    .await
}

pub fn allowed(from: OrderStatus, to: OrderStatus) -> bool {
    use OrderStatus::*;
    matches!(
        (from, to),
        (Reserved, Confirmed | Failed | Cancelled | Expired) | (Failed | Expired, Confirmed) | (Confirmed, Failed)
    )
}

/// Moves a locked order to `to`, with an optional detail the buyer will see.
pub async fn move_to(
    conn: &mut PgConnection,
    order: &mut OrderState,
    to: OrderStatus,
    detail: Option<&str>,
) -> anyhow::Result<()> {
    let from = order.status();
    anyhow::ensure!(allowed(from, to), "order {} cannot go from {from:?} to {to:?}", order.id);
    sqlx::query("UPDATE orders SET status = $2, status_detail = $3, updated_at = now() WHERE id = $1")
        .bind(order.id)
        .bind(to.as_str())
        .bind(detail)
        .execute(&mut *conn)
        .await?;
    order.status = to.as_str().to_owned();
    let (order_id, drop_id, user_id, quantity) = (order.id, order.drop_id, order.user_id, order.quantity as u32);
    let event = match to {
        OrderStatus::Confirmed => DomainEvent::OrderConfirmed { order_id, drop_id, user_id, quantity },
        OrderStatus::Failed => DomainEvent::OrderFailed {
            order_id,
            drop_id,
            user_id,
            quantity,
            reason: detail.unwrap_or("payment failed").to_owned(),
        },
        OrderStatus::Cancelled => DomainEvent::OrderCancelled { order_id, drop_id, user_id, quantity },
        OrderStatus::Expired => DomainEvent::OrderExpired { order_id, drop_id, user_id, quantity },
        OrderStatus::Reserved => anyhow::bail!("nothing moves back to reserved"),
    };
    events::record(conn, event).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use OrderStatus::*;

    #[test]
    fn terminal_states_are_not_overwritten_except_by_a_real_payment() {
        assert!(allowed(Reserved, Confirmed));
        assert!(allowed(Expired, Confirmed), "a late payment is honoured when units remain");
        assert!(allowed(Confirmed, Failed), "a late payment with no units left is refunded");
        assert!(!allowed(Confirmed, Expired));
        assert!(!allowed(Cancelled, Confirmed), "a cancelled order stays cancelled; its payment is refunded");
        assert!(!allowed(Failed, Expired));
        assert!(!allowed(Confirmed, Cancelled));
    }
}
