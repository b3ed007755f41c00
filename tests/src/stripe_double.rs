//! A local double of the part of Stripe's API the origin calls: creating a
//! PaymentIntent (`POST /v1/payment_intents`, form-encoded, bearer key, an
//! `Idempotency-Key`), cancelling one and refunding one. It answers as Stripe does,
//! and can be made slow or failing, to see what the platform does when the provider
//! is. [`StripeDouble::confirm`] stands for a buyer confirming an intent with Stripe.js.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Form, Json, Router};
use serde_json::{json, Value};

/// How the double answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Up,
    /// Answers after this long.
    Slow(Duration),
    /// Answers 500 with Stripe's error body.
    Failing,
}

#[derive(Default)]
struct Inner {
    mode: Option<Mode>,
    /// Each PaymentIntent by the idempotency key that created it.
    intents: HashMap<String, Value>,
    /// (authorization, idempotency key) of every call.
    calls: Vec<(String, String)>,
}

#[derive(Clone, Default)]
pub struct StripeDouble(Arc<Mutex<Inner>>);

impl StripeDouble {
    /// Serves the double on a free local port; returns its base URL.
    pub async fn start(&self) -> String {
        let app = Router::new()
            .route("/v1/payment_intents", post(create_intent))
            .route("/v1/payment_intents/{id}/cancel", post(cancel_intent))
            .route("/v1/refunds", post(refund))
            .with_state(self.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a port for the Stripe double");
        let url = format!("http://{}", listener.local_addr().expect("its address"));
        tokio::spawn(async move { axum::serve(listener, app).await.expect("the Stripe double serves") });
        url
    }

    pub fn set(&self, mode: Mode) {
        self.0.lock().expect("double").mode = Some(mode);
    }

    /// (authorization, idempotency key) of every call so far.
    pub fn calls(&self) -> Vec<(String, String)> {
        self.0.lock().expect("double").calls.clone()
    }

    /// The buyer confirmed the intent with Stripe (as Stripe.js does with its client
    /// secret): it succeeded, and can no longer be cancelled. Returns whether it could.
    pub fn confirm(&self, intent_id: &str) -> bool {
        let mut inner = self.0.lock().expect("double");
        match inner.intents.values_mut().find(|i| i["id"] == intent_id) {
            Some(intent) if intent["status"] == "requires_payment_method" => {
                intent["status"] = json!("succeeded");
                true
            }
            _ => false,
        }
    }

    /// The status of an intent (`requires_payment_method`, `succeeded`, `canceled`).
    pub fn status(&self, intent_id: &str) -> Option<String> {
        let inner = self.0.lock().expect("double");
        inner.intents.values().find(|i| i["id"] == intent_id).and_then(|i| i["status"].as_str().map(str::to_owned))
    }

    /// How many PaymentIntents exist (one per idempotency key, however often asked).
    pub fn intents(&self) -> usize {
        self.0.lock().expect("double").intents.len()
    }

    /// How many PaymentIntents name each order (in their metadata): one at most, if
    /// the platform never asked twice under different keys.
    pub fn intents_per_order(&self) -> HashMap<String, usize> {
        let mut per_order = HashMap::new();
        for intent in self.0.lock().expect("double").intents.values() {
            let order = intent["metadata"]["order_id"].as_str().unwrap_or_default().to_owned();
            *per_order.entry(order).or_default() += 1;
        }
        per_order
    }

    fn record(&self, headers: &HeaderMap) -> (Mode, String) {
        let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        let mut inner = self.0.lock().expect("double");
        let key = header("idempotency-key");
        inner.calls.push((header("authorization"), key.clone()));
        (inner.mode.unwrap_or(Mode::Up), key)
    }
}

async fn answer(mode: Mode) -> Option<(StatusCode, Json<Value>)> {
    match mode {
        Mode::Up => None,
        Mode::Slow(pause) => {
            tokio::time::sleep(pause).await;
            None
        }
        Mode::Failing => Some((
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": {"type": "api_error", "message": "An unknown error occurred"}})),
        )),
    }
}

async fn create_intent(
    State(double): State<StripeDouble>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> (StatusCode, Json<Value>) {
    let (mode, key) = double.record(&headers);
    if let Some(failed) = answer(mode).await {
        return failed;
    }
    let mut inner = double.0.lock().expect("double");
    let n = inner.intents.len();
    let intent = inner
        .intents
        .entry(key)
        .or_insert_with(|| {
            let id = format!("pi_double_{n}_{}", uuid::Uuid::new_v4().simple());
            json!({
                "id": id, "object": "payment_intent", "status": "requires_payment_method",
                "client_secret": format!("{id}_secret_{}", uuid::Uuid::new_v4().simple()),
                "amount": form.get("amount").and_then(|a| a.parse::<i64>().ok()),
                "currency": form.get("currency"), "metadata": {"order_id": form.get("metadata[order_id]")},
            })
        })
        .clone();
    (StatusCode::OK, Json(intent))
}

async fn refund(State(double): State<StripeDouble>, headers: HeaderMap) -> (StatusCode, Json<Value>) {
    let (mode, _) = double.record(&headers);
    if let Some(failed) = answer(mode).await {
        return failed;
    }
    (StatusCode::OK, Json(json!({"id": format!("re_double_{}", uuid::Uuid::new_v4().simple()), "object": "refund"})))
}

/// Cancels an intent not yet paid; one that succeeded is refused as Stripe does.
async fn cancel_intent(
    State(double): State<StripeDouble>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> (StatusCode, Json<Value>) {
    let (mode, _) = double.record(&headers);
    if let Some(failed) = answer(mode).await {
        return failed;
    }
    let mut inner = double.0.lock().expect("double");
    let Some(intent) = inner.intents.values_mut().find(|i| i["id"] == id.as_str()) else {
        let error = json!({"error": {"type": "invalid_request_error", "code": "resource_missing",
                                     "message": format!("No such payment_intent: '{id}'")}});
        return (StatusCode::NOT_FOUND, Json(error));
    };
    if intent["status"] == "succeeded" {
        let error = json!({"error": {"type": "invalid_request_error", "code": "payment_intent_unexpected_state",
                                     "message": "You cannot cancel this PaymentIntent because it has a status of succeeded."}});
        return (StatusCode::BAD_REQUEST, Json(error));
    }
    intent["status"] = json!("canceled");
    (StatusCode::OK, Json(intent.clone()))
}
