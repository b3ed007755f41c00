//! The `payments` rows (one per order, made by the [`super::preparer`] once the
//! provider has the payment, moved by the webhook, refunded or cancelled by the
//! [`super::reversals`] worker), the `payment_requests` the orders area files for new
//! orders, and the `payment_reversals` filed here for that worker. Other areas read
//! and change them only through these functions.

use std::collections::HashMap;

use drops_shared::api::{Money, PaymentHandle};
use drops_shared::events::DomainEvent;
use sqlx::{PgConnection, PgExecutor, PgPool};
use uuid::Uuid;

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
    /// Called off at the provider (its order ended unpaid): it can no longer be paid.
    Cancelled,
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

/// The order ended unpaid: its payment request is withdrawn if the payment is not
/// prepared yet, and a payment the provider has is called off, so that the buyer can
/// no longer pay for what they will not get (in the caller's transaction).
pub async fn call_off(conn: &mut PgConnection, order_id: Uuid, reason: &str) -> sqlx::Result<()> {
    sqlx::query!("DELETE FROM payment_requests WHERE order_id = $1", order_id).execute(&mut *conn).await?;
    // A payment being prepared right now is stored after this: `record_prepared` sees
    // its request gone and files the cancellation then.
    sqlx::query!(
        "INSERT INTO payment_reversals (order_id, kind, reason)
         SELECT order_id, 'cancel', $2 FROM payments WHERE order_id = $1 AND status = 'pending'
         ON CONFLICT (order_id, kind) DO NOTHING",
        order_id,
        reason
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Files the refund of the order's payment if it succeeded, in the caller's
/// transaction, once: a second request for the same order changes nothing. The
/// [`super::reversals`] worker asks the provider. Returns whether it was filed now.
pub async fn request_refund(conn: &mut PgConnection, order_id: Uuid, reason: &str) -> sqlx::Result<bool> {
    let filed = sqlx::query!(
        "INSERT INTO payment_reversals (order_id, kind, reason)
         SELECT order_id, 'refund', $2 FROM payments WHERE order_id = $1 AND status = 'succeeded'
         ON CONFLICT (order_id, kind) DO NOTHING",
        order_id,
        reason
    )
    .execute(&mut *conn)
    .await?
    .rows_affected()
        == 1;
    if filed {
        let data = serde_json::json!({"reason": reason});
        audit::append_chained(conn, vec![NewEntry::system("payment.refund_requested", "order", order_id, data)])
            .await?;
    }
    Ok(filed)
}

/// Stores the payment the provider prepared for `request`, retires the request and
/// tells the buyer (`PaymentReady`), in one transaction; a payment stored already
/// is kept. If the request was withdrawn meanwhile (its order ended while the
/// provider was preparing), the buyer is not told and the payment is called off.
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
    let retired =
        sqlx::query!("DELETE FROM payment_requests WHERE order_id = $1", request.order_id).execute(&mut *tx).await?;
    if stored.rows_affected() == 1 {
        if retired.rows_affected() == 1 {
            let ready = DomainEvent::PaymentReady { order_id: request.order_id, user_id: request.user_id };
            events::record(&mut tx, ready).await?;
        } else {
            call_off(&mut tx, request.order_id, "the order ended while its payment was being prepared").await?;
        }
    }
    tx.commit().await
}

/// Which of these orders' payments succeeded with no refund filed: money kept for
/// orders the caller says ended unpaid.
pub async fn unrefunded_successes(db: impl PgExecutor<'_>, order_ids: &[Uuid]) -> sqlx::Result<Vec<Uuid>> {
    sqlx::query_scalar!(
        "SELECT p.order_id FROM payments p
         WHERE p.order_id = ANY($1) AND p.status = 'succeeded'
           AND NOT EXISTS (SELECT 1 FROM payment_reversals r WHERE r.order_id = p.order_id AND r.kind = 'refund')",
        order_ids
    )
    .fetch_all(db)
    .await
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
