//! Sending the queued pushes (see the parent module's doc): a sender claims due
//! batches, sends each with no transaction open, and settles it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use uuid::Uuid;

use drops_shared::api::{PushKeys, PushSubscription};
use drops_shared::backoff::Backoff;

use super::provider::Outcome;
use crate::notifications::NotificationsState;
use crate::tasks::{Next, Workers};

const MAX_ATTEMPTS: i32 = 8;
/// Users of a batch sent before the sender records how far it got: a sender that dies
/// mid-batch leaves at most this many to be pushed twice.
pub const SEND_CHUNK: usize = 50;
/// Between attempts at one delivery.
const RETRY: Backoff = Backoff::new(Duration::from_secs(2), Duration::from_secs(600));
/// How often the sender looks for due batches when it has caught up.
pub const IDLE: Duration = Duration::from_millis(200);
/// A claimed delivery is its sender's for this long (seconds): far longer than its
/// send may take (the provider's deadline) and the settling after, so no other round
/// sends it meanwhile; a sender that died leaves it due again once the lease is over.
const LEASE_SECS: f64 = 60.0;
/// Batches one sender has out at once (their requests bounded per host by the provider).
const IN_FLIGHT: usize = 8;

fn count(outcome: &'static str) {
    metrics::counter!("drops_push_deliveries_total", "outcome" => outcome).increment(1);
}

/// A batch a sender has claimed. `attempts` counts this attempt and marks the claim:
/// recording touches the batch only while it still has the same count. `sent` users
/// from the start of `users` were sent already (by this claim or one that died), and
/// `retry` holds those of them to try again.
struct Claimed {
    id: i64,
    event_id: Uuid,
    users: Vec<Uuid>,
    priority: i16,
    rank: i64,
    attempts: i32,
    sent: i32,
    retry: Vec<Uuid>,
}

/// The sender: claims due batches one at a time and sends each in a task of its own,
/// so a batch waiting on slow endpoints (up to the provider's deadline) holds up nothing due
/// meanwhile: it keeps claiming while fewer than [`IN_FLIGHT`] batches are out
/// (`slots`), and returns once nothing is due. The batch tasks are the `workers'`, so
/// stopping the origin lets the batches out finish and settle: a stop does not make
/// anyone get a push twice.
pub async fn round(state: &NotificationsState, workers: &Workers, slots: &Arc<Semaphore>) -> anyhow::Result<Next> {
    loop {
        let slot = slots.clone().acquire_owned().await?;
        let Some(batch) = claim(&state.core.db).await? else { return Ok(Next::Later) };
        let state = state.clone();
        workers.spawn(async move {
            settled(deliver(&state, batch).await);
            drop(slot);
        });
    }
}

/// A slot per batch a sender may have out.
pub fn sender_slots() -> Arc<Semaphore> {
    Arc::new(Semaphore::new(IN_FLIGHT))
}

/// Logs a batch that could not be settled (it is due again after its lease).
fn settled(done: anyhow::Result<usize>) {
    if let Err(e) = done {
        tracing::warn!(error = %format!("{e:#}"), "push batch not settled; retried after its lease");
    }
}

/// Claims the first due batch (transactional ones first): one statement, so its own
/// short transaction, that moves it a lease ahead and counts the attempt. Nothing
/// stays locked while it is sent.
async fn claim(db: &sqlx::PgPool) -> sqlx::Result<Option<Claimed>> {
    sqlx::query_as!(
        Claimed,
        "WITH due AS (
             SELECT id FROM push_batches WHERE next_attempt_at <= now()
             ORDER BY priority, rank, next_attempt_at LIMIT 1 FOR UPDATE SKIP LOCKED)
         UPDATE push_batches b
         SET attempts = b.attempts + 1, next_attempt_at = now() + make_interval(secs => $1)
         FROM due WHERE b.id = due.id
         RETURNING b.id, b.event_id, b.users, b.priority, b.rank, b.attempts, b.sent, b.retry",
        LEASE_SECS
    )
    .fetch_optional(db)
    .await
}

