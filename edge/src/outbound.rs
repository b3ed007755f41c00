//! What a drop's inventory object owes the origin: reservations to hand over and
//! notices of holds that ran out. Each message sits in the object's `outbound` table
//! from the turn that created it until the origin acknowledges it, so a restart of
//! the object, the edge or the origin loses none. The object's alarm delivers them,
//! reservations in batches (one request, one insert at the origin), with exponential
//! backoff while the origin fails; an expiry notice waits until its reservation is
//! delivered.

use std::time::Duration;

use drops_shared::backoff::Backoff;
use drops_shared::internal::{Body, Endpoint, ReportExpiry, ReservationBatch, ReservationHandoff, TakeReservations};
use serde::{Deserialize, Serialize};
use uuid::Uuid;
use worker::{SqlStorage, SqlStorageValue};

use crate::config::EdgeConfig;
use crate::origin;
use crate::sqlite::{text, MinRow};

/// Messages one alarm run looks at.
const DUE_AT_ONCE: i64 = 1_000;
/// Reservations one request carries.
pub const BATCH: usize = 100;
/// Requests in flight at once.
pub const CONCURRENCY: usize = 5;
const FIRST_RETRY: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::EnumString)]
#[strum(serialize_all = "snake_case")]
pub enum Kind {
    Reservation,
    Expiry,
}

impl Kind {
    fn as_str(self) -> &'static str {
        self.into()
    }
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
            vec![SqlStorageValue::Integer(now), SqlStorageValue::Integer(DUE_AT_ONCE)],
        )?
        .to_array()?;
    Ok(rows
        .into_iter()
        .filter_map(|r| {
            Some(Message {
                reservation_id: Uuid::parse_str(&r.reservation_id).ok()?,
                kind: r.kind.parse().ok()?,
                body: r.body,
                attempts: r.attempts as u32,
            })
        })
        .collect())
}

pub fn back_off(sql: &SqlStorage, message: &Message, now: i64, max_ms: u64) -> worker::Result<()> {
    let delay = Backoff::new(FIRST_RETRY, Duration::from_millis(max_ms)).delay_ms(message.attempts);
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

/// Hands these reservations to the origin in one request.
pub async fn send_reservations(cfg: &EdgeConfig, messages: &[&Message]) -> Delivery {
    let reservations: Result<Vec<ReservationHandoff>, _> =
        messages.iter().map(|m| serde_json::from_str(&m.body)).collect();
    let batch = match reservations {
        Ok(reservations) => ReservationBatch { reservations },
        Err(e) => return Delivery::Failed(format!("a queued reservation does not read: {e}")),
    };
    match post(cfg, &TakeReservations {}, &batch.to_bytes()).await {
        Ok(taken) => Delivery::Acknowledged(taken.orders),
        Err(why) => Delivery::Failed(why),
    }
}

/// Tells the origin a hold ran out.
pub async fn send_expiry(cfg: &EdgeConfig, message: &Message) -> Delivery {
    match post(cfg, &ReportExpiry { order_id: message.reservation_id }, message.body.as_bytes()).await {
        Ok(ack) => Delivery::Acknowledged(vec![ack.order_id]),
        Err(why) => Delivery::Failed(why),
    }
}

async fn post<E: Endpoint>(cfg: &EdgeConfig, route: &E, body: &[u8]) -> Result<E::Response, String> {
    let attempt = async {
        let mut resp = origin::signed(cfg, route, body).await?;
        let status = resp.status_code();
        let answer = resp.bytes().await?;
        if !(200..300).contains(&status) {
            return Ok(Err(format!("origin answered {status}")));
        }
        Ok(E::Response::from_bytes(&answer).map_err(|p| format!("unreadable acknowledgement: {:?}", p.detail)))
    };
    attempt.await.unwrap_or_else(|e: worker::Error| Err(e.to_string()))
}
