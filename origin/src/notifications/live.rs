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
//! 3. A free slot among the user's sockets (429 `rate_limited`, see [`Slot`]).
//!
//! The server closes the socket (code [`TOKEN_EXPIRED`], "token expired") when the
//! credentials it was opened with expire: the token's `exp`, or for a ticket the
//! `exp` of the token that obtained it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use drops_shared::auth::verify_bearer;
use drops_shared::problem::{ErrorCode, Problem};
use drops_shared::signing::sign_internal;
use futures::StreamExt;
use redis::aio::ConnectionManager;
use redis::AsyncCommands;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::NotificationsState;
use crate::error::{ApiError, ApiResult};
use crate::extract::AuthUser;
use crate::state::{Core, LazyRedis};

const PRESENCE_TTL_SECS: u64 = 30;
pub const HEARTBEAT: Duration = Duration::from_secs(10);
/// How long a stream ticket may wait to be used.
pub const TICKET_TTL_SECS: i64 = 30;
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
/// The path the stream's tickets are hashed under (see [`ticket_key`]).
const STREAM_PATH: &str = "/v1/notifications/stream";

/// A message on a user's socket: `{"kind", "payload", "id"?}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LiveMessage {
    pub kind: String,
    pub payload: serde_json::Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<Uuid>,
}

#[derive(Serialize, Deserialize)]
struct Delivery {
    users: Vec<Uuid>,
    message: LiveMessage,
    /// A Redis list the holder pushes to once it has written the message to the
    /// sockets, when the sender waits for that (see [`wait_acks`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ack: Option<String>,
}

/// Dropped once a message is written to one socket: the holder of the other end knows
/// every socket has it when all of them are.
type Written = Option<mpsc::Sender<()>>;

/// What is written to one socket.
type SocketOutbox = mpsc::UnboundedSender<(Arc<str>, Written)>;

/// How many message ids the holder remembers per user, to write each message once.
const RECENT_IDS: usize = 16;

/// One user's sockets on this instance, and the ids of the messages last written to them.
#[derive(Default)]
struct UserSockets {
    sockets: Vec<(u64, SocketOutbox)>,
    recent: std::collections::VecDeque<Uuid>,
}

/// The sockets this instance holds.
pub struct Live {
    pub instance: String,
    sockets: Mutex<HashMap<Uuid, UserSockets>>,
    next: AtomicU64,
    /// One connection for tickets, slots and heartbeats of every socket here.
    redis: LazyRedis,
}

impl Default for Live {
    fn default() -> Self {
        Self {
            instance: Uuid::new_v4().simple().to_string(),
            sockets: Mutex::default(),
            next: AtomicU64::new(1),
            redis: LazyRedis::default(),
        }
    }
}

impl Live {
    fn register(&self, user: Uuid) -> (u64, mpsc::UnboundedReceiver<(Arc<str>, Written)>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.sockets.lock().expect("sockets").entry(user).or_default().sockets.push((id, tx));
        (id, rx)
    }

    /// The users with a socket here.
    fn users(&self) -> Vec<Uuid> {
        self.sockets.lock().expect("sockets").keys().copied().collect()
    }

    /// Forgets a socket; true when the user has none left here.
    fn unregister(&self, user: Uuid, id: u64) -> bool {
        let mut sockets = self.sockets.lock().expect("sockets");
        let Some(user_sockets) = sockets.get_mut(&user) else { return true };
        user_sockets.sockets.retain(|(i, _)| *i != id);
        let gone = user_sockets.sockets.is_empty();
        if gone {
            sockets.remove(&user);
        }
        gone
    }

    /// Writes to this instance's sockets of `users`, skipping a user whose sockets were
    /// written this message (same `id`) already; returns how many sockets got it. Each
    /// socket keeps a clone of `written`, if given, until the message is written to it.
    pub fn deliver_local(&self, users: &[Uuid], message: &LiveMessage, written: Option<&mpsc::Sender<()>>) -> usize {
        let text: Arc<str> = serde_json::to_string(message).unwrap_or_default().into();
        let mut sockets = self.sockets.lock().expect("sockets");
        let mut sent = 0;
        for user in users {
            let Some(user_sockets) = sockets.get_mut(user) else { continue };
            if let Some(id) = message.id {
                if user_sockets.recent.contains(&id) {
                    continue;
                }
                if user_sockets.recent.len() == RECENT_IDS {
                    user_sockets.recent.pop_front();
                }
                user_sockets.recent.push_back(id);
            }
            sent +=
                user_sockets.sockets.iter().filter(|(_, tx)| tx.send((text.clone(), written.cloned())).is_ok()).count();
        }
        sent
    }
}

