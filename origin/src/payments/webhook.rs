//! `POST /v1/webhooks/payments`: the provider tells us how a payment went.
//!
//! The signature is checked over the raw bytes (Stripe's scheme, any configured
//! secret). Each event id is recorded in the same transaction as its effect, so a
//! redelivery changes nothing. A success is final: a failure arriving after it is
//! ignored, and a success arriving after a failure (or after the hold ran out)
//! confirms the order; the edge sync then sells the hold again or refunds. A
//! success for an order its buyer cancelled files the refund in the same
//! transaction (the [`super::reversals`] worker gives the money back). The
//! payment row is locked first, then the order (by the orders area's
//! [`OrderSettlement`](super::OrderSettlement)), in that order everywhere.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use axum::{Json, Router};
use chrono::Utc;
use drops_shared::events::DomainEvent;
use drops_shared::problem::ErrorCode;
use drops_shared::signing::{verify_stripe_signature, STRIPE_SIGNATURE_HEADER};
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use super::{store, PaymentStatus, PaymentsState, Settled};
use crate::events;
use crate::http::error::{ApiError, ApiResult};

pub fn router() -> Router<PaymentsState> {
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum Outcome {
    Applied,
    Duplicate,
    Ignored,
    UnknownPayment,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

fn count(outcome: &'static str) {
    metrics::counter!("drops_webhook_events_total", "outcome" => outcome).increment(1);
}

#[tracing::instrument(skip_all)]
async fn receive(State(state): State<PaymentsState>, headers: HeaderMap, body: Bytes) -> ApiResult<Json<Value>> {
    let secrets: Vec<&[u8]> =
        state.core.settings.payments.webhook_secrets.iter().map(|s| s.expose_secret().as_bytes()).collect();
    let header = headers.get(STRIPE_SIGNATURE_HEADER).and_then(|v| v.to_str().ok());
    if let Err(e) = verify_stripe_signature(header, &secrets, &body, Utc::now().timestamp()) {
        count("invalid_signature");
        tracing::warn!(error = %e, "webhook refused");
        return Err(ApiError::code(ErrorCode::InvalidSignature, "the Stripe-Signature header does not verify"));
    }
    let event: WebhookEvent = serde_json::from_slice(&body)
        .map_err(|e| ApiError::code(ErrorCode::InvalidRequest, format!("not a payment event: {e}")))?;
    let outcome = apply(&state, &event, &body).await?;
    count(outcome.as_str());
    tracing::info!(event_id = %event.id, kind = %event.kind, outcome = outcome.as_str(), "webhook");
    Ok(Json(json!({"received": true, "outcome": outcome.as_str()})))
}

async fn apply(state: &PaymentsState, event: &WebhookEvent, raw: &[u8]) -> ApiResult<Outcome> {
    let payload: Value = serde_json::from_slice(raw).unwrap_or(Value::Null);
    let mut tx = state.core.db.begin().await?;
    let recorded = sqlx::query!(
        "INSERT INTO webhook_events (id, event_type, payment_ref, payload) VALUES ($1, $2, $3, $4)
         ON CONFLICT (id) DO NOTHING",
        event.id,
        event.kind,
        event.data.object.id,
        payload
    )
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
    let payment = sqlx::query!(
        // NO KEY UPDATE: the order's own path files reversals against this row under the
        // order's lock (a foreign key's KEY SHARE), and must not wait on us while we wait on it.
        r#"SELECT order_id, status AS "status: PaymentStatus" FROM payments WHERE reference = $1 FOR NO KEY UPDATE"#,
        reference
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some(payment) = payment else { return finish(tx, &event.id, Outcome::UnknownPayment).await };
    let (order_id, status) = (payment.order_id, payment.status);
    let settlement = &state.payments.settlement;
    let outcome = match (succeeded, status) {
        // Paid once already: a second success changes nothing.
        (true, PaymentStatus::Succeeded | PaymentStatus::Refunded) => Outcome::Ignored,
        (true, _) => {
            set_status(&mut tx, order_id, PaymentStatus::Succeeded).await?;
            let settled = settlement.paid(&mut tx, order_id).await?;
            events::record(&mut tx, DomainEvent::PaymentSucceeded { order_id, reference: reference.clone() }).await?;
            if settled == Settled::CannotHonour {
                // The money is taken and the order will not be honoured: give it back,
                // filed with the payment's success so that neither is ever without the other.
                store::request_refund(&mut tx, order_id, "paid for an order that had been cancelled").await?;
            }
            Outcome::Applied
        }
        // A success is final; this failure is an earlier attempt delivered late. A
        // payment called off cannot fail any more either.
        (false, PaymentStatus::Succeeded | PaymentStatus::Refunded | PaymentStatus::Cancelled) => Outcome::Ignored,
        (false, _) => {
            set_status(&mut tx, order_id, PaymentStatus::Failed).await?;
            settlement.payment_failed(&mut tx, order_id).await?;
            Outcome::Applied
        }
    };
    finish(tx, &event.id, outcome).await
}

async fn set_status(conn: &mut sqlx::PgConnection, order_id: Uuid, status: PaymentStatus) -> sqlx::Result<()> {
    sqlx::query!(
        "UPDATE payments SET status = $2, updated_at = now() WHERE order_id = $1",
        order_id,
        status as PaymentStatus
    )
    .execute(conn)
    .await?;
    Ok(())
}

async fn finish(mut tx: sqlx::Transaction<'_, sqlx::Postgres>, event_id: &str, outcome: Outcome) -> ApiResult<Outcome> {
    sqlx::query!("UPDATE webhook_events SET outcome = $2 WHERE id = $1", event_id, outcome.as_str())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(outcome)
}
