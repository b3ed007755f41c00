//! The inbox. Persistent kinds (`order_confirmed`, `order_failed`,
//! `order_expired`) are stored, listed and marked read; the ephemeral `drop_live` is
//! only delivered (see `followers::fanout`). Either goes over the user's socket when
//! they are online and by push when they are not. The `notifications` consumer
//! makes them from order events, once per (event, user).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use drops_shared::api::{NotificationItem, NotificationPage};
use drops_shared::events::{DomainEvent, EventEnvelope};
use serde_json::{json, Value};
use uuid::Uuid;

use super::live::{self, LiveMessage};
use super::{push, NotificationsState};
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{path_id, AuthUser, StrictQuery};
use crate::http::paging::{self, PageQuery};
use crate::payments;
use crate::state::Core;

pub const CONSUMER: &str = "notifications";

/// The `notifications` group: buyers told what became of their orders.
pub struct Notifier(pub Core);

impl crate::events::bus::Consumer for Notifier {
    fn group(&self) -> &'static str {
        CONSUMER
    }

    /// The events that make a notification (see [`notification_for`]) or tell a buyer
    /// their payment is ready.
    fn interested(&self, event: &DomainEvent) -> bool {
        matches!(event, DomainEvent::PaymentReady { .. }) || notification_for(event).is_some()
    }

    fn handle<'a>(&'a self, event: &'a EventEnvelope) -> crate::events::bus::Handled<'a> {
        Box::pin(handle(&self.0, event))
    }
}

const LIST: &str = "notifications";

pub fn router() -> Router<NotificationsState> {
    Router::new()
        .route("/v1/notifications", get(list))
        .route("/v1/notifications/read-all", post(read_all))
        .route("/v1/notifications/stream", get(live::stream))
        .route("/v1/notifications/{id}/read", post(read_one))
}

async fn list(
    State(state): State<NotificationsState>,
    user: AuthUser,
    StrictQuery(page): StrictQuery<PageQuery>,
) -> ApiResult<Json<NotificationPage>> {
    let db = &state.core.db;
    let limit = page.limit()?;
    let list = paging::List::new(&state.core, format!("{LIST}-{}", user.0.user_id));
    let after = list.after(&page)?;
    let rows = sqlx::query_as!(
        NotificationItem,
        "SELECT id, kind, payload, created_at, read_at FROM notifications
         WHERE user_id = $1 AND ($2::uuid IS NULL OR id < $2) ORDER BY id DESC LIMIT $3",
        user.0.user_id,
        after,
        limit + 1
    )
    .fetch_all(db)
    .await?;
    let unread_count = sqlx::query_scalar!(
        r#"SELECT count(*) AS "n!" FROM notifications WHERE user_id = $1 AND read_at IS NULL"#,
        user.0.user_id
    )
    .fetch_one(db)
    .await?;
    let page = paging::page(rows, limit, |n| list.cursor(n.id));
    Ok(Json(NotificationPage { items: page.items, next_cursor: page.next_cursor, unread_count }))
}

/// Someone else's notification is "not found".
async fn read_one(
    State(state): State<NotificationsState>,
    user: AuthUser,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let id = path_id(&id)?;
    let found = sqlx::query!(
        "UPDATE notifications SET read_at = COALESCE(read_at, now()) WHERE id = $1 AND user_id = $2",
        id,
        user.0.user_id
    )
    .execute(&state.core.db)
    .await?;
    if found.rows_affected() == 0 {
        return Err(ApiError::not_found());
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn read_all(State(state): State<NotificationsState>, user: AuthUser) -> ApiResult<StatusCode> {
    sqlx::query!("UPDATE notifications SET read_at = now() WHERE user_id = $1 AND read_at IS NULL", user.0.user_id)
        .execute(&state.core.db)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The persistent notification an event means, if any: (user, kind, payload).
fn notification_for(event: &DomainEvent) -> Option<(Uuid, &'static str, Value)> {
    match event {
        DomainEvent::OrderConfirmed { order_id, drop_id, user_id, .. } => {
            Some((*user_id, "order_confirmed", json!({"order_id": order_id, "drop_id": drop_id})))
        }
        DomainEvent::OrderFailed { order_id, drop_id, user_id, reason, .. } => {
            Some((*user_id, "order_failed", json!({"order_id": order_id, "drop_id": drop_id, "reason": reason})))
        }
        DomainEvent::OrderExpired { order_id, drop_id, user_id, .. } => {
            Some((*user_id, "order_expired", json!({"order_id": order_id, "drop_id": drop_id})))
        }
        _ => None,
    }
}

/// The consumer: store, then deliver live or queue a push; `order_payment_ready` is
/// ephemeral, for the buyer's socket only.
pub async fn handle(state: &Core, event: &EventEnvelope) -> anyhow::Result<()> {
    if let DomainEvent::PaymentReady { order_id, user_id } = event.event {
        return payment_ready(state, order_id, user_id).await;
    }
    let Some((user_id, kind, payload)) = notification_for(&event.event) else { return Ok(()) };
    let mut tx = state.db.begin().await?;
    let id = sqlx::query_scalar!(
        "INSERT INTO notifications (id, user_id, kind, payload, event_id) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (event_id, user_id) DO NOTHING RETURNING id",
        Uuid::now_v7(),
        user_id,
        kind,
        payload,
        event.id
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some(id) = id else { return Ok(()) }; // made already: a redelivery
    let message = LiveMessage { kind: kind.to_owned(), payload, id: Some(id) };
    let online = live::send(state, &[user_id], &message).await.unwrap_or_default();
    if online.is_empty() {
        push::store_message(&mut tx, event.id, &serde_json::to_value(&message)?).await?;
        push::enqueue(&mut tx, event.id, &[user_id], push::Priority::Transactional, 0).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Tells the buyer's open sockets how to pay (the payment's handle, which may hold
/// a client secret: it goes to the order's owner only).
async fn payment_ready(state: &Core, order_id: Uuid, user_id: Uuid) -> anyhow::Result<()> {
    let Some(payment) = payments::store::handles(&state.db, &[order_id]).await?.remove(&order_id) else {
        return Ok(());
    };
    let message = LiveMessage {
        kind: "order_payment_ready".into(),
        payload: json!({"order_id": order_id, "payment": payment}),
        id: None,
    };
    live::send(state, &[user_id], &message).await?;
    Ok(())
}
