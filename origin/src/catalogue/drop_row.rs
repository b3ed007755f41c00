//! A drop as it is read: with its product, its creator and the units its orders have
//! committed. Cards (`super::drops`) and the edge's terms (`super::terms`) are made
//! from it.

use chrono::{DateTime, Utc};
use drops_shared::api::{CreatorRef, DropCard, DropStatus, Money, ProductRef, StockLevel};
use drops_shared::internal::InventoryTerms;
use uuid::Uuid;

use crate::orders;

/// A drop with its product and creator, as cards and terms are made from.
pub struct DropRow {
    pub(super) id: Uuid,
    pub(super) creator_id: Uuid,
    pub(super) creator_name: String,
    pub(super) product_id: Uuid,
    pub(super) title: String,
    pub(super) description: String,
    pub(super) image_url: Option<String>,
    pub(super) price_amount: i64,
    pub(super) currency: String,
    pub(super) stock: i32,
    pub(super) max_per_user: i32,
    pub(super) starts_at: DateTime<Utc>,
    pub(super) ends_at: DateTime<Utc>,
    pub(super) hold_seconds: i32,
    pub(super) terms_version: i64,
    /// Units committed to orders (from the orders area).
    pub(super) committed: i64,
}

/// The drops `ids` names, in that order (those that exist), with the units each
/// has committed. Every read of drops goes through here: the queries that choose
/// which drops differ, the drop they load does not.
pub(super) async fn load(db: &sqlx::PgPool, ids: &[Uuid]) -> sqlx::Result<Vec<DropRow>> {
    let committed = orders::committed_units(db, ids).await?;
    let mut rows = sqlx::query_as!(
        DropRow,
        r#"SELECT d.id, d.creator_id, c.name AS creator_name, d.product_id, p.title, p.description, p.image_url,
                  d.price_amount, d.currency, d.stock, d.max_per_user, d.starts_at, d.ends_at, d.hold_seconds,
                  d.terms_version, 0::bigint AS "committed!" -- from the orders area, just below
           FROM drops d JOIN creators c ON c.id = d.creator_id JOIN products p ON p.id = d.product_id
           WHERE d.id = ANY($1)"#,
        ids
    )
    .fetch_all(db)
    .await?;
    for row in &mut rows {
        row.committed = committed.get(&row.id).copied().unwrap_or(0);
    }
    rows.sort_by_key(|r| ids.iter().position(|id| *id == r.id));
    Ok(rows)
}

/// The sale terms of the drops `ids` names, as the edge should have them.
pub async fn terms_of(db: &sqlx::PgPool, ids: &[Uuid]) -> sqlx::Result<Vec<(Uuid, InventoryTerms)>> {
    Ok(load(db, ids).await?.iter().map(|d| (d.id, d.terms())).collect())
}

impl DropRow {
    fn price(&self) -> Money {
        Money { amount: self.price_amount, currency: self.currency.trim().to_owned() }
    }

    pub fn id(&self) -> Uuid {
        self.id
    }

    pub(super) fn card(&self, now: DateTime<Utc>) -> DropCard {
        let total = self.stock as u32;
        let remaining = total.saturating_sub(self.committed.clamp(0, i64::from(u32::MAX)) as u32);
        DropCard {
            id: self.id,
            status: DropStatus::at(now, self.starts_at, self.ends_at, remaining),
            creator: CreatorRef { id: self.creator_id, name: self.creator_name.clone() },
            product: ProductRef {
                id: self.product_id,
                title: self.title.clone(),
                description: self.description.clone(),
                image_url: self.image_url.clone(),
            },
            price: self.price(),
            stock: StockLevel { total, remaining },
            max_per_user: self.max_per_user as u32,
            starts_at: self.starts_at,
            ends_at: self.ends_at,
        }
    }

    pub fn terms(&self) -> InventoryTerms {
        InventoryTerms {
            total: self.stock as u32,
            max_per_user: self.max_per_user as u32,
            starts_at: self.starts_at,
            ends_at: self.ends_at,
            price: self.price(),
            hold_seconds: self.hold_seconds as u32,
            version: self.terms_version.max(0) as u64,
        }
    }
}

/// Drops whose terms the edge has not acknowledged yet, oldest first.
pub async fn unsynced(db: &sqlx::PgPool, limit: i64) -> sqlx::Result<Vec<DropRow>> {
    let ids = sqlx::query_scalar!(
        "SELECT id FROM drops WHERE inventory_synced_at IS NULL ORDER BY created_at LIMIT $1",
        limit
    )
    .fetch_all(db)
    .await?;
    load(db, &ids).await
}
