//! Users exist from the first valid token that names them (or from the first
//! reservation the edge hands over for them). Any area may make sure of one, in its
//! own transaction.

use drops_shared::auth::Role;
use sqlx::PgExecutor;
use uuid::Uuid;

pub async fn ensure(db: impl PgExecutor<'_>, user_id: Uuid, role: Role) -> sqlx::Result<()> {
    sqlx::query!("INSERT INTO users (id, role) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING", user_id, role as Role)
        .execute(db)
        .await?;
    Ok(())
}