/// A user's subscription as stored.
struct Stored {
    user_id: Uuid,
    endpoint: String,
    p256dh: String,
    auth: String,
}

/// Sends a claimed batch, [`SEND_CHUNK`] users at a time, recording after each chunk
/// how far it got (so a sender that dies mid-batch leaves only its last chunk to be
/// sent twice), then settles it. No transaction is open while pushes are out. The
/// requests are prepared (encrypted, signed) on a blocking thread: that is the
/// CPU-heavy part, and the runtime's threads keep serving sockets and requests meanwhile.
async fn deliver(state: &NotificationsState, mut batch: Claimed) -> anyhow::Result<usize> {
    let n = batch.users.len();
    let db = &state.core.db;
    let payload = sqlx::query_scalar!("SELECT payload FROM push_messages WHERE event_id = $1", batch.event_id)
        .fetch_optional(db)
        .await?;
    let Some(payload) = payload else {
        tracing::warn!(event_id = %batch.event_id, "push batch without its message dropped");
        settle(db, &batch, Duration::ZERO).await?;
        return Ok(n);
    };
    let payload = Arc::new(payload.to_string());
    // The longest pause a push service of the batch asked for.
    let mut pause = Duration::ZERO;
    let users = std::mem::take(&mut batch.users);
    let from = usize::try_from(batch.sent).unwrap_or(0).min(n);
    for chunk in users[from..].chunks(SEND_CHUNK) {
        let sent = send_chunk(state, chunk, &payload).await?;
        match record(db, &mut batch, chunk.len(), sent).await? {
            Some(asked) => pause = pause.max(asked),
            // Its lease ran out and another sender took it: that one goes on.
            None => return Ok(n),
        }
    }
    settle(db, &batch, pause).await?;
    Ok(n)
}

/// Prepares and sends the push to each of `users` who still has a subscription (the
/// others have nothing to send: done).
async fn send_chunk(
    state: &NotificationsState,
    users: &[Uuid],
    payload: &Arc<String>,
) -> anyhow::Result<Vec<(Uuid, String, Outcome)>> {
    let subscriptions = sqlx::query_as!(
        Stored,
        "SELECT user_id, endpoint, p256dh, auth FROM push_subscriptions WHERE user_id = ANY($1)",
        users
    )
    .fetch_all(&state.core.db)
    .await?;
    let (pusher, payload) = (state.push.clone(), payload.clone());
    let prepared = tokio::task::spawn_blocking(move || {
        subscriptions
            .into_iter()
            .map(|s| {
                let subscription = PushSubscription {
                    endpoint: s.endpoint,
                    keys: PushKeys { p256dh: s.p256dh, auth: s.auth },
                    expiration_time: None,
                };
                let prepared = pusher.prepare(&subscription, payload.as_bytes());
                (s.user_id, subscription.endpoint, prepared)
            })
            .collect::<Vec<_>>()
    })
    .await?;
    let sends = prepared.into_iter().map(|(user_id, endpoint, prepared)| async move {
        let outcome = match prepared {
            Ok(prepared) => state.push.send(prepared).await,
            Err(outcome) => outcome,
        };
        (user_id, endpoint, outcome)
    });
    Ok(futures::future::join_all(sends).await)
}

/// The pause before a batch's next attempt: the backoff's, less up to a quarter at
/// random, so the batches of a push service that failed for a moment do not all come
/// back to it in the same instant.
fn retry_delay_ms(attempts: i32) -> i64 {
    let full = RETRY.delay_ms((attempts - 1).max(0) as u32);
    let mut byte = [0u8; 1];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut byte).is_err() {
        return full;
    }
    full - full / 4 * i64::from(byte[0]) / 255
}

