//! The outbox relay: publishes unpublished outbox rows to the event stream in `seq`
//! order, then marks them published. Several origins may run it: `SKIP LOCKED`
//! gives each a different batch. A crash between the publish and the mark publishes
//! a batch twice, which consumers absorb (they are idempotent on the event id).

use redis::aio::ConnectionManager;

use crate::state::{Core, LazyRedis};
use crate::tasks::Next;

const BATCH: i64 = 500;
/// The stream keeps about this many recent events; the outbox keeps them all.
const STREAM_MAXLEN: usize = 1_000_000;

struct Row {
    seq: i64,
    payload: String,
}

/// One relay round: publishes a batch; [`Next::Now`] while batches come full.
pub async fn round(core: &Core, redis: &LazyRedis) -> anyhow::Result<Next> {
    let published = async {
        let (mut conn, _) = redis.get(&core.redis).await?;
        publish_batch(core, &mut conn).await
    }
    .await;
    match published {
        Ok(n) if n as i64 == BATCH => Ok(Next::Now),
        Ok(_) => Ok(Next::Later),
        Err(e) => {
            redis.reset().await;
            Err(e)
        }
    }
}

/// Publishes one batch; returns how many events went out.
pub async fn publish_batch(core: &Core, conn: &mut ConnectionManager) -> anyhow::Result<usize> {
    let mut tx = core.db.begin().await?;
    let rows = sqlx::query_as!(
        Row,
        r#"SELECT seq, payload::text AS "payload!" FROM outbox WHERE published_at IS NULL
           ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED"#,
        BATCH
    )
    .fetch_all(&mut *tx)
    .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    xadd_all(conn, &super::stream_key(core.redis_prefix()), rows.iter().map(|r| r.payload.as_str())).await?;
    let seqs: Vec<i64> = rows.iter().map(|r| r.seq).collect();
    sqlx::query!("UPDATE outbox SET published_at = now() WHERE seq = ANY($1)", &seqs).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(rows.len())
}

async fn xadd_all<'a>(
    conn: &mut ConnectionManager,
    stream: &str,
    payloads: impl Iterator<Item = &'a str>,
) -> redis::RedisResult<()> {
    let mut pipe = redis::pipe();
    for payload in payloads {
        pipe.cmd("XADD")
            .arg(stream)
            .arg("MAXLEN")
            .arg("~")
            .arg(STREAM_MAXLEN)
            .arg("*")
            .arg("event")
            .arg(payload)
            .ignore();
    }
    pipe.query_async::<()>(conn).await
}

/// Publishes the outbox rows with `from <= seq <= to` again, published or not, so
/// consumers (and derived stores) can be rebuilt from the log.
pub async fn replay(core: &Core, from: i64, to: i64) -> anyhow::Result<usize> {
    let mut conn = ConnectionManager::new(core.redis.clone()).await?;
    let stream = super::stream_key(core.redis_prefix());
    let mut after = from - 1;
    let mut total = 0;
    loop {
        let rows = sqlx::query_as!(
            Row,
            r#"SELECT seq, payload::text AS "payload!" FROM outbox WHERE seq > $1 AND seq <= $2 ORDER BY seq LIMIT $3"#,
            after,
            to,
            BATCH
        )
        .fetch_all(&core.db)
        .await?;
        let Some(last) = rows.last() else { return Ok(total) };
        after = last.seq;
        xadd_all(&mut conn, &stream, rows.iter().map(|r| r.payload.as_str())).await?;
        total += rows.len();
    }
}
