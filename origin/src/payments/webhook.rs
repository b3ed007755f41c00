//! `POST /v1/webhooks/payments`: the provider tells us how a payment went.
//!
//! The signature is checked over the raw bytes (Stripe's scheme, any configured
//! secret). Each event id is recorded in the same transaction as its effect, so a
//! redelivery changes nothing. A success is final: a failure arriving after it is
//! ignored, and a success arriving after a failure (or after the hold ran out)
//! confirms the order; the edge sync then sells the hold again or refunds.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use axum::{Json, Router};
use chrono::Utc;
use drops_shared::api::OrderStatus;
use drops_shared::events::DomainEvent;
use drops_shared::problem::ErrorCode;
use drops_shared::signing::{verify_stripe_signature, STRIPE_SIGNATURE_HEADER};
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::error::{ApiError, ApiResult};
use crate::events;
use crate::orders::lifecycle;
use crate::startup::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/webhooks/payments", post(receive))
}

#[derive(Debug, Deserialize)]
struct WebhookEvent {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    data: EventData,
}

#[derive(Debug, Deserialize)]
struct EventData {
    object: PaymentObject,
}

#[derive(Debug, Deserialize)]
struct PaymentObject {
    id: String,
}

/// What an event did; also the `outcome` label of the webhook metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    Duplicate,
    Ignored,
    UnknownPayment,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Duplicate => "duplicate",
            Self::Ignored => "ignored",
            Self::UnknownPayment => "unknown_payment",
        }
    }
}

#[tracing::instrument(skip_all)]
async fn receive(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> ApiResult<Json<Value>> {
    let secrets = state.settings.webhook_secret_list();
    let secrets: Vec<&[u8]> = secrets.iter().map(|s| s.as_bytes()).collect();
    let header = headers.get(STRIPE_SIGNATURE_HEADER).and_then(|v| v.to_str().ok());
    if let Err(e) = verify_stripe_signature(header, &secrets, &body, Utc::now().timestamp()) {
        crate::metrics::webhook("invalid_signature");
        tracing::warn!(error = %e, "webhook refused");
        return Err(ApiError::code(ErrorCode::InvalidSignature, "the Stripe-Signature header does not verify"));
    }
    let event: WebhookEvent = serde_json::from_slice(&body)
        .map_err(|e| ApiError::code(ErrorCode::InvalidRequest, format!("not a payment event: {e}")))?;
    let outcome = apply(&state, &event, &body).await?;
    crate::metrics::webhook(outcome.as_str());
    tracing::info!(event_id = %event.id, kind = %event.kind, outcome = outcome.as_str(), "webhook");
    Ok(Json(json!({"received": true, "outcome": outcome.as_str()})))
}

async fn apply(state: &AppState, event: &WebhookEvent, raw: &[u8]) -> ApiResult<Outcome> {
    let payload: Value = serde_json::from_slice(raw).unwrap_or(Value::Null);
    let mut tx = state.db.begin().await?;
    let recorded = sqlx::query(
        "INSERT INTO webhook_events (id, event_type, payment_ref, payload) VALUES ($1, $2, $3, $4)
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(&event.id)
    .bind(&event.kind)
    .bind(&event.data.object.id)
    .bind(&payload)
    .execute(&mut *tx)
    .await?;
    if recorded.rows_affected() == 0 {
        return Ok(Outcome::Duplicate);
    }
    let succeeded = match event.kind.as_str() {
        "payment_intent.succeeded" => true,
        "payment_intent.payment_failed" => false,
        _ => return finish(tx, &event.id, Outcome::Ignored).await,
    };
    let reference = &event.data.object.id;
    let order_id: Option<Uuid> = sqlx::query_scalar("SELECT order_id FROM payments WHERE reference = $1")
        .bind(reference)
        .fetch_optional(&mut *tx)
        .await?;
    let Some(order_id) = order_id else { return finish(tx, &event.id, Outcome::UnknownPayment).await };
    let Some(mut order) = lifecycle::lock(&mut tx, order_id).await? else {
        return finish(tx, &event.id, Outcome::UnknownPayment).await;
    };
    let payment_status: String = sqlx::query_scalar("SELECT status FROM payments WHERE order_id = $1 FOR UPDATE")
        .bind(order_id)
        .fetch_one(&mut *tx)
        .await?;
    let outcome = if succeeded {
        if payment_status == "refunded" {
            Outcome::Ignored
        } else {
            set_payment(&mut tx, order_id, "succeeded").await?;
            match order.status() {
                OrderStatus::Reserved => lifecycle::move_to(&mut tx, &mut order, OrderStatus::Confirmed, None).await?,
                OrderStatus::Expired | OrderStatus::Failed => {
                    let detail = "paid after the reservation had ended";
                    lifecycle::move_to(&mut tx, &mut order, OrderStatus::Confirmed, Some(detail)).await?
                }
                OrderStatus::Confirmed | OrderStatus::Cancelled => {}
            }
            events::record(&mut tx, DomainEvent::PaymentSucceeded { order_id, reference: reference.clone() }).await?;
            Outcome::Applied
        }
    } else if matches!(payment_status.as_str(), "succeeded" | "refunded") {
        // A success is final; this failure is an earlier attempt delivered late.
        Outcome::Ignored
    } else {
        set_payment(&mut tx, order_id, "failed").await?;
        if order.status() == OrderStatus::Reserved {
            lifecycle::move_to(&mut tx, &mut order, OrderStatus::Failed, Some("payment failed")).await?;
        }
        Outcome::Applied
    };
    finish(tx, &event.id, outcome).await
}

async fn set_payment(conn: &mut sqlx::PgConnection, order_id: Uuid, status: &str) -> sqlx::Result<()> {
    sqlx::query("UPDATE payments SET status = $2, updated_at = now() WHERE order_id = $1")
        .bind(order_id)
        .bind(status)
        .execute(conn)
        .await?;
    Ok(())
}

async fn finish(mut tx: sqlx::Transaction<'_, sqlx::Postgres>, event_id: &str, outcome: Outcome) -> ApiResult<Outcome> {
    sqlx::query("UPDATE webhook_events SET outcome = $2 WHERE id = $1")
        .bind(event_id)
        .bind(outcome.as_str())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(outcome)
}
