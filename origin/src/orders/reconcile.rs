//! Reconciliation: the safety net under the event flow. For each active drop it
//! compares the edge's inventory (the truth about units) with the orders in
//! Postgres (the truth about money) and repairs drift in the safe direction,
//! writing each repair, with its reason, to `reconcile_audit` and to the audit log
//! (`reconciliation.<repair>`):
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
//! and money: a payment that succeeded for an order that ended unpaid (failed,
//! cancelled, expired) with no refund filed gets its refund filed.
//!
//! and the drop's terms: the edge selling on other terms than the catalogue's (a
//! lost or superseded push) gets them pushed again.
//!
//! Orders changed within the grace period are left alone: the event flow is
//! probably still settling them. Which drops to look at is the catalogue's to say
//! (it sits above this area): the caller passes them in.

use std::collections::HashMap;
use std::time::Duration;

use chrono::Utc;
use drops_shared::api::{Money, OrderStatus};
use drops_shared::internal::{HoldSnapshot, HoldState, InventorySnapshot, InventoryTerms};
use uuid::Uuid;

use super::intake::{self, NewOrder};
use super::{edge_sync, lifecycle, OrdersState};
use crate::audit::{self, NewEntry};
use crate::payments;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repair {
    pub drop_id: Uuid,
    pub order_id: Option<Uuid>,
    pub repair: &'static str,
    pub reason: String,
}

struct OrderRow {
    id: Uuid,
    status: OrderStatus,
    settled: bool,
}

/// Reconciles each of `drops` (with the terms the edge should sell it on); returns
/// every repair made.
pub async fn run_once(
    state: &OrdersState,
    drops: &[(Uuid, InventoryTerms)],
    grace: Duration,
) -> anyhow::Result<Vec<Repair>> {
    let mut repairs = Vec::new();
    for (drop_id, terms) in drops {
        repairs.extend(reconcile_drop(state, *drop_id, terms, grace).await?);
    }
    if !repairs.is_empty() {
        tracing::warn!(count = repairs.len(), "reconciliation repaired drift");
    }
    Ok(repairs)
}

pub async fn reconcile_drop(
    state: &OrdersState,
    drop_id: Uuid,
    terms: &InventoryTerms,
    grace: Duration,
) -> anyhow::Result<Vec<Repair>> {
    let Some(snapshot) = state.core.edge.snapshot(drop_id).await? else { return Ok(Vec::new()) };
    let mut repairs = Vec::new();
    if let Some(r) = align_terms(state, &snapshot, terms).await? {
        record(state, &r).await?;
        repairs.push(r);
    }
    let grace_secs = grace.as_secs_f64();
    let orders: HashMap<Uuid, OrderRow> = sqlx::query_as!(
        OrderRow,
        r#"SELECT id, status AS "status: OrderStatus", updated_at < now() - make_interval(secs => $2) AS "settled!"
           FROM orders WHERE drop_id = $1"#,
        drop_id,
        grace_secs
    )
    .fetch_all(&state.core.db)
    .await?
    .into_iter()
    .map(|o| (o.id, o))
    .collect();
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
    let ended_unpaid: Vec<Uuid> = orders
        .values()
        .filter(|o| {
            o.settled && matches!(o.status, OrderStatus::Failed | OrderStatus::Cancelled | OrderStatus::Expired)
        })
        .map(|o| o.id)
        .collect();
    for order_id in payments::store::unrefunded_successes(&state.core.db, &ended_unpaid).await? {
        if let Some(r) = refund_kept_money(state, drop_id, order_id).await? {
            record(state, &r).await?;
            repairs.push(r);
        }
    }
    Ok(repairs)
}

/// Money taken for an order that ended unpaid and never filed for refund (the
/// webhook and the edge sync each file one; this is the net under both).
async fn refund_kept_money(state: &OrdersState, drop_id: Uuid, order_id: Uuid) -> anyhow::Result<Option<Repair>> {
    let mut tx = state.core.db.begin().await?;
    let Some(order) = lifecycle::lock(&mut tx, order_id).await? else { return Ok(None) };
    if !matches!(order.status, OrderStatus::Failed | OrderStatus::Cancelled | OrderStatus::Expired) {
        return Ok(None); // paid after all meanwhile
    }
    let reason = "the order ended unpaid but its payment succeeded, and no refund was filed";
    if !payments::store::request_refund(&mut tx, order_id, reason).await? {
        return Ok(None);
    }
    tx.commit().await?;
    Ok(Some(Repair { drop_id, order_id: Some(order_id), repair: "refund_filed", reason: reason.to_owned() }))
}

