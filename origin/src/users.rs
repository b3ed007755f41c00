//! Users exist from the first valid token that names them.

use drops_shared::auth::Role;
use sqlx::PgPool;
use uuid::Uuid;

pub async fn ensure(db: &PgPool, user_id: Uuid, role: Role) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO users (id, role) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING")
        .bind(user_id)
        .bind(role.as_str())
        .execute(db)
        .await?;
    Ok(())
}
