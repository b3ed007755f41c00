//! The internal routes the edge calls about orders, and the one place an order row
//! is inserted (reconciliation recovers lost reservations through it too).

use axum::extract::State;
use axum::routing::on;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use drops_shared::api::{Money, OrderStatus};
use drops_shared::auth::Role;
use drops_shared::events::DomainEvent;
use drops_shared::internal::{Endpoint, ExpiryAck, ReportExpiry, ReservationsTaken, TakeReservations};
use drops_shared::problem::ErrorCode;
use sqlx::PgConnection;
use uuid::Uuid;

use super::{lifecycle, OrdersState};
use crate::http::error::ApiError;
use crate::http::extract::{method_of, Answer, Signed};
use crate::payments::store::PaymentRequest;
use crate::{events, payments, users};

/// Most reservations one handoff may carry (the edge sends at most 100).
const MAX_BATCH: usize = 500;

pub fn router() -> Router<OrdersState> {
    Router::new()
        .route(TakeReservations::PATH, on(method_of::<TakeReservations>(), take_reservations))
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

/// Inserts the orders whose ids are new, with their buyers, their `OrderReserved`
/// events and a request for each one's payment, in the caller's transaction and a
/// handful of statements however many there are. Returns the ids it inserted (an
/// id already there is a repeated handoff).
pub async fn insert_all(conn: &mut PgConnection, orders: &[NewOrder<'_>]) -> sqlx::Result<Vec<Uuid>> {
    let users: Vec<Uuid> = orders.iter().map(|o| o.user_id).collect();
    users::ensure_all(&mut *conn, &users, Role::Buyer).await?;
    let ids: Vec<Uuid> = orders.iter().map(|o| o.id).collect();
    let drops: Vec<Uuid> = orders.iter().map(|o| o.drop_id).collect();
    let keys: Vec<String> = orders.iter().map(|o| o.idempotency_key.to_owned()).collect();
    let quantities: Vec<i32> = orders.iter().map(|o| o.quantity as i32).collect();
    let amounts: Vec<i64> = orders.iter().map(|o| o.amount.amount).collect();
    let currencies: Vec<String> = orders.iter().map(|o| o.amount.currency.clone()).collect();
    let statuses: Vec<String> = orders.iter().map(|o| o.status.as_str().to_owned()).collect();
    let details: Vec<Option<String>> = orders.iter().map(|o| o.detail.map(str::to_owned)).collect();
    let reserved_at: Vec<DateTime<Utc>> = orders.iter().map(|o| o.reserved_at).collect();
    let expires_at: Vec<DateTime<Utc>> = orders.iter().map(|o| o.expires_at).collect();
    let inserted = sqlx::query!(
        "INSERT INTO orders (id, drop_id, user_id, idempotency_key, quantity, amount, currency, status,
                             status_detail, reserved_at, expires_at)
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::int4[], $6::int8[], $7::text[],
                              $8::text[], $9::text[], $10::timestamptz[], $11::timestamptz[])
         ON CONFLICT (id) DO NOTHING
         RETURNING id",
        &ids,
        &drops,
        &users,
        &keys,
        &quantities,
        &amounts,
        &currencies,
        &statuses,
        &details as &[Option<String>],
        &reserved_at,
        &expires_at
    )
    .fetch_all(&mut *conn)
    .await?;
    let new: std::collections::HashSet<Uuid> = inserted.iter().map(|r| r.id).collect();
    let new_orders: Vec<&NewOrder<'_>> = orders.iter().filter(|o| new.contains(&o.id)).collect();
    let reserved = new_orders.iter().map(|o| DomainEvent::OrderReserved {
        order_id: o.id,
        drop_id: o.drop_id,
        user_id: o.user_id,
        quantity: o.quantity,
        amount: Some(o.amount.clone()),
        reserved_at: Some(o.reserved_at),
    });
    events::record_all(&mut *conn, reserved.collect()).await?;
    let requests: Vec<PaymentRequest> = new_orders
        .iter()
        .map(|o| PaymentRequest { order_id: o.id, user_id: o.user_id, amount: o.amount.clone() })
        .collect();
    payments::store::request_all(&mut *conn, &requests).await?;
    Ok(new_orders.iter().map(|o| o.id).collect())
}

/// A batch of reservations from the edge: one transaction, one insert.
#[tracing::instrument(skip_all, fields(reservations = call.body.reservations.len()))]
async fn take_reservations(
    State(state): State<OrdersState>,
    call: Signed<TakeReservations>,
) -> Answer<TakeReservations> {
    let batch = &call.body.reservations;
    if batch.len() > MAX_BATCH {
        return Err(ApiError::code(ErrorCode::PayloadTooLarge, format!("at most {MAX_BATCH} reservations a call")));
    }
    let orders: Vec<NewOrder<'_>> = batch
        .iter()
        .map(|r| NewOrder {
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
        })
        .collect();
    let mut tx = state.core.db.begin().await?;
    let inserted = insert_all(&mut tx, &orders).await?;
    tx.commit().await?;
    if !inserted.is_empty() {
        state.payments.wake();
    }
    Ok(Json(ReservationsTaken { orders: batch.iter().map(|r| r.reservation_id).collect() }))
}

/// The edge let a hold run out unpaid (its units are back in stock).
#[tracing::instrument(skip_all, fields(order_id = %call.route.order_id))]
async fn hold_expired(State(state): State<OrdersState>, call: Signed<ReportExpiry>) -> Answer<ReportExpiry> {
    let id = call.route.order_id;
    let mut tx = state.core.db.begin().await?;
    // The edge reports an expiry only after the origin took its reservation: an
    // order we do not have was never taken (voided), and 404 tells the edge to stop.
    let mut order = lifecycle::lock(&mut tx, id).await?.ok_or_else(ApiError::not_found)?;
    if order.status == OrderStatus::Reserved {
        lifecycle::move_to(&mut tx, &mut order, OrderStatus::Expired, Some("the reservation ran out before payment"))
            .await?;
    }
    tx.commit().await?;
    Ok(Json(ExpiryAck { order_id: id, status: order.status }))
}
