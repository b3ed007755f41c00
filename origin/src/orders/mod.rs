//! Orders: the edge hands over each reservation its inventory object granted, and
//! the buyer reads and cancels their orders. The order id is the reservation id,
//! so a handoff repeated by the edge's retries finds the order it already made.
//!
//! - [`lifecycle`]: the order state machine (every move writes its outbox event).
//! - [`edge_sync`]: the consumer that makes each hold at the edge follow its order.

pub mod edge_sync;
pub mod lifecycle;

use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use drops_shared::api::{Money, Order, OrderStatus, Page, PaymentHandle};
use drops_shared::events::DomainEvent;
use drops_shared::internal::{HoldExpiry, ReservationAck, ReservationHandoff};
use drops_shared::problem::ErrorCode;
use uuid::Uuid;

use crate::creators::parse_id;
use crate::error::{ApiError, ApiResult};
use crate::extract::{AuthUser, SignedBody};
use crate::pagination::{self, PageQuery};
use crate::payments::ensure_payment;
use crate::startup::AppState;
use crate::{events, users};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/internal/v1/reservations", post(take_reservation))
        .route("/v1/orders", get(list_orders))
        .route("/v1/orders/{order_id}", get(show_order))
        .route("/v1/orders/{order_id}/cancel", post(cancel_order))
        .route("/internal/v1/orders/{order_id}/expired", post(hold_expired))
}

#[tracing::instrument(skip_all)]
async fn take_reservation(State(state): State<AppState>, body: SignedBody) -> ApiResult<Json<ReservationAck>> {
    let r: ReservationHandoff = body.json()?;
    tracing::Span::current().record("order_id", r.reservation_id.to_string());
    users::ensure(&state.db, r.user_id, drops_shared::auth::Role::Buyer).await?;
    let mut tx = state.db.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO orders (id, drop_id, user_id, idempotency_key, quantity, amount, currency, status,
                             reserved_at, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, 'reserved', $8, $9)
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(r.reservation_id)
    .bind(r.drop_id)
    .bind(r.user_id)
    .bind(&r.idempotency_key)
    .bind(r.quantity as i32)
    .bind(r.amount.amount)
    .bind(&r.amount.currency)
    .bind(r.reserved_at)
    .bind(r.expires_at)
    .execute(&mut *tx)
    .await;
    let inserted = match inserted {
        Ok(done) => done.rows_affected() == 1,
        Err(e) if e.as_database_error().and_then(|d| d.constraint()) == Some("orders_user_id_idempotency_key_key") => {
            return Err(ApiError::code(
                ErrorCode::IdempotencyKeyReused,
                "this buyer used the Idempotency-Key for another order",
            ));
        }
        Err(e) => return Err(e.into()),
    };
    if inserted {
        events::record(
            &mut tx,
            DomainEvent::OrderReserved {
                order_id: r.reservation_id,
                drop_id: r.drop_id,
                user_id: r.user_id,
                quantity: r.quantity,
            },
        )
        .await?;
    }
    tx.commit().await?;
    let payment = ensure_payment(&state.db, state.payments.as_ref(), r.reservation_id, &r.amount).await?;
    Ok(Json(ReservationAck { order_id: r.reservation_id, payment: Some(payment) }))
}

#[derive(sqlx::FromRow)]
struct OrderRow {
    id: Uuid,
    drop_id: Uuid,
    status: String,
    status_detail: Option<String>,
    quantity: i32,
    amount: i64,
    currency: String,
    expires_at: DateTime<Utc>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    provider: Option<String>,
    reference: Option<String>,
    checkout_url: Option<String>,
}

const ORDER_SELECT: &str = "
SELECT o.id, o.drop_id, o.status, o.status_detail, o.quantity, o.amount, o.currency, o.expires_at,
       o.created_at, o.updated_at, p.provider, p.reference, p.checkout_url
FROM orders o LEFT JOIN payments p ON p.order_id = o.id";

impl OrderRow {
    fn into_order(self) -> ApiResult<Order> {
        let status = OrderStatus::parse(&self.status)
            .ok_or_else(|| anyhow::anyhow!("order {} has unknown status {}", self.id, self.status))?;
        let payment = match (self.provider, self.reference, self.checkout_url) {
            (Some(provider), Some(reference), Some(checkout_url)) => {
                Some(PaymentHandle { provider, reference, checkout_url })
            }
            _ => None,
        };
        Ok(Order {
            order_id: self.id,
            drop_id: self.drop_id,
            status,
            quantity: self.quantity as u32,
            amount: Money { amount: self.amount, currency: self.currency.trim().to_owned() },
            expires_at: self.expires_at,
            payment,
            created_at: self.created_at,
            updated_at: self.updated_at,
            detail: self.status_detail,
        })
    }
}

