//! The `payments` rows (one per order, made by the [`super::preparer`] once the
//! provider has the payment, moved by the webhook, marked refunded here) and the
//! `payment_requests` the orders area files for new orders. Other areas read and
//! change them only through these functions.

use std::collections::HashMap;

use drops_shared::api::{Money, PaymentHandle};
use drops_shared::events::DomainEvent;
use sqlx::{PgConnection, PgExecutor, PgPool};
use uuid::Uuid;

use super::Payments;
use crate::audit::{self, NewEntry};
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
    checkout_url: Option<String>,
    client_secret: Option<String>,
}

impl From<HandleRow> for PaymentHandle {
    fn from(r: HandleRow) -> Self {
        PaymentHandle {
            provider: r.provider,
            reference: r.reference,
            checkout_url: r.checkout_url,
            client_secret: r.client_secret,
        }
    }
}

/// An order whose payment is to be prepared with the provider.
#[derive(Debug, Clone)]
pub struct PaymentRequest {
    pub order_id: Uuid,
    /// The buyer, told when the payment is ready.
    pub user_id: Uuid,
    pub amount: Money,
}

/// Files a payment request for each order, in the caller's transaction (a request
/// already filed is kept).
pub async fn request_all(conn: &mut PgConnection, requests: &[PaymentRequest]) -> sqlx::Result<()> {
    if requests.is_empty() {
        return Ok(());
    }
    let orders: Vec<Uuid> = requests.iter().map(|r| r.order_id).collect();
    let users: Vec<Uuid> = requests.iter().map(|r| r.user_id).collect();
    let amounts: Vec<i64> = requests.iter().map(|r| r.amount.amount).collect();
    let currencies: Vec<String> = requests.iter().map(|r| r.amount.currency.clone()).collect();
    sqlx::query!(
        "INSERT INTO payment_requests (order_id, user_id, amount, currency)
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::int8[], $4::text[])
         ON CONFLICT (order_id) DO NOTHING",
        &orders,
        &users,
        &amounts,
        &currencies
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Withdraws the order's payment request, if its payment is not prepared yet (the
/// order ended before it was).
pub async fn withdraw(conn: &mut PgConnection, order_id: Uuid) -> sqlx::Result<()> {
    sqlx::query!("DELETE FROM payment_requests WHERE order_id = $1", order_id).execute(conn).await?;
    Ok(())
}

/// Stores the payment the provider prepared for `request`, retires the request and
/// tells the buyer (`PaymentReady`), in one transaction; a payment stored already
/// is kept.
pub async fn record_prepared(db: &PgPool, request: &PaymentRequest, handle: &PaymentHandle) -> sqlx::Result<()> {
    let mut tx = db.begin().await?;
    let stored = sqlx::query!(
        "INSERT INTO payments (id, order_id, user_id, provider, reference, checkout_url, client_secret, amount, currency)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (order_id) DO NOTHING",
        Uuid::now_v7(),
        request.order_id,
        request.user_id,
        handle.provider,
        handle.reference,
        handle.checkout_url,
        handle.client_secret,
        request.amount.amount,
        request.amount.currency
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query!("DELETE FROM payment_requests WHERE order_id = $1", request.order_id).execute(&mut *tx).await?;
    if stored.rows_affected() == 1 {
        let ready = DomainEvent::PaymentReady { order_id: request.order_id, user_id: request.user_id };
        events::record(&mut tx, ready).await?;
    }
    tx.commit().await
}

/// How the buyer pays each of these orders (those that have a payment yet).
pub async fn handles(db: impl PgExecutor<'_>, order_ids: &[Uuid]) -> sqlx::Result<HashMap<Uuid, PaymentHandle>> {
    let rows = sqlx::query_as!(
        HandleRow,
        "SELECT order_id, provider, reference, checkout_url, client_secret FROM payments WHERE order_id = ANY($1)",
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
        let data = serde_json::json!({"reference": payment.reference, "refund_reference": refund_ref,
                                      "amount": amount.amount, "currency": amount.currency});
        let event = DomainEvent::PaymentRefunded {
            order_id,
            reference: payment.reference,
            amount: amount.amount,
            currency: amount.currency.clone(),
        };
        events::record(&mut tx, event).await?;
        // The platform gives money back on its own (an order it cannot honour): no actor.
        audit::append(&mut tx, vec![NewEntry::system("payment.refund_issued", "order", order_id, data)]).await?;
    }
    tx.commit().await?;
    Ok(done.rows_affected() == 1)
}
