//! The inventory object's SQLite storage: its schema, and every read and write of
//! it. Remaining stock is never stored: it is derived from the holds.
//!
//! Tables:
//! - `terms`: the drop's sale terms (one row).
//! - `holds`: every reservation and its state (`held`, `sold`, `released`); with
//!   it, the buyer's key and the answer given (replayed byte for byte for 24 h,
//!   then cleared), and the handoff the origin has not acknowledged yet (cleared
//!   once it has). A purchase is one row written by one statement.
//! - `outbound`: notices of holds that ran out, until the origin acknowledges them
//!   (see `super::outbound`).
//! - `meta`: the schema's version.

use std::collections::HashMap;

use drops_shared::internal::{HoldState, InventoryTerms};
use drops_shared::inventory::{Hold, Inventory};
use serde::Deserialize;
use uuid::Uuid;
use worker::SqlStorage;

use super::sqlite::{int, text, MinRow};

/// How long an answer is replayed for its idempotency key.
pub const IDEMPOTENCY_TTL_MS: i64 = 24 * 60 * 60 * 1000;

const SCHEMA_VERSION: i64 = 2;

const SCHEMA: &str = "
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
  expires_at_ms INTEGER NOT NULL,
  idempotency_key TEXT,
  fingerprint TEXT,
  answer TEXT,
  answered_at_ms INTEGER,
  handoff TEXT,
  attempts INTEGER NOT NULL DEFAULT 0,
  next_attempt_ms INTEGER
);
CREATE TABLE IF NOT EXISTS outbound (
  reservation_id TEXT NOT NULL,
  kind TEXT NOT NULL CHECK (kind IN ('reservation', 'expiry')),
  body TEXT NOT NULL,
  attempts INTEGER NOT NULL,
  next_attempt_ms INTEGER NOT NULL,
  PRIMARY KEY (reservation_id, kind)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
";

const INDEXES: &str = "
CREATE INDEX IF NOT EXISTS holds_by_key ON holds (user_id, idempotency_key) WHERE answer IS NOT NULL;
CREATE INDEX IF NOT EXISTS holds_by_answer_age ON holds (answered_at_ms) WHERE answer IS NOT NULL;
CREATE INDEX IF NOT EXISTS holds_unforwarded ON holds (next_attempt_ms) WHERE handoff IS NOT NULL;
";

/// Version 1 kept the answers in `idempotency` and the handoffs in `outbound`.
const FROM_V1: &str = "
ALTER TABLE holds ADD COLUMN idempotency_key TEXT;
ALTER TABLE holds ADD COLUMN fingerprint TEXT;
ALTER TABLE holds ADD COLUMN answer TEXT;
ALTER TABLE holds ADD COLUMN answered_at_ms INTEGER;
ALTER TABLE holds ADD COLUMN handoff TEXT;
ALTER TABLE holds ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE holds ADD COLUMN next_attempt_ms INTEGER;
UPDATE holds SET
  idempotency_key = (SELECT key FROM idempotency i WHERE i.reservation_id = holds.reservation_id),
  fingerprint = (SELECT fingerprint FROM idempotency i WHERE i.reservation_id = holds.reservation_id),
  answer = (SELECT body FROM idempotency i WHERE i.reservation_id = holds.reservation_id),
  answered_at_ms = (SELECT created_at_ms FROM idempotency i WHERE i.reservation_id = holds.reservation_id),
  handoff = (SELECT body FROM outbound o WHERE o.kind = 'reservation' AND o.reservation_id = holds.reservation_id),
  attempts = COALESCE((SELECT attempts FROM outbound o
                       WHERE o.kind = 'reservation' AND o.reservation_id = holds.reservation_id), 0),
  next_attempt_ms = (SELECT next_attempt_ms FROM outbound o
                     WHERE o.kind = 'reservation' AND o.reservation_id = holds.reservation_id);
DELETE FROM outbound WHERE kind = 'reservation';
DROP TABLE idempotency;
";

/// Whether this object has a database at all (the origin gave it terms once).
pub fn exists(sql: &SqlStorage) -> worker::Result<bool> {
    #[derive(Deserialize)]
    struct Count {
        n: f64,
    }
    let rows: Vec<Count> = sql
        .exec("SELECT count(*) AS n FROM sqlite_master WHERE type = 'table' AND name = 'terms'", None)?
        .to_array()?;
    Ok(rows.first().is_some_and(|r| r.n > 0.0))
}

/// Brings the object's database to the current schema.
pub fn migrate(sql: &SqlStorage) -> worker::Result<()> {
    #[derive(Deserialize)]
    struct Name {
        name: String,
    }
    let tables: Vec<Name> = sql.exec("SELECT name FROM sqlite_master WHERE type = 'table'", None)?.to_array()?;
    let had_v1 = tables.iter().any(|t| t.name == "idempotency");
    sql.exec(SCHEMA, None)?;
    if had_v1 {
        sql.exec(FROM_V1, None)?;
    }
    sql.exec(INDEXES, None)?;
    sql.exec("INSERT OR REPLACE INTO meta (key, value) VALUES ('schema', ?)", vec![int(SCHEMA_VERSION)])?;
    Ok(())
}

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

/// An answer given earlier for an idempotency key (always a 201: refusals change
/// nothing and are not kept).
#[derive(Deserialize)]
pub struct IdempotencyRow {
    pub fingerprint: String,
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
            "SELECT fingerprint, answer AS body FROM holds
             WHERE user_id = ? AND idempotency_key = ? AND answer IS NOT NULL AND answered_at_ms > ?",
            vec![text(user_id), text(key), int(since_ms)],
        )?
        .to_array()?;
    Ok(rows.into_iter().next())
}

