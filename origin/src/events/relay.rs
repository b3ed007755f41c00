//! The outbox relay: publishes unpublished outbox rows to the event stream in `seq`
//! order, then marks them published; and when the stream has lost entries (Redis
//! came back empty, or from a persistence file older than what it was given), it
//! publishes again every event some consumer group had not finished.
//!
//! Several origins may run it; one publishes at a time (a transaction-scoped advisory
//! lock), numbering each batch's events from `outbox_publish_order` (their
//! `published_seq`, also written into the stream entry as `pseq`). So the stream's
//! order is `published_seq` order, and a group's first unfinished entry tells which
//! events it has finished: those with a smaller `published_seq`. [`progress`] keeps
//! that watermark (the lowest over the groups) in `event_stream_progress`, in
//! Postgres, where a Redis that dies cannot take it along.
//!
//! A crash between the publish and the mark publishes a batch twice, which consumers
//! absorb (they are idempotent on the event id); so does a re-delivery after a loss.

use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use redis::streams::{StreamId, StreamRangeReply};
use redis::Value;
use sqlx::PgConnection;

use crate::state::{Core, LazyRedis};
use crate::tasks::Next;

const BATCH: i64 = 500;
/// The stream keeps about this many recent events; the outbox keeps them all.
const STREAM_MAXLEN: usize = 1_000_000;
/// Held by the relay that is publishing (or checking the stream for losses).
const PUBLISH_LOCK: i64 = 0x6472_6f70_7372_6c79; // "dropsrly"
/// How often the groups' progress is read from Redis into Postgres.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// The stream entry's field holding the event's `published_seq`.
const PSEQ_FIELD: &str = "pseq";

/// One origin's relay: its Redis connection, and the consumer groups whose progress
/// decides what is published again after a loss (every group the platform runs,
/// whichever instances run them).
#[derive(Clone)]
pub struct Relay {
    redis: LazyRedis,
    groups: std::sync::Arc<[&'static str]>,
    progress_read_at: std::sync::Arc<std::sync::Mutex<Option<Instant>>>,
}

impl Relay {
    pub fn new(groups: Vec<&'static str>) -> Self {
        Self { redis: LazyRedis::default(), groups: groups.into(), progress_read_at: Default::default() }
    }

    /// One relay round: repairs a loss or publishes a batch; [`Next::Now`] while
    /// there is more. Also brings the groups' progress up to date, once a second.
    pub async fn round(&self, core: &Core) -> anyhow::Result<Next> {
        let outcome = async {
            let (mut conn, _) = self.redis.get(&core.redis).await?;
            let groups = self.progress_due().then_some(&*self.groups);
            publish_or_repair(core, &mut conn, groups).await
        }
        .await;
        if outcome.is_err() {
            self.redis.reset().await;
        }
        outcome
    }

    fn progress_due(&self) -> bool {
        let mut last = self.progress_read_at.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|at| at.elapsed() < PROGRESS_EVERY) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }
}

struct Row {
    seq: i64,
    payload: String,
}

