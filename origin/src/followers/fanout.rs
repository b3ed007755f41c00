//! "Drop is live!" to every follower of its creator, online ones first.
//!
//! 1. **Online, at once** (the `fanout` consumer, on `DropStarted`): the followers
//!    holding a socket on any origin instance are found by intersecting the instances'
//!    online sets with the follows, from whichever side is smaller (the online users
//!    probed against the ledger's primary key, or a small audience checked against the
//!    online sets). They are told over their sockets (one publish per holding
//!    instance) while they are recorded (`fanout_online`). The message's `id` is the
//!    event's, so a retried fan-out, which sends to the recorded set again, reaches no
//!    socket twice.
//! 2. **Push, in bulk** (runners, several per instance, on any number of instances):
//!    only once the holders say the message is written to the sockets (or a second
//!    passed) are the job's shards opened (shards by follower id), so the push work
//!    does not compete with the online delivery. A runner walks a shard in keyset chunks; each chunk, in one
//!    transaction that also moves the shard's cursor, queues the chunk's offline
//!    followers as a few push batches (see [`push::enqueue`]), so each is queued once
//!    per event through any restart. Runners take the shard that waited longest, so a
//!    creator with a million followers takes turns with every other fan-out.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use drops_shared::events::{DomainEvent, EventEnvelope};
use serde_json::json;
use uuid::Uuid;

use crate::catalogue;
use crate::notifications::live::{self, LiveMessage};
use crate::notifications::push;
use crate::state::Core;
use crate::tasks::Next;

/// How long an idle runner waits before looking for work again.
pub const IDLE: Duration = Duration::from_millis(100);

pub const CONSUMER: &str = "fanout";

/// The `fanout` group: followers told a drop is live.
pub struct Fanout(pub Core);

impl crate::events::bus::Consumer for Fanout {
    fn group(&self) -> &'static str {
        CONSUMER
    }

    fn interested(&self, event: &DomainEvent) -> bool {
        matches!(event, DomainEvent::DropStarted { .. })
    }

    fn handle<'a>(&'a self, event: &'a EventEnvelope) -> crate::events::bus::Handled<'a> {
        Box::pin(handle(&self.0, event))
    }
}

/// Followers per chunk of a shard: one transaction each.
const CHUNK: i64 = 25_000;
/// Shards of a job, by the first byte of the follower id.
const SHARDS: u8 = 8;
/// Runners per origin instance.
pub const RUNNERS: usize = 4;
/// How long the online step waits for the holders to have written to the sockets.
const ONLINE_WAIT: Duration = Duration::from_secs(1);
/// Users probed against the ledger, or checked against an online set, per round trip.
const PROBE: usize = 10_000;

fn shard_bound(shard: u8) -> Option<Uuid> {
    let first = u16::from(shard) * 256 / u16::from(SHARDS);
    (first < 256).then(|| {
        let mut bytes = [0u8; 16];
        bytes[0] = first as u8;
        Uuid::from_bytes(bytes)
    })
}

/// The message: the event's id, so a socket gets it once however often it is sent.
async fn message(state: &Core, event_id: Uuid, drop_id: Uuid, creator_id: Uuid) -> anyhow::Result<LiveMessage> {
    let creator_name = catalogue::creators::name(&state.db, creator_id).await?.unwrap_or_default();
    Ok(LiveMessage {
        kind: "drop_live".into(),
        payload: json!({"drop_id": drop_id, "creator": {"id": creator_id, "name": creator_name}}),
        id: Some(event_id),
    })
}

pub async fn handle(state: &Core, event: &EventEnvelope) -> anyhow::Result<()> {
    let DomainEvent::DropStarted { drop_id, creator_id } = event.event else { return Ok(()) };
    let started = Instant::now();
    let message = message(state, event.id, drop_id, creator_id).await?;
    let sent = sqlx::query_scalar!(
        "SELECT online_sent_at IS NOT NULL AS \"sent!\" FROM fanouts WHERE event_id = $1",
        event.id
    )
    .fetch_optional(&state.db)
    .await?;
    if sent != Some(true) {
        let (online, unheard) = match sent {
            // A retry: the record made before is the one sent to (again: sockets that had
            // it skip it).
            Some(_) => {
                let online = recorded_online(state, event.id).await?;
                let unheard = publish(state, &online, &message).await?;
                (online, unheard)
            }
            // Told and recorded at once, so the record's write is not in the way of the
            // message. Should this fail between the two, the retry finds the record (or
            // none, and looks again): a follower is told on the socket at most once, and
            // pushed only if not recorded as told.
            None => {
                let online = online_followers(state, creator_id).await?;
                let (recorded, unheard) = tokio::join!(
                    record_online(state, event.id, drop_id, creator_id, &online),
                    publish(state, &online, &message)
                );
                recorded?;
                (online, unheard?)
            }
        };
        if !unheard.is_empty() {
            // Their instance died since its last heartbeat, their sockets with it: they
            // are pushed instead.
            sqlx::query!(
                "WITH gone AS (DELETE FROM fanout_online WHERE event_id = $1 AND instance = ANY($2) RETURNING 1)
                 UPDATE fanouts SET online = online - (SELECT count(*) FROM gone) WHERE event_id = $1",
                event.id,
                &unheard
            )
            .execute(&state.db)
            .await?;
            tracing::warn!(event_id = %event.id, instances = unheard.len(), "online followers of a dead instance pushed instead");
        }
        let n: usize = online.values().map(Vec::len).sum();
        tracing::info!(event_id = %event.id, online = n, took = ?started.elapsed(), "drop_live sent to online followers");
    }
    open_push(state, event.id, drop_id, creator_id, &message).await
}

