//! The drop lifecycle scheduler: emits `DropStarted` when a drop's `starts_at`
//! passes and `DropEnded` when its `ends_at` does, exactly once each however many
//! origin instances run it. The claim is a row update in Postgres (`FOR UPDATE SKIP
//! LOCKED`, then the `*_announced_at` column set in the same transaction as the
//! event), not a timer in each process.

use std::time::Duration;

use drops_shared::events::DomainEvent;
use uuid::Uuid;

use crate::events;
use crate::state::Core;

/// How often the scheduler looks for starts and ends that are due.
pub const TICK: Duration = Duration::from_millis(250);

/// Announces every start and end that is due; returns how many events it wrote.
pub async fn announce(core: &Core) -> anyhow::Result<usize> {
    let mut tx = core.db.begin().await?;
    let started = claim_due(&mut tx, "started_announced_at", "starts_at").await?;
    let ended = claim_due(&mut tx, "ended_announced_at", "ends_at").await?;
    for (drop_id, creator_id) in &started {
        events::record(&mut tx, DomainEvent::DropStarted { drop_id: *drop_id, creator_id: *creator_id }).await?;
    }
    for (drop_id, creator_id) in &ended {
        events::record(&mut tx, DomainEvent::DropEnded { drop_id: *drop_id, creator_id: *creator_id }).await?;
    }
    tx.commit().await?;
    Ok(started.len() + ended.len())
}

/// Marks the drops whose `moment` has passed and whose `announced` is still NULL,
/// skipping rows another scheduler holds; returns (drop, creator) of each claimed.
async fn claim_due(
    tx: &mut sqlx::PgConnection,
    announced: &'static str,
    moment: &'static str,
) -> sqlx::Result<Vec<(Uuid, Uuid)>> {
    // Built at run time: the same claim serves starts and ends, and the column names
    // are these two constant pairs, never input.
    sqlx::query_as(&format!(
        "UPDATE drops SET {announced} = now()
         WHERE id IN (SELECT id FROM drops WHERE {announced} IS NULL AND {moment} <= now()
                      ORDER BY {moment} LIMIT 100 FOR UPDATE SKIP LOCKED)
         RETURNING id, creator_id"
    ))
    .fetch_all(tx)
    .await
}
