//! Appending without a queue of connections on the chain's lock. The chain is one
//! line, so appends take one lock ([`chain::append`]) until their transaction ends;
//! when requests did that, each waiter held a pooled connection while it waited, and
//! some thirty concurrent admin writes emptied the pool (503s). Instead a request
//! [`stage`]s its entries in `audit_pending`, in its own transaction and taking no
//! lock, and one sequencer task per instance ([`round`], every [`INTERVAL`] or as
//! soon as a request wakes it, on the background pool) moves every pending entry into
//! the chain in id order, many under one lock.
//!
//! After its commit a request waits (at most [`WAIT`], holding no connection) for a
//! round that began after the commit ([`settled`]), so what it answers is in the log
//! by the time anyone reads it; reads of the log wait the same way, so they show the
//! entries committed before them (other instances' too: a round takes every pending
//! entry, whoever staged it). A round that cannot finish leaves its entries pending
//! for the next; a request past its wait answers anyway: its entries are committed
//! and will be chained.

use std::time::Duration;

use drops_shared::auth::Role;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::chain::{self, NewEntry};
use crate::state::Core;
use crate::tasks::{Next, Rounds};

/// How often the sequencer looks for pending entries when nobody wakes it.
pub const INTERVAL: Duration = Duration::from_millis(100);
/// The longest a request waits for its entries to be chained.
pub const WAIT: Duration = Duration::from_secs(1);
/// Entries chained in one round (one transaction).
const BATCH: i64 = 1_000;

/// Stages `entries` in the caller's transaction: they join the chain, in this order,
/// once the caller commits and the sequencer's next round runs. No lock is taken. An
/// entry whose data holds a float is refused, as [`chain::append`] refuses it.
pub async fn stage(conn: &mut PgConnection, entries: Vec<NewEntry>) -> sqlx::Result<usize> {
    if entries.is_empty() {
        return Ok(0);
    }
    chain::refuse_floats(&entries)?;
    let n = entries.len();
    let mut columns = Columns::default();
    for e in entries {
        columns.actor_user_id.push(e.actor.map(|a| a.user_id));
        columns.actor_role.push(e.actor.map(|a| a.role.as_str().to_owned()));
        columns.action.push(e.action);
        columns.subject_kind.push(e.subject_kind);
        columns.subject_id.push(e.subject_id);
        columns.request_id.push(e.request_id);
        columns.server_request_id.push(e.server_request_id);
        columns.data.push(e.data);
        columns.event_id.push(e.event_id);
    }
    // `WITH ORDINALITY`: the ids follow the order given, which is the chain's order.
    sqlx::query!(
        "INSERT INTO audit_pending (action, actor_user_id, actor_role, subject_kind, subject_id, request_id,
                                    server_request_id, data, event_id)
         SELECT action, actor_user_id, actor_role, subject_kind, subject_id, request_id, server_request_id, data,
                event_id
         FROM UNNEST($1::text[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                     $8::jsonb[], $9::uuid[])
              WITH ORDINALITY AS e(action, actor_user_id, actor_role, subject_kind, subject_id, request_id,
                                   server_request_id, data, event_id, n)
         ORDER BY n",
        &columns.action,
        &columns.actor_user_id as &[Option<Uuid>],
        &columns.actor_role as &[Option<String>],
        &columns.subject_kind,
        &columns.subject_id,
        &columns.request_id as &[Option<String>],
        &columns.server_request_id as &[Option<String>],
        &columns.data,
        &columns.event_id as &[Option<Uuid>]
    )
    .execute(&mut *conn)
    .await?;
    Ok(n)
}

#[derive(Default)]
struct Columns {
    action: Vec<String>,
    actor_user_id: Vec<Option<Uuid>>,
    actor_role: Vec<Option<String>>,
    subject_kind: Vec<String>,
    subject_id: Vec<String>,
    request_id: Vec<Option<String>>,
    server_request_id: Vec<Option<String>>,
    data: Vec<serde_json::Value>,
    event_id: Vec<Option<Uuid>>,
}

/// Wakes the sequencer and waits, at most [`WAIT`] and holding no connection, until
/// a round that began after this call has chained every pending entry: then every
/// entry committed before the call is in the chain. Whether that happened in time.
pub async fn settled(core: &Core) -> bool {
    let done = core.audit_sequencer.wait_for_next(WAIT).await;
    if !done {
        tracing::warn!("audit entries not chained within {WAIT:?}; they will be by a later round");
    }
    done
}

/// One round: every pending entry (up to [`BATCH`]; then [`Next::Now`]) into the
/// chain, in id order, and out of `audit_pending`, in one transaction.
pub async fn round(db: &PgPool, rounds: &Rounds) -> anyhow::Result<Next> {
    let round = rounds.begin();
    // Looked at without the lock first: an idle round costs one cheap read.
    let any = sqlx::query_scalar!(r#"SELECT EXISTS (SELECT 1 FROM audit_pending) AS "any!""#).fetch_one(db).await?;
    if !any {
        rounds.done(round);
        return Ok(Next::Later);
    }
    let mut tx = db.begin().await?;
    // Before reading: another instance's sequencer may be chaining the same entries.
    chain::lock(&mut tx).await?;
    let pending = sqlx::query!(
        r#"SELECT id, action, actor_user_id, actor_role AS "actor_role: Role", subject_kind, subject_id,
                  request_id, server_request_id, data, event_id
           FROM audit_pending ORDER BY id LIMIT $1"#,
        BATCH
    )
    .fetch_all(&mut *tx)
    .await?;
    let caught_up = (pending.len() as i64) < BATCH;
    let ids: Vec<i64> = pending.iter().map(|p| p.id).collect();
    let entries = pending
        .into_iter()
        .map(|p| NewEntry {
            action: p.action,
            actor: p
                .actor_user_id
                .zip(p.actor_role)
                .map(|(user_id, role)| drops_shared::auth::Identity { user_id, role }),
            subject_kind: p.subject_kind,
            subject_id: p.subject_id,
            request_id: p.request_id,
            server_request_id: p.server_request_id,
            data: p.data,
            event_id: p.event_id,
        })
        .collect();
    chain::append(&mut tx, entries).await?;
    sqlx::query!("DELETE FROM audit_pending WHERE id = ANY($1)", &ids).execute(&mut *tx).await?;
    tx.commit().await?;
    if caught_up {
        rounds.done(round);
        return Ok(Next::Later);
    }
    Ok(Next::Now)
}
