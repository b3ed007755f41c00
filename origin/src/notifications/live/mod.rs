//! Live delivery: the WebSocket `GET /v1/notifications/stream`, and who is online
//! where. Presence lives in Redis, so any instance can send to any user: it publishes
//! on the holder's channel (`<prefix>:live:<instance>`) and the holder writes to the
//! socket. Each instance keeps the set `<prefix>:online:<instance>` of the users it
//! holds sockets of, and its heartbeat in `<prefix>:instances`; both lapse 30 s after
//! the instance dies. A few users are looked up in each live instance's set ([`send`]:
//! a user with sockets on two instances hears on both); a fan-out intersects the sets
//! with an audience from whichever side is smaller ([`online_instances`],
//! [`online_users`], [`online_among`], [`publish`]).
//!
//! A message with an `id` reaches a user's sockets on an instance at most once, however
//! often it is published (a fan-out retried after a crash sends again): the holder
//! remembers the last ids it wrote for each user.
//!
//! Opening a socket, in this order, each refusal a problem+json before any upgrade:
//! 1. Credentials (401 `unauthorized`): `Authorization: Bearer <token>` (native
//!    apps), or `?ticket=` for browsers, which cannot set headers on a WebSocket. A
//!    ticket comes from `POST /v1/notifications/stream-ticket` (bearer auth): 32
//!    random bytes, base64url, valid [`TICKET_TTL_SECS`] and never longer than its
//!    token, kept in Redis only as a keyed hash (`<prefix>:stream-ticket:<hmac>` →
//!    the user and the token's `exp`) and taken with `GETDEL`, so it opens one
//!    socket. A token in the URL (`?access_token=`) is not accepted: URLs end up in
//!    access logs. Tickets are never logged.
//! 2. An upgrade (400 `invalid_request` for a plain request).
//! 3. A free slot among the user's sockets (429 `rate_limited`, see `socket::Slot`).
//!
//! The server closes the socket (code [`TOKEN_EXPIRED`], "token expired") when the
//! credentials it was opened with expire: the token's `exp`, or for a ticket the
//! `exp` of the token that obtained it.
//!
//! The module's parts: [`presence`] (this instance's sockets, presence in Redis,
//! sending anywhere), [`tickets`] (a socket's credentials) and [`socket`] (the stream
//! route, the per-user slots, holding a socket open).

use std::time::Duration;

use axum::routing::post;
use axum::Router;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::NotificationsState;

pub mod presence;
pub mod socket;
pub mod tickets;

pub use presence::{
    ack_key, beat, online_among, online_count, online_instances, online_users, publish, send, subscribe, wait_acks,
    Live,
};
pub use socket::{stream, TOKEN_EXPIRED};
pub use tickets::TICKET_TTL_SECS;

const PRESENCE_TTL_SECS: u64 = 30;
pub const HEARTBEAT: Duration = Duration::from_secs(10);

/// A message on a user's socket: `{"kind", "payload", "id"?}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LiveMessage {
    pub kind: String,
    pub payload: serde_json::Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<Uuid>,
}

/// `POST /v1/notifications/stream-ticket`; the stream itself is routed with the inbox.
pub fn router() -> Router<NotificationsState> {
    Router::new().route("/v1/notifications/stream-ticket", post(tickets::issue_ticket))
}
