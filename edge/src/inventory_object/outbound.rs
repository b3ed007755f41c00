//! What a drop's inventory object owes the origin: reservations to hand over (the
//! holds whose handoff is not acknowledged yet) and notices of holds that ran out
//! (the `outbound` table). Each is stored from the turn that created it until the
//! origin acknowledges it, so a restart of the object, the edge or the origin loses
//! none. The object's alarm delivers them, reservations in batches (one request,
//! one insert at the origin), with exponential backoff while the origin fails; an
//! expiry notice waits until its reservation is delivered.
//!
//! A definite answer ends an expiry notice: the origin took it, or said the notice
//! itself is wrong (no such order: the reservation was voided). Only failures that
//! may pass (the origin down, failing, overloaded, or refusing our signature while
//! secrets rotate) are retried. Reservations are always retried: dropping one
//! would lose a sale, and reconciliation only recovers holds no longer queued.

use std::time::Duration;

use drops_shared::backoff::Backoff;
use drops_shared::internal::{Body, Endpoint, ReportExpiry, TakeReservations};
use serde::{Deserialize, Serialize};
use uuid::Uuid;
use worker::SqlStorage;

use super::sqlite::{int, text, MinRow};
use crate::config::EdgeConfig;
use crate::origin;

/// Messages one alarm run looks at.
const DUE_AT_ONCE: i64 = 1_000;
/// Reservations one request carries.
pub const BATCH: usize = 100;
/// Requests in flight at once.
pub const CONCURRENCY: usize = 5;
const FIRST_RETRY: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Reservation,
    Expiry,
}

pub struct Message {
    pub reservation_id: Uuid,
    pub kind: Kind,
    body: String,
    pub attempts: u32,
}

pub enum Delivery {
    /// The origin has these (reservation ids).
    Acknowledged(Vec<Uuid>),
    /// The origin will never take this message (an answer about the message, not
    /// about the origin's health).
    Refused(String),
    /// Not now (origin down, slow or failing): retry later.
    Failed(String),
}

/// Statuses that are the origin's last word on a message: asking again gets the
/// same answer. 401/403 are not among them (a secret being rotated), nor 408, 409,
/// 425 or 429 (they pass).
fn is_definite_refusal(status: u16) -> bool {
    matches!(status, 400 | 404 | 410 | 413 | 422)
}

#[derive(Deserialize)]
struct Row {
    reservation_id: String,
    body: String,
    attempts: f64,
}

fn json_err(e: serde_json::Error) -> worker::Error {
    worker::Error::RustError(e.to_string())
}

/// The ids as a JSON array, for `IN (SELECT value FROM json_each(?))`.
fn id_list(ids: &[Uuid]) -> worker::Result<String> {
    serde_json::to_string(ids).map_err(json_err)
}

/// Queues the notice that a hold ran out.
pub fn enqueue_expiry<T: Serialize>(sql: &SqlStorage, id: Uuid, body: &T, next_ms: i64) -> worker::Result<()> {
    let body = serde_json::to_string(body).map_err(json_err)?;
    sql.exec(
        "INSERT OR IGNORE INTO outbound (reservation_id, kind, body, attempts, next_attempt_ms)
         VALUES (?, 'expiry', ?, 0, ?)",
        vec![text(id), text(body), int(next_ms)],
    )?;
    Ok(())
}

/// The origin has these messages of `kind`: they are owed no more.
pub fn acknowledged(sql: &SqlStorage, kind: Kind, ids: &[Uuid]) -> worker::Result<()> {
    let query = match kind {
        Kind::Reservation => {
            "UPDATE holds SET handoff = NULL, next_attempt_ms = NULL
             WHERE reservation_id IN (SELECT value FROM json_each(?))"
        }
        Kind::Expiry => {
            "DELETE FROM outbound WHERE kind = 'expiry' AND reservation_id IN (SELECT value FROM json_each(?))"
        }
    };
    sql.exec(query, vec![text(id_list(ids)?)])?;
    Ok(())
}

#[derive(Deserialize)]
struct IdRow {
    reservation_id: String,
}

