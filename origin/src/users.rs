//! Users exist from the first valid token that names them (or from the first
//! reservation the edge hands over for them). Any area may make sure of one, in its
//! own transaction.

use drops_shared::auth::Role;
use sqlx::PgExecutor;
use uuid::Uuid;

pub async fn ensure(db: impl PgExecutor<'_>, user_id: Uuid, role: Role) -> sqlx::Result<()> {
    ensure_all(db, &[user_id], role).await
}

/// [`ensure`] for many users of one role, in one statement.
pub async fn ensure_all(db: impl PgExecutor<'_>, user_ids: &[Uuid], role: Role) -> sqlx::Result<()> {
    sqlx::query!(
        "INSERT INTO users (id, role) SELECT id, $2 FROM UNNEST($1::uuid[]) AS u(id) ON CONFLICT (id) DO NOTHING",
        user_ids,
        role as Role
    )
    .execute(db)
    .await?;
    Ok(())
}
