//! Request extractors, usable with any area's state that holds a [`Core`]. Their
//! order in a handler's arguments is the order of the checks API.md fixes: the
//! token and role first, then the body.

use std::marker::PhantomData;

use axum::body::Bytes;
use axum::extract::{FromRef, FromRequest, FromRequestParts, Query, Request};
use axum::http::request::Parts;
use axum::routing::MethodFilter;
use chrono::Utc;
use drops_shared::auth::{verify_bearer, Identity, Role};
use drops_shared::internal::{Body, Endpoint, Method};
use drops_shared::problem::{ErrorCode, Problem};
use drops_shared::signing::{verify_internal, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use drops_shared::MAX_BODY_BYTES;
use secrecy::ExposeSecret;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::http::error::{ApiError, ApiResult};
use crate::state::Core;
use crate::users;

/// A caller with a valid bearer token; the user row exists once this is extracted.
#[derive(Debug, Clone, Copy)]
pub struct AuthUser(pub Identity);

impl<S: Send + Sync> FromRequestParts<S> for AuthUser
where
    Core: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let core = Core::from_ref(state);
        let header = parts.headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        let identity = verify_bearer(header, core.settings.auth.jwt_secret.expose_secret().as_bytes(), Utc::now())?;
        users::ensure(&core.db, identity.user_id, identity.role).await?;
        Ok(AuthUser(identity))
    }
}

/// The ids of a request: the client's `x-request-id` as sent (passed on by the edge,
/// or the one the origin's request-id layer made when there was none; `None` only if
/// it is not a short printable header), and the origin's own, which it mints for
/// every request ([`mint_server_request_id`]) and logs with it: a client chooses its
/// id, so only the server's proves which request did something.
#[derive(Debug, Clone)]
pub struct RequestId {
    pub client: Option<String>,
    pub server: String,
}

/// The origin's own id of a request, in its extensions.
#[derive(Debug, Clone)]
pub struct ServerRequestId(pub String);

/// Gives every request the origin's own id (a UUIDv7), before anything else sees it.
pub async fn mint_server_request_id(mut req: Request, next: axum::middleware::Next) -> axum::response::Response {
    req.extensions_mut().insert(ServerRequestId(Uuid::now_v7().to_string()));
    next.run(req).await
}

/// The longest request id kept (the edge passes on at most 128 characters).
const MAX_REQUEST_ID_BYTES: usize = 200;

impl<S: Send + Sync> FromRequestParts<S> for RequestId {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let id = parts.headers.get(drops_shared::REQUEST_ID_HEADER).and_then(|v| v.to_str().ok());
        let sane = id.filter(|id| !id.is_empty() && id.len() <= MAX_REQUEST_ID_BYTES);
        let server = match parts.extensions.get::<ServerRequestId>() {
            Some(ServerRequestId(id)) => id.clone(),
            None => Uuid::now_v7().to_string(),
        };
        Ok(RequestId { client: sane.map(str::to_owned), server })
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
pub struct Authorized<R: Roles>(pub Identity, PhantomData<R>);

impl<S: Send + Sync, R: Roles> FromRequestParts<S> for Authorized<R>
where
    Core: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let AuthUser(identity) = AuthUser::from_request_parts(parts, state).await?;
        identity.require(R::ALLOWED)?;
        Ok(Authorized(identity, PhantomData))
    }
}

async fn bounded_bytes<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
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

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for StrictJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = bounded_bytes(req, state).await?;
        Ok(StrictJson(drops_shared::json::from_slice(&bytes)?))
    }
}

/// A query string decoded strictly; a bad one is a 400 naming what is wrong.
pub struct StrictQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for StrictQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Query(value) = Query::<T>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::code(ErrorCode::InvalidRequest, e.body_text()))?;
        Ok(StrictQuery(value))
    }
}

/// A call from the edge on internal endpoint `E`, once its signature checked out:
/// the route (with its path parameters) and the decoded body.
pub struct Signed<E: Endpoint> {
    pub route: E,
    pub body: E::Request,
}

impl<S: Send + Sync, E: Endpoint> FromRequest<S> for Signed<E>
where
    Core: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let core = Core::from_ref(state);
        let method = req.method().as_str().to_owned();
        let path = req.uri().path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_default();
        let route = E::matches(&method, req.uri().path()).ok_or_else(ApiError::not_found)?;
        let headers = req.headers();
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let (timestamp, signature) = (header(TIMESTAMP_HEADER), header(SIGNATURE_HEADER));
        let bytes = bounded_bytes(req, state).await?;
        verify_internal(
            core.settings.edge.edge_to_origin_secret.expose_secret().as_bytes(),
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
        Ok(Signed { route, body: E::Request::from_bytes(&bytes)? })
    }
}

/// What the handler of internal endpoint `E` answers.
pub type Answer<E> = ApiResult<axum::Json<<E as Endpoint>::Response>>;

/// The method filter of internal endpoint `E`, for routing it on `E::PATH`.
pub fn method_of<E: Endpoint>() -> MethodFilter {
    match E::METHOD {
        Method::Get => MethodFilter::GET,
        Method::Post => MethodFilter::POST,
    }
}

/// A path id that is not a UUID names nothing that exists: 404.
pub fn path_id(raw: &str) -> ApiResult<Uuid> {
    Uuid::parse_str(raw).map_err(|_| ApiError::not_found())
}