fn channel(prefix: &str, instance: &str) -> String {
    format!("{prefix}:live:{instance}")
}

fn online_key(prefix: &str, instance: &str) -> String {
    format!("{prefix}:online:{instance}")
}

fn instances_key(prefix: &str) -> String {
    format!("{prefix}:instances")
}

/// An instance that missed this many heartbeats is gone (its sockets with it).
const INSTANCE_STALE_MS: i64 = PRESENCE_TTL_SECS as i64 * 1000;

/// This instance's heartbeat: it is live, and holds the sockets of these users. The
/// set is made to match the sockets held (a Redis that lost it has it back, a user whose
/// leaving was not recorded leaves it) within a beat. It is read before the sockets are
/// listed: a user whose socket opens meanwhile was added after that read, and stays.
pub async fn beat(state: &NotificationsState) -> anyhow::Result<()> {
    let prefix = state.core.redis_prefix();
    let instance = &state.live.instance;
    let (mut conn, _) = state.live.redis.get(&state.core.redis).await?;
    let key = online_key(prefix, instance);
    let result: redis::RedisResult<()> = async {
        let recorded: Vec<String> = conn.smembers(&key).await?;
        let held: std::collections::HashSet<String> = state.live.users().iter().map(Uuid::to_string).collect();
        let left: Vec<&String> = recorded.iter().filter(|u| !held.contains(*u)).collect();
        let held: Vec<String> = held.into_iter().collect();
        let now = Utc::now().timestamp_millis();
        let mut pipe = redis::pipe();
        for chunk in left.chunks(10_000) {
            pipe.srem(&key, chunk).ignore();
        }
        for chunk in held.chunks(10_000) {
            pipe.sadd(&key, chunk).ignore();
        }
        pipe.pexpire(&key, INSTANCE_STALE_MS)
            .ignore()
            .zadd(instances_key(prefix), instance, now)
            .ignore()
            .zrembyscore(instances_key(prefix), "-inf", now - INSTANCE_STALE_MS)
            .ignore()
            .query_async(&mut conn)
            .await
    }
    .await;
    if let Err(e) = result {
        state.live.redis.reset().await;
        return Err(e.into());
    }
    Ok(())
}

/// The instances that may hold sockets: those whose heartbeat is recent.
pub async fn online_instances(state: &Core) -> anyhow::Result<Vec<String>> {
    let mut conn = state.redis_conn().await?;
    let since = Utc::now().timestamp_millis() - INSTANCE_STALE_MS;
    Ok(conn.zrangebyscore(instances_key(state.redis_prefix()), since, "+inf").await?)
}

/// How many users hold a socket on `instance`.
pub async fn online_count(state: &Core, instance: &str) -> anyhow::Result<u64> {
    let mut conn = state.redis_conn().await?;
    Ok(conn.scard(online_key(state.redis_prefix(), instance)).await?)
}

/// The users holding a socket on `instance`.
pub async fn online_users(state: &Core, instance: &str) -> anyhow::Result<Vec<Uuid>> {
    let mut conn = state.redis_conn().await?;
    let members: Vec<String> = conn.smembers(online_key(state.redis_prefix(), instance)).await?;
    Ok(members.iter().filter_map(|m| Uuid::parse_str(m).ok()).collect())
}

/// Which of `users` hold a socket on `instance`.
pub async fn online_among(state: &Core, instance: &str, users: &[Uuid]) -> anyhow::Result<Vec<Uuid>> {
    if users.is_empty() {
        return Ok(Vec::new());
    }
    let mut conn = state.redis_conn().await?;
    let members: Vec<String> = users.iter().map(Uuid::to_string).collect();
    let found: Vec<bool> = redis::cmd("SMISMEMBER")
        .arg(online_key(state.redis_prefix(), instance))
        .arg(&members)
        .query_async(&mut conn)
        .await?;
    Ok(users.iter().zip(found).filter(|(_, on)| *on).map(|(u, _)| *u).collect())
}

