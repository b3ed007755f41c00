//! Development only: rebuilds an object's database as schema version 1 kept it,
//! then opens it as a fresh instance would (which migrates it to the current
//! schema) and answers what came out. Objects created before version 2 still hold
//! version 1 databases; this is how the migration is run on one before it meets
//! them (`tests/tests/e2e/inventory_migration.rs`).
//!
//! The rows are those version 1 wrote (its schema is copied here as it was): the
//! hold; the answer kept for the buyer's key, in `idempotency`; the handoff the
//! origin had not acknowledged, and the notice of a hold that ran out, in
//! `outbound`; the terms, without the `version` version 1 did not know.
//!
//! Reached only through the signed `/internal/dev/` route, which the Worker
//! serves only when `ENVIRONMENT` is `development`; the object checks that again.

use chrono::{DateTime, Utc};
use drops_shared::internal::{HoldExpiry, HoldState, InventorySnapshot, InventoryTerms};
use drops_shared::inventory::Hold;
use drops_shared::problem::{ErrorCode, Problem};
use serde::{Deserialize, Serialize};
use uuid::Uuid;
use worker::SqlStorage;

use super::routes::{fingerprint, receipt};
use super::sqlite::{int, text};
use super::{DropInventory, ReserveCommand};
use crate::http::{json, now_ms, EdgeResult};

/// Version 1's schema, as it shipped.
const V1_SCHEMA: &str = "
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
CREATE TABLE IF NOT EXISTS outbound (
  reservation_id TEXT NOT NULL,
  kind TEXT NOT NULL CHECK (kind IN ('reservation', 'expiry')),
  body TEXT NOT NULL,
  attempts INTEGER NOT NULL,
  next_attempt_ms INTEGER NOT NULL,
  PRIMARY KEY (reservation_id, kind)
);
";

/// The purchases a version 1 database holds, on the object's current terms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct V1Fixture {
    pub holds: Vec<V1Hold>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct V1Hold {
    pub reservation_id: Uuid,
    pub user_id: Uuid,
    pub idempotency_key: String,
    pub quantity: u32,
    pub state: HoldState,
    pub reserved_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// Its answer is still kept for replays (version 1 deleted it after 24 h).
    pub answer_kept: bool,
    /// The origin has not acknowledged the handoff yet.
    pub unforwarded: bool,
    /// It ran out, and the origin has not acknowledged the notice yet.
    pub unreported_expiry: bool,
}

/// What the object held before and after it was opened.
#[derive(Serialize)]
struct Migrated {
    tables_before: Vec<String>,
    tables_after: Vec<String>,
    schema_version: Option<i64>,
    snapshot: InventorySnapshot,
}

/// The object's own tables (not the runtime's: `_cf_*`, miniflare's `__*`).
fn tables(sql: &SqlStorage) -> worker::Result<Vec<String>> {
    #[derive(Deserialize)]
    struct Name {
        name: String,
    }
    let rows: Vec<Name> =
        sql.exec("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name", None)?.to_array()?;
    Ok(rows
        .into_iter()
        .map(|r| r.name)
        .filter(|n| !n.starts_with("_cf") && !n.starts_with("__") && !n.starts_with("sqlite"))
        .collect())
}

fn schema_version(sql: &SqlStorage) -> worker::Result<Option<i64>> {
    #[derive(Deserialize)]
    struct Value {
        value: f64,
    }
    let rows: Vec<Value> = sql.exec("SELECT value FROM meta WHERE key = 'schema'", None)?.to_array()?;
    Ok(rows.first().map(|r| r.value as i64))
}

fn json_text<T: Serialize>(value: &T) -> worker::Result<String> {
    serde_json::to_string(value).map_err(|e| worker::Error::RustError(e.to_string()))
}

