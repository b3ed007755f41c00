//! Stripe's PaymentIntents API, for production (its base URL is a setting). It
//! cannot be called from these machines; its request building and response parsing
//! are tested on their own.

use std::time::Duration;

use async_trait::async_trait;
use drops_shared::api::{Money, PaymentHandle};
use serde::Deserialize;
use uuid::Uuid;

use super::{Cancellation, PaymentProvider};

pub struct StripeProvider {
    http: reqwest::Client,
    api_key: String,
    base_url: String,
}

/// A form request to Stripe: path, idempotency key and form fields.
#[derive(Debug, PartialEq, Eq)]
pub struct StripeRequest {
    pub path: String,
    pub idempotency_key: String,
    pub form: Vec<(String, String)>,
}

/// `POST /v1/payment_intents` for an order; Stripe wants lower-case currencies.
pub fn create_intent_request(order_id: Uuid, amount: &Money) -> StripeRequest {
    StripeRequest {
        path: "/v1/payment_intents".into(),
        idempotency_key: format!("order-{order_id}"),
        form: vec![
            ("amount".into(), amount.amount.to_string()),
            ("currency".into(), amount.currency.to_ascii_lowercase()),
            ("metadata[order_id]".into(), order_id.to_string()),
            ("automatic_payment_methods[enabled]".into(), "true".into()),
        ],
    }
}

/// `POST /v1/refunds` of a whole PaymentIntent.
pub fn refund_request(order_id: Uuid, reference: &str, amount: &Money) -> StripeRequest {
    StripeRequest {
        path: "/v1/refunds".into(),
        idempotency_key: format!("refund-{order_id}"),
        form: vec![("payment_intent".into(), reference.to_owned()), ("amount".into(), amount.amount.to_string())],
    }
}

/// `POST /v1/payment_intents/{id}/cancel`: the intent can no longer be confirmed.
pub fn cancel_request(order_id: Uuid, reference: &str) -> StripeRequest {
    StripeRequest {
        path: format!("/v1/payment_intents/{reference}/cancel"),
        idempotency_key: format!("cancel-{order_id}"),
        form: vec![("cancellation_reason".into(), "abandoned".into())],
    }
}

#[derive(Debug, Deserialize, PartialEq, Eq)]
pub struct PaymentIntent {
    pub id: String,
    pub client_secret: Option<String>,
    pub status: String,
}

#[derive(Debug, Deserialize)]
struct StripeErrorBody {
    error: StripeError,
}

#[derive(Debug, Deserialize)]
struct StripeError {
    #[serde(default)]
    message: String,
    #[serde(default)]
    code: String,
    #[serde(rename = "type", default)]
    kind: String,
}

/// Parses the answer to [`cancel_request`]. Stripe refuses to cancel an intent that
/// succeeded or is processing with `payment_intent_unexpected_state`: too late.
pub fn parse_cancel_response(status: u16, body: &[u8]) -> anyhow::Result<Cancellation> {
    if status == 400 {
        if let Ok(e) = serde_json::from_slice::<StripeErrorBody>(body) {
            if e.error.code == "payment_intent_unexpected_state" {
                return Ok(Cancellation::TooLate);
            }
        }
    }
    let intent: PaymentIntent = parse_response(status, body)?;
    anyhow::ensure!(intent.status == "canceled", "stripe left intent {} {}", intent.id, intent.status);
    Ok(Cancellation::Cancelled)
}

/// Parses a Stripe answer: the object on 2xx, Stripe's error message otherwise.
pub fn parse_response<T: serde::de::DeserializeOwned>(status: u16, body: &[u8]) -> anyhow::Result<T> {
    if (200..300).contains(&status) {
        return Ok(serde_json::from_slice(body)?);
    }
    match serde_json::from_slice::<StripeErrorBody>(body) {
        Ok(e) => anyhow::bail!("stripe {status} {}: {}", e.error.kind, e.error.message),
        Err(_) => anyhow::bail!("stripe answered {status}"),
    }
}

impl StripeProvider {
    pub fn new(api_key: &str, base_url: &str) -> anyhow::Result<Self> {
        Ok(Self {
            http: reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?,
            api_key: api_key.to_owned(),
            base_url: base_url.trim_end_matches('/').to_owned(),
        })
    }

    async fn send<T: serde::de::DeserializeOwned>(&self, req: StripeRequest) -> anyhow::Result<T> {
        let (status, bytes) = self.call(req).await?;
        parse_response(status, &bytes)
    }

    /// Sends a request; Stripe's status and body.
    async fn call(&self, req: StripeRequest) -> anyhow::Result<(u16, axum::body::Bytes)> {
        let body = form_body(&req.form);
        let resp = self
            .http
            .post(format!("{}{}", self.base_url, req.path))
            .bearer_auth(&self.api_key)
            .header("idempotency-key", req.idempotency_key)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await?;
        let status = resp.status().as_u16();
        Ok((status, resp.bytes().await?))
    }
}

