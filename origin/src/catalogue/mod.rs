//! The catalogue: creators, products and drops (the writes, the cards and lists the
//! edge caches), each drop's terms at the edge ([`terms`]), the lifecycle
//! scheduler ([`schedule`]) and cache invalidation ([`purge`]).
//!
//! Owns the tables `creators`, `products` and `drops`. Stands on the orders area for
//! the units a drop has committed and on the media area for the pictures products
//! name (a product's `image_url` is a recorded public file); a creator's follower
//! count comes from the followers area (above this one) as a [`FollowerCounts`],
//! wired in `startup`.

pub mod creators;
pub mod demo;
pub mod drop_row;
pub mod drops;
pub mod facts;
pub mod products;
pub mod purge;
pub mod schedule;
pub mod terms;

use std::sync::Arc;

use async_trait::async_trait;
use axum::extract::FromRef;
use axum::Router;
use drops_shared::internal::InventoryTerms;
use uuid::Uuid;

use crate::state::Core;

/// How many follow a creator; implemented by the followers area.
#[async_trait]
pub trait FollowerCounts: Send + Sync {
    async fn count(&self, core: &Core, creator_id: Uuid) -> anyhow::Result<u64>;
}

/// The state of this area's routes.
#[derive(Clone)]
pub struct CatalogueState {
    pub core: Core,
    pub followers: Arc<dyn FollowerCounts>,
}

impl FromRef<CatalogueState> for Core {
    fn from_ref(state: &CatalogueState) -> Core {
        state.core.clone()
    }
}

pub fn router(state: CatalogueState) -> Router {
    Router::new().merge(creators::router()).merge(products::router()).merge(drops::router()).with_state(state)
}

/// The drops reconciliation looks at, with the terms the edge should sell them on:
/// those the edge has, live or ended within the last day.
pub async fn reconcilable_drops(db: &sqlx::PgPool) -> sqlx::Result<Vec<(Uuid, InventoryTerms)>> {
    let ids = sqlx::query_scalar!(
        "SELECT id FROM drops WHERE inventory_synced_at IS NOT NULL AND starts_at <= now()
           AND ends_at > now() - interval '1 day' ORDER BY starts_at"
    )
    .fetch_all(db)
    .await?;
    drop_row::terms_of(db, &ids).await
}

/// The terms of the drops `ids` names (those that exist).
pub async fn terms_of(db: &sqlx::PgPool, ids: &[Uuid]) -> sqlx::Result<Vec<(Uuid, InventoryTerms)>> {
    drop_row::terms_of(db, ids).await
}