async fn load_order(state: &AppState, order_id: Uuid, user_id: Uuid) -> ApiResult<Order> {
    let row: OrderRow = sqlx::query_as(&format!("{ORDER_SELECT} WHERE o.id = $1 AND o.user_id = $2"))
        .bind(order_id)
        .bind(user_id)
        .fetch_optional(&state.db)
        .await?
        .ok_or_else(ApiError::not_found)?;
    row.into_order()
}

/// Someone else's order is "not found": its existence is not theirs to know.
async fn show_order(
    State(state): State<AppState>,
    user: AuthUser,
    Path(order_id): Path<String>,
) -> ApiResult<Json<Order>> {
    Ok(Json(load_order(&state, parse_id(&order_id)?, user.0.user_id).await?))
}

/// The buyer gives up a reservation: its units go back at once.
#[tracing::instrument(skip_all, fields(order_id = %order_id))]
async fn cancel_order(
    State(state): State<AppState>,
    user: AuthUser,
    Path(order_id): Path<String>,
) -> ApiResult<Json<Order>> {
    let id = parse_id(&order_id)?;
    let mut tx = state.db.begin().await?;
    let mut order =
        lifecycle::lock(&mut tx, id).await?.filter(|o| o.user_id == user.0.user_id).ok_or_else(ApiError::not_found)?;
    match order.status() {
        OrderStatus::Reserved => lifecycle::move_to(&mut tx, &mut order, OrderStatus::Cancelled, None).await?,
        OrderStatus::Cancelled => {}
        other => {
            return Err(ApiError::code(
                ErrorCode::OrderNotCancellable,
                format!("the order is {}; only a reserved order can be cancelled", other.as_str()),
            ))
        }
    }
    tx.commit().await?;
    // Return the units now rather than when the event comes round; the edge-sync
    // consumer settles it anyway if this call does not get through.
    if let Err(e) = edge_sync::settle(&state, id).await {
        tracing::warn!(error = %e, "immediate release failed; the event will retry it");
    }
    Ok(Json(load_order(&state, id, user.0.user_id).await?))
}

/// The edge let a hold run out unpaid (its units are back in stock).
#[tracing::instrument(skip_all)]
async fn hold_expired(
    State(state): State<AppState>,
    Path(order_id): Path<String>,
    body: SignedBody,
) -> ApiResult<Json<serde_json::Value>> {
    let _notice: HoldExpiry = body.json()?;
    let id = parse_id(&order_id)?;
    let mut tx = state.db.begin().await?;
    // Unknown yet (the reservation is still on its way): 404 makes the edge retry.
    let mut order = lifecycle::lock(&mut tx, id).await?.ok_or_else(ApiError::not_found)?;
    if order.status() == OrderStatus::Reserved {
        lifecycle::move_to(&mut tx, &mut order, OrderStatus::Expired, Some("the reservation ran out before payment"))
            .await?;
    }
    tx.commit().await?;
    Ok(Json(serde_json::json!({"order_id": id, "status": order.status})))
}

const ORDERS_LIST: &str = "orders";

async fn list_orders(
    State(state): State<AppState>,
    user: AuthUser,
    query: Result<Query<PageQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Page<Order>>> {
    let Query(page) = query.map_err(|e| ApiError::code(ErrorCode::InvalidRequest, e.body_text()))?;
    let limit = page.limit()?;
    let after = page.after(ORDERS_LIST)?;
    // Order ids are UUID v7: descending id is newest first, and a stable key to page on.
    let rows: Vec<OrderRow> = sqlx::query_as(&format!(
        "{ORDER_SELECT} WHERE o.user_id = $1 AND ($2::uuid IS NULL OR o.id < $2) ORDER BY o.id DESC LIMIT $3"
    ))
    .bind(user.0.user_id)
    .bind(after)
    .bind(limit + 1)
    .fetch_all(&state.db)
    .await?;
    let more = rows.len() as i64 > limit;
    let items: Vec<Order> =
        rows.into_iter().take(limit as usize).map(OrderRow::into_order).collect::<ApiResult<_>>()?;
    let next_cursor = if more { items.last().map(|o| pagination::encode(ORDERS_LIST, o.order_id)) } else { None };
    Ok(Json(Page { items, next_cursor }))
}
