//! Drops: created and changed (before they start) by their creator or an admin,
//! read as cards and lists, which the edge caches. A drop is sellable once the edge
//! has its terms (see [`super::terms`]).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use drops_shared::api::{CreateDrop, DropCard, DropListing, Money, Page, UpdateDrop};
use drops_shared::auth::Role;
use drops_shared::events::DomainEvent;
use drops_shared::problem::ErrorCode;
use uuid::Uuid;

use super::drop_row::{load, DropRow};
use super::{creators, products, terms, CatalogueState};
use crate::audit::{self, NewEntry};
use crate::events;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{path_id, Authorized, RequestId, Sellers, StrictJson, StrictQuery};
use crate::http::paging::{self, PageQuery};
use crate::state::Core;

pub fn router() -> Router<CatalogueState> {
    Router::new()
        .route("/v1/drops", post(create_drop).get(list_drops))
        .route("/v1/drops/{drop_id}", get(show_drop).patch(update_drop))
}

async fn load_drop(core: &Core, drop_id: Uuid) -> ApiResult<DropRow> {
    load(&core.db, &[drop_id]).await?.pop().ok_or_else(ApiError::not_found)
}

#[tracing::instrument(skip_all, fields(user_id = %user.0.user_id))]
async fn create_drop(
    State(state): State<CatalogueState>,
    user: Authorized<Sellers>,
    request_id: RequestId,
    StrictJson(body): StrictJson<CreateDrop>,
) -> ApiResult<(StatusCode, Json<DropCard>)> {
    body.validate()?;
    let db = &state.core.db;
    let creator_id = products::creator_of(db, body.product_id).await?;
    let creator_id = creator_id.ok_or_else(|| ApiError::code(ErrorCode::NotFound, "no such product"))?;
    if user.0.role == Role::Creator && creators::of_user(db, user.0.user_id).await? != creator_id {
        // Someone else's product: do not reveal that it exists.
        return Err(ApiError::code(ErrorCode::NotFound, "no such product"));
    }
    let drop_id = Uuid::now_v7();
    let mut terms = terms_data(&body, state.core.settings.orders.hold_seconds);
    terms.insert("creator_id".into(), creator_id.to_string().into());
    let entry = NewEntry::system("drop.created", "drop", drop_id, terms.into()).by(user.0, &request_id);
    let drop = save(&state, db.begin().await?, drop_id, creator_id, &body, Change::Created, entry).await?;
    Ok((StatusCode::CREATED, Json(drop.card(Utc::now()))))
}

/// A drop's terms as the audit log records them (`hold_seconds` resolved).
fn terms_data(sale: &CreateDrop, default_hold_seconds: u32) -> serde_json::Map<String, serde_json::Value> {
    let terms = serde_json::json!({
        "product_id": sale.product_id,
        "price": {"amount": sale.price.amount, "currency": sale.price.currency},
        "stock": sale.stock,
        "max_per_user": sale.max_per_user,
        "starts_at": sale.starts_at,
        "ends_at": sale.ends_at,
        "hold_seconds": sale.hold_seconds.unwrap_or(default_hold_seconds),
    });
    match terms {
        serde_json::Value::Object(map) => map,
        _ => serde_json::Map::new(),
    }
}

/// The terms that differ between `before` and `after`: `{"before": {...}, "after": {...}}`.
fn terms_change(before: &CreateDrop, after: &CreateDrop, default_hold_seconds: u32) -> serde_json::Value {
    let (old, new) = (terms_data(before, default_hold_seconds), terms_data(after, default_hold_seconds));
    let changed: Vec<&String> = new.keys().filter(|k| old.get(*k) != new.get(*k)).collect();
    let pick = |terms: &serde_json::Map<String, serde_json::Value>| -> serde_json::Map<String, serde_json::Value> {
        changed.iter().map(|k| ((*k).clone(), terms[k.as_str()].clone())).collect()
    };
    serde_json::json!({"before": pick(&old), "after": pick(&new)})
}

enum Change {
    Created,
    Updated,
}

/// Writes a drop's terms (a new drop, or a change before it starts) with its event
/// and its audit entry in `tx`, then gives the edge the terms; returns the drop as
/// it now is.
async fn save(
    state: &CatalogueState,
    mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
    drop_id: Uuid,
    creator_id: Uuid,
    sale: &CreateDrop,
    change: Change,
    audited: NewEntry,
) -> ApiResult<DropRow> {
    sqlx::query!(
        "INSERT INTO drops (id, product_id, creator_id, price_amount, currency, stock, max_per_user,
                            starts_at, ends_at, hold_seconds)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         ON CONFLICT (id) DO UPDATE SET price_amount = EXCLUDED.price_amount, currency = EXCLUDED.currency,
             stock = EXCLUDED.stock, max_per_user = EXCLUDED.max_per_user, starts_at = EXCLUDED.starts_at,
             ends_at = EXCLUDED.ends_at, hold_seconds = EXCLUDED.hold_seconds,
             terms_version = drops.terms_version + 1, inventory_synced_at = NULL, updated_at = now()",
        drop_id,
        sale.product_id,
        creator_id,
        sale.price.amount,
        sale.price.currency,
        sale.stock as i32,
        sale.max_per_user as i32,
        sale.starts_at,
        sale.ends_at,
        sale.hold_seconds.unwrap_or(state.core.settings.orders.hold_seconds) as i32
    )
    .execute(&mut *tx)
    .await?;
    let (starts_at, ends_at, stock) = (sale.starts_at, sale.ends_at, sale.stock);
    let event = match change {
        Change::Created => DomainEvent::DropCreated { drop_id, creator_id, starts_at, ends_at, stock },
        Change::Updated => DomainEvent::DropUpdated { drop_id, creator_id, starts_at, ends_at, stock },
    };
    events::record(&mut tx, event).await?;
    audit::append(&mut tx, vec![audited]).await?;
    tx.commit().await?;
    audit::settled(&state.core).await;
    let drop = load_drop(&state.core, drop_id).await?;
    terms::push(&state.core, &drop).await;
    Ok(drop)
}

