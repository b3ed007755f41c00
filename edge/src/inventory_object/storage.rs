//! The inventory object's SQLite storage: its schema, and every read and write of
//! it. Remaining stock is never stored: it is derived from the holds.
//!
//! Tables:
//! - `terms`: the drop's sale terms (one row).
//! - `holds`: every reservation and its state (`held`, `sold`, `released`).
//! - `idempotency`: per (user, key) the request fingerprint and the answer given,
//!   replayed byte for byte for 24 h.
//! - `outbound`: messages the origin has not acknowledged yet (see `crate::outbound`).

use std::collections::HashMap;

use drops_shared::internal::{HoldState, InventoryTerms};
use drops_shared::inventory::{Hold, Inventory};
use serde::Deserialize;
use uuid::Uuid;
use worker::SqlStorage;

use crate::sqlite::{int, text, MinRow};

/// How long an answer is replayed for its idempotency key.
pub const IDEMPOTENCY_TTL_MS: i64 = 24 * 60 * 60 * 1000;

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS terms (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  drop_id TEXT NOT NULL,
  body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS holds (
  reservation_id TEXT PRIMARY KEY,
  user_id TEXT NOT NULL,
  quantity INTEGER NOT NULL CHECK (quantity > 0),
  state TEXT NOT NULL CHECK (state IN ('held', 'sold', 'released')),
  expires_at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS idempotency (
  user_id TEXT NOT NULL,
  key TEXT NOT NULL,
  fingerprint TEXT NOT NULL,
  reservation_id TEXT NOT NULL,
  status INTEGER NOT NULL,
  body TEXT NOT NULL,
  created_at_ms INTEGER NOT NULL,
  PRIMARY KEY (user_id, key)
);
CREATE INDEX IF NOT EXISTS idempotency_by_age ON idempotency (created_at_ms);
-- Messages for the origin not yet acknowledged: handed-over reservations and
-- expiry notices. The alarm delivers them, reservations before expiries.
CREATE TABLE IF NOT EXISTS outbound (
  reservation_id TEXT NOT NULL,
  kind TEXT NOT NULL CHECK (kind IN ('reservation', 'expiry')),
  body TEXT NOT NULL,
  attempts INTEGER NOT NULL,
  next_attempt_ms INTEGER NOT NULL,
  PRIMARY KEY (reservation_id, kind)
);
";

fn json_err(e: serde_json::Error) -> worker::Error {
    worker::Error::RustError(e.to_string())
}

#[derive(Deserialize)]
pub struct HoldRow {
    pub reservation_id: String,
    pub user_id: String,
    /// SQLite numbers arrive as floats.
    pub quantity: f64,
    pub state: String,
    pub expires_at_ms: f64,
}

impl HoldRow {
    /// The hold this row stores, or `None` for a row that does not parse.
    pub fn into_hold(self) -> Option<(Uuid, Hold)> {
        Some((
            Uuid::parse_str(&self.reservation_id).ok()?,
            Hold {
                user_id: Uuid::parse_str(&self.user_id).ok()?,
                quantity: self.quantity as u32,
                state: self.state.parse().ok()?,
                expires_at_ms: self.expires_at_ms as i64,
            },
        ))
    }
}

#[derive(Deserialize)]
struct TermsRow {
    drop_id: String,
    body: String,
}

/// An answer given earlier for an idempotency key.
#[derive(Deserialize)]
pub struct IdempotencyRow {
    pub fingerprint: String,
    pub status: f64,
    pub body: String,
}

/// The drop and its inventory as storage has them; `None` before the origin set terms.
pub fn load(sql: &SqlStorage) -> worker::Result<Option<(Uuid, Inventory)>> {
    let terms: Vec<TermsRow> = sql.exec("SELECT drop_id, body FROM terms WHERE id = 1", None)?.to_array()?;
    let Some(row) = terms.into_iter().next() else { return Ok(None) };
    let terms: InventoryTerms = serde_json::from_str(&row.body).map_err(json_err)?;
    let drop_id = Uuid::parse_str(&row.drop_id).map_err(|e| worker::Error::RustError(e.to_string()))?;
    let holds: Vec<HoldRow> =
        sql.exec("SELECT reservation_id, user_id, quantity, state, expires_at_ms FROM holds", None)?.to_array()?;
    Ok(Some((drop_id, Inventory::restore(terms, holds.into_iter().filter_map(HoldRow::into_hold)))))
}

pub fn save_terms(sql: &SqlStorage, drop_id: Uuid, terms: &InventoryTerms) -> worker::Result<()> {
    let body = serde_json::to_string(terms).map_err(json_err)?;
    sql.exec("INSERT OR REPLACE INTO terms (id, drop_id, body) VALUES (1, ?, ?)", vec![text(drop_id), text(body)])?;
    Ok(())
}

/// The answer recorded for (user, key) since `since_ms`, if any.
pub fn earlier_answer(
    sql: &SqlStorage,
    user_id: Uuid,
    key: &str,
    since_ms: i64,
) -> worker::Result<Option<IdempotencyRow>> {
    let rows: Vec<IdempotencyRow> = sql
        .exec(
            "SELECT fingerprint, status, body FROM idempotency WHERE user_id = ? AND key = ? AND created_at_ms > ?",
            vec![text(user_id), text(key), int(since_ms)],
        )?
        .to_array()?;
    Ok(rows.into_iter().next())
}

pub fn insert_hold(sql: &SqlStorage, reservation_id: Uuid, hold: &Hold) -> worker::Result<()> {
    sql.exec(
        "INSERT INTO holds (reservation_id, user_id, quantity, state, expires_at_ms) VALUES (?, ?, ?, ?, ?)",
        vec![
            text(reservation_id),
            text(hold.user_id),
            int(hold.quantity.into()),
            text(hold.state.as_str()),
            int(hold.expires_at_ms),
        ],
    )?;
    Ok(())
}

pub struct Answer<'a> {
    pub user_id: Uuid,
    pub key: &'a str,
    pub fingerprint: &'a str,
    pub reservation_id: Uuid,
    pub status: u16,
    pub body: &'a str,
    pub at_ms: i64,
}

pub fn record_answer(sql: &SqlStorage, a: &Answer<'_>) -> worker::Result<()> {
    sql.exec(
        "INSERT INTO idempotency (user_id, key, fingerprint, reservation_id, status, body, created_at_ms)
         VALUES (?, ?, ?, ?, ?, ?, ?)",
        vec![
            text(a.user_id),
            text(a.key),
            text(a.fingerprint),
            text(a.reservation_id),
            int(a.status.into()),
            text(a.body),
            int(a.at_ms),
        ],
    )?;
    Ok(())
}

/// Drops answers older than the idempotency window.
pub fn sweep_answers(sql: &SqlStorage, now_ms: i64) -> worker::Result<()> {
    sql.exec("DELETE FROM idempotency WHERE created_at_ms <= ?", vec![int(now_ms - IDEMPOTENCY_TTL_MS)])?;
    Ok(())
}

/// When the oldest recorded answer leaves the idempotency window.
pub fn next_sweep(sql: &SqlStorage) -> worker::Result<Option<i64>> {
    let rows: Vec<MinRow> = sql.exec("SELECT MIN(created_at_ms) AS t FROM idempotency", None)?.to_array()?;
    Ok(rows.first().and_then(|r| r.t).map(|t| t as i64 + IDEMPOTENCY_TTL_MS))
}

/// Every buyer with an answer recorded in the idempotency window: who may replay.
pub fn recent_buyers(sql: &SqlStorage, now_ms: i64) -> worker::Result<Vec<Uuid>> {
    #[derive(Deserialize)]
    struct UserRow {
        user_id: String,
    }
    let rows: Vec<UserRow> = sql
        .exec(
            "SELECT DISTINCT user_id FROM idempotency WHERE created_at_ms > ?",
            vec![int(now_ms - IDEMPOTENCY_TTL_MS)],
        )?
        .to_array()?;
    Ok(rows.iter().filter_map(|r| Uuid::parse_str(&r.user_id).ok()).collect())
}

/// The buyer's key of each reservation whose answer is still kept.
pub fn keys_by_reservation(sql: &SqlStorage) -> worker::Result<HashMap<String, String>> {
    #[derive(Deserialize)]
    struct KeyRow {
        reservation_id: String,
        key: String,
    }
    Ok(sql
        .exec("SELECT reservation_id, key FROM idempotency", None)?
        .to_array::<KeyRow>()?
        .into_iter()
        .map(|r| (r.reservation_id, r.key))
        .collect())
}

pub fn set_hold_state(sql: &SqlStorage, reservation_id: Uuid, state: HoldState) -> worker::Result<()> {
    sql.exec("UPDATE holds SET state = ? WHERE reservation_id = ?", vec![text(state.as_str()), text(reservation_id)])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(state: &str) -> HoldRow {
        HoldRow {
            reservation_id: Uuid::from_u128(7).to_string(),
            user_id: Uuid::from_u128(8).to_string(),
            quantity: 2.0,
            state: state.into(),
            expires_at_ms: 1_700_000_000_123.0,
        }
    }

    #[test]
    fn rows_become_holds_and_bad_rows_are_skipped() {
        let (id, hold) = row("sold").into_hold().unwrap();
        assert_eq!(id, Uuid::from_u128(7));
        assert_eq!((hold.quantity, hold.state, hold.expires_at_ms), (2, HoldState::Sold, 1_700_000_000_123));
        assert!(row("lost").into_hold().is_none(), "an unknown state is not read as held");
        assert!(HoldRow { user_id: "x".into(), ..row("held") }.into_hold().is_none());
        for state in [HoldState::Held, HoldState::Sold, HoldState::Released] {
            assert_eq!(row(state.as_str()).into_hold().unwrap().1.state, state, "the stored name reads back");
        }
    }
}
