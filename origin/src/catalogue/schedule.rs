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
/// One claim marks the drops whose start or end has passed unannounced, skipping
/// rows another scheduler holds, and says which of the two each was due for.
pub async fn announce(core: &Core) -> anyhow::Result<usize> {
    let mut tx = core.db.begin().await?;
    let claimed = sqlx::query!(
        r#"WITH due AS (
             SELECT id, started_announced_at IS NULL AND starts_at <= now() AS starts,
                        ended_announced_at IS NULL AND ends_at <= now() AS ends
             FROM drops
             WHERE (started_announced_at IS NULL AND starts_at <= now())
                OR (ended_announced_at IS NULL AND ends_at <= now())
             ORDER BY starts_at LIMIT 100 FOR UPDATE SKIP LOCKED)
           UPDATE drops d
           SET started_announced_at = CASE WHEN due.starts THEN now() ELSE d.started_announced_at END,
               ended_announced_at = CASE WHEN due.ends THEN now() ELSE d.ended_announced_at END
           FROM due WHERE d.id = due.id
           RETURNING d.id, d.creator_id, due.starts AS "starts!", due.ends AS "ends!""#
    )
    .fetch_all(&mut *tx)
    .await?;
    let mut written = 0;
    for d in claimed {
        // A drop may start and end in one tick (a short window, a scheduler that was
        // away): its start is announced first.
        if d.starts {
            events::record(&mut tx, DomainEvent::DropStarted { drop_id: d.id, creator_id: d.creator_id }).await?;
            written += 1;
        }
        if d.ends {
            events::record(&mut tx, DomainEvent::DropEnded { drop_id: d.id, creator_id: d.creator_id }).await?;
            written += 1;
        }
    }
    tx.commit().await?;
    Ok(written)
}
