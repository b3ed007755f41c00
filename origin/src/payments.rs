//! Payments: the provider trait and the sandbox provider that stands in for a real
//! one on developer machines and in tests.

use async_trait::async_trait;
use drops_shared::api::{Money, PaymentHandle};
use sqlx::PgPool;
use uuid::Uuid;

/// A payment provider, seen from the origin.
#[async_trait]
pub trait PaymentProvider: Send + Sync {
    fn name(&self) -> &'static str;
    /// Starts a payment for an order. Must be idempotent on `order_id`.
    async fn create_payment(&self, order_id: Uuid, amount: &Money) -> anyhow::Result<PaymentHandle>;
}

/// A provider that lives inside the origin: references are derived from the order
/// id (so creating twice gives the same payment) and checkout happens on the
/// origin's own sandbox pages.
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
            checkout_url: format!("{}/v1/sandbox/checkout/{reference}", self.public_url),
            reference,
        })
    }
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
