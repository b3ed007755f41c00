//! Reconciliation: the safety net under the event flow. For each active drop it
//! compares the edge's inventory (the truth about units) with the orders in
//! Postgres (the truth about money) and repairs drift in the safe direction,
//! writing each repair, with its reason, to `reconcile_audit`:
//!
//! | edge hold | order in Postgres | repair |
//! | --- | --- | --- |
//! | held or sold, not in the forward queue | none | pull the reservation in as an order |
//! | held | confirmed | sell the hold |
//! | released | confirmed | sell it again (reinstate), or refund and fail the order |
//! | held | failed, cancelled, expired | release the hold |
//! | released | reserved | the expiry notice was lost: expire the order |
//! | sold | failed, cancelled, expired | flag only: money and units disagree |
//!
//! Orders changed within the grace period are left alone: the event flow is
//! probably still settling them.

use std::collections::HashMap;
use std::time::Duration;

use chrono::Utc;
use drops_shared::api::{Money, OrderStatus};
use drops_shared::events::DomainEvent;
use drops_shared::internal::{HoldSnapshot, HoldState, InventorySnapshot};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::orders::{edge_sync, lifecycle};
use crate::startup::AppState;
use crate::{events, metrics};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repair {
    pub drop_id: Uuid,
    pub order_id: Option<Uuid>,
    pub repair: &'static str,
    pub reason: String,
}

#[derive(sqlx::FromRow)]
struct OrderRow {
    id: Uuid,
    status: String,
    settled: bool,
}

pub async fn run(state: AppState, stop: CancellationToken) {
    let every = Duration::from_secs(state.settings.reconcile_interval_secs);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        match run_once(&state, Duration::from_secs(30)).await {
            Ok(repairs) if !repairs.is_empty() => {
                tracing::warn!(count = repairs.len(), "reconciliation repaired drift")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "reconciliation failed"),
        }
    }
}

/// Reconciles every drop that is live or ended within the last day.
pub async fn run_once(state: &AppState, grace: Duration) -> anyhow::Result<Vec<Repair>> {
    let drops: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM drops WHERE inventory_synced_at IS NOT NULL AND starts_at <= now()
           AND ends_at > now() - interval '1 day' ORDER BY starts_at",
    )
    .fetch_all(&state.db)
    .await?;
    let mut repairs = Vec::new();
    for drop_id in drops {
        repairs.extend(reconcile_drop(state, drop_id, grace).await?);
    }
    Ok(repairs)
}

pub async fn reconcile_drop(state: &AppState, drop_id: Uuid, grace: Duration) -> anyhow::Result<Vec<Repair>> {
    let Some(snapshot) = state.edge.snapshot(drop_id).await? else { return Ok(Vec::new()) };
    let grace_secs = grace.as_secs_f64();
    let orders: HashMap<Uuid, OrderRow> = sqlx::query_as(
        "SELECT id, status, updated_at < now() - make_interval(secs => $2) AS settled FROM orders WHERE drop_id = $1",
    )
    .bind(drop_id)
    .bind(grace_secs)
    .fetch_all(&state.db)
    .await?
    .into_iter()
    .map(|o: OrderRow| (o.id, o))
    .collect();
    let mut repairs = Vec::new();
    for hold in &snapshot.holds {
        let repair = match orders.get(&hold.reservation_id) {
            None => pull_in(state, &snapshot, hold, grace).await?,
            Some(order) if order.settled => repair_pair(state, drop_id, hold, order).await?,
            Some(_) => None,
        };
        if let Some(r) = repair {
            record(state, &r).await?;
            repairs.push(r);
        }
    }
    Ok(repairs)
}

