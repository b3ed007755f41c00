//! The socket itself (see the parent module's doc): `GET /v1/notifications/stream`,
//! the user's slot among their sockets on every instance, and holding it open.

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use drops_shared::problem::ErrorCode;
use redis::aio::ConnectionManager;
use redis::AsyncCommands;
use secrecy::ExposeSecret;
use uuid::Uuid;

use super::presence::{online_key, INSTANCE_STALE_MS};
use super::tickets::{
    bearer_credentials, granted, internal, looks_like_ticket, presented, ticket_key, unauthorized, Credentials,
    Presented, UNKNOWN_TICKET,
};
use super::{HEARTBEAT, PRESENCE_TTL_SECS};
use crate::http::error::{ApiError, ApiResult};
use crate::notifications::NotificationsState;

/// The close code of a socket whose credentials expired (4000–4999: the application's).
pub const TOKEN_EXPIRED: u16 = 4001;
/// A socket whose heartbeat is older than this no longer holds a slot (its instance
/// is gone); three heartbeats, as presence.
const SLOT_STALE_MS: i64 = PRESENCE_TTL_SECS as i64 * 1000;
/// The `Retry-After` of a refusal for too many sockets: a slot frees when the user
/// closes a socket, or within a heartbeat or three if one was left by a dead instance.
const SLOT_RETRY_AFTER_SECS: u64 = HEARTBEAT.as_secs();
/// A socket's read and write buffers.
const SOCKET_BUFFER: usize = 4 * 1024;
/// What a client may send in one message: the stream reads nothing but control frames.
const MAX_INCOMING: usize = 16 * 1024;
/// Messages waiting for a slow client, in bytes; past it the socket is closed.
const MAX_OUTGOING: usize = 1024 * 1024;

/// `GET /v1/notifications/stream`: credentials, then the upgrade, then a slot.
pub async fn stream(
    State(state): State<NotificationsState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    let now = Utc::now();
    let secret = state.core.settings.auth.jwt_secret.expose_secret().as_bytes();
    let credentials = match presented(&headers, query.as_deref())? {
        Presented::Bearer(authorization) => bearer_credentials(authorization, secret, now)?,
        Presented::Ticket(ticket) => {
            if !looks_like_ticket(&ticket) {
                return Err(unauthorized(UNKNOWN_TICKET).into());
            }
            let (mut conn, _) = state.live.redis.get(&state.core.redis).await.map_err(internal)?;
            let key = ticket_key(state.core.redis_prefix(), secret, &ticket);
            let grant: Option<String> = redis::cmd("GETDEL").arg(key).query_async(&mut conn).await.map_err(internal)?;
            granted(grant.as_deref(), now)?
        }
    };
    let Ok(upgrade) = upgrade else {
        return Err(ApiError::code(
            ErrorCode::InvalidRequest,
            "this route is a WebSocket: send `Connection: Upgrade` and `Upgrade: websocket`",
        ));
    };
    let (conn, _) = state.live.redis.get(&state.core.redis).await.map_err(internal)?;
    let cap = state.core.settings.notifications.max_sockets_per_user;
    let Some(slot) =
        Slot::claim(conn, sockets_key(state.core.redis_prefix(), credentials.user), cap).await.map_err(internal)?
    else {
        let detail = format!("at most {cap} notification sockets per user are open at once; close one");
        let mut resp = ApiError::code(ErrorCode::RateLimited, detail).into_response();
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(SLOT_RETRY_AFTER_SECS));
        return Ok(resp);
    };
    // Sized for what the stream carries (small JSON out, nothing but control frames in):
    // the library's defaults (128 KiB buffers each way, 64 MiB messages) would make ten
    // thousand idle sockets cost gigabytes.
    let upgrade = upgrade
        .read_buffer_size(SOCKET_BUFFER)
        .write_buffer_size(SOCKET_BUFFER)
        .max_write_buffer_size(MAX_OUTGOING)
        .max_message_size(MAX_INCOMING)
        .max_frame_size(MAX_INCOMING);
    Ok(upgrade.on_upgrade(move |socket| hold(state, credentials, slot, socket)))
}

fn sockets_key(prefix: &str, user: Uuid) -> String {
    format!("{prefix}:sockets:{user}")
}

/// Claims a slot: forgets the user's stale sockets, then joins if fewer than the cap
/// remain. ARGV: socket id, now (ms), cap, staleness (ms).
const CLAIM: &str = r"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', tonumber(ARGV[2]) - tonumber(ARGV[4]))
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
";

