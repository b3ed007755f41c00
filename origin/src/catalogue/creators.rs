//! Creator profiles: an admin makes one for a user; anyone may read one, with its
//! follower count.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use drops_shared::api::{validate_text, CreateCreator, Creator};
use drops_shared::auth::Role;
use drops_shared::problem::ErrorCode;
use sqlx::PgExecutor;
use uuid::Uuid;

use super::CatalogueState;
use crate::audit::{self, NewEntry};
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{path_id, Admins, Authorized, RequestId, StrictJson};
use crate::users;

pub fn router() -> Router<CatalogueState> {
    Router::new().route("/v1/creators", post(create)).route("/v1/creators/{creator_id}", get(show))
}

struct CreatorRow {
    id: Uuid,
    name: String,
    user_id: Uuid,
    created_at: DateTime<Utc>,
}

impl CreatorRow {
    /// The profile as anyone may see it: which account runs it is the admins' to know.
    fn into_creator(self, follower_count: u64) -> Creator {
        Creator { id: self.id, name: self.name, user_id: None, follower_count, created_at: self.created_at }
    }
}

#[tracing::instrument(skip_all, fields(admin = %admin.0.user_id))]
async fn create(
    State(state): State<CatalogueState>,
    admin: Authorized<Admins>,
    request_id: RequestId,
    StrictJson(body): StrictJson<CreateCreator>,
) -> ApiResult<(StatusCode, Json<Creator>)> {
    validate_text("name", &body.name, 200)?;
    let mut tx = state.core.db.begin().await?;
    // The creator's account may not have signed in yet: it exists from now on.
    users::ensure(&mut *tx, body.user_id, Role::Creator).await?;
    let row = sqlx::query_as!(
        CreatorRow,
        "INSERT INTO creators (id, user_id, name) VALUES ($1, $2, $3)
         ON CONFLICT (user_id) DO NOTHING RETURNING id, name, user_id, created_at",
        Uuid::now_v7(),
        body.user_id,
        body.name.trim()
    )
    .fetch_optional(&mut *tx)
    .await?;
    let row = row.ok_or_else(|| ApiError::code(ErrorCode::Conflict, "that user already has a creator profile"))?;
    let data = serde_json::json!({"user_id": row.user_id, "name": row.name});
    let entry = NewEntry::system("creator.created", "creator", row.id, data).by(admin.0, &request_id);
    audit::append(&mut tx, vec![entry]).await?;
    tx.commit().await?;
    audit::settled(&state.core).await;
    let user_id = Some(row.user_id);
    Ok((StatusCode::CREATED, Json(Creator { user_id, ..row.into_creator(0) })))
}

async fn show(State(state): State<CatalogueState>, Path(creator_id): Path<String>) -> ApiResult<Json<Creator>> {
    let id = path_id(&creator_id)?;
    let row = sqlx::query_as!(CreatorRow, "SELECT id, name, user_id, created_at FROM creators WHERE id = $1", id)
        .fetch_optional(&state.core.db)
        .await?
        .ok_or_else(ApiError::not_found)?;
    let follower_count = state.followers.count(&state.core, id).await?;
    Ok(Json(row.into_creator(follower_count)))
}

/// The creator profile a creator-role caller acts as.
pub async fn of_user(db: impl PgExecutor<'_>, user_id: Uuid) -> ApiResult<Uuid> {
    let id = sqlx::query_scalar!("SELECT id FROM creators WHERE user_id = $1", user_id).fetch_optional(db).await?;
    id.ok_or_else(|| ApiError::code(ErrorCode::Forbidden, "this account has no creator profile"))
}

/// The creator's name, if there is such a creator.
pub async fn name(db: impl PgExecutor<'_>, creator_id: Uuid) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar!("SELECT name FROM creators WHERE id = $1", creator_id).fetch_optional(db).await
}

/// The names of these creators (those that exist).
pub async fn names(db: impl PgExecutor<'_>, creator_ids: &[Uuid]) -> sqlx::Result<Vec<(Uuid, String)>> {
    let rows = sqlx::query!("SELECT id, name FROM creators WHERE id = ANY($1)", creator_ids).fetch_all(db).await?;
    Ok(rows.into_iter().map(|r| (r.id, r.name)).collect())
}

/// Every creator's id, for rebuilding what is derived per creator.
pub async fn all_ids(db: impl PgExecutor<'_>) -> sqlx::Result<Vec<Uuid>> {
    sqlx::query_scalar!("SELECT id FROM creators").fetch_all(db).await
}
