//! What the analytics area reports a drop's figures against, read at query time:
//! whose the drop is (the creator and the account behind it) and its fixed terms.
//! Read-only; the analytics area never reads the catalogue on its event path.
//! (The followers area asks [`creator_owner`] too: a creator's list of followers is
//! its owner's to read.)

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;
use uuid::Uuid;

/// A drop as analytics needs it.
#[derive(Debug, Clone)]
pub struct DropFacts {
    pub drop_id: Uuid,
    pub creator_id: Uuid,
    /// The creator profile's user: the drop's owner.
    pub owner: Uuid,
    pub total: i32,
    pub currency: String,
    pub starts_at: DateTime<Utc>,
}

/// The drop `drop_id`, if it exists.
pub async fn drop_facts(db: impl PgExecutor<'_>, drop_id: Uuid) -> sqlx::Result<Option<DropFacts>> {
    let row = sqlx::query!(
        "SELECT d.id, d.creator_id, c.user_id, d.stock, d.currency, d.starts_at
         FROM drops d JOIN creators c ON c.id = d.creator_id WHERE d.id = $1",
        drop_id
    )
    .fetch_optional(db)
    .await?;
    Ok(row.map(|r| DropFacts {
        drop_id: r.id,
        creator_id: r.creator_id,
        owner: r.user_id,
        total: r.stock,
        currency: r.currency.trim().to_owned(),
        starts_at: r.starts_at,
    }))
}

/// The user behind creator `creator_id`, if there is such a creator.
pub async fn creator_owner(db: impl PgExecutor<'_>, creator_id: Uuid) -> sqlx::Result<Option<Uuid>> {
    sqlx::query_scalar!("SELECT user_id FROM creators WHERE id = $1", creator_id).fetch_optional(db).await
}

/// Every drop of creator `creator_id`, oldest start first.
pub async fn drops_of_creator(db: impl PgExecutor<'_>, creator_id: Uuid) -> sqlx::Result<Vec<DropFacts>> {
    let rows = sqlx::query!(
        "SELECT d.id, d.creator_id, c.user_id, d.stock, d.currency, d.starts_at
         FROM drops d JOIN creators c ON c.id = d.creator_id WHERE d.creator_id = $1 ORDER BY d.starts_at, d.id",
        creator_id
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| DropFacts {
            drop_id: r.id,
            creator_id: r.creator_id,
            owner: r.user_id,
            total: r.stock,
            currency: r.currency.trim().to_owned(),
            starts_at: r.starts_at,
        })
        .collect())
}
