//! Reversals: refunds of money taken for orders that cannot be honoured, and
//! cancellations of payments whose orders ended unpaid, asked of the provider in the
//! background.
//!
//! They are filed (`payment_reversals`, by [`store::request_refund`] and
//! [`store::call_off`]) in the same transaction as the fact that calls for them, so a
//! crash or a provider outage loses none; a round claims the due ones under a lease,
//! as the [`super::preparer`] does, so no transaction is held across the provider's
//! calls and another instance takes over a lease that runs out. The provider's
//! idempotency keys (`refund-<order>`, `cancel-<order>`) make a repeated call
//! harmless, and the payment row says when a refund is done, so money goes back once.

use std::time::Duration;

use drops_shared::api::Money;
use drops_shared::backoff::Backoff;
use drops_shared::events::DomainEvent;
use futures::stream::{self, StreamExt};
use uuid::Uuid;

use super::{Cancellation, PaymentStatus, PaymentsState};
use crate::audit::{self, NewEntry};
use crate::events;
use crate::tasks::Next;

/// Reversals claimed a round.
const BATCH: i64 = 32;
/// Provider calls in flight at once, per instance.
const CONCURRENCY: usize = 8;
/// How long a claimed reversal is this instance's before another may take it.
const LEASE_SECS: f64 = 30.0;
/// Between attempts at one reversal while the provider fails.
const RETRY: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(300));
/// How often an instance looks for due reversals.
pub const IDLE: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type, strum::IntoStaticStr)]
#[sqlx(type_name = "text", rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Kind {
    Refund,
    Cancel,
}

struct Claimed {
    order_id: Uuid,
    kind: Kind,
    reason: String,
    attempts: i32,
    reference: String,
    status: PaymentStatus,
    amount: i64,
    currency: String,
}

/// How a reversal ended, recorded as its `outcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
enum Done {
    Refunded,
    /// Refunded before this request (by an earlier one, or another path).
    AlreadyRefunded,
    Cancelled,
    /// The payment was made (or failed) before it could be called off: its webhook
    /// decides, and a success on an order that cannot be honoured files a refund.
    TooLateToCancel,
}

/// One round: [`Next::Now`] while batches come full.
pub async fn round(state: &PaymentsState) -> anyhow::Result<Next> {
    let db = &state.core.db;
    let claimed = sqlx::query_as!(
        Claimed,
        r#"WITH due AS (
               UPDATE payment_reversals SET attempts = attempts + 1,
                      next_attempt_at = now() + make_interval(secs => $2)
               WHERE (order_id, kind) IN (SELECT order_id, kind FROM payment_reversals
                                          WHERE done_at IS NULL AND next_attempt_at <= now()
                                          ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED)
               RETURNING order_id, kind, reason, attempts)
           SELECT due.order_id, due.kind AS "kind: Kind", due.reason, due.attempts, p.reference,
                  p.status AS "status: PaymentStatus", p.amount, p.currency
           FROM due JOIN payments p USING (order_id)"#,
        BATCH,
        LEASE_SECS
    )
    .fetch_all(db)
    .await?;
    let full = claimed.len() as i64 == BATCH;
    let mut results = stream::iter(claimed)
        .map(|c| async move {
            let done = reverse(state, &c).await;
            (c, done)
        })
        .buffer_unordered(CONCURRENCY);
    while let Some((c, done)) = results.next().await {
        let kind: &'static str = c.kind.into();
        match done {
            Ok(done) => {
                let outcome: &'static str = done.into();
                metrics::counter!("drops_payment_reversals_total", "kind" => kind, "outcome" => outcome).increment(1);
                tracing::info!(order_id = %c.order_id, kind, outcome, reason = %c.reason, "payment reversed");
            }
            Err(e) => {
                metrics::counter!("drops_payment_reversals_total", "kind" => kind, "outcome" => "retried").increment(1);
                tracing::warn!(order_id = %c.order_id, kind, attempts = c.attempts, error = %format!("{e:#}"),
                               "payment reversal failed; will retry");
                let delay = RETRY.delay(c.attempts.max(1) as u32 - 1).as_secs_f64();
                sqlx::query!(
                    "UPDATE payment_reversals SET next_attempt_at = now() + make_interval(secs => $3), last_error = $4
                     WHERE order_id = $1 AND kind = $2",
                    c.order_id,
                    c.kind as Kind,
                    delay,
                    format!("{e:#}")
                )
                .execute(db)
                .await?;
            }
        }
    }
    Ok(if full { Next::Now } else { Next::Later })
}