async fn show_drop(State(state): State<CatalogueState>, Path(drop_id): Path<String>) -> ApiResult<Json<DropCard>> {
    let drop = load_drop(&state.core, path_id(&drop_id)?).await?;
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
    State(state): State<CatalogueState>,
    StrictQuery(q): StrictQuery<DropsQuery>,
) -> ApiResult<Json<Page<DropCard>>> {
    let listing: DropListing = q
        .status
        .as_deref()
        .unwrap_or("live")
        .parse()
        .map_err(|_| ApiError::code(ErrorCode::InvalidRequest, "query `status`: must be `live` or `upcoming`"))?;
    let page = PageQuery { limit: q.limit, cursor: q.cursor };
    let limit = page.limit()?;
    // The list's name is the `status` the edge checks the cursor against.
    let list = paging::List::new(&state.core, listing.as_str());
    let after = list.after_keyed(&page)?;
    let (after_at, after_id) = (after.map(|a| a.0), after.map(|a| a.1));
    let db = &state.core.db;
    let ids = match listing {
        DropListing::Live => {
            sqlx::query_scalar!(
                "SELECT id FROM drops WHERE starts_at <= now() AND ends_at > now()
                   AND ($1::timestamptz IS NULL OR (ends_at, id) > ($1, $2)) ORDER BY ends_at, id LIMIT $3",
                after_at,
                after_id,
                limit + 1
            )
            .fetch_all(db)
            .await?
        }
        DropListing::Upcoming => {
            sqlx::query_scalar!(
                "SELECT id FROM drops WHERE starts_at > now()
                   AND ($1::timestamptz IS NULL OR (starts_at, id) > ($1, $2)) ORDER BY starts_at, id LIMIT $3",
                after_at,
                after_id,
                limit + 1
            )
            .fetch_all(db)
            .await?
        }
    };
    let rows = load(db, &ids).await?;
    let page = paging::page(rows, limit, |last| {
        let at = if listing == DropListing::Live { last.ends_at } else { last.starts_at };
        list.cursor_keyed(at, last.id)
    });
    let now = Utc::now();
    Ok(Json(Page { items: page.items.iter().map(|d| d.card(now)).collect(), next_cursor: page.next_cursor }))
}

/// `PATCH /v1/drops/{id}`: the creator changes a drop's terms, only before it starts.
#[tracing::instrument(skip_all, fields(user_id = %user.0.user_id))]
async fn update_drop(
    State(state): State<CatalogueState>,
    user: Authorized<Sellers>,
    request_id: RequestId,
    Path(drop_id): Path<String>,
    StrictJson(body): StrictJson<UpdateDrop>,
) -> ApiResult<Json<DropCard>> {
    let drop_id = path_id(&drop_id)?;
    let mut tx = state.core.db.begin().await?;
    let current = sqlx::query!(
        "SELECT product_id, creator_id, price_amount, currency, stock, max_per_user, starts_at, ends_at, hold_seconds
         FROM drops WHERE id = $1 FOR UPDATE",
        drop_id
    )
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(ApiError::not_found)?;
    let creator_id = current.creator_id;
    if user.0.role == Role::Creator && creators::of_user(&mut *tx, user.0.user_id).await? != creator_id {
        return Err(ApiError::not_found());
    }
    if current.starts_at <= Utc::now() {
        return Err(ApiError::code(ErrorCode::DropAlreadyStarted, "a drop's terms are fixed once it has started"));
    }
    let current = CreateDrop {
        product_id: current.product_id,
        price: Money { amount: current.price_amount, currency: current.currency.trim().to_owned() },
        stock: current.stock as u32,
        max_per_user: current.max_per_user as u32,
        starts_at: current.starts_at,
        ends_at: current.ends_at,
        hold_seconds: Some(current.hold_seconds as u32),
    };
    let next = body.apply(&current)?;
    let change = terms_change(&current, &next, state.core.settings.orders.hold_seconds);
    let entry = NewEntry::system("drop.terms_changed", "drop", drop_id, change).by(user.0, &request_id);
    let drop = save(&state, tx, drop_id, creator_id, &next, Change::Updated, entry).await?;
    Ok(Json(drop.card(Utc::now())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_terms_change_records_only_the_fields_that_changed() {
        let starts_at = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let before = CreateDrop {
            product_id: Uuid::from_u128(1),
            price: Money { amount: 1500, currency: "EUR".into() },
            stock: 10,
            max_per_user: 2,
            starts_at,
            ends_at: starts_at + chrono::Duration::hours(1),
            hold_seconds: None,
        };
        let after = CreateDrop {
            stock: 12,
            price: Money { amount: 1800, currency: "EUR".into() },
            hold_seconds: Some(600),
            ..before.clone()
        };
        // `hold_seconds` resolves to the default before: 600 either way, so unchanged.
        assert_eq!(
            terms_change(&before, &after, 600),
            serde_json::json!({"before": {"stock": 10, "price": {"amount": 1500, "currency": "EUR"}},
                               "after": {"stock": 12, "price": {"amount": 1800, "currency": "EUR"}}})
        );
        assert_eq!(terms_change(&before, &before, 600), serde_json::json!({"before": {}, "after": {}}));
        let created = terms_data(&before, 600);
        assert_eq!(created["hold_seconds"], 600);
        assert_eq!(created["starts_at"], "2027-01-15T08:00:00Z");
    }
}
