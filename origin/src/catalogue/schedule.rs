//! The drop lifecycle scheduler: emits `DropStarted` when a drop's `starts_at`
//! passes and `DropEnded` when its `ends_at` does, exactly once each however many
//! origin instances run it. The claim is a row update in Postgres (`FOR UPDATE SKIP
//! LOCKED`, then the `*_announced_at` column set in the same transaction as the
//! event), not a timer in each process.

use std::time::Duration;

use drops_shared::events::DomainEvent;

use crate::events;
use crate::state::Core;

/// How often the scheduler looks for starts and ends that are due.
pub const TICK: Duration = Duration::from_millis(250);

/// Announces every start and end that is due; returns how many events it wrote.
/// Each claim marks the drops whose moment has passed and that are not announced
/// yet, skipping rows another scheduler holds.
pub async fn announce(core: &Core) -> anyhow::Result<usize> {
    let mut tx = core.db.begin().await?;
    let started = sqlx::query!(
        "UPDATE drops SET started_announced_at = now()
         WHERE id IN (SELECT id FROM drops WHERE started_announced_at IS NULL AND starts_at <= now()
                      ORDER BY starts_at LIMIT 100 FOR UPDATE SKIP LOCKED)
         RETURNING id, creator_id"
    )
    .fetch_all(&mut *tx)
    .await?;
    let ended = sqlx::query!(
        "UPDATE drops SET ended_announced_at = now()
         WHERE id IN (SELECT id FROM drops WHERE ended_announced_at IS NULL AND ends_at <= now()
                      ORDER BY ends_at LIMIT 100 FOR UPDATE SKIP LOCKED)
         RETURNING id, creator_id"
    )
    .fetch_all(&mut *tx)
    .await?;
    let due = started
        .iter()
        .map(|d| DomainEvent::DropStarted { drop_id: d.id, creator_id: d.creator_id })
        .chain(ended.iter().map(|d| DomainEvent::DropEnded { drop_id: d.id, creator_id: d.creator_id }))
        .collect::<Vec<_>>();
    for event in &due {
        events::record(&mut tx, event.clone()).await?;
    }
    tx.commit().await?;
    Ok(due.len())
}