/// Publishes `message` for `users` to the instance holding their sockets; returns how
/// many parts were heard (none: that instance was not listening, it died since its last
/// heartbeat). With `ack`, the holder pushes to that list once it has written each part
/// to the sockets (see [`wait_acks`]).
pub async fn publish(
    state: &Core,
    instance: &str,
    users: &[Uuid],
    message: &LiveMessage,
    ack: Option<&str>,
) -> anyhow::Result<usize> {
    let mut conn = state.redis_conn().await?;
    let mut heard = 0;
    // Kept to a size the holder parses in a moment, whatever the audience.
    for chunk in users.chunks(5_000) {
        let delivery = Delivery { users: chunk.to_vec(), message: message.clone(), ack: ack.map(str::to_owned) };
        let listeners: i64 =
            conn.publish(channel(state.redis_prefix(), instance), serde_json::to_string(&delivery)?).await?;
        if listeners == 0 {
            return Ok(heard);
        }
        heard += 1;
    }
    Ok(heard)
}

/// A new list for holders to acknowledge on.
pub fn ack_key(state: &Core) -> String {
    format!("{}:live-ack:{}", state.redis_prefix(), Uuid::new_v4().simple())
}

/// Waits until `parts` acknowledgements arrived on `key`, or `within` passed; returns
/// how many arrived.
pub async fn wait_acks(state: &Core, key: &str, parts: usize, within: Duration) -> anyhow::Result<usize> {
    // A connection of its own: BLPOP blocks it.
    let mut conn = state.redis.get_multiplexed_async_connection().await?;
    let deadline = tokio::time::Instant::now() + within;
    let mut acked = 0;
    while acked < parts {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            break;
        }
        let got: Option<(String, String)> =
            redis::cmd("BLPOP").arg(key).arg(left.as_secs_f64().max(0.01)).query_async(&mut conn).await?;
        if got.is_none() {
            break;
        }
        acked += 1;
    }
    let _: redis::RedisResult<i64> = conn.del(key).await;
    Ok(acked)
}

/// Tells the sender a part was written to the sockets, once every socket has it (or a
/// second passed: a socket that cannot take it holds up no one).
async fn acknowledge(state: Core, key: String, mut written: mpsc::Receiver<()>) {
    let _ = tokio::time::timeout(Duration::from_secs(1), written.recv()).await;
    let acked: redis::RedisResult<()> = async {
        let mut conn = state.redis_conn().await?;
        redis::pipe().rpush(&key, 1).ignore().expire(&key, 60).ignore().query_async(&mut conn).await
    }
    .await;
    if let Err(e) = acked {
        tracing::warn!(error = %e, "live delivery not acknowledged");
    }
}

/// Sends `message` to whichever of `users` are online, on every instance holding a
/// socket of theirs (a user on a phone and a laptop may be on two). Returns those who
/// were online.
pub async fn send(state: &Core, users: &[Uuid], message: &LiveMessage) -> anyhow::Result<Vec<Uuid>> {
    if users.is_empty() {
        return Ok(Vec::new());
    }
    let mut online = std::collections::HashSet::new();
    for instance in online_instances(state).await? {
        let held = online_among(state, &instance, users).await?;
        if !held.is_empty() && publish(state, &instance, &held, message, None).await? > 0 {
            online.extend(held);
        }
    }
    Ok(online.into_iter().collect())
}