fn ids(sql: &SqlStorage, query: &str) -> worker::Result<Vec<Uuid>> {
    let rows: Vec<IdRow> = sql.exec(query, None)?.to_array()?;
    Ok(rows.iter().filter_map(|r| Uuid::parse_str(&r.reservation_id).ok()).collect())
}

/// Reservations not yet handed over.
pub fn pending_reservations(sql: &SqlStorage) -> worker::Result<Vec<Uuid>> {
    ids(sql, "SELECT reservation_id FROM holds WHERE handoff IS NOT NULL")
}

/// Expiry notices not yet acknowledged.
pub fn pending_expiries(sql: &SqlStorage) -> worker::Result<Vec<Uuid>> {
    ids(sql, "SELECT reservation_id FROM outbound WHERE kind = 'expiry'")
}

/// Messages due at `now`: reservations first, and no expiry ahead of its reservation.
pub fn due(sql: &SqlStorage, now: i64) -> worker::Result<Vec<Message>> {
    let read = |query: &str, kind: Kind| -> worker::Result<Vec<Message>> {
        let rows: Vec<Row> = sql.exec(query, vec![int(now), int(DUE_AT_ONCE)])?.to_array()?;
        Ok(rows
            .into_iter()
            .filter_map(|r| {
                Some(Message {
                    reservation_id: Uuid::parse_str(&r.reservation_id).ok()?,
                    kind,
                    body: r.body,
                    attempts: r.attempts as u32,
                })
            })
            .collect())
    };
    let mut due = read(
        "SELECT reservation_id, handoff AS body, attempts FROM holds
         WHERE handoff IS NOT NULL AND next_attempt_ms <= ? ORDER BY next_attempt_ms LIMIT ?",
        Kind::Reservation,
    )?;
    due.extend(read(
        "SELECT reservation_id, body, attempts FROM outbound o
         WHERE kind = 'expiry' AND next_attempt_ms <= ?
           AND NOT EXISTS (SELECT 1 FROM holds h WHERE h.reservation_id = o.reservation_id AND h.handoff IS NOT NULL)
         ORDER BY next_attempt_ms LIMIT ?",
        Kind::Expiry,
    )?);
    Ok(due)
}

/// The origin did not take these: each tries again after its backoff.
pub fn back_off(sql: &SqlStorage, messages: &[&Message], now: i64, max_ms: u64) -> worker::Result<()> {
    let policy = Backoff::new(FIRST_RETRY, Duration::from_millis(max_ms));
    for kind in [Kind::Reservation, Kind::Expiry] {
        let of_kind: Vec<&&Message> = messages.iter().filter(|m| m.kind == kind).collect();
        let Some(attempts) = of_kind.iter().map(|m| m.attempts).max() else { continue };
        let ids: Vec<Uuid> = of_kind.iter().map(|m| m.reservation_id).collect();
        let query = match kind {
            Kind::Reservation => {
                "UPDATE holds SET attempts = attempts + 1, next_attempt_ms = ?
                 WHERE handoff IS NOT NULL AND reservation_id IN (SELECT value FROM json_each(?))"
            }
            Kind::Expiry => {
                "UPDATE outbound SET attempts = attempts + 1, next_attempt_ms = ?
                 WHERE kind = 'expiry' AND reservation_id IN (SELECT value FROM json_each(?))"
            }
        };
        sql.exec(query, vec![int(now + policy.delay_ms(attempts)), text(id_list(&ids)?)])?;
    }
    Ok(())
}

/// When the next message is due, if any is owed.
pub fn next_attempt(sql: &SqlStorage) -> worker::Result<Option<i64>> {
    let rows: Vec<MinRow> = sql
        .exec(
            "SELECT MIN(t) AS t FROM (SELECT MIN(next_attempt_ms) AS t FROM holds WHERE handoff IS NOT NULL
                                      UNION ALL SELECT MIN(next_attempt_ms) FROM outbound)",
            None,
        )?
        .to_array()?;
    Ok(rows.first().and_then(|r| r.t).map(|t| t as i64))
}

