//! Live delivery: the WebSocket `GET /v1/notifications/stream`, and who is online
//! where. Presence lives in Redis (`<prefix>:presence:<user>` = the origin instance
//! holding the user's socket, expiring unless its heartbeat renews it), so any
//! instance can send to any user: it publishes on the holder's channel
//! (`<prefix>:live:<instance>`) and the holder writes to the socket.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::response::Response;
use chrono::Utc;
use drops_shared::auth::verify_bearer;
use futures::StreamExt;
use redis::AsyncCommands;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::NotificationsState;
use crate::error::{ApiError, ApiResult};
use crate::state::Core;

const PRESENCE_TTL_SECS: u64 = 30;
const HEARTBEAT: Duration = Duration::from_secs(10);

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
}

/// What is written to one socket.
type SocketOutbox = mpsc::UnboundedSender<Arc<str>>;

/// The sockets this instance holds.
pub struct Live {
    pub instance: String,
    sockets: Mutex<HashMap<Uuid, Vec<(u64, SocketOutbox)>>>,
    next: AtomicU64,
}

impl Default for Live {
    fn default() -> Self {
        Self { instance: Uuid::new_v4().simple().to_string(), sockets: Mutex::default(), next: AtomicU64::new(1) }
    }
}

impl Live {
    fn register(&self, user: Uuid) -> (u64, mpsc::UnboundedReceiver<Arc<str>>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.sockets.lock().expect("sockets").entry(user).or_default().push((id, tx));
        (id, rx)
    }

    /// Forgets a socket; true when the user has none left here.
    fn unregister(&self, user: Uuid, id: u64) -> bool {
        let mut sockets = self.sockets.lock().expect("sockets");
        let Some(list) = sockets.get_mut(&user) else { return true };
        list.retain(|(i, _)| *i != id);
        let gone = list.is_empty();
        if gone {
            sockets.remove(&user);
        }
        gone
    }

    /// Writes to this instance's sockets of `users`; returns how many sockets got it.
    pub fn deliver_local(&self, users: &[Uuid], message: &LiveMessage) -> usize {
        let text: Arc<str> = serde_json::to_string(message).unwrap_or_default().into();
        let sockets = self.sockets.lock().expect("sockets");
        users.iter().filter_map(|u| sockets.get(u)).flatten().filter(|(_, tx)| tx.send(text.clone()).is_ok()).count()
    }
}

fn presence_key(prefix: &str, user: Uuid) -> String {
    format!("{prefix}:presence:{user}")
}

fn channel(prefix: &str, instance: &str) -> String {
    format!("{prefix}:live:{instance}")
}

/// Sends `message` to whichever of `users` are online, wherever their socket is.
/// Returns those who were online.
pub async fn send(state: &Core, users: &[Uuid], message: &LiveMessage) -> anyhow::Result<Vec<Uuid>> {
    if users.is_empty() {
        return Ok(Vec::new());
    }
    let prefix = state.redis_prefix();
    let mut conn = state.redis.get_multiplexed_async_connection().await?;
    let keys: Vec<String> = users.iter().map(|u| presence_key(prefix, *u)).collect();
    let holders: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query_async(&mut conn).await?;
    let mut by_instance: HashMap<String, Vec<Uuid>> = HashMap::new();
    for (user, holder) in users.iter().zip(holders) {
        if let Some(instance) = holder {
            by_instance.entry(instance).or_default().push(*user);
        }
    }
    let mut online = Vec::new();
    for (instance, users) in by_instance {
        let delivery = serde_json::to_string(&Delivery { users: users.clone(), message: message.clone() })?;
        let _: i64 = conn.publish(channel(prefix, &instance), delivery).await?;
        online.extend(users);
    }
    Ok(online)
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
            state.live.deliver_local(&d.users, &d.message);
        }
    }
    anyhow::bail!("live subscription closed")
}

#[derive(Deserialize)]
pub struct StreamQuery {
    /// Browsers cannot set headers on a WebSocket: the token may come as a query.
    access_token: Option<String>,
}

pub async fn stream(
    State(state): State<NotificationsState>,
    headers: axum::http::HeaderMap,
    Query(q): Query<StreamQuery>,
    upgrade: WebSocketUpgrade,
) -> ApiResult<Response> {
    let header = headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let bearer = header.or_else(|| q.access_token.map(|t| format!("Bearer {t}")));
    let secret = state.core.settings.auth.jwt_secret.expose_secret().as_bytes();
    let identity = verify_bearer(bearer.as_deref(), secret, Utc::now()).map_err(ApiError::from)?;
    Ok(upgrade.on_upgrade(move |socket| hold(state, identity.user_id, socket)))
}

async fn hold(state: NotificationsState, user: Uuid, mut socket: WebSocket) {
    let (id, mut outbox) = state.live.register(user);
    let key = presence_key(state.core.redis_prefix(), user);
    let announce = |conn: &mut redis::aio::MultiplexedConnection| {
        let (key, instance) = (key.clone(), state.live.instance.clone());
        let mut conn = conn.clone();
        async move { conn.set_ex::<_, _, ()>(key, instance, PRESENCE_TTL_SECS).await }
    };
    let mut conn = match state.core.redis.get_multiplexed_async_connection().await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "no presence without redis");
            state.live.unregister(user, id);
            return;
        }
    };
    if announce(&mut conn).await.is_err() {
        state.live.unregister(user, id);
        return;
    }
    let _ = socket.send(Message::Text(r#"{"kind":"hello","payload":{}}"#.into())).await;
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    loop {
        tokio::select! {
            out = outbox.recv() => match out {
                Some(text) => if socket.send(Message::Text(text.as_ref().into())).await.is_err() { break },
                None => break,
            },
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            _ = heartbeat.tick() => {
                let _ = announce(&mut conn).await;
                if socket.send(Message::Ping(Vec::new().into())).await.is_err() { break }
            }
        }
    }
    if state.live.unregister(user, id) {
        // Only if the presence is still ours (another instance may hold a newer socket).
        let _: redis::RedisResult<i64> = redis::Script::new(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end",
        )
        .key(&key)
        .arg(&state.live.instance)
        .invoke_async(&mut conn)
        .await;
    }
}