/// Listens on this instance's channel and writes what arrives to local sockets,
/// until the subscription fails (the caller subscribes again).
pub async fn subscribe(state: &NotificationsState) -> anyhow::Result<()> {
    let name = channel(state.core.redis_prefix(), &state.live.instance);
    let mut pubsub = state.core.redis.get_async_pubsub().await?;
    pubsub.subscribe(&name).await?;
    let mut messages = pubsub.on_message();
    while let Some(msg) = messages.next().await {
        let payload: String = msg.get_payload()?;
        if let Ok(d) = serde_json::from_str::<Delivery>(&payload) {
            // Told once every socket has it (all the clones of `written` are dropped).
            let written = d.ack.map(|key| {
                let (written, all_written) = mpsc::channel(1);
                tokio::spawn(acknowledge(state.core.clone(), key, all_written));
                written
            });
            state.live.deliver_local(&d.users, &d.message, written.as_ref());
        }
    }
    anyhow::bail!("live subscription closed")
}

/// `POST /v1/notifications/stream-ticket`; the stream itself is routed with the inbox.
pub fn router() -> Router<NotificationsState> {
    Router::new().route("/v1/notifications/stream-ticket", post(issue_ticket))
}

fn unauthorized(detail: &str) -> Problem {
    Problem::new(ErrorCode::Unauthorized, Some(detail.to_owned()))
}

fn internal(e: impl Into<anyhow::Error>) -> ApiError {
    ApiError::Internal(e.into())
}

/// Whom a socket is for, and until when the credentials it was opened with hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Credentials {
    user: Uuid,
    expires_at: DateTime<Utc>,
}

/// The `exp` of a bearer token (`Authorization` value); read only once
/// [`verify_bearer`] has checked the token's signature.
fn token_expiry(authorization: &str) -> Option<DateTime<Utc>> {
    #[derive(Deserialize)]
    struct Exp {
        exp: i64,
    }
    let token = authorization.split_once(' ')?.1.trim();
    let payload = URL_SAFE_NO_PAD.decode(token.split('.').nth(1)?).ok()?;
    DateTime::from_timestamp(serde_json::from_slice::<Exp>(&payload).ok()?.exp, 0)
}

/// A bearer token's credentials at `now`: valid, and not yet expired (the verifier
/// allows some clock skew past `exp`; a socket opened then would close at once).
fn bearer_credentials(authorization: Option<&str>, secret: &[u8], now: DateTime<Utc>) -> Result<Credentials, Problem> {
    let identity = verify_bearer(authorization, secret, now)?;
    let expires_at = authorization.and_then(token_expiry).ok_or_else(|| unauthorized("token without `exp`"))?;
    if expires_at <= now {
        return Err(unauthorized("token expired"));
    }
    Ok(Credentials { user: identity.user_id, expires_at })
}

