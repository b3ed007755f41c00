//! The sandbox payment provider: what a real provider does, inside the origin.
//! Creating a payment gives a reference and a checkout URL on the origin; paying
//! there (`POST` with an outcome, as the order's owner: anyone else is told "not
//! found") makes the sandbox send the signed webhook to the origin exactly as a
//! provider would, retrying until it is accepted. Production refuses to start with
//! it (see `config`): it signs webhooks with the real secret.

use std::time::Duration;

use async_trait::async_trait;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use chrono::Utc;
use drops_shared::api::{Money, PaymentHandle};
use drops_shared::problem::ErrorCode;
use drops_shared::signing::{stripe_signature, STRIPE_SIGNATURE_HEADER};
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use drops_shared::backoff::Backoff;
use secrecy::ExposeSecret;

use super::{Cancellation, PaymentProvider, PaymentStatus, PaymentsState};
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{AuthUser, StrictJson};
use crate::tasks;

/// How the sandbox redelivers a webhook the origin did not take, as a provider does.
const REDELIVERY: Backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(60));
const DELIVERY_ATTEMPTS: u32 = 9;

pub struct SandboxProvider {
    public_url: String,
}

impl SandboxProvider {
    pub fn new(public_url: &str) -> Self {
        Self { public_url: public_url.trim_end_matches('/').to_owned() }
    }
}

#[async_trait]
impl PaymentProvider for SandboxProvider {
    fn name(&self) -> &'static str {
        "sandbox"
    }

    async fn create_payment(&self, order_id: Uuid, _amount: &Money) -> anyhow::Result<PaymentHandle> {
        let reference = format!("pi_sbx_{}", order_id.simple());
        Ok(PaymentHandle {
            provider: self.name().to_owned(),
            checkout_url: Some(format!("{}/v1/sandbox/checkout/{reference}", self.public_url)),
            client_secret: None,
            reference,
        })
    }

    async fn refund(&self, order_id: Uuid, _reference: &str, _amount: &Money) -> anyhow::Result<String> {
        Ok(format!("re_sbx_{}", order_id.simple()))
    }

    /// The sandbox keeps its payments in the origin's own rows: the `cancelled` the
    /// reversal records is what its checkout then refuses to take.
    async fn cancel(&self, _order_id: Uuid, _reference: &str) -> anyhow::Result<Cancellation> {
        Ok(Cancellation::Cancelled)
    }
}

pub fn router() -> Router<PaymentsState> {
    Router::new().route("/v1/sandbox/checkout/{reference}", get(show).post(pay))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Succeed,
    Fail,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayRequest {
    pub outcome: Outcome,
}

struct SandboxPayment {
    order_id: Uuid,
    user_id: Option<Uuid>,
    amount: i64,
    currency: String,
    status: PaymentStatus,
}

/// The payment at this checkout, if the caller owns it: anyone else's is "not found".
async fn find(state: &PaymentsState, reference: &str, caller: &AuthUser) -> ApiResult<SandboxPayment> {
    if state.payments.provider.name() != "sandbox" {
        return Err(ApiError::not_found());
    }
    sqlx::query_as!(
        SandboxPayment,
        r#"SELECT order_id, user_id, amount, currency, status AS "status: PaymentStatus" FROM payments
           WHERE reference = $1"#,
        reference
    )
    .fetch_optional(&state.core.db)
    .await?
    .filter(|p| p.user_id == Some(caller.0.user_id))
    .ok_or_else(ApiError::not_found)
}

async fn show(
    State(state): State<PaymentsState>,
    caller: AuthUser,
    Path(reference): Path<String>,
) -> ApiResult<Json<Value>> {
    let p = find(&state, &reference, &caller).await?;
    Ok(Json(json!({
        "reference": reference,
        "order_id": p.order_id,
        "amount": {"amount": p.amount, "currency": p.currency.trim()},
        "status": <&str>::from(p.status),
        "how_to_pay": "POST this URL with {\"outcome\":\"succeed\"} or {\"outcome\":\"fail\"}",
    })))
}

/// Pays (or fails to pay): the sandbox sends the provider's webhook to the origin.
async fn pay(
    State(state): State<PaymentsState>,
    caller: AuthUser,
    Path(reference): Path<String>,
    StrictJson(body): StrictJson<PayRequest>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let p = find(&state, &reference, &caller).await?;
    // As a provider refuses to take a payment that was called off, or made already.
    if matches!(p.status, PaymentStatus::Cancelled | PaymentStatus::Succeeded | PaymentStatus::Refunded) {
        let status: &str = p.status.into();
        return Err(ApiError::code(ErrorCode::Conflict, format!("this payment is {status}: it cannot be paid")));
    }
    let settings = &state.core.settings;
    let secret = settings.payments.webhook_secrets[0].expose_secret().to_owned();
    let event_id = format!("evt_sbx_{}", Uuid::now_v7().simple());
    let amount = Money { amount: p.amount, currency: p.currency.trim().to_owned() };
    let payload = event_body(&event_id, body.outcome, &reference, p.order_id, &amount, Utc::now().timestamp());
    let url = format!("{}/v1/webhooks/payments", settings.server.public_url);
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().map_err(anyhow::Error::from)?;
    let delivered = send_webhook(&http, &url, &secret, &payload).await;
    if !delivered {
        // As a provider does: keep trying in the background.
        let event_id = event_id.clone();
        tokio::spawn(async move {
            let redelivered = tasks::retry(REDELIVERY, DELIVERY_ATTEMPTS, |_| async {
                tokio::time::sleep(REDELIVERY.first).await;
                send_webhook(&http, &url, &secret, &payload).await.then_some(()).ok_or(())
            })
            .await;
            if redelivered.is_err() {
                tracing::warn!(%event_id, "sandbox gave up delivering a webhook");
            }
        });
    }
    Ok((StatusCode::ACCEPTED, Json(json!({"event_id": event_id, "delivered": delivered}))))
}

async fn send_webhook(http: &reqwest::Client, url: &str, secret: &str, payload: &[u8]) -> bool {
    let signature = stripe_signature(secret.as_bytes(), Utc::now().timestamp(), payload);
    match http
        .post(url)
        .header("content-type", "application/json")
        .header(STRIPE_SIGNATURE_HEADER, signature)
        .body(payload.to_vec())
        .send()
        .await
    {
        Ok(resp) => resp.status().is_success(),
        Err(e) => {
            tracing::warn!(error = %e, "sandbox webhook delivery failed");
            false
        }
    }
}

/// A webhook event body exactly as Stripe shapes `payment_intent.*` events.
pub fn event_body(
    event_id: &str,
    outcome: Outcome,
    reference: &str,
    order_id: Uuid,
    amount: &Money,
    created: i64,
) -> Vec<u8> {
    let kind = match outcome {
        Outcome::Succeed => "payment_intent.succeeded",
        Outcome::Fail => "payment_intent.payment_failed",
    };
    json!({
        "id": event_id,
        "object": "event",
        "type": kind,
        "created": created,
        "data": {"object": {
            "id": reference,
            "object": "payment_intent",
            "amount": amount.amount,
            "currency": amount.currency.to_ascii_lowercase(),
            "metadata": {"order_id": order_id},
        }},
    })
    .to_string()
    .into_bytes()
}
