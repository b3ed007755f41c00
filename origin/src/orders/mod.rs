//! Orders: the edge hands over each reservation its inventory object granted, and
//! the buyer reads and cancels their orders. The order id is the reservation id,
//! so a handoff repeated by the edge's retries finds the order it already made.
//!
//! Owns the tables `orders` and `reconcile_audit`. Stands on the payments area
//! (each order's payment, refunds) and is what settles an order when its payment
//! succeeds or fails ([`lifecycle::Settlement`]).
//!
//! - [`intake`]: the internal routes the edge calls, and the one order insert.
//! - [`buyer`]: a buyer's orders: list, show, cancel.
//! - [`lifecycle`]: the order state machine (every move writes its outbox event).
//! - [`edge_sync`]: the consumer that makes each hold at the edge follow its order.
//! - [`reconcile`]: compares the edge's inventories with the orders and repairs drift.

pub mod buyer;
pub mod edge_sync;
pub mod intake;
pub mod lifecycle;
pub mod reconcile;

use std::collections::HashMap;

use axum::extract::FromRef;
use axum::Router;
use drops_shared::api::OrderStatus;
use futures::future::BoxFuture;
use futures::FutureExt;
use sqlx::PgExecutor;
use strum::IntoEnumIterator;
use uuid::Uuid;

use crate::payments::Payments;
use crate::state::Core;

/// The state of this area's routes and workers.
#[derive(Clone)]
pub struct OrdersState {
    pub core: Core,
    pub payments: Payments,
}

impl FromRef<OrdersState> for Core {
    fn from_ref(state: &OrdersState) -> Core {
        state.core.clone()
    }
}

pub fn router(state: OrdersState) -> Router {
    Router::new().merge(intake::router()).merge(buyer::router()).with_state(state)
}

/// Units each drop has committed to orders (reserved or confirmed), for the drops
/// that have any.
pub async fn committed_units(db: impl PgExecutor<'_>, drop_ids: &[Uuid]) -> sqlx::Result<HashMap<Uuid, i64>> {
    let rows = sqlx::query!(
        r#"SELECT drop_id, SUM(quantity)::bigint AS "units!" FROM orders
           WHERE drop_id = ANY($1) AND status IN ('reserved', 'confirmed') GROUP BY drop_id"#,
        drop_ids
    )
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(|r| (r.drop_id, r.units)).collect())
}

/// `/metrics` gauge: orders by state.
pub fn gauges(core: &Core) -> BoxFuture<'_, anyhow::Result<()>> {
    async move {
        let by_state =
            sqlx::query!(r#"SELECT status AS "status: OrderStatus", count(*) AS "n!" FROM orders GROUP BY status"#)
                .fetch_all(&core.db)
                .await?;
        for status in OrderStatus::iter() {
            let n = by_state.iter().find(|r| r.status == status).map(|r| r.n).unwrap_or(0);
            metrics::gauge!("drops_orders", "state" => status.as_str()).set(n as f64);
        }
        Ok(())
    }
    .boxed()
}