/// The edge sells on other terms than the catalogue's: the push was lost (or the
/// edge lost it). Newer terms at the edge than here would mean the catalogue went
/// back in time (a restored database): that needs a person, not a push.
async fn align_terms(
    state: &OrdersState,
    snapshot: &InventorySnapshot,
    terms: &InventoryTerms,
) -> anyhow::Result<Option<Repair>> {
    let at_edge = &snapshot.terms;
    if at_edge == terms {
        return Ok(None);
    }
    let drop_id = snapshot.drop_id;
    let (repair, reason) = if at_edge.version > terms.version {
        (
            "flagged",
            format!("the edge sells on terms version {} but the catalogue has {}", at_edge.version, terms.version),
        )
    } else {
        state.core.edge.put_terms(drop_id, terms).await?;
        (
            "terms_resynced",
            format!("the edge sold on terms version {}; pushed version {}", at_edge.version, terms.version),
        )
    };
    Ok(Some(Repair { drop_id, order_id: None, repair, reason }))
}

/// A hold the origin never got as an order.
async fn pull_in(
    state: &OrdersState,
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
    let reserved_at = hold.expires_at - chrono::Duration::seconds(i64::from(snapshot.terms.hold_seconds));
    let order = NewOrder {
        id: hold.reservation_id,
        drop_id,
        user_id: hold.user_id,
        idempotency_key: &key,
        quantity: hold.quantity,
        amount: &amount,
        status,
        detail: Some("recovered by reconciliation"),
        reserved_at,
        expires_at: hold.expires_at,
    };
    let mut tx = state.core.db.begin().await?;
    if intake::insert_all(&mut tx, &[order]).await?.is_empty() {
        return Ok(None);
    }
    tx.commit().await?;
    state.payments.wake();
    Ok(Some(Repair {
        drop_id,
        order_id: Some(hold.reservation_id),
        repair: "order_recovered",
        reason: format!("the edge holds {} unit(s) for this reservation but the origin had no order", hold.quantity),
    }))
}

async fn repair_pair(
    state: &OrdersState,
    drop_id: Uuid,
    hold: &HoldSnapshot,
    order: &OrderRow,
) -> anyhow::Result<Option<Repair>> {
    use HoldState::*;
    let status = order.status;
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
            let mut tx = state.core.db.begin().await?;
            if let Some(mut locked) = lifecycle::lock(&mut tx, order.id).await? {
                if locked.status == OrderStatus::Reserved {
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

async fn record(state: &OrdersState, r: &Repair) -> anyhow::Result<()> {
    metrics::counter!("drops_reconcile_repairs_total", "repair" => r.repair).increment(1);
    tracing::warn!(drop_id = %r.drop_id, order_id = ?r.order_id, repair = r.repair, reason = %r.reason, "reconciliation repair");
    let mut tx = state.core.db.begin().await?;
    sqlx::query!(
        "INSERT INTO reconcile_audit (id, drop_id, order_id, repair, reason) VALUES ($1, $2, $3, $4, $5)",
        Uuid::now_v7(),
        r.drop_id,
        r.order_id,
        r.repair,
        r.reason
    )
    .execute(&mut *tx)
    .await?;
    audit::append_chained(&mut tx, vec![audit_entry(r)]).await?;
    tx.commit().await?;
    Ok(())
}

/// A repair as the audit log records it: about the order when there is one, else
/// the drop; done by the platform itself.
fn audit_entry(r: &Repair) -> NewEntry {
    let data = serde_json::json!({"drop_id": r.drop_id, "order_id": r.order_id, "reason": r.reason});
    let action = format!("reconciliation.{}", r.repair);
    match r.order_id {
        Some(order_id) => NewEntry::system(action, "order", order_id, data),
        None => NewEntry::system(action, "drop", r.drop_id, data),
    }
}