/// A new ticket: 32 bytes from the OS's generator, base64url without padding.
fn new_ticket() -> String {
    use web_push_native::p256::elliptic_curve::rand_core::{OsRng, RngCore};
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Whether `s` could be a ticket [`new_ticket`] made (so nothing else reaches Redis).
fn looks_like_ticket(s: &str) -> bool {
    s.len() == 43 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Where a ticket is kept: under a keyed hash of it (HMAC-SHA256 under the token
/// secret, through the shared signing code; its method and path fields keep it apart
/// from any internal-call signature), so Redis, its dumps and its logs hold no ticket
/// that could be used.
fn ticket_key(prefix: &str, secret: &[u8], ticket: &str) -> String {
    format!("{prefix}:stream-ticket:{}", sign_internal(secret, "TICKET", STREAM_PATH, 0, ticket.as_bytes()))
}

/// What a ticket grants, as kept in Redis.
#[derive(Debug, Serialize, Deserialize)]
struct Grant {
    user: Uuid,
    /// The `exp` (unix seconds) of the token that obtained the ticket.
    exp: i64,
}

const UNKNOWN_TICKET: &str = "unknown, used or expired ticket";

/// The credentials of a redeemed ticket's grant (`None`: unknown, used or expired).
fn granted(grant: Option<&str>, now: DateTime<Utc>) -> Result<Credentials, Problem> {
    let refused = || unauthorized(UNKNOWN_TICKET);
    let grant: Grant = grant.and_then(|g| serde_json::from_str(g).ok()).ok_or_else(refused)?;
    let expires_at = DateTime::from_timestamp(grant.exp, 0).ok_or_else(refused)?;
    if expires_at <= now {
        return Err(unauthorized("the token that obtained this ticket has expired"));
    }
    Ok(Credentials { user: grant.user, expires_at })
}

#[derive(Serialize)]
struct StreamTicket {
    ticket: String,
    expires_at: DateTime<Utc>,
}

/// `POST /v1/notifications/stream-ticket` → 201 `{"ticket", "expires_at"}`.
async fn issue_ticket(
    State(state): State<NotificationsState>,
    AuthUser(identity): AuthUser,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let now = Utc::now();
    let secret = state.core.settings.auth.jwt_secret.expose_secret().as_bytes();
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let credentials = bearer_credentials(authorization, secret, now)?;
    let expires_at = (now + chrono::Duration::seconds(TICKET_TTL_SECS)).min(credentials.expires_at);
    let ticket = new_ticket();
    let grant = serde_json::to_string(&Grant { user: identity.user_id, exp: credentials.expires_at.timestamp() })
        .map_err(internal)?;
    let (mut conn, _) = state.live.redis.get(&state.core.redis).await.map_err(internal)?;
    let stored: Option<String> = redis::cmd("SET")
        .arg(ticket_key(state.core.redis_prefix(), secret, &ticket))
        .arg(grant)
        .arg("PX")
        .arg((expires_at - now).num_milliseconds().max(1))
        .arg("NX")
        .query_async(&mut conn)
        .await
        .map_err(internal)?;
    if stored.is_none() {
        return Err(internal(anyhow::anyhow!("a new stream ticket collided with a live one")));
    }
    let mut resp = (StatusCode::CREATED, Json(StreamTicket { ticket, expires_at })).into_response();
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// The credentials a stream request presents.
#[derive(Debug, PartialEq, Eq)]
enum Presented<'a> {
    /// The `Authorization` header (checked as it is: a bad one is not made up for
    /// by a ticket).
    Bearer(Option<&'a str>),
    Ticket(String),
}

fn presented<'a>(headers: &'a HeaderMap, query: Option<&str>) -> Result<Presented<'a>, Problem> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        return Ok(Presented::Bearer(value.to_str().ok()));
    }
    let params: Vec<(String, String)> = query.and_then(|q| serde_urlencoded::from_str(q).ok()).unwrap_or_default();
    if let Some((_, ticket)) = params.iter().find(|(k, _)| k == "ticket") {
        return Ok(Presented::Ticket(ticket.clone()));
    }
    Err(unauthorized(if params.iter().any(|(k, _)| k == "access_token") {
        "a token is not accepted in the URL: send `Authorization: Bearer <token>`, or \
         `?ticket=` from `POST /v1/notifications/stream-ticket`"
    } else {
        "send `Authorization: Bearer <token>`, or `?ticket=` from `POST /v1/notifications/stream-ticket`"
    }))
}

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
    use drops_shared::auth::{mint, Identity, Role};

    use super::*;

    const SECRET: &[u8] = b"test-secret-test-secret-test-secret";

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }

    fn bearer(exp: DateTime<Utc>) -> String {
        format!("Bearer {}", mint(Identity { user_id: Uuid::from_u128(7), role: Role::Buyer }, SECRET, exp))
    }

    #[test]
    fn tickets_are_256_random_bits_in_base64url() {
        let (a, b) = (new_ticket(), new_ticket());
        assert_ne!(a, b);
        assert_eq!(URL_SAFE_NO_PAD.decode(&a).unwrap().len(), 32);
        assert!(looks_like_ticket(&a) && looks_like_ticket(&b), "{a}");
        for not in ["", "short", &format!("{a}x"), &a.replace(&a[..1], "+"), &format!("{}/", &a[..42])] {
            assert!(!looks_like_ticket(not), "{not}");
        }
    }

    #[test]
    fn a_ticket_is_kept_under_a_keyed_hash_of_it() {
        let ticket = new_ticket();
        let key = ticket_key("drops", SECRET, &ticket);
        assert_eq!(key, ticket_key("drops", SECRET, &ticket), "the same ticket finds its grant");
        let digest = key.strip_prefix("drops:stream-ticket:").expect("under the prefix");
        assert_eq!(digest.len(), 64);
        assert!(digest.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(!key.contains(&ticket), "the ticket itself is not in Redis");
        assert_ne!(key, ticket_key("drops", SECRET, &new_ticket()));
        assert_ne!(key, ticket_key("drops", b"another-secret", &ticket));
        assert!(ticket_key("staging", SECRET, &ticket).starts_with("staging:stream-ticket:"));
    }

    #[test]
    fn key_names() {
        let user = Uuid::from_u128(7);
        assert_eq!(sockets_key("drops", user), format!("drops:sockets:{user}"));
        assert_eq!(online_key("drops", "i1"), "drops:online:i1");
    }

    #[test]
    fn a_message_with_an_id_reaches_a_users_sockets_once() {
        let live = Live::default();
        let (alice, bob) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let (_, mut a1) = live.register(alice);
        let (_, mut a2) = live.register(alice);
        let (_, mut b) = live.register(bob);
        let message =
            LiveMessage { kind: "drop_live".into(), payload: serde_json::json!({}), id: Some(Uuid::from_u128(9)) };
        assert_eq!(live.deliver_local(&[alice, bob], &message, None), 3);
        assert_eq!(live.deliver_local(&[alice, bob], &message, None), 0, "published again: written once");
        let other = LiveMessage { id: Some(Uuid::from_u128(10)), ..message.clone() };
        assert_eq!(live.deliver_local(&[alice], &other, None), 2);
        let untracked = LiveMessage { id: None, ..message };
        assert_eq!(live.deliver_local(&[bob], &untracked, None), 1);
        assert_eq!(live.deliver_local(&[bob], &untracked, None), 1, "no id: nothing to tell repeats by");
        let count =
            |rx: &mut mpsc::UnboundedReceiver<(Arc<str>, Written)>| std::iter::from_fn(|| rx.try_recv().ok()).count();
        assert_eq!((count(&mut a1), count(&mut a2), count(&mut b)), (2, 2, 3));
        let mut users = live.users();
        users.sort();
        assert_eq!(users, vec![alice, bob]);
    }

    #[test]
    fn bearer_credentials_carry_the_token_expiry() {
        let exp = now() + chrono::Duration::minutes(5);
        let got = bearer_credentials(Some(&bearer(exp)), SECRET, now()).unwrap();
        assert_eq!(got, Credentials { user: Uuid::from_u128(7), expires_at: exp });
        // Within the verifier's clock-skew allowance, but already past `exp`.
        let just_expired = bearer(now() - chrono::Duration::seconds(5));
        assert_eq!(bearer_credentials(Some(&just_expired), SECRET, now()).unwrap_err().status, 401);
        assert_eq!(bearer_credentials(Some(&bearer(exp)), b"other", now()).unwrap_err().status, 401);
        assert_eq!(bearer_credentials(None, SECRET, now()).unwrap_err().status, 401);
    }

    #[test]
    fn a_grant_holds_until_its_token_expires() {
        let user = Uuid::from_u128(9);
        let exp = now() + chrono::Duration::minutes(1);
        let grant = serde_json::to_string(&Grant { user, exp: exp.timestamp() }).unwrap();
        assert_eq!(granted(Some(&grant), now()).unwrap(), Credentials { user, expires_at: exp });
        assert_eq!(granted(Some(&grant), exp).unwrap_err().status, 401);
        assert_eq!(granted(None, now()).unwrap_err().status, 401);
        assert_eq!(granted(Some("not a grant"), now()).unwrap_err().status, 401);
    }

    #[test]
    fn credentials_come_from_the_header_or_a_ticket_never_a_token_in_the_url() {
        let mut headers = HeaderMap::new();
        let err = presented(&headers, Some("access_token=abc")).unwrap_err();
        assert_eq!(err.status, 401);
        assert!(err.detail.unwrap_or_default().contains("not accepted in the URL"));
        assert_eq!(presented(&headers, None).unwrap_err().status, 401);
        assert_eq!(presented(&headers, Some("%%%")).unwrap_err().status, 401);
        assert_eq!(presented(&headers, Some("ticket=t1&x=y")).unwrap(), Presented::Ticket("t1".into()));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer abc"));
        assert_eq!(presented(&headers, Some("ticket=t1")).unwrap(), Presented::Bearer(Some("Bearer abc")));
    }
}