/// Hands these reservations to the origin in one request.
pub async fn send_reservations(cfg: &EdgeConfig, messages: &[&Message]) -> Delivery {
    let body = batch_body(messages.iter().map(|m| m.body.as_str()));
    match post(cfg, &TakeReservations {}, body.as_bytes()).await {
        Ok(taken) => Delivery::Acknowledged(taken.orders),
        Err(Failure { why, .. }) => Delivery::Failed(why),
    }
}

/// A [`ReservationBatch`] of handoffs stored as JSON, put together as they are:
/// the alarm neither parses nor re-serializes what the decision wrote.
fn batch_body<'a>(handoffs: impl Iterator<Item = &'a str>) -> String {
    let mut body = String::from(r#"{"reservations":["#);
    for (i, handoff) in handoffs.enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(handoff);
    }
    body.push_str("]}");
    body
}

/// Tells the origin a hold ran out.
pub async fn send_expiry(cfg: &EdgeConfig, message: &Message) -> Delivery {
    match post(cfg, &ReportExpiry { order_id: message.reservation_id }, message.body.as_bytes()).await {
        Ok(ack) => Delivery::Acknowledged(vec![ack.order_id]),
        Err(Failure { status: Some(status), why }) if is_definite_refusal(status) => Delivery::Refused(why),
        Err(Failure { why, .. }) => Delivery::Failed(why),
    }
}

/// Why a call did not deliver; `status` when the origin answered.
struct Failure {
    status: Option<u16>,
    why: String,
}

async fn post<E: Endpoint>(cfg: &EdgeConfig, route: &E, body: &[u8]) -> Result<E::Response, Failure> {
    let attempt = async {
        let mut resp = origin::signed(cfg, route, body).await?;
        let status = resp.status_code();
        let answer = resp.bytes().await?;
        if !(200..300).contains(&status) {
            let detail = String::from_utf8_lossy(&answer[..answer.len().min(300)]).into_owned();
            return Ok(Err(Failure { status: Some(status), why: format!("origin answered {status}: {detail}") }));
        }
        Ok(E::Response::from_bytes(&answer)
            .map_err(|p| Failure { status: None, why: format!("unreadable acknowledgement: {:?}", p.detail) }))
    };
    attempt.await.unwrap_or_else(|e: worker::Error| Err(Failure { status: None, why: e.to_string() }))
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use drops_shared::api::Money;
    use drops_shared::internal::{ReservationBatch, ReservationHandoff};

    use super::*;

    #[test]
    fn only_answers_about_the_message_end_it() {
        for status in [400, 404, 410, 413, 422] {
            assert!(is_definite_refusal(status), "{status}");
        }
        for status in [401, 403, 408, 409, 425, 429, 500, 502, 503, 504] {
            assert!(!is_definite_refusal(status), "{status} may pass: retried");
        }
    }

    #[test]
    fn stored_handoffs_make_the_batch_the_origin_reads() {
        let handoff = |n: u128| ReservationHandoff {
            reservation_id: Uuid::from_u128(n),
            drop_id: Uuid::from_u128(9),
            user_id: Uuid::from_u128(100 + n),
            idempotency_key: format!("key-{n:08}"),
            quantity: 1,
            amount: Money { amount: 2500, currency: "EUR".into() },
            reserved_at: chrono::Utc.timestamp_opt(1_800_000_000, 0).unwrap(),
            expires_at: chrono::Utc.timestamp_opt(1_800_000_600, 0).unwrap(),
        };
        let stored: Vec<String> = (1..=3).map(|n| serde_json::to_string(&handoff(n)).unwrap()).collect();
        let body = batch_body(stored.iter().map(String::as_str));
        let batch = ReservationBatch::from_bytes(body.as_bytes()).expect("the origin's strict reading");
        assert_eq!(batch.reservations, (1..=3).map(handoff).collect::<Vec<_>>());
        assert_eq!(
            ReservationBatch::from_bytes(batch_body(std::iter::empty()).as_bytes()).unwrap().reservations,
            vec![]
        );
    }
}