impl DropInventory {
    pub(super) async fn rebuild_as_v1(&self, drop_id: Uuid, fixture: V1Fixture) -> EdgeResult {
        if !crate::config::EdgeConfig::get(&self.env)?.development {
            return Err(ErrorCode::NotFound.into());
        }
        let terms = {
            let inventory = self.inventory.borrow();
            inventory.as_ref().ok_or(ErrorCode::NotFound)?.terms().clone()
        };
        if self.drop_id.get() != Some(drop_id) {
            return Err(ErrorCode::NotFound.into());
        }
        let sql = self.sql();
        let now = now_ms();
        let write = || -> worker::Result<()> {
            sql.exec("DROP TABLE IF EXISTS holds", None)?;
            sql.exec("DROP TABLE IF EXISTS outbound", None)?;
            sql.exec("DROP TABLE IF EXISTS meta", None)?;
            sql.exec("DROP TABLE IF EXISTS terms", None)?;
            sql.exec(V1_SCHEMA, None)?;
            let mut v1_terms = serde_json::to_value(&terms).map_err(|e| worker::Error::RustError(e.to_string()))?;
            if let Some(fields) = v1_terms.as_object_mut() {
                fields.remove("version");
            }
            sql.exec(
                "INSERT INTO terms (id, drop_id, body) VALUES (1, ?, ?)",
                vec![text(drop_id), text(json_text(&v1_terms)?)],
            )?;
            for h in &fixture.holds {
                write_v1_hold(&sql, drop_id, &terms, h, now)?;
            }
            Ok(())
        };
        let tables_before = write().and_then(|_| tables(&sql)).map_err(|e| {
            Problem::new(ErrorCode::InvalidRequest, Some(format!("the version 1 fixture was not written: {e}")))
        })?;
        // As a fresh instance opens its database.
        self.open()?;
        // Version 1 kept an alarm set while anything was owed to the origin.
        self.alarm_by(now).await?;
        let snapshot = self.inventory_snapshot()?;
        json(
            200,
            &Migrated { tables_before, tables_after: tables(&sql)?, schema_version: schema_version(&sql)?, snapshot },
        )
    }
}

/// The rows version 1 wrote for `h`.
fn write_v1_hold(sql: &SqlStorage, drop_id: Uuid, terms: &InventoryTerms, h: &V1Hold, now: i64) -> worker::Result<()> {
    let hold = Hold {
        user_id: h.user_id,
        quantity: h.quantity,
        state: h.state,
        expires_at_ms: h.expires_at.timestamp_millis(),
    };
    let cmd = ReserveCommand { user_id: h.user_id, idempotency_key: h.idempotency_key.clone(), quantity: h.quantity };
    let reserved_ms = h.reserved_at.timestamp_millis();
    let (answer, handoff) = receipt(drop_id, h.reservation_id, &cmd, &hold, terms, reserved_ms)
        .ok_or_else(|| worker::Error::RustError("the fixture's amount or times do not fit".into()))?;
    sql.exec(
        "INSERT INTO holds (reservation_id, user_id, quantity, state, expires_at_ms) VALUES (?, ?, ?, ?, ?)",
        vec![
            text(h.reservation_id),
            text(h.user_id),
            int(h.quantity.into()),
            text(h.state.as_str()),
            int(hold.expires_at_ms),
        ],
    )?;
    if h.answer_kept {
        sql.exec(
            "INSERT INTO idempotency (user_id, key, fingerprint, reservation_id, status, body, created_at_ms)
             VALUES (?, ?, ?, ?, 201, ?, ?)",
            vec![
                text(h.user_id),
                text(&h.idempotency_key),
                text(fingerprint(&cmd)),
                text(h.reservation_id),
                text(json_text(&answer)?),
                int(reserved_ms),
            ],
        )?;
    }
    if h.unforwarded {
        sql.exec(
            "INSERT INTO outbound (reservation_id, kind, body, attempts, next_attempt_ms)
             VALUES (?, 'reservation', ?, 0, ?)",
            vec![text(h.reservation_id), text(json_text(&handoff)?), int(now)],
        )?;
    }
    if h.unreported_expiry {
        let notice = HoldExpiry { drop_id, expired_at: h.expires_at };
        sql.exec(
            "INSERT INTO outbound (reservation_id, kind, body, attempts, next_attempt_ms)
             VALUES (?, 'expiry', ?, 0, ?)",
            vec![text(h.reservation_id), text(json_text(&notice)?), int(now)],
        )?;
    }
    Ok(())
}
