//! Credentials of a socket (see the parent module's doc): a bearer token, or a
//! one-use ticket from `POST /v1/notifications/stream-ticket` for browsers.

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use drops_shared::api::StreamTicket;
use drops_shared::auth::verify_bearer;
use drops_shared::problem::{ErrorCode, Problem};
use drops_shared::signing::sign_internal;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::AuthUser;
use crate::notifications::NotificationsState;

/// How long a stream ticket may wait to be used.
pub const TICKET_TTL_SECS: i64 = 30;
/// The path the stream's tickets are hashed under (see [`ticket_key`]).
const STREAM_PATH: &str = "/v1/notifications/stream";

pub(super) fn unauthorized(detail: &str) -> Problem {
    Problem::new(ErrorCode::Unauthorized, Some(detail.to_owned()))
}

pub(super) fn internal(e: impl Into<anyhow::Error>) -> ApiError {
    ApiError::Internal(e.into())
}

/// Whom a socket is for, and until when the credentials it was opened with hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Credentials {
    pub(super) user: Uuid,
    pub(super) expires_at: DateTime<Utc>,
}

/// The `exp` of a bearer token (`Authorization` value); read only once
/// [`verify_bearer`] has checked the token's signature.
fn token_expiry(authorization: &str) -> Option<DateTime<Utc>> {
    #[derive(Deserialize)]
    struct Exp {
        exp: i64,
    }
    let token = authorization.split_once(' ')?.1.trim();
    let payload = URL_SAFE_NO_PAD.decode(token.split('.').nth(1)?).ok()?;
    DateTime::from_timestamp(serde_json::from_slice::<Exp>(&payload).ok()?.exp, 0)
}

/// A bearer token's credentials at `now`: valid, and not yet expired (the verifier
/// allows some clock skew past `exp`; a socket opened then would close at once).
pub(super) fn bearer_credentials(
    authorization: Option<&str>,
    secret: &[u8],
    now: DateTime<Utc>,
) -> Result<Credentials, Problem> {
    let identity = verify_bearer(authorization, secret, now)?;
    let expires_at = authorization.and_then(token_expiry).ok_or_else(|| unauthorized("token without `exp`"))?;
    if expires_at <= now {
        return Err(unauthorized("token expired"));
    }
    Ok(Credentials { user: identity.user_id, expires_at })
}

