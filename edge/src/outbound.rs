//! What a drop's inventory object owes the origin: reservations to hand over and
//! notices of holds that ran out. Each message sits in the object's `outbound` table
//! from the turn that created it until the origin acknowledges it, so a restart of
//! the object, the edge or the origin loses none. The object's alarm delivers them
//! with exponential backoff; an expiry notice waits until its reservation is delivered.

use drops_shared::internal::{InternalRoute, ReservationAck, ReservationHandoff};
use drops_shared::problem::{ErrorCode, Problem};
use serde::{Deserialize, Serialize};
use uuid::Uuid;
use worker::{SqlStorage, SqlStorageValue};

use crate::config::EdgeConfig;
use crate::origin;
use crate::sqlite::{text, MinRow};

/// Messages delivered per alarm run, and at once.
const BATCH: i64 = 100;
pub const CONCURRENCY: usize = 10;
const FIRST_RETRY_MS: i64 = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Reservation,
    Expiry,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Reservation => "reservation",
            Self::Expiry => "expiry",
        }
    }
}

pub struct Message {
    pub reservation_id: Uuid,
    pub kind: Kind,
    body: String,
    pub attempts: u32,
}

pub enum Delivery {
    /// The origin has it (for a reservation: with the payment handle).
    Acknowledged(Option<ReservationAck>),
    /// The buyer had used this idempotency key for an order of another drop.
    KeyReused,
    /// Not now (origin down, slow or failing): retry later.
    Failed(String),
}

#[derive(Deserialize)]
struct Row {
    reservation_id: String,
    kind: String,
    body: String,
    attempts: f64,
}

fn json_err(e: serde_json::Error) -> worker::Error {
    worker::Error::RustError(e.to_string())
}

pub fn enqueue<T: Serialize>(sql: &SqlStorage, id: Uuid, kind: Kind, body: &T, next_ms: i64) -> worker::Result<()> {
    let body = serde_json::to_string(body).map_err(json_err)?;
    sql.exec(
        "INSERT OR IGNORE INTO outbound (reservation_id, kind, body, attempts, next_attempt_ms) VALUES (?, ?, ?, 0, ?)",
        vec![text(id), text(kind.as_str()), text(body), SqlStorageValue::Integer(next_ms)],
    )?;
    Ok(())
}

pub fn settled(sql: &SqlStorage, id: Uuid, kind: Kind) -> worker::Result<()> {
    sql.exec("DELETE FROM outbound WHERE reservation_id = ? AND kind = ?", vec![text(id), text(kind.as_str())])?;
    Ok(())
}

pub fn pending(sql: &SqlStorage, kind: Kind) -> worker::Result<Vec<Uuid>> {
    #[derive(Deserialize)]
    struct IdRow {
        reservation_id: String,
    }
    let rows: Vec<IdRow> =
        sql.exec("SELECT reservation_id FROM outbound WHERE kind = ?", vec![text(kind.as_str())])?.to_array()?;
    Ok(rows.iter().filter_map(|r| Uuid::parse_str(&r.reservation_id).ok()).collect())
}

/// Messages due at `now`: reservations first, and no expiry ahead of its reservation.
pub fn due(sql: &SqlStorage, now: i64) -> worker::Result<Vec<Message>> {
    let rows: Vec<Row> = sql
        .exec(
            "SELECT reservation_id, kind, body, attempts FROM outbound o
             WHERE next_attempt_ms <= ?
               AND NOT (kind = 'expiry' AND EXISTS (
                 SELECT 1 FROM outbound r WHERE r.reservation_id = o.reservation_id AND r.kind = 'reservation'))
             ORDER BY kind DESC, next_attempt_ms LIMIT ?",
            vec![SqlStorageValue::Integer(now), SqlStorageValue::Integer(BATCH)],
        )?
        .to_array()?;
    Ok(rows
        .into_iter()
        .filter_map(|r| {
            Some(Message {
                reservation_id: Uuid::parse_str(&r.reservation_id).ok()?,
                kind: if r.kind == "expiry" { Kind::Expiry } else { Kind::Reservation },
                body: r.body,
                attempts: r.attempts as u32,
            })
        })
        .collect())
}

pub fn back_off(sql: &SqlStorage, message: &Message, now: i64, max_ms: u64) -> worker::Result<()> {
    let delay = (FIRST_RETRY_MS << message.attempts.min(16)).min(max_ms as i64);
    sql.exec(
        "UPDATE outbound SET attempts = attempts + 1, next_attempt_ms = ? WHERE reservation_id = ? AND kind = ?",
        vec![SqlStorageValue::Integer(now + delay), text(message.reservation_id), text(message.kind.as_str())],
    )?;
    Ok(())
}

pub fn next_attempt(sql: &SqlStorage) -> worker::Result<Option<i64>> {
    let rows: Vec<MinRow> = sql.exec("SELECT MIN(next_attempt_ms) AS t FROM outbound", None)?.to_array()?;
    Ok(rows.first().and_then(|r| r.t).map(|t| t as i64))
}

pub async fn send(cfg: &EdgeConfig, message: &Message) -> Delivery {
    let route = match message.kind {
        Kind::Reservation => InternalRoute::Reservations,
        Kind::Expiry => InternalRoute::HoldExpired { order_id: message.reservation_id },
    };
    post(cfg, route, message.body.as_bytes()).await
}

/// Hands a reservation to the origin (the buy path's first attempt).
pub async fn forward(cfg: &EdgeConfig, handoff: &ReservationHandoff) -> Delivery {
    match serde_json::to_vec(handoff) {
        Ok(body) => post(cfg, InternalRoute::Reservations, &body).await,
        Err(e) => Delivery::Failed(e.to_string()),
    }
}

async fn post(cfg: &EdgeConfig, route: InternalRoute, body: &[u8]) -> Delivery {
    let attempt = async {
        let mut resp = origin::signed(cfg, route, body).await?;
        let status = resp.status_code();
        if (200..300).contains(&status) {
            let ack = match route {
                InternalRoute::Reservations => Some(resp.json::<ReservationAck>().await?),
                _ => None,
            };
            return Ok(Delivery::Acknowledged(ack));
        }
        let problem: Option<Problem> = resp.json().await.ok();
        if problem.is_some_and(|p| p.code == ErrorCode::IdempotencyKeyReused) {
            return Ok(Delivery::KeyReused);
        }
        Ok(Delivery::Failed(format!("origin answered {status}")))
    };
    attempt.await.unwrap_or_else(|e: worker::Error| Delivery::Failed(e.to_string()))
}
