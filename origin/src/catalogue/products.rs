//! Products: what a drop sells. A creator makes their own; an admin names the creator.
//! A product's `image_url` is a public file the platform stored (see [`crate::media`]):
//! exactly its path, `/v1/media/<key>`, so the edge serves it and nothing elsewhere
//! can be passed off as the product's picture.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use drops_shared::api::{CreateProduct, Product};
use drops_shared::auth::Role;
use drops_shared::media::MediaKey;
use drops_shared::problem::ErrorCode;
use sqlx::PgExecutor;
use uuid::Uuid;

use super::{creators, CatalogueState};
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{Authorized, Sellers, StrictJson};
use crate::media;

pub fn router() -> Router<CatalogueState> {
    Router::new().route("/v1/products", post(create_product))
}

async fn create_product(
    State(state): State<CatalogueState>,
    user: Authorized<Sellers>,
    StrictJson(body): StrictJson<CreateProduct>,
) -> ApiResult<(StatusCode, Json<Product>)> {
    body.validate()?;
    if let Some(url) = &body.image_url {
        check_image_url(&state.core.db, url).await?;
    }
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

/// A product's `image_url` must be `/v1/media/<key>` of a public file the platform
/// stored: not a private file, not a key nothing was uploaded under, not a URL
/// elsewhere (absolute, or any other path).
pub async fn check_image_url(db: impl PgExecutor<'_>, url: &str) -> ApiResult<MediaKey> {
    let recorded = match MediaKey::from_public_url(url) {
        Some(key) if media::is_public(db, &key).await? => Some(key),
        _ => None,
    };
    recorded.ok_or_else(|| {
        ApiError::code(
            ErrorCode::InvalidRequest,
            "field `image_url`: must be the `url` `POST /v1/media` answered for a public upload \
             (`/v1/media/<key>`, exactly)",
        )
    })
}

/// The creator a product belongs to, if there is such a product.
pub async fn creator_of(db: impl PgExecutor<'_>, product_id: Uuid) -> sqlx::Result<Option<Uuid>> {
    sqlx::query_scalar!("SELECT creator_id FROM products WHERE id = $1", product_id).fetch_optional(db).await
}
