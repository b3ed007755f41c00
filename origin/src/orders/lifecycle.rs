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
//! The payment webhook locks the payment row first, then the order (through
//! [`Settlement`]); no path locks them the other way round, so none deadlock.

use async_trait::async_trait;
use drops_shared::api::OrderStatus;
use drops_shared::events::DomainEvent;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::events;
use crate::payments::{self, OrderSettlement, Settled};

#[derive(Debug, Clone)]
pub struct OrderState {
    pub id: Uuid,
    pub drop_id: Uuid,
    pub user_id: Uuid,
    pub quantity: i32,
    pub status: OrderStatus,
    pub amount: i64,
    pub currency: String,
}

/// Loads and locks an order until the transaction ends.
pub async fn lock(conn: &mut PgConnection, order_id: Uuid) -> sqlx::Result<Option<OrderState>> {
    sqlx::query_as!(
        OrderState,
        r#"SELECT id, drop_id, user_id, quantity, status AS "status: OrderStatus", amount, currency
           FROM orders WHERE id = $1 FOR UPDATE"#,
        order_id
    )
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
    let from = order.status;
    anyhow::ensure!(allowed(from, to), "order {} cannot go from {from:?} to {to:?}", order.id);
    sqlx::query!(
        "UPDATE orders SET status = $2, status_detail = $3, updated_at = now() WHERE id = $1",
        order.id,
        to as OrderStatus,
        detail
    )
    .execute(&mut *conn)
    .await?;
    order.status = to;
    if from == OrderStatus::Reserved && to != OrderStatus::Confirmed {
        // Ended unpaid: nothing left to pay for, so nothing may be paid any more.
        payments::store::call_off(&mut *conn, order.id, to.as_str()).await?;
    }
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

/// What a payment's outcome does to its order (the payments area calls it inside
/// the webhook's transaction).
pub struct Settlement;

#[async_trait]
impl OrderSettlement for Settlement {
    async fn paid(&self, conn: &mut PgConnection, order_id: Uuid) -> anyhow::Result<Settled> {
        let Some(mut order) = lock(conn, order_id).await? else { anyhow::bail!("a payment for no order ({order_id})") };
        match order.status {
            OrderStatus::Reserved => move_to(conn, &mut order, OrderStatus::Confirmed, None).await?,
            // Its units are taken again if they can be (the edge sync), else refunded then.
            OrderStatus::Expired | OrderStatus::Failed => {
                let detail = "paid after the reservation had ended";
                move_to(conn, &mut order, OrderStatus::Confirmed, Some(detail)).await?
            }
            OrderStatus::Confirmed => {}
            // The buyer called it off: it stays cancelled, and the money goes back.
            OrderStatus::Cancelled => return Ok(Settled::CannotHonour),
        }
        Ok(Settled::Confirmed)
    }

    async fn payment_failed(&self, conn: &mut PgConnection, order_id: Uuid) -> anyhow::Result<()> {
        let Some(mut order) = lock(conn, order_id).await? else { return Ok(()) };
        if order.status == OrderStatus::Reserved {
            move_to(conn, &mut order, OrderStatus::Failed, Some("payment failed")).await?;
        }
        Ok(())
    }
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
