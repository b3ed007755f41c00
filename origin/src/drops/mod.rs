//! Products and drops: catalogue writes, drop cards and lists (which the edge caches),
//! and the drop's inventory terms at the edge. A drop is sellable once the edge has
//! its terms; until the edge acknowledges them, `inventory_synced_at` stays NULL and
//! a background loop retries.
//!
//! - [`schedule`]: emits `DropStarted` / `DropEnded` at the drop's times, once.
//! - [`purge`]: evicts the edge's cached pages when a drop changes.

pub mod purge;
pub mod schedule;

use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use drops_shared::api::{
    CreateDrop, CreateProduct, CreatorRef, DropCard, DropListing, DropStatus, Money, Page, Product, ProductRef,
    StockLevel, UpdateDrop,
};
use drops_shared::auth::Role;
use drops_shared::events::DomainEvent;
use drops_shared::internal::InventoryTerms;
use drops_shared::problem::ErrorCode;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::creators::{of_user, parse_id};
use crate::error::{ApiError, ApiResult};
use crate::events;
use crate::extract::{Authorized, Sellers, StrictJson};
use crate::pagination::{self, PageQuery};
use crate::startup::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/products", post(create_product))
        .route("/v1/drops", post(create_drop).get(list_drops))
        .route("/v1/drops/{drop_id}", get(show_drop).patch(update_drop))
}

#[derive(sqlx::FromRow)]
struct ProductRow {
    id: Uuid,
    creator_id: Uuid,
    title: String,
    description: String,
    image_url: Option<String>,
    created_at: DateTime<Utc>,
}

async fn create_product(
    State(state): State<AppState>,
    user: Authorized<Sellers>,
    StrictJson(body): StrictJson<CreateProduct>,
) -> ApiResult<(StatusCode, Json<Product>)> {
    body.validate()?;
    let creator_id = match (user.0.role, body.creator_id) {
        (Role::Admin, Some(id)) => id,
        (Role::Admin, None) => {
            return Err(ApiError::code(ErrorCode::InvalidRequest, "field `creator_id`: required for admins"))
        }
        (_, Some(_)) => return Err(ApiError::code(ErrorCode::InvalidRequest, "field `creator_id`: admins only")),
        (_, None) => of_user(&state, user.0.user_id).await?,
    };
    let row: ProductRow = sqlx::query_as(
        "INSERT INTO products (id, creator_id, title, description, image_url) VALUES ($1, $2, $3, $4, $5)
         RETURNING id, creator_id, title, description, image_url, created_at",
    )
    .bind(Uuid::now_v7())
    .bind(creator_id)
    .bind(body.title.trim())
    .bind(&body.description)
    .bind(&body.image_url)
    .fetch_one(&state.db)
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(Product {
            id: row.id,
            creator_id: row.creator_id,
            title: row.title,
            description: row.description,
            image_url: row.image_url,
            created_at: row.created_at,
        }),
    ))
}

#[derive(sqlx::FromRow)]
struct DropRow {
    id: Uuid,
    creator_id: Uuid,
    creator_name: String,
    product_id: Uuid,
    title: String,
    description: String,
    image_url: Option<String>,
    price_amount: i64,
    currency: String,
    stock: i32,
    max_per_user: i32,
    starts_at: DateTime<Utc>,
    ends_at: DateTime<Utc>,
    hold_seconds: i32,
    committed: i64,
}

const DROP_SELECT: &str = "
SELECT d.id, d.creator_id, c.name AS creator_name, d.product_id, p.title, p.description, p.image_url,
       d.price_amount, d.currency, d.stock, d.max_per_user, d.starts_at, d.ends_at, d.hold_seconds,
       COALESCE((SELECT SUM(o.quantity) FROM orders o
                 WHERE o.drop_id = d.id AND o.status IN ('reserved', 'confirmed')), 0)::bigint AS committed
FROM drops d JOIN creators c ON c.id = d.creator_id JOIN products p ON p.id = d.product_id";

impl DropRow {
    fn price(&self) -> Money {
        Money { amount: self.price_amount, currency: self.currency.trim().to_owned() }
    }

