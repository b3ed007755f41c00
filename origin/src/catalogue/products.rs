//! Products: what a drop sells. A creator makes their own; an admin names the creator.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use drops_shared::api::{CreateProduct, Product};
use drops_shared::auth::Role;
use drops_shared::problem::ErrorCode;
use sqlx::PgExecutor;
use uuid::Uuid;

use super::{creators, CatalogueState};
use crate::error::{ApiError, ApiResult};
use crate::extract::{Authorized, Sellers, StrictJson};

pub fn router() -> Router<CatalogueState> {
    Router::new().route("/v1/products", post(create_product))
}

async fn create_product(
    State(state): State<CatalogueState>,
    user: Authorized<Sellers>,
    StrictJson(body): StrictJson<CreateProduct>,
) -> ApiResult<(StatusCode, Json<Product>)> {
    body.validate()?;
    // Omitted, `creator_id` is the caller's own profile. Naming another creator is
    // a matter of permission (admins only), not of a malformed request.
    let creator_id = match (user.0.role, body.creator_id) {
        (Role::Admin, Some(id)) => match creators::name(&state.core.db, id).await? {
            Some(_) => id,
            None => return Err(ApiError::code(ErrorCode::NotFound, "no creator with this `creator_id`")),
        },
        (_, None) => creators::of_user(&state.core.db, user.0.user_id).await?,
        (_, Some(id)) => {
            let own = creators::of_user(&state.core.db, user.0.user_id).await?;
            if own != id {
                return Err(ApiError::code(ErrorCode::Forbidden, "creators add products to their own profile only"));
            }
            own
        }
    };
    let product = sqlx::query_as!(
        Product,
        "INSERT INTO products (id, creator_id, title, description, image_url) VALUES ($1, $2, $3, $4, $5)
         RETURNING id, creator_id, title, description, image_url, created_at",
        Uuid::now_v7(),
        creator_id,
        body.title.trim(),
        body.description,
        body.image_url
    )
    .fetch_one(&state.core.db)
    .await?;
    Ok((StatusCode::CREATED, Json(product)))
}

/// The creator a product belongs to, if there is such a product.
pub async fn creator_of(db: impl PgExecutor<'_>, product_id: Uuid) -> sqlx::Result<Option<Uuid>> {
    sqlx::query_scalar!("SELECT creator_id FROM products WHERE id = $1", product_id).fetch_optional(db).await
}