/// Under the publish lock: if the stream has lost entries it was given, marks the
/// unfinished events unpublished again; otherwise publishes one batch, then, given
/// `groups`, moves their watermark. Another relay holding the lock means nothing to
/// do this round.
async fn publish_or_repair(core: &Core, conn: &mut ConnectionManager, groups: Option<&[&str]>) -> anyhow::Result<Next> {
    let stream = super::stream_key(core.redis_prefix());
    let mut tx = core.db.begin().await?;
    let locked = sqlx::query_scalar!(r#"SELECT pg_try_advisory_xact_lock($1) AS "locked!""#, PUBLISH_LOCK)
        .fetch_one(&mut *tx)
        .await?;
    if !locked {
        return Ok(Next::Later);
    }
    // Read before the stream: everything up to here was added to the stream before
    // its transaction committed, so the stream can only be behind it by losing entries.
    let published = sqlx::query!(
        r#"SELECT (SELECT max(published_seq) FROM outbox) AS through,
                  (SELECT finished_below FROM event_stream_progress WHERE stream = $1) AS finished_below"#,
        stream
    )
    .fetch_one(&mut *tx)
    .await?;
    // Events every group has finished may be gone from the stream without loss (and
    // are, after a repair): only a gap past the watermark is one.
    let unfinished_through = published.through.filter(|through| *through >= published.finished_below.unwrap_or(0));
    if let Some(published_through) = unfinished_through {
        match last_published_seq(conn, &stream).await? {
            StreamEnd::Through(held) if held >= published_through => {}
            StreamEnd::Unknown => {}
            end => {
                let again = repair(&mut tx, &stream, published_through, end).await?;
                tx.commit().await?;
                tracing::warn!(%stream, republishing = again, "the event stream lost entries it was given; publishing the unfinished ones again");
                return Ok(Next::Now);
            }
        }
    }
    let published = publish_batch(&mut tx, conn, &stream).await?;
    // Under the lock too, so no repair comes between reading the outbox and the groups.
    if let Some(groups) = groups {
        progress(&mut tx, conn, &stream, groups).await?;
    }
    tx.commit().await?;
    Ok(if published as i64 == BATCH { Next::Now } else { Next::Later })
}

/// Publishes the next batch of unpublished events; returns how many went out.
async fn publish_batch(tx: &mut PgConnection, conn: &mut ConnectionManager, stream: &str) -> anyhow::Result<usize> {
    let rows = sqlx::query_as!(
        Row,
        r#"SELECT seq, payload::text AS "payload!" FROM outbox WHERE published_at IS NULL
           ORDER BY seq LIMIT $1 FOR UPDATE"#,
        BATCH
    )
    .fetch_all(&mut *tx)
    .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let numbers = sqlx::query_scalar!(
        r#"SELECT array_agg(n ORDER BY n) AS "numbers!" FROM
             (SELECT nextval('outbox_publish_order') AS n FROM generate_series(1, $1::int)) fresh"#,
        rows.len() as i32
    )
    .fetch_one(&mut *tx)
    .await?;
    let mut pipe = redis::pipe();
    for (row, pseq) in rows.iter().zip(&numbers) {
        pipe.cmd("XADD")
            .arg(stream)
            .arg("MAXLEN")
            .arg("~")
            .arg(STREAM_MAXLEN)
            .arg("*")
            .arg(PSEQ_FIELD)
            .arg(*pseq)
            .arg("event")
            .arg(&row.payload)
            .ignore();
    }
    pipe.query_async::<()>(conn).await?;
    let seqs: Vec<i64> = rows.iter().map(|r| r.seq).collect();
    sqlx::query!(
        "UPDATE outbox SET published_at = now(), published_seq = given.pseq
         FROM UNNEST($1::bigint[], $2::bigint[]) AS given(seq, pseq) WHERE outbox.seq = given.seq",
        &seqs,
        &numbers
    )
    .execute(&mut *tx)
    .await?;
    Ok(rows.len())
}

/// The newest event the stream holds, by its `published_seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamEnd {
    /// The stream is gone or holds none of the relay's entries.
    Empty,
    Through(i64),
    /// Its newest entries were added by something else (a replay, a tool).
    Unknown,
}

/// How far back the relay looks past entries it did not number.
const END_SCAN: usize = 100;

async fn last_published_seq(conn: &mut ConnectionManager, stream: &str) -> redis::RedisResult<StreamEnd> {
    // The newest entry is the relay's own but for a replay by hand or a tool: read one,
    // and look further back only then.
    for count in [1, END_SCAN] {
        let newest: StreamRangeReply =
            redis::cmd("XREVRANGE").arg(stream).arg("+").arg("-").arg("COUNT").arg(count).query_async(conn).await?;
        if newest.ids.is_empty() {
            return Ok(StreamEnd::Empty);
        }
        if let Some(pseq) = newest.ids.iter().find_map(pseq_of) {
            return Ok(StreamEnd::Through(pseq));
        }
    }
    Ok(StreamEnd::Unknown)
}

fn pseq_of(entry: &StreamId) -> Option<i64> {
    match entry.map.get(PSEQ_FIELD)? {
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok()?.parse().ok(),
        Value::Int(n) => Some(*n),
        _ => None,
    }
}