/// Records a sent chunk of `n` users of `batch` in one short transaction: how far the
/// batch got, its users to retry (or dropped after [`MAX_ATTEMPTS`]), gone
/// subscriptions dropped (the endpoint that was sent to, not one the user has put
/// since). The longest pause a push service asked for; `None` if the batch is no
/// longer this claim's (its lease ran out and another sender took it).
async fn record(
    db: &sqlx::PgPool,
    batch: &mut Claimed,
    n: usize,
    sent: Vec<(Uuid, String, Outcome)>,
) -> sqlx::Result<Option<Duration>> {
    let (mut gone_users, mut gone_endpoints, mut retry) = (Vec::new(), Vec::new(), Vec::new());
    let mut pause = Duration::ZERO;
    for (user_id, endpoint, outcome) in sent {
        let why = match outcome {
            Outcome::Delivered => {
                count("delivered");
                continue;
            }
            Outcome::Gone => {
                count("gone");
                gone_users.push(user_id);
                gone_endpoints.push(endpoint);
                continue;
            }
            Outcome::Busy(asked) => {
                pause = pause.max(asked);
                format!("the push service asked for a pause of {asked:?}")
            }
            Outcome::Retry(why) => why,
        };
        if batch.attempts >= MAX_ATTEMPTS {
            count("dropped");
            tracing::warn!(%user_id, %why, "push dropped after retries");
        } else {
            count("retried");
            tracing::debug!(%user_id, %why, "push to be retried");
            retry.push(user_id);
        }
    }
    let mut tx = db.begin().await?;
    let ours = sqlx::query!(
        "UPDATE push_batches SET sent = sent + $3, retry = retry || $4 WHERE id = $1 AND attempts = $2",
        batch.id,
        batch.attempts,
        n as i32,
        &retry
    )
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if !ours {
        return Ok(None);
    }
    sqlx::query!(
        "DELETE FROM push_subscriptions s USING unnest($1::uuid[], $2::text[]) AS g(user_id, endpoint)
         WHERE s.user_id = g.user_id AND s.endpoint = g.endpoint",
        &gone_users,
        &gone_endpoints
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    batch.sent += n as i32;
    batch.retry.extend(retry);
    Ok(Some(pause))
}

/// Settles a batch sent to its end in one short transaction: the batch deleted, and its
/// users still to retry (recorded chunk by chunk, a dead sender's too) queued again as
/// one batch with a backoff, at least the `pause` a push service asked for. A batch
/// that is no longer this claim's is left to the sender that has it.
async fn settle(db: &sqlx::PgPool, batch: &Claimed, pause: Duration) -> sqlx::Result<()> {
    let mut tx = db.begin().await?;
    let retry = sqlx::query_scalar!(
        "DELETE FROM push_batches WHERE id = $1 AND attempts = $2 RETURNING retry",
        batch.id,
        batch.attempts
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some(retry) = retry else { return Ok(()) };
    if !retry.is_empty() {
        let delay_ms = retry_delay_ms(batch.attempts).max(pause.as_millis() as i64);
        sqlx::query!(
            "INSERT INTO push_batches (event_id, users, priority, rank, attempts, next_attempt_at)
             VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6))",
            batch.event_id,
            &retry,
            batch.priority,
            batch.rank,
            batch.attempts,
            delay_ms as f64 / 1000.0
        )
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_with_some_spread() {
        for attempts in 1..=8 {
            let full = RETRY.delay_ms((attempts - 1) as u32);
            let delays: Vec<i64> = (0..50).map(|_| retry_delay_ms(attempts)).collect();
            assert!(delays.iter().all(|d| *d <= full && *d >= full - full / 4), "{attempts}: {delays:?}");
            assert!(delays.iter().any(|d| *d != delays[0]), "spread: {delays:?}");
        }
        assert!(retry_delay_ms(2) - 2_000 / 4 > retry_delay_ms(1), "each pause longer than the last");
    }
}
