//! A buyer's notifications: the inbox, Web Push subscriptions, tickets for the
//! notification socket.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// One notification in a buyer's inbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NotificationItem {
    pub id: Uuid,
    /// `order_confirmed`, `order_failed` or `order_expired`.
    pub kind: String,
    pub payload: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub read_at: Option<DateTime<Utc>>,
}

/// Answer of `GET /v1/notifications`: newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NotificationPage {
    pub items: Vec<NotificationItem>,
    pub next_cursor: Option<String>,
    pub unread_count: i64,
}

/// Body of `POST /v1/push/subscriptions`: a browser's `PushSubscription.toJSON()`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PushSubscription {
    /// The push service's URL for this browser (`https` on a public address).
    #[cfg_attr(feature = "openapi", schema(min_length = 8, max_length = 2048, pattern = "^https?://"))]
    pub endpoint: String,
    pub keys: PushKeys,
    /// As `PushSubscription.toJSON()` gives it (null or a time): accepted, not used.
    #[serde(default, rename = "expirationTime", skip_serializing)]
    pub expiration_time: Option<serde_json::Value>,
}

/// The browser's keys for encrypting what is pushed to it (RFC 8291).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PushKeys {
    #[cfg_attr(feature = "openapi", schema(max_length = 256))]
    pub p256dh: String,
    #[cfg_attr(feature = "openapi", schema(max_length = 64))]
    pub auth: String,
}

/// Answer of `POST /v1/notifications/stream-ticket` (201).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StreamTicket {
    /// Opaque and single-use: opens one socket as `?ticket=`.
    pub ticket: String,
    /// About 30 seconds away, never past the token that obtained it.
    pub expires_at: DateTime<Utc>,
}
