//! Audit: the append-only, hash-chained log of what happened on the platform and
//! who did it. Two kinds of entry land in it:
//!
//! - every domain event, written by this area's consumer group ([`consumer`]),
//!   once per event id, with no actor;
//! - every privileged action (an admin creating a creator, a drop created or its
//!   terms changed, a media upload, each reconciliation repair, each refund),
//!   written by the area that does it with [`append`], in the same transaction as
//!   the action, with its actor and the request's `x-request-id` when a person's
//!   request did it.
//!
//! The log is one line: every entry joins it under one advisory lock, so seqs are
//! contiguous and each entry's `prev_hash` is the hash of the entry before ([`chain`]
//! says exactly what is hashed). [`append`] stages a request's entries without the
//! lock and the [`sequencer`] chains them (a request then waits for that,
//! [`settled`]); background work that must see its entry chained when it commits
//! (reconciliation, refunds) appends under the lock itself ([`append_chained`]). The database
//! refuses UPDATE, DELETE and TRUNCATE on it (migration `0009_audit.sql`); whoever
//! gets past that (a superuser) breaks the chain, and `GET /v1/admin/audit/verify`
//! names the first entry that no longer holds. (Removing the newest entries leaves
//! a shorter chain that still holds: the chain proves what is there, not that
//! nothing was cut off the end.) The hashes are unkeyed, so whoever gets past the
//! triggers could also hash the rest again: [`seal`]s, HMACs under a key outside
//! the database over the chain's head, catch that, and verification checks both.
//!
//! Admins read it at `GET /v1/admin/audit` (oldest first, optionally about one
//! subject).
//!
//! Owns the tables `audit_log`, `audit_pending` and `audit_seals`. Stands on no other
//! area; every area may write to it.

pub mod chain;
pub mod consumer;
pub mod seal;
pub mod sequencer;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use drops_shared::api::{AuditEntry, AuditVerification, Page};
use drops_shared::cursor::{BadCursor, Position};
use drops_shared::problem::ErrorCode;
use serde::Deserialize;

pub use chain::{append as append_chained, NewEntry};
pub use sequencer::{settled, stage as append};

use crate::config::AuditSettings;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{Admins, Authorized, StrictQuery};
use crate::http::paging;
use crate::state::Core;

/// The longest `subject_id` a filter may name (ids in the log are far shorter).
pub const MAX_SUBJECT_ID_CHARS: usize = 200;

pub fn router(core: Core) -> Router {
    Router::new()
        .route("/v1/admin/audit", get(list))
        .route("/v1/admin/audit/verify", get(verify_route))
        .with_state(core)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    limit: Option<String>,
    cursor: Option<String>,
    subject_id: Option<String>,
}

/// The list its cursors are signed for (see `paging`).
const LIST: &str = "audit";

/// A cursor past the entry `seq`: a signed cursor of this list, the seq its key.
fn encode_cursor(list: &paging::List, seq: i64) -> String {
    list.cursor_at(Position { key: seq, id: uuid::Uuid::nil() })
}

/// The seq a cursor points past (0: none given); anything but a cursor of this
/// list is a 400.
fn decode_cursor(list: &paging::List, cursor: Option<&str>) -> ApiResult<i64> {
    match list.position(cursor)? {
        None => Ok(0),
        Some(Position { key, id }) if key >= 1 && id.is_nil() => Ok(key),
        Some(_) => Err(ApiError::code(ErrorCode::InvalidRequest, BadCursor.to_string())),
    }
}

/// `GET /v1/admin/audit?limit=&cursor=&subject_id=`: entries oldest first.
async fn list(
    State(core): State<Core>,
    _admin: Authorized<Admins>,
    StrictQuery(q): StrictQuery<AuditQuery>,
) -> ApiResult<Json<Page<AuditEntry>>> {
    let limit = paging::limit(q.limit.as_deref())?;
    let cursors = paging::List::new(&core, LIST);
    let after = decode_cursor(&cursors, q.cursor.as_deref())?;
    if let Some(subject) = &q.subject_id {
        if subject.chars().count() > MAX_SUBJECT_ID_CHARS || subject.contains('\0') {
            return Err(ApiError::code(
                ErrorCode::InvalidRequest,
                format!("query `subject_id`: at most {MAX_SUBJECT_ID_CHARS} characters, none of them NUL"),
            ));
        }
    }
    // So the page holds every entry committed before this read.
    settled(&core).await;
    // Two queries rather than one with an optional filter: each keeps its own index.
    let rows = match &q.subject_id {
        Some(subject) => {
            sqlx::query_as!(
                chain::Row,
                "SELECT seq, at, action, actor_user_id, actor_role, subject_kind, subject_id, request_id,
                        server_request_id, data, prev_hash, hash
                 FROM audit_log WHERE subject_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                subject,
                after,
                limit + 1
            )
            .fetch_all(&core.db)
            .await?
        }
        None => {
            sqlx::query_as!(
                chain::Row,
                "SELECT seq, at, action, actor_user_id, actor_role, subject_kind, subject_id, request_id,
                        server_request_id, data, prev_hash, hash
                 FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2",
                after,
                limit + 1
            )
            .fetch_all(&core.db)
            .await?
        }
    };
    let entries: Vec<AuditEntry> = rows.into_iter().map(AuditEntry::from).collect();
    Ok(Json(paging::page(entries, limit, |last| encode_cursor(&cursors, last.seq))))
}

/// `GET /v1/admin/audit/verify`: the whole chain, checked again.
async fn verify_route(State(core): State<Core>, _admin: Authorized<Admins>) -> ApiResult<Json<AuditVerification>> {
    settled(&core).await;
    Ok(Json(verify(&core.db, &core.settings.audit).await?))
}

/// The chain checked link by link, and against its seals: valid only if both hold;
/// the first entry that does not is the earlier of the two findings.
pub async fn verify(db: &sqlx::PgPool, keys: &AuditSettings) -> anyhow::Result<AuditVerification> {
    let mut verdict = chain::verify(db).await?;
    let sealed = seal::check(db, keys).await?;
    verdict.sealed_through_seq = sealed.sealed_through;
    if let Some(unvouched) = sealed.first_unvouched {
        verdict.valid = false;
        verdict.first_invalid_seq = Some(verdict.first_invalid_seq.map_or(unvouched, |n| n.min(unvouched)));
    }
    Ok(verdict)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_others_are_refused() {
        let key = drops_shared::cursor::CursorKey::derive(b"secret");
        let list = paging::List::with_key(key.clone(), LIST);
        assert_eq!(decode_cursor(&list, Some(&encode_cursor(&list, 42))).ok(), Some(42));
        assert_eq!(decode_cursor(&list, None).ok(), Some(0));
        let foreign = paging::List::with_key(key, "orders-1").cursor(uuid::Uuid::from_u128(1));
        for bad in [
            "".to_owned(),
            "not base64!".to_owned(),
            foreign,
            encode_cursor(&list, 0),
            encode_cursor(&list, -4),
            list.cursor(uuid::Uuid::from_u128(4)),
            format!("{}!", encode_cursor(&list, 42)),
        ] {
            assert!(decode_cursor(&list, Some(&bad)).is_err(), "{bad}");
        }
    }
}
