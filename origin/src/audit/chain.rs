//! The hash chain: how an entry is written to canonical JSON and hashed, how entries
//! are appended (one line, under one lock), and how the chain is checked again.
//!
//! An entry's canonical JSON is the object of every field but the two hashes
//! (`action`, `actor`, `at`, `data`, `request_id`, `seq`, `subject`, and
//! `server_request_id` on entries that have one: older entries hash as they did), keys sorted
//! by their bytes at every depth, no whitespace. `at` is RFC 3339 in UTC with six
//! fractional digits and `Z` (the precision Postgres keeps). Its hash is the hex
//! SHA-256 of the previous entry's hash (hex, [`GENESIS`] before the first entry)
//! followed by the canonical JSON.

use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use drops_shared::api::{AuditActor, AuditEntry, AuditSubject, AuditVerification};
use drops_shared::auth::Identity;
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::http::extract::RequestId;

/// The `prev_hash` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The advisory lock every append takes for the rest of its transaction, so that
/// appends form one line: seq and `prev_hash` are read and written by one at a time.
const APPEND_LOCK: i64 = 0x6175_6469_745f_6c6f; // "audit_lo"

/// How many entries [`verify`] reads at a time.
const VERIFY_CHUNK: i64 = 1_000;

/// What an entry is made of, before the chain gives it its seq, time and hashes.
#[derive(Debug, Clone)]
pub struct NewEntry {
    /// `<subject kind>.<what happened>`.
    pub action: String,
    /// Who did it; `None` for what the platform did or observed itself.
    pub actor: Option<Identity>,
    pub subject_kind: String,
    pub subject_id: String,
    /// The `x-request-id` of the request that did it, as the client sent it, if a request did.
    pub request_id: Option<String>,
    /// The origin's own id of that request.
    pub server_request_id: Option<String>,
    /// Strings, integers, bools, nulls, objects and arrays only: a float may not read
    /// back from `jsonb` as the same text, which would break the chain.
    pub data: Value,
    /// The domain event the entry records: at most one entry per event.
    pub event_id: Option<Uuid>,
}

impl NewEntry {
    /// An entry for what the platform did itself (no actor, no request).
    pub fn system(
        action: impl Into<String>,
        subject_kind: &'static str,
        subject_id: impl ToString,
        data: Value,
    ) -> Self {
        Self {
            action: action.into(),
            actor: None,
            subject_kind: subject_kind.to_owned(),
            subject_id: subject_id.to_string(),
            request_id: None,
            server_request_id: None,
            data,
            event_id: None,
        }
    }

    /// The same entry, done by `actor` in request `request`.
    pub fn by(self, actor: Identity, request: &RequestId) -> Self {
        Self {
            actor: Some(actor),
            request_id: request.client.clone(),
            server_request_id: Some(request.server.clone()),
            ..self
        }
    }
}

/// `value` as canonical JSON: object keys sorted at every depth, no whitespace.
/// Sorted here, not left to `serde_json`'s map (whose order a feature flag changes).
pub fn canonical_json(value: &Value) -> String {
    fn write(value: &Value, out: &mut String) {
        match value {
            Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                out.push('{');
                for (i, key) in keys.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::String(key.clone()).to_string());
                    out.push(':');
                    write(&map[key.as_str()], out);
                }
                out.push('}');
            }
            Value::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(item, out);
                }
                out.push(']');
            }
            scalar => out.push_str(&scalar.to_string()),
        }
    }
    let mut out = String::new();
    write(value, &mut out);
    out
}

/// `at` as it is hashed: microseconds, UTC, `Z`.
fn hashed_time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// The hash `entry` must have: over its `prev_hash` and every other field.
pub fn entry_hash(entry: &AuditEntry) -> String {
    let mut fields = serde_json::json!({
        "seq": entry.seq,
        "at": hashed_time(entry.at),
        "action": entry.action,
        "actor": entry.actor.as_ref().map(|a| serde_json::json!({"user_id": a.user_id, "role": a.role})),
        "subject": {"kind": entry.subject.kind, "id": entry.subject.id},
        "request_id": entry.request_id,
        "data": entry.data,
    });
    if let Some(own) = &entry.server_request_id {
        fields["server_request_id"] = Value::String(own.clone());
    }
    let mut digest = Sha256::new();
    digest.update(entry.prev_hash.as_bytes());
    digest.update(canonical_json(&fields).as_bytes());
    hex::encode(digest.finalize())
}

/// Whether `value` holds a float anywhere (which `data` may not).
fn has_float(value: &Value) -> bool {
    match value {
        Value::Number(n) => n.is_f64(),
        Value::Array(items) => items.iter().any(has_float),
        Value::Object(map) => map.values().any(has_float),
        _ => false,
    }
}

