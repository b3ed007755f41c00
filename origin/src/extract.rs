//! Request extractors. Their order in a handler's arguments is the order of the
//! checks API.md fixes: the token and role first, then the body.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use chrono::Utc;
use drops_shared::auth::{verify_bearer, Identity, Role};
use drops_shared::problem::{ErrorCode, Problem};
use drops_shared::signing::{verify_internal, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use drops_shared::MAX_BODY_BYTES;
use secrecy::ExposeSecret;
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::startup::AppState;
use crate::users;

/// A caller with a valid bearer token; the user row exists once this is extracted.
#[derive(Debug, Clone, Copy)]
pub struct AuthUser(pub Identity);

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let header = parts.headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        let identity = verify_bearer(header, state.settings.jwt_secret.expose_secret().as_bytes(), Utc::now())?;
        users::ensure(&state.db, identity.user_id, identity.role).await?;
        Ok(AuthUser(identity))
    }
}

/// Which roles a route admits; checked with the token, before the body is read.
pub trait Roles: Send + Sync {
    const ALLOWED: &'static [Role];
}

pub struct Admins;
impl Roles for Admins {
    const ALLOWED: &'static [Role] = &[Role::Admin];
}

/// Creators and admins: the catalogue writers.
pub struct Sellers;
impl Roles for Sellers {
    const ALLOWED: &'static [Role] = &[Role::Creator, Role::Admin];
}

/// A caller whose token is valid and whose role `R` admits.
pub struct Authorized<R: Roles>(pub Identity, std::marker::PhantomData<R>);

impl<R: Roles> FromRequestParts<AppState> for Authorized<R> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let AuthUser(identity) = AuthUser::from_request_parts(parts, state).await?;
        identity.require(R::ALLOWED)?;
        Ok(Authorized(identity, std::marker::PhantomData))
    }
}

async fn bounded_bytes(req: Request, state: &AppState) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state).await.map_err(|rejection| {
        if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            Problem::new(
                ErrorCode::PayloadTooLarge,
                Some(format!("request bodies are limited to {MAX_BODY_BYTES} bytes")),
            )
            .into()
        } else {
            ApiError::code(ErrorCode::InvalidRequest, "could not read the request body")
        }
    })
}

/// A JSON body decoded strictly: unknown fields and wrong types are a 400 naming the field.
pub struct StrictJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for StrictJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let bytes = bounded_bytes(req, state).await?;
        Ok(StrictJson(drops_shared::json::from_slice(&bytes)?))
    }
}

/// The body of an internal call from the edge, after its signature checked out.
pub struct SignedBody(pub Bytes);

impl FromRequest<AppState> for SignedBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let method = req.method().as_str().to_owned();
        let path = req.uri().path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_default();
        let headers = req.headers();
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let (timestamp, signature) = (header(TIMESTAMP_HEADER), header(SIGNATURE_HEADER));
        let bytes = bounded_bytes(req, state).await?;
        verify_internal(
            state.settings.edge_to_origin_secret.expose_secret().as_bytes(),
            &method,
            &path,
            timestamp.as_deref(),
            signature.as_deref(),
            &bytes,
            Utc::now().timestamp(),
        )
        .map_err(|e| {
            tracing::warn!(%path, error = %e, "refused an internal call");
            ApiError::code(ErrorCode::Unauthorized, "internal call refused")
        })?;
        Ok(SignedBody(bytes))
    }
}

impl SignedBody {
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        Ok(drops_shared::json::from_slice(&self.0)?)
    }
}