/// A hold the origin never got as an order.
async fn pull_in(
    state: &AppState,
    snapshot: &InventorySnapshot,
    hold: &HoldSnapshot,
    grace: Duration,
) -> anyhow::Result<Option<Repair>> {
    let in_flight = snapshot.unforwarded.contains(&hold.reservation_id);
    let young = Utc::now() - hold.expires_at + chrono::Duration::seconds(i64::from(snapshot.terms.hold_seconds))
        < chrono::Duration::from_std(grace).unwrap_or_default();
    if hold.state == HoldState::Released || in_flight || young {
        return Ok(None);
    }
    let drop_id = snapshot.drop_id;
    let amount = snapshot.terms.price.times(hold.quantity).unwrap_or(Money { amount: 0, currency: String::new() });
    let key = hold.idempotency_key.clone().unwrap_or_else(|| format!("reconciled-{}", hold.reservation_id));
    let status = if hold.state == HoldState::Sold { OrderStatus::Confirmed } else { OrderStatus::Reserved };
    let mut tx = state.db.begin().await?;
    sqlx::query("INSERT INTO users (id, role) VALUES ($1, 'buyer') ON CONFLICT (id) DO NOTHING")
        .bind(hold.user_id)
        .execute(&mut *tx)
        .await?;
    let reserved_at = hold.expires_at - chrono::Duration::seconds(i64::from(snapshot.terms.hold_seconds));
    let inserted = sqlx::query(
        "INSERT INTO orders (id, drop_id, user_id, idempotency_key, quantity, amount, currency, status, status_detail,
                             reserved_at, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'recovered by reconciliation', $9, $10) ON CONFLICT DO NOTHING",
    )
    .bind(hold.reservation_id)
    .bind(drop_id)
    .bind(hold.user_id)
    .bind(&key)
    .bind(hold.quantity as i32)
    .bind(amount.amount)
    .bind(&amount.currency)
    .bind(status.as_str())
    .bind(reserved_at)
    .bind(hold.expires_at)
    .execute(&mut *tx)
    .await?;
    if inserted.rows_affected() == 1 {
        events::record(
            &mut tx,
            DomainEvent::OrderReserved {
                order_id: hold.reservation_id,
                drop_id,
                user_id: hold.user_id,
                quantity: hold.quantity,
            },
        )
        .await?;
    }
    tx.commit().await?;
    if inserted.rows_affected() == 0 {
        return Ok(None);
    }
    crate::payments::ensure_payment(&state.db, state.payments.as_ref(), hold.reservation_id, &amount).await?;
    Ok(Some(Repair {
        drop_id,
        order_id: Some(hold.reservation_id),
        repair: "order_recovered",
        reason: format!("the edge holds {} unit(s) for this reservation but the origin had no order", hold.quantity),
    }))
}

async fn repair_pair(
    state: &AppState,
    drop_id: Uuid,
    hold: &HoldSnapshot,
    order: &OrderRow,
) -> anyhow::Result<Option<Repair>> {
    use HoldState::*;
    let status = OrderStatus::parse(&order.status).unwrap_or(OrderStatus::Reserved);
    let repair = |repair: &'static str, reason: &str| {
        Some(Repair { drop_id, order_id: Some(order.id), repair, reason: reason.to_owned() })
    };
    Ok(match (hold.state, status) {
        (Held, OrderStatus::Confirmed) | (Released, OrderStatus::Confirmed) => {
            edge_sync::settle(state, order.id).await?;
            if hold.state == Held {
                repair("hold_sold", "the order is paid but its hold was never sold")
            } else {
                repair("hold_resold", "the order is paid but its hold had been released")
            }
        }
        (Held, OrderStatus::Failed | OrderStatus::Cancelled | OrderStatus::Expired) => {
            edge_sync::settle(state, order.id).await?;
            repair("hold_released", "the order ended unpaid but its hold still held units")
        }
        (Released, OrderStatus::Reserved) => {
            let mut tx = state.db.begin().await?;
            if let Some(mut locked) = lifecycle::lock(&mut tx, order.id).await? {
                if locked.status() == OrderStatus::Reserved {
                    lifecycle::move_to(
                        &mut tx,
                        &mut locked,
                        OrderStatus::Expired,
                        Some("the reservation ran out before payment"),
                    )
                    .await?;
                }
            }
            tx.commit().await?;
            repair("order_expired", "the edge released the hold but the origin never heard it expired")
        }
        (Sold, OrderStatus::Failed | OrderStatus::Cancelled | OrderStatus::Expired | OrderStatus::Reserved) => {
            repair("flagged", "the edge sold units for an order that is not paid; needs a person")
        }
        _ => None,
    })
}

async fn record(state: &AppState, r: &Repair) -> anyhow::Result<()> {
    metrics::repair(r.repair);
    tracing::warn!(drop_id = %r.drop_id, order_id = ?r.order_id, repair = r.repair, reason = %r.reason, "reconciliation repair");
    sqlx::query("INSERT INTO reconcile_audit (id, drop_id, order_id, repair, reason) VALUES ($1, $2, $3, $4, $5)")
        .bind(Uuid::now_v7())
        .bind(r.drop_id)
        .bind(r.order_id)
        .bind(r.repair)
        .bind(&r.reason)
        .execute(&state.db)
        .await?;
    Ok(())
}