/// Takes the append lock for the rest of the caller's transaction.
pub async fn lock(conn: &mut PgConnection) -> sqlx::Result<()> {
    sqlx::query!("SELECT pg_advisory_xact_lock($1)", APPEND_LOCK).execute(&mut *conn).await?;
    Ok(())
}

/// Refuses `entries` if one holds a float in its data (see [`NewEntry::data`]).
pub(crate) fn refuse_floats(entries: &[NewEntry]) -> sqlx::Result<()> {
    match entries.iter().find(|e| has_float(&e.data)) {
        Some(e) => Err(sqlx::Error::Encode(format!("audit entry {} holds a float in its data", e.action).into())),
        None => Ok(()),
    }
}

/// Appends `entries`, in this order, in the caller's transaction (commit soon after:
/// the append lock is held until then, and every other append waits for it, a
/// connection each: requests stage their entries instead, see `super::sequencer`). Entries recording an event already in the
/// log are skipped, so a redelivered or replayed event adds nothing. Returns how
/// many were appended. An entry whose data holds a float is refused (an encoding
/// error), as the events' outbox refuses what it cannot encode.
pub async fn append(conn: &mut PgConnection, entries: Vec<NewEntry>) -> sqlx::Result<usize> {
    if entries.is_empty() {
        return Ok(0);
    }
    refuse_floats(&entries)?;
    lock(&mut *conn).await?;
    let event_ids: Vec<Uuid> = entries.iter().filter_map(|e| e.event_id).collect();
    let mut recorded: std::collections::HashSet<Uuid> = if event_ids.is_empty() {
        Default::default()
    } else {
        sqlx::query_scalar!(r#"SELECT event_id AS "event_id!" FROM audit_log WHERE event_id = ANY($1)"#, &event_ids)
            .fetch_all(&mut *conn)
            .await?
            .into_iter()
            .collect()
    };
    let last =
        sqlx::query!("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1").fetch_optional(&mut *conn).await?;
    let (mut seq, mut prev_hash) = last.map(|l| (l.seq, l.hash)).unwrap_or((0, GENESIS.to_owned()));
    // One time for the batch, at the precision Postgres keeps, so it hashes as stored.
    let at = Utc::now().trunc_subsecs(6);
    let mut rows = Vec::with_capacity(entries.len());
    for entry in entries {
        // `insert` is false for an event already recorded (before, or earlier in this batch).
        if entry.event_id.is_some_and(|id| !recorded.insert(id)) {
            continue;
        }
        seq += 1;
        let mut row = AuditEntry {
            seq,
            at,
            action: entry.action,
            actor: entry.actor.map(|a| AuditActor { user_id: a.user_id, role: a.role.as_str().to_owned() }),
            subject: AuditSubject { kind: entry.subject_kind, id: entry.subject_id },
            request_id: entry.request_id,
            server_request_id: entry.server_request_id,
            data: entry.data,
            hash: String::new(),
            prev_hash: std::mem::take(&mut prev_hash),
        };
        row.hash = entry_hash(&row);
        prev_hash = row.hash.clone();
        rows.push((row, entry.event_id));
    }
    if rows.is_empty() {
        return Ok(0);
    }
    let mut columns = Columns::default();
    for (row, event_id) in &rows {
        columns.push(row, *event_id);
    }
    sqlx::query!(
        "INSERT INTO audit_log (seq, at, action, actor_user_id, actor_role, subject_kind, subject_id, request_id,
                                data, event_id, prev_hash, hash, server_request_id)
         SELECT * FROM UNNEST($1::int8[], $2::timestamptz[], $3::text[], $4::uuid[], $5::text[], $6::text[],
                              $7::text[], $8::text[], $9::jsonb[], $10::uuid[], $11::text[], $12::text[], $13::text[])",
        &columns.seq,
        &columns.at,
        &columns.action,
        &columns.actor_user_id as &[Option<Uuid>],
        &columns.actor_role as &[Option<String>],
        &columns.subject_kind,
        &columns.subject_id,
        &columns.request_id as &[Option<String>],
        &columns.data,
        &columns.event_id as &[Option<Uuid>],
        &columns.prev_hash,
        &columns.hash,
        &columns.server_request_id as &[Option<String>]
    )
    .execute(&mut *conn)
    .await?;
    Ok(rows.len())
}

