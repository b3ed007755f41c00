//! The internal routes the edge calls about orders, and the one place an order row
//! is inserted (reconciliation recovers lost reservations through it too).

use axum::extract::State;
use axum::routing::on;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use drops_shared::api::{Money, OrderStatus};
use drops_shared::auth::Role;
use drops_shared::events::DomainEvent;
use drops_shared::internal::{Endpoint, ExpiryAck, ReportExpiry, ReservationAck, TakeReservation};
use drops_shared::problem::ErrorCode;
use sqlx::PgConnection;
use uuid::Uuid;

use super::{lifecycle, OrdersState};
use crate::error::ApiError;
use crate::extract::{method_of, Answer, Signed};
use crate::{events, payments, users};

pub fn router() -> Router<OrdersState> {
    Router::new()
        .route(TakeReservation::PATH, on(method_of::<TakeReservation>(), take_reservation))
        .route(ReportExpiry::PATH, on(method_of::<ReportExpiry>(), hold_expired))
}

/// An order as it is first written.
pub struct NewOrder<'a> {
    pub id: Uuid,
    pub drop_id: Uuid,
    pub user_id: Uuid,
    pub idempotency_key: &'a str,
    pub quantity: u32,
    pub amount: &'a Money,
    pub status: OrderStatus,
    pub detail: Option<&'a str>,
    pub reserved_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    New,
    /// An order with this id exists: a repeated handoff.
    Existing,
    /// The buyer used this idempotency key for another order.
    KeyReused,
}

/// Inserts the order (and its buyer, and its `OrderReserved` event) in the caller's
/// transaction, unless an order with its id, or its buyer's key, exists.
pub async fn insert(conn: &mut PgConnection, order: &NewOrder<'_>) -> sqlx::Result<Inserted> {
    users::ensure(&mut *conn, order.user_id, Role::Buyer).await?;
    let inserted = sqlx::query!(
        "INSERT INTO orders (id, drop_id, user_id, idempotency_key, quantity, amount, currency, status,
                             status_detail, reserved_at, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
         ON CONFLICT DO NOTHING",
        order.id,
        order.drop_id,
        order.user_id,
        order.idempotency_key,
        order.quantity as i32,
        order.amount.amount,
        order.amount.currency,
        order.status as OrderStatus,
        order.detail,
        order.reserved_at,
        order.expires_at
    )
    .execute(&mut *conn)
    .await?;
    if inserted.rows_affected() == 0 {
        let exists =
            sqlx::query!("SELECT 1 AS one FROM orders WHERE id = $1", order.id).fetch_optional(&mut *conn).await?;
        return Ok(if exists.is_some() { Inserted::Existing } else { Inserted::KeyReused });
    }
    let event = DomainEvent::OrderReserved {
        order_id: order.id,
        drop_id: order.drop_id,
        user_id: order.user_id,
        quantity: order.quantity,
    };
    events::record(conn, event).await?;
    Ok(Inserted::New)
}

#[tracing::instrument(skip_all, fields(order_id))]
async fn take_reservation(State(state): State<OrdersState>, call: Signed<TakeReservation>) -> Answer<TakeReservation> {
    let r = call.body;
    tracing::Span::current().record("order_id", r.reservation_id.to_string());
    let mut tx = state.core.db.begin().await?;
    let order = NewOrder {
        id: r.reservation_id,
        drop_id: r.drop_id,
        user_id: r.user_id,
        idempotency_key: &r.idempotency_key,
        quantity: r.quantity,
        amount: &r.amount,
        status: OrderStatus::Reserved,
        detail: None,
        reserved_at: r.reserved_at,
        expires_at: r.expires_at,
    };
    if insert(&mut tx, &order).await? == Inserted::KeyReused {
        return Err(ApiError::code(
            ErrorCode::IdempotencyKeyReused,
            "this buyer used the Idempotency-Key for another order",
        ));
    }
    tx.commit().await?;
    let payment = payments::store::ensure(&state.core.db, &state.payments, r.reservation_id, &r.amount).await?;
    Ok(Json(ReservationAck { order_id: r.reservation_id, payment: Some(payment) }))
}

/// The edge let a hold run out unpaid (its units are back in stock).
#[tracing::instrument(skip_all, fields(order_id = %call.route.order_id))]
async fn hold_expired(State(state): State<OrdersState>, call: Signed<ReportExpiry>) -> Answer<ReportExpiry> {
    let id = call.route.order_id;
    let mut tx = state.core.db.begin().await?;
    // Unknown yet (the reservation is still on its way): 404 makes the edge retry.
    let mut order = lifecycle::lock(&mut tx, id).await?.ok_or_else(ApiError::not_found)?;
    if order.status == OrderStatus::Reserved {
        lifecycle::move_to(&mut tx, &mut order, OrderStatus::Expired, Some("the reservation ran out before payment"))
            .await?;
    }
    tx.commit().await?;
    Ok(Json(ExpiryAck { order_id: id, status: order.status }))
}
