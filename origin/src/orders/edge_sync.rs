//! Edge sync: the consumer that makes each order's hold at the edge follow the
//! order's state in Postgres. It reads the order's *current* state rather than
//! trusting the event it was woken by, so events may arrive late, twice or out of
//! order and the end is the same:
//!
//! - `confirmed` → sell the hold; if the hold had already run out, take the units
//!   again (reinstate); if they are gone, refund and fail the order.
//! - `failed`, `cancelled`, `expired` → release the hold (once: the edge ignores a
//!   repeat), and refund a payment that succeeded anyway.
//! - `reserved` → nothing yet.

use drops_shared::api::{Money, OrderStatus};
use drops_shared::events::{DomainEvent, EventEnvelope};
use drops_shared::internal::{HoldAction, HoldState};
use uuid::Uuid;

use crate::edge::HoldMove;
use crate::events;
use crate::orders::lifecycle;
use crate::startup::AppState;

pub const CONSUMER: &str = "edge-sync";

/// The bus handler: every order event settles its order.
pub async fn handle(state: &AppState, event: &EventEnvelope) -> anyhow::Result<()> {
    match event.event.order_id() {
        Some(order_id) => settle(state, order_id).await,
        None => Ok(()),
    }
}

#[derive(sqlx::FromRow)]
struct Snapshot {
    drop_id: Uuid,
    status: String,
    amount: i64,
    currency: String,
    payment_status: Option<String>,
    reference: Option<String>,
}

pub async fn settle(state: &AppState, order_id: Uuid) -> anyhow::Result<()> {
    let order: Option<Snapshot> = sqlx::query_as(
        "SELECT o.drop_id, o.status, o.amount, o.currency, p.status AS payment_status, p.reference
         FROM orders o LEFT JOIN payments p ON p.order_id = o.id WHERE o.id = $1",
    )
    .bind(order_id)
    .fetch_optional(&state.db)
    .await?;
    let Some(order) = order else { return Ok(()) };
    let status = OrderStatus::parse(&order.status).unwrap_or(OrderStatus::Reserved);
    let edge = &state.edge;
    match status {
        OrderStatus::Reserved => Ok(()),
        OrderStatus::Confirmed => match edge.move_hold(order.drop_id, order_id, HoldAction::Sell).await? {
            HoldMove::Now(o) if o.state == HoldState::Sold => Ok(()),
            HoldMove::Now(_) => match edge.move_hold(order.drop_id, order_id, HoldAction::Reinstate).await? {
                HoldMove::Now(o) if o.state == HoldState::Sold => Ok(()),
                HoldMove::SoldOut => {
                    refund_and_fail(state, order_id, "paid after the reservation ended; sold out since, so refunded")
                        .await
                }
                HoldMove::LimitReached => {
                    refund_and_fail(
                        state,
                        order_id,
                        "paid after the reservation ended; the per-buyer limit is reached, so refunded",
                    )
                    .await
                }
                other => anyhow::bail!("reinstating hold {order_id}: {other:?}"),
            },
            other => anyhow::bail!("selling hold {order_id}: {other:?}"),
        },
        OrderStatus::Failed | OrderStatus::Cancelled | OrderStatus::Expired => {
            match edge.move_hold(order.drop_id, order_id, HoldAction::Release).await? {
                HoldMove::Now(o) if o.state == HoldState::Sold => {
                    tracing::error!(%order_id, "order ended unpaid but its hold is sold; reconciliation will flag it")
                }
                HoldMove::Now(_) => {}
                other => anyhow::bail!("releasing hold {order_id}: {other:?}"),
            }
            if order.payment_status.as_deref() == Some("succeeded") {
                let money = Money { amount: order.amount, currency: order.currency.trim().to_owned() };
                refund(state, order_id, order.reference.as_deref().unwrap_or_default(), &money).await?;
            }
            Ok(())
        }
    }
}

/// Refunds the order's payment (once: the payment row says when it is done).
async fn refund(state: &AppState, order_id: Uuid, reference: &str, amount: &Money) -> anyhow::Result<()> {
    let refund_ref = state.payments.refund(order_id, reference, amount).await?;
    let mut tx = state.db.begin().await?;
    let done = sqlx::query(
        "UPDATE payments SET status = 'refunded', refund_reference = $2, updated_at = now()
         WHERE order_id = $1 AND status <> 'refunded'",
    )
    .bind(order_id)
    .bind(&refund_ref)
    .execute(&mut *tx)
    .await?;
    if done.rows_affected() == 1 {
        events::record(
            &mut tx,
            DomainEvent::PaymentRefunded {
                order_id,
                reference: reference.to_owned(),
                amount: amount.amount,
                currency: amount.currency.clone(),
            },
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// A payment came too late and cannot be honoured: money back, order failed.
async fn refund_and_fail(state: &AppState, order_id: Uuid, detail: &str) -> anyhow::Result<()> {
    let reference: Option<String> = sqlx::query_scalar("SELECT reference FROM payments WHERE order_id = $1")
        .bind(order_id)
        .fetch_optional(&state.db)
        .await?;
    let mut tx = state.db.begin().await?;
    let Some(mut order) = lifecycle::lock(&mut tx, order_id).await? else { return Ok(()) };
    if order.status() != OrderStatus::Confirmed {
        return Ok(()); // someone else settled it meanwhile
    }
    lifecycle::move_to(&mut tx, &mut order, OrderStatus::Failed, Some(detail)).await?;
    tx.commit().await?;
    let money = Money { amount: order.amount, currency: order.currency.trim().to_owned() };
    refund(state, order_id, reference.as_deref().unwrap_or_default(), &money).await
}