/// Marks unpublished, to go out again, every event some group may not have finished:
/// those at or past the watermark. Returns how many.
async fn repair(tx: &mut PgConnection, stream: &str, published_through: i64, end: StreamEnd) -> sqlx::Result<u64> {
    let finished_below = sqlx::query_scalar!(
        "INSERT INTO event_stream_progress (stream) VALUES ($1)
         ON CONFLICT (stream) DO UPDATE SET losses = event_stream_progress.losses + 1, lost_at = now()
         RETURNING finished_below",
        stream
    )
    .fetch_one(&mut *tx)
    .await?;
    tracing::warn!(%stream, published_through, stream_end = ?end, finished_below, "event stream behind the outbox");
    let again = sqlx::query!(
        "UPDATE outbox SET published_at = NULL, published_seq = NULL WHERE published_seq >= $1",
        finished_below
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    Ok(again)
}

/// Reads every group's first unfinished entry from Redis and moves the watermark in
/// Postgres up to the lowest of them. A group missing from Redis (not made again yet
/// after a loss) or an entry the relay did not number leaves it where it is.
async fn progress(
    tx: &mut PgConnection,
    conn: &mut ConnectionManager,
    stream: &str,
    groups: &[&str],
) -> anyhow::Result<()> {
    let published_through = sqlx::query_scalar!("SELECT max(published_seq) FROM outbox").fetch_one(&mut *tx).await?;
    let Some(published_through) = published_through else { return Ok(()) };
    let Some(finished_below) = first_unfinished(conn, stream, groups, published_through).await? else {
        return Ok(());
    };
    sqlx::query!(
        "INSERT INTO event_stream_progress AS p (stream, finished_below) VALUES ($1, $2)
         ON CONFLICT (stream) DO UPDATE SET finished_below = EXCLUDED.finished_below
         WHERE EXCLUDED.finished_below > p.finished_below",
        stream,
        finished_below
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// The lowest `published_seq` some group has not finished (`published_through + 1`
/// when all are caught up), or None when it cannot be told.
async fn first_unfinished(
    conn: &mut ConnectionManager,
    stream: &str,
    groups: &[&str],
    published_through: i64,
) -> redis::RedisResult<Option<i64>> {
    let info: redis::RedisResult<redis::streams::StreamInfoGroupsReply> =
        redis::cmd("XINFO").arg("GROUPS").arg(stream).query_async(conn).await;
    let Ok(info) = info else { return Ok(None) };
    let mut lowest = published_through + 1;
    for group in groups {
        let Some(found) = info.groups.iter().find(|g| g.name == *group) else { return Ok(None) };
        // Its oldest entry delivered but not acknowledged, else the first not delivered.
        let pending = if found.pending > 0 {
            match redis::cmd("XPENDING").arg(stream).arg(*group).query_async(conn).await? {
                redis::streams::StreamPendingReply::Data(data) => Some(data.start_id),
                redis::streams::StreamPendingReply::Empty => None,
            }
        } else {
            None
        };
        let first = match pending {
            Some(id) => entry_from(conn, stream, &id).await?,
            None => entry_from(conn, stream, &format!("({}", found.last_delivered_id)).await?,
        };
        match first {
            Entry::Numbered(pseq) => lowest = lowest.min(pseq),
            Entry::None => {}
            Entry::NotNumbered => return Ok(None),
        }
    }
    Ok(Some(lowest))
}

enum Entry {
    Numbered(i64),
    /// Not one of the relay's (a replay by hand, a tool).
    NotNumbered,
    None,
}

/// The first entry from `from` (an id, or `(id` for after it).
async fn entry_from(conn: &mut ConnectionManager, stream: &str, from: &str) -> redis::RedisResult<Entry> {
    let reply: StreamRangeReply =
        redis::cmd("XRANGE").arg(stream).arg(from).arg("+").arg("COUNT").arg(1).query_async(conn).await?;
    Ok(match reply.ids.first() {
        Some(entry) => pseq_of(entry).map_or(Entry::NotNumbered, Entry::Numbered),
        None => Entry::None,
    })
}

/// Publishes the outbox rows with `from <= seq <= to` again, published or not, so
/// consumers (and derived stores) can be rebuilt from the log: marks them unpublished
/// and relays until they are out (numbered anew, after what was published before).
/// Returns how many were marked.
pub async fn replay(core: &Core, from: i64, to: i64) -> anyhow::Result<usize> {
    let mut tx = core.db.begin().await?;
    // Waits for a relay mid-batch, so the events are numbered after what it sends.
    sqlx::query!("SELECT pg_advisory_xact_lock($1)", PUBLISH_LOCK).execute(&mut *tx).await?;
    let marked = sqlx::query!(
        "UPDATE outbox SET published_at = NULL, published_seq = NULL WHERE seq BETWEEN $1 AND $2",
        from,
        to
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    let mut conn = ConnectionManager::new(core.redis.clone()).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let waiting = sqlx::query_scalar!(
            r#"SELECT count(*) AS "waiting!" FROM outbox WHERE seq BETWEEN $1 AND $2 AND published_at IS NULL"#,
            from,
            to
        )
        .fetch_one(&core.db)
        .await?;
        if waiting == 0 {
            return Ok(marked as usize);
        }
        anyhow::ensure!(Instant::now() < deadline, "{waiting} replayed event(s) still unpublished after a minute");
        if publish_or_repair(core, &mut conn, None).await? == Next::Later {
            // Another relay holds the lock: it publishes them.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