/// Asks the provider, then records what it did; the payment row is re-read under
/// its lock, so a webhook that moved it meanwhile is respected.
async fn reverse(state: &PaymentsState, c: &Claimed) -> anyhow::Result<Done> {
    let provider = &state.payments.provider;
    match c.kind {
        Kind::Refund => {
            if c.status == PaymentStatus::Refunded {
                return finish(state, c, Done::AlreadyRefunded, None).await;
            }
            anyhow::ensure!(c.status == PaymentStatus::Succeeded, "refunding a payment that is {:?}", c.status);
            let money = Money { amount: c.amount, currency: c.currency.trim().to_owned() };
            let refund_reference = provider.refund(c.order_id, &c.reference, &money).await?;
            finish(state, c, Done::Refunded, Some(&refund_reference)).await
        }
        Kind::Cancel => {
            if c.status != PaymentStatus::Pending {
                return finish(state, c, Done::TooLateToCancel, None).await;
            }
            match provider.cancel(c.order_id, &c.reference).await? {
                Cancellation::Cancelled => finish(state, c, Done::Cancelled, None).await,
                Cancellation::TooLate => finish(state, c, Done::TooLateToCancel, None).await,
            }
        }
    }
}

/// Records a reversal's end, with what it did to the payment, in one transaction.
async fn finish(
    state: &PaymentsState,
    c: &Claimed,
    done: Done,
    refund_reference: Option<&str>,
) -> anyhow::Result<Done> {
    let mut tx = state.core.db.begin().await?;
    let mut done = done;
    match done {
        Done::Refunded => {
            let moved = sqlx::query!(
                "UPDATE payments SET status = 'refunded', refund_reference = $2, updated_at = now()
                 WHERE order_id = $1 AND status <> 'refunded'",
                c.order_id,
                refund_reference
            )
            .execute(&mut *tx)
            .await?;
            if moved.rows_affected() == 1 {
                let event = DomainEvent::PaymentRefunded {
                    order_id: c.order_id,
                    reference: c.reference.clone(),
                    amount: c.amount,
                    currency: c.currency.trim().to_owned(),
                };
                events::record(&mut tx, event).await?;
                let data = serde_json::json!({"reference": c.reference, "refund_reference": refund_reference,
                                              "amount": c.amount, "currency": c.currency.trim(),
                                              "reason": c.reason});
                // The platform gives money back on its own (an order it cannot honour): no actor.
                audit::append_chained(
                    &mut tx,
                    vec![NewEntry::system("payment.refund_issued", "order", c.order_id, data)],
                )
                .await?;
            } else {
                done = Done::AlreadyRefunded;
            }
        }
        Done::Cancelled => {
            // Only a payment still pending: a webhook that came meanwhile has the last word.
            sqlx::query!(
                "UPDATE payments SET status = 'cancelled', updated_at = now() WHERE order_id = $1 AND status = 'pending'",
                c.order_id
            )
            .execute(&mut *tx)
            .await?;
        }
        Done::AlreadyRefunded | Done::TooLateToCancel => {}
    }
    let outcome: &'static str = done.into();
    sqlx::query!(
        "UPDATE payment_reversals SET done_at = now(), outcome = $3, last_error = NULL WHERE order_id = $1 AND kind = $2",
        c.order_id,
        c.kind as Kind,
        outcome
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(done)
}