/// A socket's place among its user's sockets, on every instance: the sorted set
/// `<prefix>:sockets:<user>` of socket ids scored by their last heartbeat (ms). A
/// socket leaves it when it ends (or, should that fail, when this is dropped); a
/// socket of an instance that died stops being renewed and is pruned
/// [`SLOT_STALE_MS`] later by the next claim, and the whole set expires then too.
///
/// Over the cap, the new socket is refused (429 before the upgrade) rather than the
/// oldest closed: a refusal costs nothing and touches no socket in use, while
/// closing the oldest would need a message to whichever instance holds it, would let
/// a client stuck in a reconnect loop (or someone with a leaked token) knock the
/// user's other devices off in turn, and would leave a device whose socket was
/// closed reconnecting and closing another. A socket the user gave up on frees its
/// slot as soon as its connection closes.
struct Slot {
    conn: ConnectionManager,
    key: String,
    id: String,
    released: bool,
}

impl Slot {
    async fn claim(mut conn: ConnectionManager, key: String, cap: u32) -> redis::RedisResult<Option<Slot>> {
        let id = Uuid::new_v4().simple().to_string();
        let joined: i64 = redis::Script::new(CLAIM)
            .key(&key)
            .arg(&id)
            .arg(Utc::now().timestamp_millis())
            .arg(cap)
            .arg(SLOT_STALE_MS)
            .invoke_async(&mut conn)
            .await?;
        Ok((joined == 1).then_some(Slot { conn, key, id, released: false }))
    }

    async fn renew(&mut self) -> redis::RedisResult<()> {
        redis::pipe()
            .atomic()
            .zadd(&self.key, &self.id, Utc::now().timestamp_millis())
            .ignore()
            .pexpire(&self.key, SLOT_STALE_MS)
            .ignore()
            .query_async(&mut self.conn)
            .await
    }

    async fn release(mut self) {
        self.released = true;
        let _: redis::RedisResult<i64> = self.conn.zrem(&self.key, &self.id).await;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        // A socket that never opened (the client left during the upgrade) or whose task
        // ended early: give the slot back without waiting for it to go stale.
        if !self.released {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let (mut conn, key, id) =
                    (self.conn.clone(), std::mem::take(&mut self.key), std::mem::take(&mut self.id));
                runtime.spawn(async move {
                    let _: redis::RedisResult<i64> = conn.zrem(key, id).await;
                });
            }
        }
    }
}

async fn hold(state: NotificationsState, credentials: Credentials, mut slot: Slot, mut socket: WebSocket) {
    let user = credentials.user;
    let (id, mut outbox) = state.live.register(user);
    let mut conn = slot.conn.clone();
    let online = online_key(state.core.redis_prefix(), &state.live.instance);
    let present = redis::pipe()
        .sadd(&online, user.to_string())
        .ignore()
        .pexpire(&online, INSTANCE_STALE_MS)
        .ignore()
        .query_async::<()>(&mut conn)
        .await;
    if present.is_err() {
        tracing::warn!("no presence without redis");
        state.live.unregister(user, id);
        slot.release().await;
        return;
    }
    let _ = socket.send(Message::Text(r#"{"kind":"hello","payload":{}}"#.into())).await;
    let left = (credentials.expires_at - Utc::now()).to_std().unwrap_or_default();
    let expiry = tokio::time::sleep_until(tokio::time::Instant::now() + left);
    tokio::pin!(expiry);
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    loop {
        tokio::select! {
            out = outbox.recv() => match out {
                // `_written` is dropped once the message is written: the holder is told.
                Some((text, _written)) => if socket.send(Message::Text(text.as_ref().into())).await.is_err() { break },
                None => break,
            },
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            () = &mut expiry => {
                let frame = CloseFrame { code: TOKEN_EXPIRED, reason: "token expired".into() };
                let _ = socket.send(Message::Close(Some(frame))).await;
                break;
            }
            _ = heartbeat.tick() => {
                let _ = slot.renew().await;
                if socket.send(Message::Ping(Vec::new().into())).await.is_err() { break }
            }
        }
    }
    slot.release().await;
    if state.live.unregister(user, id) {
        let _: redis::RedisResult<i64> = conn.srem(&online, user.to_string()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names() {
        let user = Uuid::from_u128(7);
        assert_eq!(sockets_key("drops", user), format!("drops:sockets:{user}"));
    }
}
