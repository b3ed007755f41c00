//! A buyer's own orders: list, show, cancel. Someone else's order is "not found":
//! its existence is not theirs to know.

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use drops_shared::api::{Money, Order, OrderStatus, Page};
use drops_shared::problem::ErrorCode;
use uuid::Uuid;

use super::{edge_sync, lifecycle, OrdersState};
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{path_id, AuthUser, StrictQuery};
use crate::http::paging::{self, PageQuery};
use crate::payments;

const ORDERS_LIST: &str = "orders";

pub fn router() -> Router<OrdersState> {
    Router::new()
        .route("/v1/orders", get(list_orders))
        .route("/v1/orders/{order_id}", get(show_order))
        .route("/v1/orders/{order_id}/cancel", post(cancel_order))
}

struct OrderRow {
    id: Uuid,
    drop_id: Uuid,
    status: OrderStatus,
    status_detail: Option<String>,
    quantity: i32,
    amount: i64,
    currency: String,
    expires_at: DateTime<Utc>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

/// The buyer's orders among `ids`, in that order, as the buyer sees them: each with
/// its payment handle once there is one.
async fn load(state: &OrdersState, user_id: Uuid, ids: &[Uuid]) -> ApiResult<Vec<Order>> {
    let db = &state.core.db;
    let mut rows = sqlx::query_as!(
        OrderRow,
        r#"SELECT id, drop_id, status AS "status: OrderStatus", status_detail, quantity, amount, currency,
                  expires_at, created_at, updated_at
           FROM orders WHERE user_id = $1 AND id = ANY($2)"#,
        user_id,
        ids
    )
    .fetch_all(db)
    .await?;
    rows.sort_by_key(|r| ids.iter().position(|id| *id == r.id));
    let mut handles = payments::store::handles(db, ids).await?;
    Ok(rows
        .into_iter()
        .map(|r| Order {
            order_id: r.id,
            drop_id: r.drop_id,
            status: r.status,
            quantity: r.quantity as u32,
            amount: Money { amount: r.amount, currency: r.currency.trim().to_owned() },
            expires_at: r.expires_at,
            payment: handles.remove(&r.id),
            created_at: r.created_at,
            updated_at: r.updated_at,
            detail: r.status_detail,
        })
        .collect())
}

async fn load_order(state: &OrdersState, order_id: Uuid, user_id: Uuid) -> ApiResult<Order> {
    load(state, user_id, &[order_id]).await?.pop().ok_or_else(ApiError::not_found)
}

/// While a reserved order's payment is being prepared, `Retry-After: 1` says when
/// to look again.
async fn show_order(
    State(state): State<OrdersState>,
    user: AuthUser,
    Path(order_id): Path<String>,
) -> ApiResult<Response> {
    let order = load_order(&state, path_id(&order_id)?, user.0.user_id).await?;
    let preparing = order.payment.is_none() && order.status == OrderStatus::Reserved;
    let mut response = Json(order).into_response();
    if preparing {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    Ok(response)
}

/// The buyer gives up a reservation: its units go back at once.
#[tracing::instrument(skip_all, fields(order_id = %order_id))]
async fn cancel_order(
    State(state): State<OrdersState>,
    user: AuthUser,
    Path(order_id): Path<String>,
) -> ApiResult<Json<Order>> {
    let id = path_id(&order_id)?;
    let mut tx = state.core.db.begin().await?;
    let mut order =
        lifecycle::lock(&mut tx, id).await?.filter(|o| o.user_id == user.0.user_id).ok_or_else(ApiError::not_found)?;
    match order.status {
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

async fn list_orders(
    State(state): State<OrdersState>,
    user: AuthUser,
    StrictQuery(page): StrictQuery<PageQuery>,
) -> ApiResult<Json<Page<Order>>> {
    let limit = page.limit()?;
    let list = paging::List::new(&state.core, format!("{ORDERS_LIST}-{}", user.0.user_id));
    let after = list.after(&page)?;
    // Order ids are UUID v7: descending id is newest first, and a stable key to page on.
    let ids = sqlx::query_scalar!(
        "SELECT id FROM orders WHERE user_id = $1 AND ($2::uuid IS NULL OR id < $2) ORDER BY id DESC LIMIT $3",
        user.0.user_id,
        after,
        limit + 1
    )
    .fetch_all(&state.core.db)
    .await?;
    let orders = load(&state, user.0.user_id, &ids).await?;
    Ok(Json(paging::page(orders, limit, |o| list.cursor(o.order_id))))
}