    fn card(&self, now: DateTime<Utc>) -> DropCard {
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

    fn terms(&self) -> InventoryTerms {
        InventoryTerms {
            total: self.stock as u32,
            max_per_user: self.max_per_user as u32,
            starts_at: self.starts_at,
            ends_at: self.ends_at,
            price: self.price(),
            hold_seconds: self.hold_seconds as u32,
        }
    }
}

async fn load_drop(state: &AppState, drop_id: Uuid) -> ApiResult<DropRow> {
    sqlx::query_as(&format!("{DROP_SELECT} WHERE d.id = $1"))
        .bind(drop_id)
        .fetch_optional(&state.db)
        .await?
        .ok_or_else(ApiError::not_found)
}

#[tracing::instrument(skip_all, fields(user_id = %user.0.user_id))]
async fn create_drop(
    State(state): State<AppState>,
    user: Authorized<Sellers>,
    StrictJson(body): StrictJson<CreateDrop>,
) -> ApiResult<(StatusCode, Json<DropCard>)> {
    body.validate()?;
    let creator_id: Option<Uuid> = sqlx::query_scalar("SELECT creator_id FROM products WHERE id = $1")
        .bind(body.product_id)
        .fetch_optional(&state.db)
        .await?;
    let creator_id = creator_id.ok_or_else(|| ApiError::code(ErrorCode::NotFound, "no such product"))?;
    if user.0.role == Role::Creator && of_user(&state, user.0.user_id).await? != creator_id {
        // Someone else's product: do not reveal that it exists.
        return Err(ApiError::code(ErrorCode::NotFound, "no such product"));
    }
    let drop_id = Uuid::now_v7();
    let mut tx = state.db.begin().await?;
    sqlx::query(
        "INSERT INTO drops (id, product_id, creator_id, price_amount, currency, stock, max_per_user,
                            starts_at, ends_at, hold_seconds)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(drop_id)
    .bind(body.product_id)
    .bind(creator_id)
    .bind(body.price.amount)
    .bind(&body.price.currency)
    .bind(body.stock as i32)
    .bind(body.max_per_user as i32)
    .bind(body.starts_at)
    .bind(body.ends_at)
    .bind(body.hold_seconds.unwrap_or(state.settings.hold_seconds) as i32)
    .execute(&mut *tx)
    .await?;
    events::record(
        &mut tx,
        DomainEvent::DropCreated { drop_id, creator_id, starts_at: body.starts_at, ends_at: body.ends_at },
    )
    .await?;
    tx.commit().await?;

    let drop = load_drop(&state, drop_id).await?;
    push_terms(&state, &drop).await;
    Ok((StatusCode::CREATED, Json(drop.card(Utc::now()))))
}

async fn show_drop(State(state): State<AppState>, Path(drop_id): Path<String>) -> ApiResult<Json<DropCard>> {
    let drop = load_drop(&state, parse_id(&drop_id)?).await?;
    Ok(Json(drop.card(Utc::now())))
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DropsQuery {
    status: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

/// `GET /v1/drops?status=live|upcoming`: live drops by `ends_at` (soonest to close
/// first), upcoming ones by `starts_at`; ties broken by id so pages never overlap.
async fn list_drops(
    State(state): State<AppState>,
    query: Result<Query<DropsQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Page<DropCard>>> {
    let Query(q) = query.map_err(|e| ApiError::code(ErrorCode::InvalidRequest, e.body_text()))?;
    let listing = DropListing::parse(q.status.as_deref().unwrap_or("live"))
        .ok_or_else(|| ApiError::code(ErrorCode::InvalidRequest, "query `status`: must be `live` or `upcoming`"))?;
    let page = PageQuery { limit: q.limit, cursor: q.cursor };
    let limit = page.limit()?;
    let after = page.after_keyed(listing.as_str())?;
    let (filter, key) = match listing {
        DropListing::Live => ("d.starts_at <= now() AND d.ends_at > now()", "d.ends_at"),
        DropListing::Upcoming => ("d.starts_at > now()", "d.starts_at"),
    };
    let rows: Vec<DropRow> = sqlx::query_as(&format!(
        "{DROP_SELECT} WHERE {filter} AND ($1::timestamptz IS NULL OR ({key}, d.id) > ($1, $2))
         ORDER BY {key}, d.id LIMIT $3"
    ))
    .bind(after.map(|a| a.0))
    .bind(after.map(|a| a.1))
    .bind(limit + 1)
    .fetch_all(&state.db)
    .await?;
    let now = Utc::now();
    let more = rows.len() as i64 > limit;
    let rows: Vec<&DropRow> = rows.iter().take(limit as usize).collect();
    let next_cursor = match (more, rows.last()) {
        (true, Some(last)) => {
            let at = if listing == DropListing::Live { last.ends_at } else { last.starts_at };
            Some(pagination::encode_keyed(listing.as_str(), at, last.id))
        }
        _ => None,
    };
    Ok(Json(Page { items: rows.iter().map(|d| d.card(now)).collect(), next_cursor }))
}

/// `PATCH /v1/drops/{id}`: the creator changes a drop's terms, only before it starts.
#[tracing::instrument(skip_all, fields(user_id = %user.0.user_id))]
async fn update_drop(
    State(state): State<AppState>,
    user: Authorized<Sellers>,
    Path(drop_id): Path<String>,
    StrictJson(body): StrictJson<UpdateDrop>,
) -> ApiResult<Json<DropCard>> {
    let drop_id = parse_id(&drop_id)?;
    let mut tx = state.db.begin().await?;
    let current: Option<(Uuid, Uuid, i64, String, i32, i32, DateTime<Utc>, DateTime<Utc>, i32)> = sqlx::query_as(
        "SELECT product_id, creator_id, price_amount, currency, stock, max_per_user, starts_at, ends_at, hold_seconds
         FROM drops WHERE id = $1 FOR UPDATE",
    )
    .bind(drop_id)
    .fetch_optional(&mut *tx)
    .await?;
    let (product_id, creator_id, amount, currency, stock, max_per_user, starts_at, ends_at, hold_seconds) =
        current.ok_or_else(ApiError::not_found)?;
    if user.0.role == Role::Creator && of_user(&state, user.0.user_id).await? != creator_id {
        return Err(ApiError::not_found());
    }
    if starts_at <= Utc::now() {
        return Err(ApiError::code(ErrorCode::DropAlreadyStarted, "a drop's terms are fixed once it has started"));
    }
    let current = CreateDrop {
        product_id,
        price: Money { amount, currency: currency.trim().to_owned() },
        stock: stock as u32,
        max_per_user: max_per_user as u32,
        starts_at,
        ends_at,
        hold_seconds: Some(hold_seconds as u32),
    };
    let next = body.apply(&current)?;
    sqlx::query(
        "UPDATE drops SET price_amount = $2, currency = $3, stock = $4, max_per_user = $5, starts_at = $6,
                          ends_at = $7, hold_seconds = $8, inventory_synced_at = NULL, updated_at = now()
         WHERE id = $1",
    )
    .bind(drop_id)
    .bind(next.price.amount)
    .bind(&next.price.currency)
    .bind(next.stock as i32)
    .bind(next.max_per_user as i32)
    .bind(next.starts_at)
    .bind(next.ends_at)
    .bind(next.hold_seconds.unwrap_or(state.settings.hold_seconds) as i32)
    .execute(&mut *tx)
    .await?;
    events::record(
        &mut tx,
        DomainEvent::DropUpdated { drop_id, creator_id, starts_at: next.starts_at, ends_at: next.ends_at },
    )
    .await?;
    tx.commit().await?;
    let drop = load_drop(&state, drop_id).await?;
    push_terms(&state, &drop).await;
    Ok(Json(drop.card(Utc::now())))
}

/// Gives the edge the drop's terms, retrying briefly; the sync loop keeps at it after.
async fn push_terms(state: &AppState, drop: &DropRow) {
    for attempt in 0..3u32 {
        match sync_inventory(state, drop).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(drop_id = %drop.id, attempt, error = %e, "inventory sync failed; will retry");
                tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
            }
        }
    }
}

async fn sync_inventory(state: &AppState, drop: &DropRow) -> anyhow::Result<()> {
    state.edge.upsert_inventory(drop.id, &drop.terms()).await?;
    sqlx::query("UPDATE drops SET inventory_synced_at = now() WHERE id = $1").bind(drop.id).execute(&state.db).await?;
    Ok(())
}

/// Pushes the terms of every drop the edge has not acknowledged, until it has.
pub async fn inventory_sync_loop(state: AppState, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let pending: Result<Vec<DropRow>, _> = sqlx::query_as(&format!(
            "{DROP_SELECT} WHERE d.inventory_synced_at IS NULL ORDER BY d.created_at LIMIT 50"
        ))
        .fetch_all(&state.db)
        .await;
        match pending {
            Ok(drops) => {
                for drop in drops {
                    if let Err(e) = sync_inventory(&state, &drop).await {
                        tracing::warn!(drop_id = %drop.id, error = %e, "inventory sync failed");
                        break; // the edge is likely down: try again next tick
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not list unsynced drops"),
        }
    }
}