/// Sends `message` to each holding instance's users and waits (at most
/// [`ONLINE_WAIT`]) until the holders have written it to the sockets, so the push work
/// that follows does not compete with it; returns the instances that were not listening.
async fn publish(
    state: &Core,
    online: &HashMap<String, Vec<Uuid>>,
    message: &LiveMessage,
) -> anyhow::Result<Vec<String>> {
    let ack = live::ack_key(state);
    let (mut unheard, mut parts) = (Vec::new(), 0);
    for (instance, users) in online {
        match live::publish(state, instance, users, message, Some(&ack)).await? {
            0 => unheard.push(instance.clone()),
            heard => parts += heard,
        }
    }
    if parts > 0 {
        let acked = live::wait_acks(state, &ack, parts, ONLINE_WAIT).await?;
        if acked < parts {
            tracing::warn!(parts, acked, "holders slow to write drop_live; push opened anyway");
        }
    }
    Ok(unheard)
}

/// Records who was online (unless another delivery of the event recorded first: that
/// record stands).
async fn record_online(
    state: &Core,
    event_id: Uuid,
    drop_id: Uuid,
    creator_id: Uuid,
    online: &HashMap<String, Vec<Uuid>>,
) -> anyhow::Result<()> {
    let (mut users, mut instances) = (Vec::new(), Vec::new());
    for (instance, held) in online {
        users.extend_from_slice(held);
        instances.extend(std::iter::repeat_n(instance.clone(), held.len()));
    }
    let mut tx = state.db.begin().await?;
    let mine = sqlx::query!(
        "INSERT INTO fanouts (event_id, creator_id, drop_id, online) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        event_id,
        creator_id,
        drop_id,
        users.len() as i64
    )
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if mine {
        sqlx::query!(
            "INSERT INTO fanout_online (event_id, user_id, instance) SELECT $1, * FROM unnest($2::uuid[], $3::text[])",
            event_id,
            &users,
            &instances
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
    }
    Ok(())
}

async fn recorded_online(state: &Core, event_id: Uuid) -> anyhow::Result<HashMap<String, Vec<Uuid>>> {
    let rows = sqlx::query!("SELECT user_id, instance FROM fanout_online WHERE event_id = $1", event_id)
        .fetch_all(&state.db)
        .await?;
    let mut online: HashMap<String, Vec<Uuid>> = HashMap::new();
    for row in rows {
        online.entry(row.instance).or_default().push(row.user_id);
    }
    Ok(online)
}

/// The creator's followers holding a socket, by the instance holding it: online users
/// probed against the follows when they are fewer than the followers, else the
/// followers checked against each online set.
async fn online_followers(state: &Core, creator_id: Uuid) -> anyhow::Result<HashMap<String, Vec<Uuid>>> {
    let instances = live::online_instances(state).await?;
    let mut online_total = 0;
    for instance in &instances {
        online_total += live::online_count(state, instance).await?;
    }
    let mut found: HashMap<String, Vec<Uuid>> = HashMap::new();
    if online_total == 0 {
        return Ok(found);
    }
    let followers = crate::followers::count(state, creator_id).await.map_err(|e| anyhow::anyhow!("{e:?}"))?;
    if online_total <= followers {
        for instance in instances {
            let users = live::online_users(state, &instance).await?;
            let mut following = Vec::new();
            for chunk in users.chunks(PROBE) {
                following.extend(
                    sqlx::query_scalar!(
                        "SELECT user_id FROM follows WHERE creator_id = $1 AND user_id = ANY($2)",
                        creator_id,
                        chunk
                    )
                    .fetch_all(&state.db)
                    .await?,
                );
            }
            if !following.is_empty() {
                found.insert(instance, following);
            }
        }
    } else {
        let mut after = Uuid::nil();
        loop {
            let chunk = sqlx::query_scalar!(
                "SELECT user_id FROM follows WHERE creator_id = $1 AND user_id > $2 ORDER BY user_id LIMIT $3",
                creator_id,
                after,
                PROBE as i64
            )
            .fetch_all(&state.db)
            .await?;
            let Some(last) = chunk.last() else { break };
            after = *last;
            for instance in &instances {
                let held = live::online_among(state, instance, &chunk).await?;
                if !held.is_empty() {
                    found.entry(instance.clone()).or_default().extend(held);
                }
            }
            if chunk.len() < PROBE {
                break;
            }
        }
    }
    Ok(found)
}

/// Stores the push message once and opens the shards, now that online followers are told.
async fn open_push(
    state: &Core,
    event_id: Uuid,
    drop_id: Uuid,
    creator_id: Uuid,
    message: &LiveMessage,
) -> anyhow::Result<()> {
    let mut tx = state.db.begin().await?;
    push::store_message(&mut tx, event_id, &serde_json::to_value(message)?).await?;
    for shard in 0..SHARDS {
        sqlx::query!(
            "INSERT INTO fanout_jobs (event_id, shard, creator_id, drop_id, lo, hi) VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT DO NOTHING",
            event_id,
            i16::from(shard),
            creator_id,
            drop_id,
            shard_bound(shard).unwrap_or_default(),
            shard_bound(shard + 1)
        )
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query!(
        "UPDATE fanouts SET online_sent_at = clock_timestamp() WHERE event_id = $1 AND online_sent_at IS NULL",
        event_id
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// One runner round: a chunk of an open job, if there is one.
pub async fn round(state: &Core) -> anyhow::Result<Next> {
    Ok(if run_chunk(state).await? { Next::Now } else { Next::Later })
}

struct Job {
    event_id: Uuid,
    shard: i16,
    creator_id: Uuid,
    lo: Uuid,
    hi: Option<Uuid>,
    after_user: Option<Uuid>,
    queued_push: i64,
}

/// A chunk of a shard: how many followers it holds, the last of them, and those the
/// online step did not tell on their socket (`fanout_online`), in id order.
struct Chunk {
    followers: i64,
    last: Option<Uuid>,
    offline: Vec<Uuid>,
}

/// The next [`CHUNK`] followers of the job's shard (`[lo, hi)`, after its cursor).
async fn walk(conn: &mut sqlx::PgConnection, job: &Job) -> sqlx::Result<Chunk> {
    let chunk = sqlx::query!(
        r#"WITH chunk AS (
               SELECT f.user_id FROM follows f
               WHERE f.creator_id = $1 AND f.user_id >= $2 AND ($3::uuid IS NULL OR f.user_id < $3)
                 AND ($4::uuid IS NULL OR f.user_id > $4)
               ORDER BY f.user_id LIMIT $5)
           SELECT (SELECT count(*) FROM chunk) AS "followers!",
                  (SELECT user_id FROM chunk ORDER BY user_id DESC LIMIT 1) AS last,
                  (SELECT coalesce(array_agg(c.user_id ORDER BY c.user_id), '{}') FROM chunk c
                   WHERE NOT EXISTS (SELECT 1 FROM fanout_online o WHERE o.event_id = $6 AND o.user_id = c.user_id))
                    AS "offline!""#,
        job.creator_id,
        job.lo,
        job.hi,
        job.after_user,
        CHUNK,
        job.event_id
    )
    .fetch_one(conn)
    .await?;
    Ok(Chunk { followers: chunk.followers, last: chunk.last, offline: chunk.offline })
}

/// Queues the pushes of one chunk of one open shard; false when there was nothing to do.
pub async fn run_chunk(state: &Core) -> anyhow::Result<bool> {
    let started = Instant::now();
    let mut tx = state.db.begin().await?;
    let job = sqlx::query_as!(
        Job,
        "SELECT event_id, shard, creator_id, lo, hi, after_user, queued_push FROM fanout_jobs
         WHERE finished_at IS NULL ORDER BY touched_at NULLS FIRST, started_at LIMIT 1 FOR UPDATE SKIP LOCKED"
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some(job) = job else { return Ok(false) };
    let chunk = walk(&mut tx, &job).await?;
    // Ranked after the shard's batches so far: overlapping fan-outs take turns.
    let first_rank = job.queued_push / push::QUEUED_BATCH;
    let queued = push::enqueue(&mut tx, job.event_id, &chunk.offline, push::Priority::Fanout, first_rank).await?;
    let done = chunk.followers < CHUNK;
    sqlx::query!(
        "UPDATE fanout_jobs SET after_user = COALESCE($3, after_user), queued_push = queued_push + $4,
                touched_at = clock_timestamp(), finished_at = CASE WHEN $5 THEN clock_timestamp() ELSE NULL END
         WHERE event_id = $1 AND shard = $2",
        job.event_id,
        job.shard,
        chunk.last,
        queued as i64,
        done
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    tracing::debug!(event_id = %job.event_id, shard = job.shard, followers = chunk.followers, queued, took = ?started.elapsed(), "fan-out chunk queued");
    Ok(true)
}
