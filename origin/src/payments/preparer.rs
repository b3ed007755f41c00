//! Prepares each requested payment with the provider, in the background: the buy
//! path never waits for the provider. A round claims a batch of due requests by
//! leasing them (a short transaction moves their next attempt out, so no
//! transaction is held across the provider's calls and another instance takes over
//! a lease that runs out), calls the provider for them with bounded concurrency
//! (its idempotency key is the order id, so a repeat after a crash is harmless),
//! stores each payment, and backs a failed one off.

use std::time::Duration;

use drops_shared::api::Money;
use drops_shared::backoff::Backoff;
use futures::stream::{self, StreamExt};

use super::store::{self, PaymentRequest};
use super::PaymentsState;
use crate::tasks::Next;

/// Requests claimed a round.
const BATCH: i64 = 64;
/// Provider calls in flight at once, per instance.
const CONCURRENCY: usize = 16;
/// How long a claimed request is this instance's before another may take it.
const LEASE_SECS: f64 = 30.0;
/// Between attempts at one request while the provider fails.
const RETRY: Backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(60));
/// How often an instance looks for requests it was not woken for (other instances' orders).
pub const IDLE: Duration = Duration::from_millis(200);

struct Claimed {
    order_id: uuid::Uuid,
    user_id: uuid::Uuid,
    amount: i64,
    currency: String,
    attempts: i32,
}

/// One round: [`Next::Now`] while batches come full.
pub async fn round(state: &PaymentsState) -> anyhow::Result<Next> {
    let db = &state.core.db;
    let claimed = sqlx::query_as!(
        Claimed,
        "UPDATE payment_requests SET attempts = attempts + 1, next_attempt_at = now() + make_interval(secs => $2)
         WHERE order_id IN (SELECT order_id FROM payment_requests WHERE next_attempt_at <= now()
                            ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED)
         RETURNING order_id, user_id, amount, currency, attempts",
        BATCH,
        LEASE_SECS
    )
    .fetch_all(db)
    .await?;
    let full = claimed.len() as i64 == BATCH;
    let provider = &state.payments.provider;
    let mut results = stream::iter(claimed)
        .map(|c| async move {
            let request = PaymentRequest {
                order_id: c.order_id,
                user_id: c.user_id,
                amount: Money { amount: c.amount, currency: c.currency.trim().to_owned() },
            };
            let made = provider.create_payment(request.order_id, &request.amount).await;
            (request, c.attempts, made)
        })
        .buffer_unordered(CONCURRENCY);
    while let Some((request, attempts, made)) = results.next().await {
        match made {
            Ok(handle) => {
                store::record_prepared(db, &request, &handle).await?;
                metrics::counter!("drops_payments_prepared_total", "outcome" => "ready").increment(1);
            }
            Err(e) => {
                metrics::counter!("drops_payments_prepared_total", "outcome" => "retried").increment(1);
                tracing::warn!(order_id = %request.order_id, attempts, error = %format!("{e:#}"), "payment not prepared; will retry");
                let delay = RETRY.delay(attempts.max(1) as u32 - 1).as_secs_f64();
                sqlx::query!(
                    "UPDATE payment_requests SET next_attempt_at = now() + make_interval(secs => $2), last_error = $3
                     WHERE order_id = $1",
                    request.order_id,
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
