//! Creator profiles. Follows and follower counts arrive with the followers module.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use drops_shared::api::{validate_text, CreateCreator, Creator};
use drops_shared::problem::ErrorCode;
use uuid::Uuid;

use crate::error::{ApiError, ApiResult};
use crate::extract::{Admins, Authorized, StrictJson};
use crate::startup::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/creators", post(create)).route("/v1/creators/{creator_id}", get(show))
}

#[derive(sqlx::FromRow)]
struct CreatorRow {
    id: Uuid,
    name: String,
    user_id: Uuid,
    created_at: DateTime<Utc>,
}

impl From<CreatorRow> for Creator {
    fn from(r: CreatorRow) -> Self {
        Creator { id: r.id, name: r.name, user_id: r.user_id, follower_count: 0, created_at: r.created_at }
    }
}

pub fn parse_id(raw: &str) -> ApiResult<Uuid> {
    Uuid::parse_str(raw).map_err(|_| ApiError::not_found())
}

#[tracing::instrument(skip_all, fields(admin = %admin.0.user_id))]
async fn create(
    State(state): State<AppState>,
    admin: Authorized<Admins>,
    StrictJson(body): StrictJson<CreateCreator>,
) -> ApiResult<(StatusCode, Json<Creator>)> {
    validate_text("name", &body.name, 200)?;
    let mut tx = state.db.begin().await?;
    // The creator's account may not have signed in yet: it exists from now on.
    sqlx::query("INSERT INTO users (id, role) VALUES ($1, 'creator') ON CONFLICT (id) DO NOTHING")
        .bind(body.user_id)
        .execute(&mut *tx)
        .await?;
    let row: Option<CreatorRow> = sqlx::query_as(
        "INSERT INTO creators (id, user_id, name) VALUES ($1, $2, $3)
         ON CONFLICT (user_id) DO NOTHING RETURNING id, name, user_id, created_at",
    )
    .bind(Uuid::now_v7())
    .bind(body.user_id)
    .bind(body.name.trim())
    .fetch_optional(&mut *tx)
    .await?;
    let row = row.ok_or_else(|| ApiError::code(ErrorCode::Conflict, "that user already has a creator profile"))?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(row.into())))
}

async fn show(State(state): State<AppState>, Path(creator_id): Path<String>) -> ApiResult<Json<Creator>> {
    let id = parse_id(&creator_id)?;
    let row: CreatorRow = sqlx::query_as("SELECT id, name, user_id, created_at FROM creators WHERE id = $1")
        .bind(id)
        .fetch_optional(&state.db)
        .await?
        .ok_or_else(ApiError::not_found)?;
    let follower_count = crate::followers::count(&state, id).await?;
    Ok(Json(Creator { follower_count, ..row.into() }))
}

/// The creator profile a creator-role caller acts as.
pub async fn of_user(state: &AppState, user_id: Uuid) -> ApiResult<Uuid> {
    let id: Option<Uuid> = sqlx::query_scalar("SELECT id FROM creators WHERE user_id = $1")
        .bind(user_id)
        .fetch_optional(&state.db)
        .await?;
    id.ok_or_else(|| ApiError::code(ErrorCode::Forbidden, "this account has no creator profile"))
}
