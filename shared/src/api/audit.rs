//! The audit log's entries and its verification (`/v1/admin/audit`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Who did an audited thing: a signed-in user, or nobody (`null`: the platform
/// itself, or an event no single user caused).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditActor {
    pub user_id: Uuid,
    /// `buyer`, `creator` or `admin`.
    pub role: String,
}

/// What an audited thing was done to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditSubject {
    /// `order`, `drop`, `creator`, `product`, `media`, …
    pub kind: String,
    pub id: String,
}

/// An item of `GET /v1/admin/audit`. `hash` is SHA-256 (hex) over `prev_hash` and
/// the entry's canonical JSON (every field but the two hashes, keys sorted, no
/// whitespace), so any edit breaks the chain from there on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditEntry {
    pub seq: i64,
    pub at: DateTime<Utc>,
    /// `<subject kind>.<what happened>`: `order.confirmed`, `creator.created`, …
    pub action: String,
    pub actor: Option<AuditActor>,
    pub subject: AuditSubject,
    /// The client's `x-request-id`, as it was sent.
    pub request_id: Option<String>,
    /// The origin's own id of the request (its logs carry it too); hashed when present.
    #[serde(default)]
    pub server_request_id: Option<String>,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub data: serde_json::Value,
    pub hash: String,
    pub prev_hash: String,
}

/// Answer of `GET /v1/admin/audit/verify`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditVerification {
    pub entries: u64,
    pub valid: bool,
    /// The first entry whose hash or link does not match, or that no valid seal
    /// vouches for any more; `null` when all hold.
    pub first_invalid_seq: Option<i64>,
    /// The newest entry a seal (an HMAC with a key outside the database over the
    /// chain's head) vouches for, and so every entry before it; `null` before the first seal.
    #[serde(default)]
    pub sealed_through_seq: Option<i64>,
}