/// A new ticket: 32 bytes from the OS's generator, base64url without padding.
fn new_ticket() -> String {
    use web_push_native::p256::elliptic_curve::rand_core::{OsRng, RngCore};
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Whether `s` could be a ticket [`new_ticket`] made (so nothing else reaches Redis).
pub(super) fn looks_like_ticket(s: &str) -> bool {
    s.len() == 43 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Where a ticket is kept: under a keyed hash of it (HMAC-SHA256 under the token
/// secret, through the shared signing code; its method and path fields keep it apart
/// from any internal-call signature), so Redis, its dumps and its logs hold no ticket
/// that could be used.
pub(super) fn ticket_key(prefix: &str, secret: &[u8], ticket: &str) -> String {
    format!("{prefix}:stream-ticket:{}", sign_internal(secret, "TICKET", STREAM_PATH, 0, ticket.as_bytes()))
}

/// What a ticket grants, as kept in Redis.
#[derive(Debug, Serialize, Deserialize)]
struct Grant {
    user: Uuid,
    /// The `exp` (unix seconds) of the token that obtained the ticket.
    exp: i64,
}

pub(super) const UNKNOWN_TICKET: &str = "unknown, used or expired ticket";

/// The credentials of a redeemed ticket's grant (`None`: unknown, used or expired).
pub(super) fn granted(grant: Option<&str>, now: DateTime<Utc>) -> Result<Credentials, Problem> {
    let refused = || unauthorized(UNKNOWN_TICKET);
    let grant: Grant = grant.and_then(|g| serde_json::from_str(g).ok()).ok_or_else(refused)?;
    let expires_at = DateTime::from_timestamp(grant.exp, 0).ok_or_else(refused)?;
    if expires_at <= now {
        return Err(unauthorized("the token that obtained this ticket has expired"));
    }
    Ok(Credentials { user: grant.user, expires_at })
}

/// `POST /v1/notifications/stream-ticket` → 201 `{"ticket", "expires_at"}`.
pub(super) async fn issue_ticket(
    State(state): State<NotificationsState>,
    AuthUser(identity): AuthUser,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let now = Utc::now();
    let secret = state.core.settings.auth.jwt_secret.expose_secret().as_bytes();
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let credentials = bearer_credentials(authorization, secret, now)?;
    let expires_at = (now + chrono::Duration::seconds(TICKET_TTL_SECS)).min(credentials.expires_at);
    let ticket = new_ticket();
    let grant = serde_json::to_string(&Grant { user: identity.user_id, exp: credentials.expires_at.timestamp() })
        .map_err(internal)?;
    let (mut conn, _) = state.live.redis.get(&state.core.redis).await.map_err(internal)?;
    let stored: Option<String> = redis::cmd("SET")
        .arg(ticket_key(state.core.redis_prefix(), secret, &ticket))
        .arg(grant)
        .arg("PX")
        .arg((expires_at - now).num_milliseconds().max(1))
        .arg("NX")
        .query_async(&mut conn)
        .await
        .map_err(internal)?;
    if stored.is_none() {
        return Err(internal(anyhow::anyhow!("a new stream ticket collided with a live one")));
    }
    let mut resp = (StatusCode::CREATED, Json(StreamTicket { ticket, expires_at })).into_response();
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// The credentials a stream request presents.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Presented<'a> {
    /// The `Authorization` header (checked as it is: a bad one is not made up for
    /// by a ticket).
    Bearer(Option<&'a str>),
    Ticket(String),
}

pub(super) fn presented<'a>(headers: &'a HeaderMap, query: Option<&str>) -> Result<Presented<'a>, Problem> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        return Ok(Presented::Bearer(value.to_str().ok()));
    }
    let params: Vec<(String, String)> = query.and_then(|q| serde_urlencoded::from_str(q).ok()).unwrap_or_default();
    if let Some((_, ticket)) = params.iter().find(|(k, _)| k == "ticket") {
        return Ok(Presented::Ticket(ticket.clone()));
    }
    Err(unauthorized(if params.iter().any(|(k, _)| k == "access_token") {
        "a token is not accepted in the URL: send `Authorization: Bearer <token>`, or \
         `?ticket=` from `POST /v1/notifications/stream-ticket`"
    } else {
        "send `Authorization: Bearer <token>`, or `?ticket=` from `POST /v1/notifications/stream-ticket`"
    }))
}

#[cfg(test)]
mod tests {
    use drops_shared::auth::{mint, Identity, Role};

    use super::*;

    const SECRET: &[u8] = b"test-secret-test-secret-test-secret";

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }

    fn bearer(exp: DateTime<Utc>) -> String {
        format!("Bearer {}", mint(Identity { user_id: Uuid::from_u128(7), role: Role::Buyer }, SECRET, exp))
    }

    #[test]
    fn tickets_are_256_random_bits_in_base64url() {
        let (a, b) = (new_ticket(), new_ticket());
        assert_ne!(a, b);
        assert_eq!(URL_SAFE_NO_PAD.decode(&a).unwrap().len(), 32);
        assert!(looks_like_ticket(&a) && looks_like_ticket(&b), "{a}");
        for not in ["", "short", &format!("{a}x"), &a.replace(&a[..1], "+"), &format!("{}/", &a[..42])] {
            assert!(!looks_like_ticket(not), "{not}");
        }
    }

    #[test]
    fn a_ticket_is_kept_under_a_keyed_hash_of_it() {
        let ticket = new_ticket();
        let key = ticket_key("drops", SECRET, &ticket);
        assert_eq!(key, ticket_key("drops", SECRET, &ticket), "the same ticket finds its grant");
        let digest = key.strip_prefix("drops:stream-ticket:").expect("under the prefix");
        assert_eq!(digest.len(), 64);
        assert!(digest.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(!key.contains(&ticket), "the ticket itself is not in Redis");
        assert_ne!(key, ticket_key("drops", SECRET, &new_ticket()));
        assert_ne!(key, ticket_key("drops", b"another-secret", &ticket));
        assert!(ticket_key("staging", SECRET, &ticket).starts_with("staging:stream-ticket:"));
    }

    #[test]
    fn bearer_credentials_carry_the_token_expiry() {
        let exp = now() + chrono::Duration::minutes(5);
        let got = bearer_credentials(Some(&bearer(exp)), SECRET, now()).unwrap();
        assert_eq!(got, Credentials { user: Uuid::from_u128(7), expires_at: exp });
        // Within the verifier's clock-skew allowance, but already past `exp`.
        let just_expired = bearer(now() - chrono::Duration::seconds(5));
        assert_eq!(bearer_credentials(Some(&just_expired), SECRET, now()).unwrap_err().status, 401);
        assert_eq!(bearer_credentials(Some(&bearer(exp)), b"other", now()).unwrap_err().status, 401);
        assert_eq!(bearer_credentials(None, SECRET, now()).unwrap_err().status, 401);
    }

    #[test]
    fn a_grant_holds_until_its_token_expires() {
        let user = Uuid::from_u128(9);
        let exp = now() + chrono::Duration::minutes(1);
        let grant = serde_json::to_string(&Grant { user, exp: exp.timestamp() }).unwrap();
        assert_eq!(granted(Some(&grant), now()).unwrap(), Credentials { user, expires_at: exp });
        assert_eq!(granted(Some(&grant), exp).unwrap_err().status, 401);
        assert_eq!(granted(None, now()).unwrap_err().status, 401);
        assert_eq!(granted(Some("not a grant"), now()).unwrap_err().status, 401);
    }

    #[test]
    fn credentials_come_from_the_header_or_a_ticket_never_a_token_in_the_url() {
        let mut headers = HeaderMap::new();
        let err = presented(&headers, Some("access_token=abc")).unwrap_err();
        assert_eq!(err.status, 401);
        assert!(err.detail.unwrap_or_default().contains("not accepted in the URL"));
        assert_eq!(presented(&headers, None).unwrap_err().status, 401);
        assert_eq!(presented(&headers, Some("%%%")).unwrap_err().status, 401);
        assert_eq!(presented(&headers, Some("ticket=t1&x=y")).unwrap(), Presented::Ticket("t1".into()));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer abc"));
        assert_eq!(presented(&headers, Some("ticket=t1")).unwrap(), Presented::Bearer(Some("Bearer abc")));
    }
}
