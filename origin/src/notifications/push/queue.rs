//! The durable queue of pushes: the message of an event stored once
//! (`push_messages`), and a row per batch of up to [`QUEUED_BATCH`] subscribed users
//! (`push_batches`), which the sender claims and settles (see `super::sender`).

use uuid::Uuid;

/// Users per queued batch: a million followers are two thousand rows.
pub const QUEUED_BATCH: i64 = 500;

/// Which pushes go first when many are due: a buyer's news before a fan-out's batches.
#[derive(Debug, Clone, Copy)]
pub enum Priority {
    Transactional = 0,
    Fanout = 1,
}

/// Stores what the pushes of an event say, once for all of them.
pub async fn store_message(
    conn: &mut sqlx::PgConnection,
    event_id: Uuid,
    payload: &serde_json::Value,
) -> sqlx::Result<()> {
    sqlx::query!(
        "INSERT INTO push_messages (event_id, payload) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        event_id,
        payload
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Queues the event's message (see [`store_message`]) for each of `users` who has a
/// subscription, in batches of [`QUEUED_BATCH`] users: one statement, a row per batch.
/// The batches are ranked from `first_rank` on (a fan-out's later chunks rank after
/// its earlier ones; see `push_batches.rank`). Returns how many users were queued.
/// The caller queues each user once per event (a fan-out, chunk by chunk of its
/// followers, in ranks that follow on).
pub async fn enqueue(
    conn: &mut sqlx::PgConnection,
    event_id: Uuid,
    users: &[Uuid],
    priority: Priority,
    first_rank: i64,
) -> sqlx::Result<u64> {
    let (Some(lowest), Some(highest)) = (users.iter().min(), users.iter().max()) else { return Ok(0) };
    let queued = sqlx::query_scalar!(
        r#"WITH subscribed AS (
               SELECT s.user_id, (row_number() OVER (ORDER BY s.user_id) - 1) / $3 AS batch
               FROM push_subscriptions s
               -- The users' range too, so a fan-out's chunk reads the subscriptions by
               -- their key's range, never all of them.
               WHERE s.user_id = ANY($2) AND s.user_id >= $6 AND s.user_id <= $7),
           queued AS (
               INSERT INTO push_batches (event_id, users, priority, rank)
               SELECT $1, array_agg(user_id ORDER BY user_id), $4, $5 + batch FROM subscribed GROUP BY batch
               RETURNING cardinality(users) AS n)
           SELECT coalesce(sum(n), 0)::bigint AS "queued!" FROM queued"#,
        event_id,
        users,
        QUEUED_BATCH,
        priority as i16,
        first_rank,
        lowest,
        highest
    )
    .fetch_one(conn)
    .await?;
    Ok(queued as u64)
}
