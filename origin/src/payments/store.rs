//! The `payments` rows: one per order, made the first time the order's payment is
//! asked for, moved by the webhook, and marked refunded here. Other areas read and
//! change them only through these functions.

use std::collections::HashMap;

use drops_shared::api::{Money, PaymentHandle};
use drops_shared::events::DomainEvent;
use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

use super::Payments;
use crate::events;

/// `payments.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type, strum::IntoStaticStr)]
#[sqlx(type_name = "text", rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum PaymentStatus {
    Pending,
    Succeeded,
    Failed,
    Refunded,
}

/// What other areas may know of an order's payment.
#[derive(Debug, Clone)]
pub struct PaymentRecord {
    pub order_id: Uuid,
    pub status: PaymentStatus,
    pub reference: String,
}

struct HandleRow {
    order_id: Uuid,
    provider: String,
    reference: String,
    checkout_url: String,
}

impl From<HandleRow> for PaymentHandle {
    fn from(r: HandleRow) -> Self {
        PaymentHandle { provider: r.provider, reference: r.reference, checkout_url: r.checkout_url }
    }
}

/// The order's payment, created with the provider the first time it is asked for.
pub async fn ensure(db: &PgPool, payments: &Payments, order_id: Uuid, amount: &Money) -> anyhow::Result<PaymentHandle> {
    if let Some(handle) = handles(db, &[order_id]).await?.remove(&order_id) {
        return Ok(handle);
    }
    // The provider call happens outside any transaction: it may be slow, and it is
    // idempotent on the order id, so a race between two callers is harmless.
    let handle = payments.provider.create_payment(order_id, amount).await?;
    sqlx::query!(
        "INSERT INTO payments (id, order_id, provider, reference, checkout_url, amount, currency)
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (order_id) DO NOTHING",
        Uuid::now_v7(),
        order_id,
        handle.provider,
        handle.reference,
        handle.checkout_url,
        amount.amount,
        amount.currency
    )
    .execute(db)
    .await?;
    Ok(handle)
}

/// How the buyer pays each of these orders (those that have a payment yet).
pub async fn handles(db: impl PgExecutor<'_>, order_ids: &[Uuid]) -> sqlx::Result<HashMap<Uuid, PaymentHandle>> {
    let rows = sqlx::query_as!(
        HandleRow,
        "SELECT order_id, provider, reference, checkout_url FROM payments WHERE order_id = ANY($1)",
        order_ids
    )
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(|r| (r.order_id, r.into())).collect())
}

pub async fn of_order(db: impl PgExecutor<'_>, order_id: Uuid) -> sqlx::Result<Option<PaymentRecord>> {
    sqlx::query_as!(
        PaymentRecord,
        r#"SELECT order_id, status AS "status: PaymentStatus", reference FROM payments WHERE order_id = $1"#,
        order_id
    )
    .fetch_optional(db)
    .await
}

/// Gives the order's money back, once: the payment row says when it is done.
/// Returns false when there was nothing to refund (no payment, or refunded already).
pub async fn refund(db: &PgPool, payments: &Payments, order_id: Uuid, amount: &Money) -> anyhow::Result<bool> {
    let Some(payment) = of_order(db, order_id).await? else { return Ok(false) };
    if payment.status == PaymentStatus::Refunded {
        return Ok(false);
    }
    let refund_ref = payments.provider.refund(order_id, &payment.reference, amount).await?;
    let mut tx = db.begin().await?;
    let done = sqlx::query!(
        "UPDATE payments SET status = 'refunded', refund_reference = $2, updated_at = now()
         WHERE order_id = $1 AND status <> 'refunded'",
        order_id,
        refund_ref
    )
    .execute(&mut *tx)
    .await?;
    if done.rows_affected() == 1 {
        let event = DomainEvent::PaymentRefunded {
            order_id,
            reference: payment.reference,
            amount: amount.amount,
            currency: amount.currency.clone(),
        };
        events::record(&mut tx, event).await?;
    }
    tx.commit().await?;
    Ok(done.rows_affected() == 1)
}
