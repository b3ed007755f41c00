//! "Drop is live!" to every follower of its creator. The `fanout` consumer only
//! opens the job of a `DropStarted` (once per event: the job's key is the event id),
//! so a creator with millions of followers never holds up other events. The job is
//! split into shards by follower id; runners (several per origin instance, any
//! number of instances) each take a shard and walk it in keyset chunks, each chunk in
//! one transaction that also moves the shard's cursor: online followers get the
//! message over their socket (one publish per origin instance for the whole chunk),
//! the others a queued push (once per event and follower). A runner that dies leaves
//! its shard to the next one, from the last committed chunk.

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

pub fn interested(event: &DomainEvent) -> bool {
    matches!(event, DomainEvent::DropStarted { .. })
}
const CHUNK: i64 = 10_000;
/// Shards of a job, by the first byte of the follower id.
const SHARDS: u8 = 8;
/// Runners per origin instance.
pub const RUNNERS: usize = 4;

fn shard_bound(shard: u8) -> Option<Uuid> {
    let first = u16::from(shard) * 256 / u16::from(SHARDS);
    (first < 256).then(|| {
        let mut bytes = [0u8; 16];
        bytes[0] = first as u8;
        Uuid::from_bytes(bytes)
    })
}

pub async fn handle(state: &Core, event: &EventEnvelope) -> anyhow::Result<()> {
    let DomainEvent::DropStarted { drop_id, creator_id } = event.event else { return Ok(()) };
    let mut tx = state.db.begin().await?;
    for shard in 0..SHARDS {
        sqlx::query!(
            "INSERT INTO fanout_jobs (event_id, shard, creator_id, drop_id, lo, hi) VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT DO NOTHING",
            event.id,
            i16::from(shard),
            creator_id,
            drop_id,
            shard_bound(shard).unwrap_or_default(),
            shard_bound(shard + 1)
        )
        .execute(&mut *tx)
        .await?;
    }
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
    drop_id: Uuid,
    lo: Uuid,
    hi: Option<Uuid>,
    after_user: Option<Uuid>,
}

/// Does one chunk of one open job; false when there was nothing to do.
pub async fn run_chunk(state: &Core) -> anyhow::Result<bool> {
    let started = Instant::now();
    let mut tx = state.db.begin().await?;
    let job = sqlx::query_as!(
        Job,
        "SELECT event_id, shard, creator_id, drop_id, lo, hi, after_user FROM fanout_jobs
         WHERE finished_at IS NULL ORDER BY started_at, shard LIMIT 1 FOR UPDATE SKIP LOCKED"
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some(job) = job else { return Ok(false) };
    let users = sqlx::query_scalar!(
        "SELECT user_id FROM follows WHERE creator_id = $1 AND user_id >= $2 AND ($3::uuid IS NULL OR user_id < $3)
           AND ($4::uuid IS NULL OR user_id > $4)
         ORDER BY user_id LIMIT $5",
        job.creator_id,
        job.lo,
        job.hi,
        job.after_user,
        CHUNK
    )
    .fetch_all(&mut *tx)
    .await?;
    let creator_name = catalogue::creators::name(&mut *tx, job.creator_id).await?.unwrap_or_default();
    let message = LiveMessage {
        kind: "drop_live".into(),
        payload: json!({"drop_id": job.drop_id, "creator": {"id": job.creator_id, "name": creator_name}}),
        id: None,
    };
    let online = live::send(state, &users, &message).await?;
    let online: std::collections::HashSet<Uuid> = online.into_iter().collect();
    let offline: Vec<Uuid> = users.iter().copied().filter(|u| !online.contains(u)).collect();
    let queued = push::enqueue(&mut tx, job.event_id, &offline, &serde_json::to_value(&message)?).await?;
    let done = (users.len() as i64) < CHUNK;
    sqlx::query!(
        "UPDATE fanout_jobs SET after_user = COALESCE($3, after_user),
                delivered = delivered + $4, queued_push = queued_push + $5,
                finished_at = CASE WHEN $6 THEN clock_timestamp() ELSE NULL END
         WHERE event_id = $1 AND shard = $2",
        job.event_id,
        job.shard,
        users.last().copied(),
        online.len() as i64,
        queued as i64,
        done
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    tracing::debug!(event_id = %job.event_id, followers = users.len(), online = online.len(), queued, took = ?started.elapsed(), "fan-out chunk");
    Ok(true)
}