/// The rows of one append, column by column (for `UNNEST`).
#[derive(Default)]
struct Columns {
    seq: Vec<i64>,
    at: Vec<DateTime<Utc>>,
    action: Vec<String>,
    actor_user_id: Vec<Option<Uuid>>,
    actor_role: Vec<Option<String>>,
    subject_kind: Vec<String>,
    subject_id: Vec<String>,
    request_id: Vec<Option<String>>,
    server_request_id: Vec<Option<String>>,
    data: Vec<Value>,
    event_id: Vec<Option<Uuid>>,
    prev_hash: Vec<String>,
    hash: Vec<String>,
}

impl Columns {
    fn push(&mut self, row: &AuditEntry, event_id: Option<Uuid>) {
        self.seq.push(row.seq);
        self.at.push(row.at);
        self.action.push(row.action.clone());
        self.actor_user_id.push(row.actor.as_ref().map(|a| a.user_id));
        self.actor_role.push(row.actor.as_ref().map(|a| a.role.clone()));
        self.subject_kind.push(row.subject.kind.clone());
        self.subject_id.push(row.subject.id.clone());
        self.request_id.push(row.request_id.clone());
        self.server_request_id.push(row.server_request_id.clone());
        self.data.push(row.data.clone());
        self.event_id.push(event_id);
        self.prev_hash.push(row.prev_hash.clone());
        self.hash.push(row.hash.clone());
    }
}

/// An `audit_log` row as read.
pub(crate) struct Row {
    pub seq: i64,
    pub at: DateTime<Utc>,
    pub action: String,
    pub actor_user_id: Option<Uuid>,
    pub actor_role: Option<String>,
    pub subject_kind: String,
    pub subject_id: String,
    pub request_id: Option<String>,
    pub server_request_id: Option<String>,
    pub data: Value,
    pub prev_hash: String,
    pub hash: String,
}

impl From<Row> for AuditEntry {
    fn from(r: Row) -> Self {
        let actor = match (r.actor_user_id, r.actor_role) {
            (Some(user_id), Some(role)) => Some(AuditActor { user_id, role }),
            _ => None,
        };
        AuditEntry {
            seq: r.seq,
            at: r.at,
            action: r.action,
            actor,
            subject: AuditSubject { kind: r.subject_kind, id: r.subject_id },
            request_id: r.request_id,
            server_request_id: r.server_request_id,
            data: r.data,
            hash: r.hash,
            prev_hash: r.prev_hash,
        }
    }
}