/// `application/x-www-form-urlencoded`, as Stripe takes it.
pub fn form_body(form: &[(String, String)]) -> String {
    serde_urlencoded::to_string(form).unwrap_or_default()
}

#[async_trait]
impl PaymentProvider for StripeProvider {
    fn name(&self) -> &'static str {
        "stripe"
    }

    async fn create_payment(&self, order_id: Uuid, amount: &Money) -> anyhow::Result<PaymentHandle> {
        let intent: PaymentIntent = self.send(create_intent_request(order_id, amount)).await?;
        let client_secret = intent
            .client_secret
            .ok_or_else(|| anyhow::anyhow!("stripe answered PaymentIntent {} without a client_secret", intent.id))?;
        // No checkout page: the app confirms the intent with its client secret.
        Ok(PaymentHandle {
            provider: self.name().into(),
            reference: intent.id,
            checkout_url: None,
            client_secret: Some(client_secret),
        })
    }

    async fn refund(&self, order_id: Uuid, reference: &str, amount: &Money) -> anyhow::Result<String> {
        #[derive(Deserialize)]
        struct Refund {
            id: String,
        }
        let refund: Refund = self.send(refund_request(order_id, reference, amount)).await?;
        Ok(refund.id)
    }

    async fn cancel(&self, order_id: Uuid, reference: &str) -> anyhow::Result<Cancellation> {
        let (status, body) = self.call(cancel_request(order_id, reference)).await?;
        parse_cancel_response(status, &body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stripe (and push services, and the cache purge API) are `https`: a client
    /// built without TLS refuses the URL before connecting ("scheme is not http").
    #[tokio::test]
    async fn the_http_client_speaks_tls() {
        let provider = StripeProvider::new("sk_test_x", "https://127.0.0.1:9").unwrap();
        let err = provider.http.get("https://127.0.0.1:9/v1/payment_intents").send().await.unwrap_err();
        assert!(!err.is_builder(), "the request could not even be built: {err}");
        assert!(err.is_connect(), "{err}");
    }

    fn eur(amount: i64) -> Money {
        Money { amount, currency: "EUR".into() }
    }

    #[test]
    fn intent_request_is_form_encoded_and_idempotent_per_order() {
        let order = Uuid::from_u128(5);
        let req = create_intent_request(order, &eur(2500));
        assert_eq!(req.path, "/v1/payment_intents");
        assert_eq!(req.idempotency_key, format!("order-{order}"));
        let body = form_body(&req.form);
        assert_eq!(
            body,
            format!(
                "amount=2500&currency=eur&metadata%5Border_id%5D={order}&automatic_payment_methods%5Benabled%5D=true"
            )
        );
        assert_eq!(create_intent_request(order, &eur(2500)), req, "same order, same request");
    }

    #[test]
    fn refund_request_names_the_intent() {
        let req = refund_request(Uuid::from_u128(5), "pi_123", &eur(900));
        assert_eq!(req.path, "/v1/refunds");
        assert_eq!(form_body(&req.form), "payment_intent=pi_123&amount=900");
        assert!(req.idempotency_key.starts_with("refund-"));
    }

    #[test]
    fn cancelling_an_intent_already_paid_is_too_late_not_an_error() {
        let req = cancel_request(Uuid::from_u128(5), "pi_123");
        assert_eq!(req.path, "/v1/payment_intents/pi_123/cancel");
        assert!(req.idempotency_key.starts_with("cancel-"));
        let cancelled = br#"{"id":"pi_123","object":"payment_intent","client_secret":"s","status":"canceled"}"#;
        assert_eq!(parse_cancel_response(200, cancelled).unwrap(), Cancellation::Cancelled);
        let too_late = br#"{"error":{"type":"invalid_request_error","code":"payment_intent_unexpected_state","message":"You cannot cancel this PaymentIntent because it has a status of succeeded."}}"#;
        assert_eq!(parse_cancel_response(400, too_late).unwrap(), Cancellation::TooLate);
        let other = br#"{"error":{"type":"invalid_request_error","code":"resource_missing","message":"No such payment_intent"}}"#;
        assert!(parse_cancel_response(404, other).is_err());
        assert!(parse_cancel_response(500, b"<html>").is_err());
    }

    #[test]
    fn parses_intents_and_errors() {
        let ok: PaymentIntent = parse_response(
            200,
            br#"{"id":"pi_3","object":"payment_intent","client_secret":"pi_3_secret_x","status":"requires_payment_method"}"#,
        )
        .unwrap();
        assert_eq!(ok.id, "pi_3");
        assert_eq!(ok.client_secret.as_deref(), Some("pi_3_secret_x"));
        let err = parse_response::<PaymentIntent>(
            402,
            br#"{"error":{"type":"card_error","message":"Your card was declined."}}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("card_error"));
        assert!(parse_response::<PaymentIntent>(500, b"<html>").is_err());
    }
}