/// A purchase as it is stored: the hold, the answer given, and the handoff owed to
/// the origin. One row, one statement: the decision's writes cannot come apart.
pub struct Purchase<'a> {
    pub reservation_id: Uuid,
    pub hold: &'a Hold,
    pub key: &'a str,
    pub fingerprint: &'a str,
    pub answer: &'a str,
    pub handoff: &'a str,
    pub at_ms: i64,
}

pub fn insert_purchase(sql: &SqlStorage, p: &Purchase<'_>) -> worker::Result<()> {
    sql.exec(
        "INSERT INTO holds (reservation_id, user_id, quantity, state, expires_at_ms, idempotency_key, fingerprint,
                            answer, answered_at_ms, handoff, attempts, next_attempt_ms)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?)",
        vec![
            text(p.reservation_id),
            text(p.hold.user_id),
            int(p.hold.quantity.into()),
            text(p.hold.state.as_str()),
            int(p.hold.expires_at_ms),
            text(p.key),
            text(p.fingerprint),
            text(p.answer),
            int(p.at_ms),
            text(p.handoff),
            int(p.at_ms),
        ],
    )?;
    Ok(())
}

/// A (user, key) whose answer is kept, and when it was given: what the object keeps
/// in memory so that a fresh purchase needs no read.
pub fn recent_answers(sql: &SqlStorage, now_ms: i64) -> worker::Result<Vec<(Uuid, String, i64)>> {
    #[derive(Deserialize)]
    struct AnswerRow {
        user_id: String,
        idempotency_key: String,
        answered_at_ms: f64,
    }
    let rows: Vec<AnswerRow> = sql
        .exec(
            "SELECT user_id, idempotency_key, answered_at_ms FROM holds WHERE answer IS NOT NULL AND answered_at_ms > ?",
            vec![int(now_ms - IDEMPOTENCY_TTL_MS)],
        )?
        .to_array()?;
    Ok(rows
        .into_iter()
        .filter_map(|r| Some((Uuid::parse_str(&r.user_id).ok()?, r.idempotency_key, r.answered_at_ms as i64)))
        .collect())
}

/// Clears answers older than the idempotency window.
pub fn sweep_answers(sql: &SqlStorage, now_ms: i64) -> worker::Result<()> {
    sql.exec(
        "UPDATE holds SET idempotency_key = NULL, fingerprint = NULL, answer = NULL, answered_at_ms = NULL
         WHERE answer IS NOT NULL AND answered_at_ms <= ?",
        vec![int(now_ms - IDEMPOTENCY_TTL_MS)],
    )?;
    Ok(())
}

/// When the oldest kept answer leaves the idempotency window.
pub fn next_sweep(sql: &SqlStorage) -> worker::Result<Option<i64>> {
    let rows: Vec<MinRow> =
        sql.exec("SELECT MIN(answered_at_ms) AS t FROM holds WHERE answer IS NOT NULL", None)?.to_array()?;
    Ok(rows.first().and_then(|r| r.t).map(|t| t as i64 + IDEMPOTENCY_TTL_MS))
}

/// Every buyer with an answer kept in the idempotency window: who may replay.
pub fn recent_buyers(sql: &SqlStorage, now_ms: i64) -> worker::Result<Vec<Uuid>> {
    #[derive(Deserialize)]
    struct UserRow {
        user_id: String,
    }
    let rows: Vec<UserRow> = sql
        .exec(
            "SELECT DISTINCT user_id FROM holds WHERE answer IS NOT NULL AND answered_at_ms > ?",
            vec![int(now_ms - IDEMPOTENCY_TTL_MS)],
        )?
        .to_array()?;
    Ok(rows.iter().filter_map(|r| Uuid::parse_str(&r.user_id).ok()).collect())
}

/// The buyer's key of each reservation from `first` to `last` (inclusive) whose
/// answer is still kept. Ids are stored as lowercase hyphenated text, whose order
/// is the ids' own.
pub fn keys_by_reservation(sql: &SqlStorage, first: Uuid, last: Uuid) -> worker::Result<HashMap<String, String>> {
    #[derive(Deserialize)]
    struct KeyRow {
        reservation_id: String,
        idempotency_key: String,
    }
    Ok(sql
        .exec(
            "SELECT reservation_id, idempotency_key FROM holds
             WHERE answer IS NOT NULL AND reservation_id >= ? AND reservation_id <= ?",
            vec![text(first), text(last)],
        )?
        .to_array::<KeyRow>()?
        .into_iter()
        .map(|r| (r.reservation_id, r.idempotency_key))
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