/// Walks the whole chain in seq order, a chunk at a time, and reports the first
/// entry that does not hold: its seq is not the one before plus one (the first is
/// 1), its `prev_hash` is not the hash before, or its hash is not its own.
pub async fn verify(db: &PgPool) -> anyhow::Result<AuditVerification> {
    let (mut entries, mut expected_seq, mut prev_hash) = (0u64, 1i64, GENESIS.to_owned());
    loop {
        let chunk = sqlx::query_as!(
            Row,
            "SELECT seq, at, action, actor_user_id, actor_role, subject_kind, subject_id, request_id,
                    server_request_id, data, prev_hash, hash
             FROM audit_log WHERE seq >= $1 ORDER BY seq LIMIT $2",
            expected_seq,
            VERIFY_CHUNK
        )
        .fetch_all(db)
        .await?;
        let Some(last_seq) = chunk.last().map(|r| r.seq) else {
            return Ok(AuditVerification { entries, valid: true, first_invalid_seq: None, sealed_through_seq: None });
        };
        for row in chunk {
            let entry = AuditEntry::from(row);
            if entry.seq != expected_seq || entry.prev_hash != prev_hash || entry_hash(&entry) != entry.hash {
                let rest = sqlx::query_scalar!(r#"SELECT count(*) AS "n!" FROM audit_log WHERE seq >= $1"#, entry.seq)
                    .fetch_one(db)
                    .await?;
                let total = entries + u64::try_from(rest).unwrap_or(0);
                return Ok(AuditVerification {
                    entries: total,
                    valid: false,
                    first_invalid_seq: Some(entry.seq),
                    sealed_through_seq: None,
                });
            }
            entries += 1;
            expected_seq = entry.seq + 1;
            prev_hash = entry.hash;
        }
        debug_assert_eq!(expected_seq, last_seq + 1);
    }
}

#[cfg(test)]
mod tests {
    use drops_shared::auth::Role;
    use serde_json::json;

    use super::*;

    fn entry(seq: i64, prev_hash: &str) -> AuditEntry {
        AuditEntry {
            seq,
            at: DateTime::from_timestamp_micros(1_800_000_000_123_456).unwrap(),
            action: "drop.terms_changed".into(),
            actor: Some(AuditActor { user_id: Uuid::from_u128(7), role: Role::Creator.as_str().into() }),
            subject: AuditSubject { kind: "drop".into(), id: Uuid::from_u128(9).to_string() },
            request_id: Some("req-1".into()),
            server_request_id: None,
            data: json!({"before": {"stock": 10}, "after": {"stock": 12}}),
            hash: String::new(),
            prev_hash: prev_hash.into(),
        }
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_depth_without_whitespace() {
        // Built in reverse order: the output must not depend on the map's own order
        // (serde_json's `preserve_order` feature would keep insertion order).
        let mut inner = serde_json::Map::new();
        inner.insert("z".into(), json!(1));
        inner.insert("a".into(), json!([{"y": true, "b": null}]));
        let mut outer = serde_json::Map::new();
        outer.insert("zeta".into(), Value::Object(inner));
        outer.insert("alpha".into(), json!("x \"quoted\" ü"));
        outer.insert("Beta".into(), json!(-3));
        assert_eq!(
            canonical_json(&Value::Object(outer)),
            r#"{"Beta":-3,"alpha":"x \"quoted\" ü","zeta":{"a":[{"b":null,"y":true}],"z":1}}"#
        );
    }

    #[test]
    fn data_reads_back_from_jsonb_text_to_the_same_canonical_json() {
        // Postgres reorders a jsonb object's keys (shorter first) and respaces it;
        // strings, integers, bools, objects and arrays come back as they were.
        let data = json!({"occurred_at": "2026-11-26T13:01:16.123456789Z", "quantity": 2, "amount": -2500,
                          "big": 9_007_199_254_740_993u64, "ok": true, "none": null, "list": [1, "a", {"k": "v"}],
                          "name": "Ünïcode \u{1F600} \\ \" /"});
        let as_postgres_prints_it = r#"{"ok": true, "big": 9007199254740993, "list": [1, "a", {"k": "v"}], "name": "Ünïcode 😀 \\ \" /", "none": null, "amount": -2500, "quantity": 2, "occurred_at": "2026-11-26T13:01:16.123456789Z"}"#;
        let read_back: Value = serde_json::from_str(as_postgres_prints_it).unwrap();
        assert_eq!(canonical_json(&read_back), canonical_json(&data));
        assert!(!has_float(&data));
        assert!(has_float(&json!({"a": [1, {"b": 1.5}]})));
    }

    #[test]
    fn the_hash_covers_every_field_and_the_link() {
        let first = entry(1, GENESIS);
        let hash = entry_hash(&first);
        assert_eq!(hash.len(), 64);
        assert_eq!(hash, entry_hash(&first.clone()), "deterministic");
        type Edit = Box<dyn Fn(&mut AuditEntry)>;
        let changes: Vec<Edit> = vec![
            Box::new(|e| e.seq = 2),
            Box::new(|e| e.at += chrono::Duration::microseconds(1)),
            Box::new(|e| e.action = "drop.created".into()),
            Box::new(|e| e.actor = None),
            Box::new(|e| e.actor.as_mut().unwrap().role = "admin".into()),
            Box::new(|e| e.subject.kind = "order".into()),
            Box::new(|e| e.subject.id = "other".into()),
            Box::new(|e| e.request_id = None),
            Box::new(|e| e.data["after"]["stock"] = json!(13)),
            Box::new(|e| e.prev_hash = "1".repeat(64)),
        ];
        for (i, change) in changes.iter().enumerate() {
            let mut edited = first.clone();
            change(&mut edited);
            assert_ne!(entry_hash(&edited), hash, "change {i} must change the hash");
        }
        // The stored hash is not part of what is hashed.
        let mut with_hash = first.clone();
        with_hash.hash = hash.clone();
        assert_eq!(entry_hash(&with_hash), hash);
    }

    #[test]
    fn the_time_hashes_at_microseconds_as_postgres_keeps_it() {
        let precise = DateTime::from_timestamp_nanos(1_800_000_000_123_456_789);
        assert_eq!(hashed_time(precise.trunc_subsecs(6)), "2027-01-15T08:00:00.123456Z");
        let whole = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        assert_eq!(hashed_time(whole), "2027-01-15T08:00:00.000000Z");
    }

    #[test]
    fn a_known_entry_has_a_known_hash() {
        // Pins the scheme: SHA-256 over prev_hash then the canonical JSON.
        let e = entry(1, GENESIS);
        let canonical = r#"{"action":"drop.terms_changed","actor":{"role":"creator","user_id":"00000000-0000-0000-0000-000000000007"},"at":"2027-01-15T08:00:00.123456Z","data":{"after":{"stock":12},"before":{"stock":10}},"request_id":"req-1","seq":1,"subject":{"id":"00000000-0000-0000-0000-000000000009","kind":"drop"}}"#;
        let expected = hex::encode(Sha256::digest(format!("{GENESIS}{canonical}").as_bytes()));
        assert_eq!(entry_hash(&e), expected);
    }
}
