//! Edge sync: the consumer that makes each order's hold at the edge follow the
//! order's state in Postgres. It reads the order's *current* state rather than
//! trusting the event it was woken by, so events may arrive late, twice or out of
//! order and the end is the same:
//!
//! - `confirmed` → sell the hold; if the hold had already run out, take the units
//!   again (reinstate); if they are gone, refund and fail the order.
//! - `failed`, `cancelled`, `expired` → release the hold (once: the edge ignores a
//!   repeat), and file the refund of a payment that succeeded anyway.
//! - `reserved` → nothing yet.

use drops_shared::api::OrderStatus;
use drops_shared::events::{DomainEvent, EventEnvelope};
use drops_shared::internal::{HoldAction, HoldState};
use uuid::Uuid;

use super::{lifecycle, OrdersState};
use crate::edge::HoldMove;
use crate::payments;

pub const CONSUMER: &str = "edge-sync";

/// The `edge-sync` group: holds at the edge follow their orders.
pub struct EdgeSync(pub OrdersState);

impl crate::events::bus::Consumer for EdgeSync {
    fn group(&self) -> &'static str {
        CONSUMER
    }

    /// An order left `reserved` (a reservation, or a payment that confirmed its order,
    /// needs nothing of the edge).
    fn interested(&self, event: &DomainEvent) -> bool {
        matches!(
            event,
            DomainEvent::OrderConfirmed { .. }
                | DomainEvent::OrderFailed { .. }
                | DomainEvent::OrderCancelled { .. }
                | DomainEvent::OrderExpired { .. }
        )
    }

    fn handle<'a>(&'a self, event: &'a EventEnvelope) -> crate::events::bus::Handled<'a> {
        Box::pin(handle(&self.0, event))
    }
}

/// The bus handler: every order event settles its order.
pub async fn handle(state: &OrdersState, event: &EventEnvelope) -> anyhow::Result<()> {
    match event.event.order_id() {
        Some(order_id) => settle(state, order_id).await,
        None => Ok(()),
    }
}

pub async fn settle(state: &OrdersState, order_id: Uuid) -> anyhow::Result<()> {
    let db = &state.core.db;
    let order = sqlx::query!(r#"SELECT drop_id, status AS "status: OrderStatus" FROM orders WHERE id = $1"#, order_id)
        .fetch_optional(db)
        .await?;
    let Some(order) = order else { return Ok(()) };
    let (drop_id, status) = (order.drop_id, order.status);
    let edge = &state.core.edge;
    match status {
        OrderStatus::Reserved => Ok(()),
        OrderStatus::Confirmed => match edge.move_hold(drop_id, order_id, HoldAction::Sell).await? {
            HoldMove::Now(o) if o.state == HoldState::Sold => Ok(()),
            HoldMove::Now(_) => match edge.move_hold(drop_id, order_id, HoldAction::Reinstate).await? {
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
            match edge.move_hold(drop_id, order_id, HoldAction::Release).await? {
                HoldMove::Now(o) if o.state == HoldState::Sold => {
                    tracing::error!(%order_id, "order ended unpaid but its hold is sold; reconciliation will flag it")
                }
                HoldMove::Now(_) => {}
                other => anyhow::bail!("releasing hold {order_id}: {other:?}"),
            }
            // Paid for all the same (the webhook files that refund itself; this is the
            // net under it): the money goes back, once.
            let mut conn = db.acquire().await?;
            payments::store::request_refund(&mut conn, order_id, "paid for an order that ended unpaid").await?;
            Ok(())
        }
    }
}

/// A payment came too late and cannot be honoured: money back, order failed.
async fn refund_and_fail(state: &OrdersState, order_id: Uuid, detail: &str) -> anyhow::Result<()> {
    let mut tx = state.core.db.begin().await?;
    let Some(mut order) = lifecycle::lock(&mut tx, order_id).await? else { return Ok(()) };
    if order.status != OrderStatus::Confirmed {
        return Ok(()); // someone else settled it meanwhile
    }
    lifecycle::move_to(&mut tx, &mut order, OrderStatus::Failed, Some(detail)).await?;
    payments::store::request_refund(&mut tx, order_id, detail).await?;
    tx.commit().await?;
    Ok(())
}
