//! Who is online where (see the parent module's doc): this instance's sockets
//! ([`Live`]), its presence and heartbeat in Redis, and sending to users wherever their
//! sockets are (on the holders' channels).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::{LiveMessage, PRESENCE_TTL_SECS};
use crate::notifications::NotificationsState;
use crate::state::{Core, LazyRedis};

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
pub(super) type Written = Option<mpsc::Sender<()>>;

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
    pub(super) redis: LazyRedis,
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
    pub(super) fn register(&self, user: Uuid) -> (u64, mpsc::UnboundedReceiver<(Arc<str>, Written)>) {
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
    pub(super) fn unregister(&self, user: Uuid, id: u64) -> bool {
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

pub(super) fn online_key(prefix: &str, instance: &str) -> String {
    format!("{prefix}:online:{instance}")
}

fn instances_key(prefix: &str) -> String {
    format!("{prefix}:instances")
}

/// An instance that missed this many heartbeats is gone (its sockets with it).
pub(super) const INSTANCE_STALE_MS: i64 = PRESENCE_TTL_SECS as i64 * 1000;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names() {
        assert_eq!(online_key("drops", "i1"), "drops:online:i1");
        assert_eq!(channel("drops", "i1"), "drops:live:i1");
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
}
