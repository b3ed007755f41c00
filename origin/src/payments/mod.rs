//! Payments: the provider trait, its two implementations (the [`sandbox`] that
//! stands in for a real provider on developer machines and in tests, and
//! [`stripe`]'s PaymentIntents API), and the provider's [`webhook`].

pub mod sandbox;
pub mod stripe;
pub mod webhook;

use std::sync::Arc;

use async_trait::async_trait;
use axum::Router;
use drops_shared::api::{Money, PaymentHandle};
use secrecy::ExposeSecret;
use sqlx::PgPool;
use uuid::Uuid;

use crate::config::Settings;
use crate::startup::AppState;

/// A payment provider, seen from the origin. Both calls must be idempotent on the
/// order id: the origin may repeat them after a crash or a timeout.
#[async_trait]
pub trait PaymentProvider: Send + Sync {
    fn name(&self) -> &'static str;
    /// Starts a payment for an order.
    async fn create_payment(&self, order_id: Uuid, amount: &Money) -> anyhow::Result<PaymentHandle>;
    /// Gives the whole amount back; returns the provider's refund reference.
    async fn refund(&self, order_id: Uuid, reference: &str, amount: &Money) -> anyhow::Result<String>;
}

pub fn provider(settings: &Settings) -> anyhow::Result<Arc<dyn PaymentProvider>> {
    Ok(match (settings.payment_provider.as_str(), &settings.stripe_api_key) {
        ("stripe", Some(key)) => {
            Arc::new(stripe::StripeProvider::new(key.expose_secret(), stripe::API_BASE, &settings.public_url)?)
        }
        ("stripe", None) => anyhow::bail!("the stripe provider needs DROPS_STRIPE_API_KEY"),
        ("sandbox", _) => Arc::new(sandbox::SandboxProvider::new(&settings.public_url)),
        (other, _) => anyhow::bail!("unknown payment provider `{other}`"),
    })
}

pub fn router() -> Router<AppState> {
    Router::new().merge(webhook::router()).merge(sandbox::router())
}

#[derive(sqlx::FromRow)]
struct PaymentRow {
    provider: String,
    reference: String,
    checkout_url: String,
}

/// The order's payment, created with the provider the first time it is asked for.
pub async fn ensure_payment(
    db: &PgPool,
    provider: &dyn PaymentProvider,
    order_id: Uuid,
    amount: &Money,
) -> anyhow::Result<PaymentHandle> {
    let existing: Option<PaymentRow> =
        sqlx::query_as("SELECT provider, reference, checkout_url FROM payments WHERE order_id = $1")
            .bind(order_id)
            .fetch_optional(db)
            .await?;
    if let Some(p) = existing {
        return Ok(PaymentHandle { provider: p.provider, reference: p.reference, checkout_url: p.checkout_url });
    }
    // The provider call happens outside any transaction: it may be slow, and it is
    // idempotent on the order id, so a race between two callers is harmless.
    let handle = provider.create_payment(order_id, amount).await?;
    sqlx::query(
        "INSERT INTO payments (id, order_id, provider, reference, checkout_url, amount, currency)
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(Uuid::now_v7())
    .bind(order_id)
    .bind(&handle.provider)
    .bind(&handle.reference)
    .bind(&handle.checkout_url)
    .bind(amount.amount)
    .bind(&amount.currency)
    .execute(db)
    .await?;
    Ok(handle)
}
