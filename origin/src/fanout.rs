//! "Drop is live!" to every follower of its creator. The `fanout` consumer only
//! opens a job per `DropStarted` (once per event: the job's key is the event id), so
//! a creator with millions of followers never holds up other events. Job runners walk
//! the followers in keyset chunks, each chunk in one transaction that also moves the
//! job's cursor: online followers get the message over their socket (one publish per
//! origin instance for the whole chunk), the others a queued push (once per event and
//! follower). A runner that dies resumes from the last committed chunk.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use drops_shared::events::{DomainEvent, EventEnvelope};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::live::{self, LiveMessage};
use crate::push;
use crate::startup::AppState;

pub const CONSUMER: &str = "fanout";
const CHUNK: i64 = 5_000;

pub async fn handle(state: &AppState, event: &EventEnvelope) -> anyhow::Result<()> {
    let DomainEvent::DropStarted { drop_id, creator_id } = event.event else { return Ok(()) };
    sqlx::query("INSERT INTO fanout_jobs (event_id, creator_id, drop_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
        .bind(event.id)
        .bind(creator_id)
        .bind(drop_id)
        .execute(&state.db)
        .await?;
    Ok(())
}

pub async fn run(state: AppState, stop: CancellationToken) {
    loop {
        let worked = run_chunk(&state).await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "fan-out chunk failed; it will be retried");
            false
        });
        if !worked {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        } else if stop.is_cancelled() {
            return;
        }
    }
}

#[derive(sqlx::FromRow)]
struct Job {
    event_id: Uuid,
    creator_id: Uuid,
    drop_id: Uuid,
    after_at: Option<DateTime<Utc>>,
    after_user: Option<Uuid>,
}

/// Does one chunk of one open job; false when there was nothing to do.
pub async fn run_chunk(state: &AppState) -> anyhow::Result<bool> {
    let started = Instant::now();
    let mut tx = state.db.begin().await?;
    let job: Option<Job> = sqlx::query_as(
        "SELECT event_id, creator_id, drop_id, after_at, after_user FROM fanout_jobs
         WHERE finished_at IS NULL ORDER BY started_at LIMIT 1 FOR UPDATE SKIP LOCKED",
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some(job) = job else { return Ok(false) };
    let followers: Vec<(Uuid, DateTime<Utc>)> = sqlx::query_as(
        "SELECT user_id, followed_at FROM follows WHERE creator_id = $1
           AND ($2::timestamptz IS NULL OR (followed_at, user_id) > ($2, $3))
         ORDER BY followed_at, user_id LIMIT $4",
    )
    .bind(job.creator_id)
    .bind(job.after_at)
    .bind(job.after_user)
    .bind(CHUNK)
    .fetch_all(&mut *tx)
    .await?;
    let users: Vec<Uuid> = followers.iter().map(|(u, _)| *u).collect();
    let creator_name: String =
        sqlx::query_scalar("SELECT name FROM creators WHERE id = $1").bind(job.creator_id).fetch_one(&mut *tx).await?;
    let message = LiveMessage {
        kind: "drop_live".into(),
        payload: json!({"drop_id": job.drop_id, "creator": {"id": job.creator_id, "name": creator_name}}),
        id: None,
    };
    let online = live::send(state, &users, &message).await?;
    let online: std::collections::HashSet<Uuid> = online.into_iter().collect();
    let offline: Vec<Uuid> = users.iter().copied().filter(|u| !online.contains(u)).collect();
    let queued = push::enqueue(&mut tx, job.event_id, &offline, &serde_json::to_value(&message)?).await?;
    let last = followers.last();
    let done = (followers.len() as i64) < CHUNK;
    sqlx::query(
        "UPDATE fanout_jobs SET after_at = COALESCE($2, after_at), after_user = COALESCE($3, after_user),
                delivered = delivered + $4, queued_push = queued_push + $5,
                finished_at = CASE WHEN $6 THEN clock_timestamp() ELSE NULL END
         WHERE event_id = $1",
    )
    .bind(job.event_id)
    .bind(last.map(|l| l.1))
    .bind(last.map(|l| l.0))
    .bind(online.len() as i64)
    .bind(queued as i64)
    .bind(done)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    tracing::debug!(event_id = %job.event_id, followers = users.len(), online = online.len(), queued, took = ?started.elapsed(), "fan-out chunk");
    Ok(true)
}
