//! Each drop's terms at the edge. The edge's inventory object sells on the terms
//! the origin gives it; until the edge acknowledges a drop's terms,
//! `inventory_synced_at` stays NULL and [`sync_round`] keeps pushing them.
//!
//! Every change bumps `drops.terms_version`, carried in the terms: the edge keeps
//! the highest version it was given (a slow push of older terms changes nothing),
//! and only the version pushed is acknowledged. Reconciliation compares the edge's
//! terms with these and pushes again when they differ.

use std::time::Duration;

use drops_shared::backoff::Backoff;

use super::drop_row::{self, DropRow};
use crate::state::Core;
use crate::tasks::{self, Next};

/// A write's own push: a few quick tries before leaving it to the sync loop.
const PUSH: Backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(1));
const PUSH_ATTEMPTS: u32 = 3;
const SYNC_BATCH: i64 = 50;

/// Gives the edge the drop's terms, retrying briefly; the sync loop keeps at it after.
pub async fn push(core: &Core, drop: &DropRow) {
    let pushed = tasks::retry(PUSH, PUSH_ATTEMPTS, |attempt| async move {
        sync(core, drop).await.inspect_err(|e| {
            tracing::warn!(drop_id = %drop.id(), attempt, error = %e, "inventory sync failed; will retry");
        })
    })
    .await;
    if pushed.is_err() {
        tracing::warn!(drop_id = %drop.id(), "the sync loop takes over this drop's terms");
    }
}

async fn sync(core: &Core, drop: &DropRow) -> anyhow::Result<()> {
    let terms = drop.terms();
    let in_force = core.edge.put_terms(drop.id(), &terms).await?.terms.version;
    if in_force > terms.version {
        tracing::debug!(drop_id = %drop.id(), pushed = terms.version, in_force, "a newer push landed first");
    }
    // Acknowledges only the version pushed: a change written since keeps the drop
    // unsynced, so the loop pushes that one too.
    sqlx::query!(
        "UPDATE drops SET inventory_synced_at = now() WHERE id = $1 AND terms_version = $2",
        drop.id(),
        terms.version as i64
    )
    .execute(&core.db)
    .await?;
    Ok(())
}

/// Pushes the terms of the drops the edge has not acknowledged.
pub async fn sync_round(core: &Core) -> anyhow::Result<Next> {
    for drop in drop_row::unsynced(&core.db, SYNC_BATCH).await? {
        // The edge is likely down: the next round tries again.
        sync(core, &drop).await?;
    }
    Ok(Next::Later)
}
