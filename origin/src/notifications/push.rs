//! Push to users who are not online: their subscription (`PUT /v1/me/push-subscription`,
//! a Web Push subscription as browsers give it), a durable queue of deliveries
//! (`push_deliveries`, one per event and user) retried with backoff, and the provider
//! behind a trait: Web Push (RFC 8030 with VAPID, payload encrypted per RFC 8291) or a
//! plain signed HTTP callback, for tests and for operators with their own gateway.
//! A provider answering 404 or 410 means the subscription is gone: it is dropped.

use std::time::Duration;

use std::sync::Arc;

use async_trait::async_trait;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::put;
use axum::Router;
use base64ct::{Base64UrlUnpadded, Encoding};
use chrono::Utc;
use drops_shared::backoff::Backoff;
use drops_shared::problem::ErrorCode;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::NotificationsState;
use crate::config::{PushProvider as ProviderSettings, Settings};
use crate::error::{ApiError, ApiResult};
use crate::extract::{AuthUser, StrictJson};
use crate::tasks::Next;

const MAX_ATTEMPTS: i32 = 8;
const BATCH: i64 = 200;
/// Between attempts at one delivery.
const RETRY: Backoff = Backoff::new(Duration::from_secs(2), Duration::from_secs(600));
/// How often the sender looks for due deliveries when it has caught up.
pub const IDLE: Duration = Duration::from_millis(200);

fn count(outcome: &'static str) {
    metrics::counter!("drops_push_deliveries_total", "outcome" => outcome).increment(1);
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionKeys {
    pub p256dh: String,
    pub auth: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Subscription {
    pub endpoint: String,
    pub keys: SubscriptionKeys,
    /// `PushSubscription.toJSON()` includes it (null or a time): accepted, not used.
    #[serde(default, rename = "expirationTime", skip_serializing)]
    pub expiration_time: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    /// 404 / 410: the subscription no longer exists.
    Gone,
    Retry(String),
}

#[async_trait]
pub trait PushProvider: Send + Sync {
    async fn send(&self, subscription: &Subscription, payload: &[u8]) -> Outcome;
}

fn outcome_of(status: u16) -> Outcome {
    match status {
        200..=299 => Outcome::Delivered,
        404 | 410 => Outcome::Gone,
        other => Outcome::Retry(format!("push service answered {other}")),
    }
}

/// POSTs the JSON payload to the subscription's endpoint, signed like a payment
/// webhook (`x-drops-signature: t=…,v1=…` over `"<t>.<body>"`).
pub struct CallbackPush {
    http: reqwest::Client,
    secret: String,
}

impl CallbackPush {
    pub fn new(secret: &str) -> anyhow::Result<Self> {
        Ok(Self {
            http: reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?,
            secret: secret.to_owned(),
        })
    }
}

#[async_trait]
impl PushProvider for CallbackPush {
    async fn send(&self, subscription: &Subscription, payload: &[u8]) -> Outcome {
        let signature =
            drops_shared::signing::stripe_signature(self.secret.as_bytes(), Utc::now().timestamp(), payload);
        match self
            .http
            .post(&subscription.endpoint)
            .header("content-type", "application/json")
            .header("x-drops-signature", signature)
            .body(payload.to_vec())
            .send()
            .await
        {
            Ok(resp) => outcome_of(resp.status().as_u16()),
            Err(e) => Outcome::Retry(e.to_string()),
        }
    }
}

/// Web Push: the payload encrypted to the browser's keys, VAPID-signed.
pub struct WebPush {
    http: reqwest::Client,
    vapid: web_push_native::jwt_simple::algorithms::ES256KeyPair,
    contact: String,
}

impl WebPush {
    /// `vapid_private_key`: the raw P-256 private key, base64url.
    pub fn new(vapid_private_key: &str, contact: &str) -> anyhow::Result<Self> {
        let raw = Base64UrlUnpadded::decode_vec(vapid_private_key.trim())
            .map_err(|_| anyhow::anyhow!("the VAPID key is not base64url"))?;
        let vapid = web_push_native::jwt_simple::algorithms::ES256KeyPair::from_bytes(&raw)
            .map_err(|e| anyhow::anyhow!("bad VAPID key: {e}"))?;
        Ok(Self {
            http: reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?,
            vapid,
            contact: contact.to_owned(),
        })
    }

    /// The HTTP request RFC 8030/8291 call for: encrypted body, VAPID authorization.
    pub fn request(&self, subscription: &Subscription, payload: &[u8]) -> anyhow::Result<http::Request<Vec<u8>>> {
        let key = Base64UrlUnpadded::decode_vec(&subscription.keys.p256dh)
            .map_err(|_| anyhow::anyhow!("p256dh is not base64url"))?;
        let auth = Base64UrlUnpadded::decode_vec(&subscription.keys.auth)
            .map_err(|_| anyhow::anyhow!("auth is not base64url"))?;
        anyhow::ensure!(auth.len() == 16, "auth must be 16 bytes");
        let builder = web_push_native::WebPushBuilder::new(
            subscription.endpoint.parse()?,
            web_push_native::p256::PublicKey::from_sec1_bytes(&key)?,
            web_push_native::Auth::clone_from_slice(&auth),
        )
        .with_valid_duration(Duration::from_secs(3600))
        .with_vapid(&self.vapid, &self.contact);
        builder.build(payload.to_vec()).map_err(|e| anyhow::anyhow!("web push: {e}"))
    }
}

#[async_trait]
impl PushProvider for WebPush {
    async fn send(&self, subscription: &Subscription, payload: &[u8]) -> Outcome {
        let request = match self.request(subscription, payload) {
            Ok(r) => r,
            Err(e) => return Outcome::unusable(e),
        };
        let (parts, body) = request.into_parts();
        let mut req = self.http.post(parts.uri.to_string()).body(body);
        for (name, value) in &parts.headers {
            req = req.header(name.as_str(), value.as_bytes());
        }
        match req.send().await {
            Ok(resp) => outcome_of(resp.status().as_u16()),
            Err(e) => Outcome::Retry(e.to_string()),
        }
    }
}

impl Outcome {
    /// A subscription we cannot even encrypt to is as good as gone.
    fn unusable(why: anyhow::Error) -> Self {
        tracing::warn!(error = %why, "unusable push subscription dropped");
        Self::Gone
    }
}

pub fn provider(settings: &Settings) -> anyhow::Result<Arc<dyn PushProvider>> {
    Ok(match &settings.push {
        ProviderSettings::WebPush { vapid_private_key, contact } => {
            Arc::new(WebPush::new(vapid_private_key.expose_secret(), contact)?)
        }
        ProviderSettings::Callback { secret } => Arc::new(CallbackPush::new(secret.expose_secret())?),
    })
}

pub fn router() -> Router<NotificationsState> {
    Router::new().route("/v1/me/push-subscription", put(subscribe).delete(unsubscribe))
}

async fn subscribe(
    State(state): State<NotificationsState>,
    user: AuthUser,
    StrictJson(sub): StrictJson<Subscription>,
) -> ApiResult<StatusCode> {
    let url = reqwest::Url::parse(&sub.endpoint)
        .map_err(|_| ApiError::code(ErrorCode::InvalidRequest, "field `endpoint`: not a URL"))?;
    if !matches!(url.scheme(), "https" | "http") || sub.endpoint.len() > 2048 {
        return Err(ApiError::code(ErrorCode::InvalidRequest, "field `endpoint`: must be an http(s) URL"));
    }
    if sub.keys.p256dh.len() > 256 || sub.keys.auth.len() > 64 {
        return Err(ApiError::code(ErrorCode::InvalidRequest, "field `keys`: too long"));
    }
    sqlx::query!(
        "INSERT INTO push_subscriptions (user_id, endpoint, p256dh, auth) VALUES ($1, $2, $3, $4)
         ON CONFLICT (user_id) DO UPDATE SET endpoint = $2, p256dh = $3, auth = $4, created_at = now()",
        user.0.user_id,
        sub.endpoint,
        sub.keys.p256dh,
        sub.keys.auth
    )
    .execute(&state.core.db)
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn unsubscribe(State(state): State<NotificationsState>, user: AuthUser) -> ApiResult<StatusCode> {
    let db = &state.core.db;
    sqlx::query!("DELETE FROM push_subscriptions WHERE user_id = $1", user.0.user_id).execute(db).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Queues a push of `payload` to each of `users` who has a subscription (once per event).
pub async fn enqueue(
    conn: &mut sqlx::PgConnection,
    event_id: Uuid,
    users: &[Uuid],
    payload: &serde_json::Value,
) -> sqlx::Result<u64> {
    sqlx::query!(
        "INSERT INTO push_messages (event_id, payload) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        event_id,
        payload
    )
    .execute(&mut *conn)
    .await?;
    let queued = sqlx::query!(
        "INSERT INTO push_deliveries (user_id, event_id)
         SELECT s.user_id, $1 FROM push_subscriptions s WHERE s.user_id = ANY($2)
         ON CONFLICT (event_id, user_id) DO NOTHING",
        event_id,
        users
    )
    .execute(conn)
    .await?;
    Ok(queued.rows_affected())
}

struct Due {
    id: i64,
    user_id: Uuid,
    payload: serde_json::Value,
    attempts: i32,
    endpoint: Option<String>,
    p256dh: Option<String>,
    auth: Option<String>,
}

/// One sender round: a batch of due deliveries; [`Next::Now`] while batches come full.
pub async fn round(state: &NotificationsState) -> anyhow::Result<Next> {
    Ok(if send_due(state).await? as i64 == BATCH { Next::Now } else { Next::Later })
}

pub async fn send_due(state: &NotificationsState) -> anyhow::Result<usize> {
    let mut tx = state.core.db.begin().await?;
    let due = sqlx::query_as!(
        Due,
        r#"SELECT d.id, d.user_id, m.payload, d.attempts,
                  s.endpoint AS "endpoint?", s.p256dh AS "p256dh?", s.auth AS "auth?"
           FROM push_deliveries d JOIN push_messages m ON m.event_id = d.event_id
           LEFT JOIN push_subscriptions s ON s.user_id = d.user_id
           WHERE d.next_attempt_at <= now() ORDER BY d.next_attempt_at LIMIT $1 FOR UPDATE OF d SKIP LOCKED"#,
        BATCH
    )
    .fetch_all(&mut *tx)
    .await?;
    let n = due.len();
    let sends = due.into_iter().map(|d| async move {
        let outcome = match (&d.endpoint, &d.p256dh, &d.auth) {
            (Some(endpoint), Some(p256dh), Some(auth)) => {
                let sub = Subscription {
                    endpoint: endpoint.clone(),
                    keys: SubscriptionKeys { p256dh: p256dh.clone(), auth: auth.clone() },
                    expiration_time: None,
                };
                state.push.send(&sub, d.payload.to_string().as_bytes()).await
            }
            _ => Outcome::Gone, // unsubscribed since
        };
        (d, outcome)
    });
    // Settled in three statements whatever the batch size: a fan-out queues a
    // million deliveries, and this loop must not contend with it row by row.
    let (mut finished, mut gone_users, mut retry) = (Vec::new(), Vec::new(), Vec::new());
    for (d, outcome) in futures::future::join_all(sends).await {
        match outcome {
            Outcome::Delivered => {
                count("delivered");
                finished.push(d.id);
            }
            Outcome::Gone => {
                count("gone");
                finished.push(d.id);
                gone_users.push(d.user_id);
            }
            Outcome::Retry(why) if d.attempts + 1 >= MAX_ATTEMPTS => {
                count("dropped");
                tracing::warn!(user_id = %d.user_id, %why, "push dropped after retries");
                finished.push(d.id);
            }
            Outcome::Retry(_) => {
                count("retried");
                retry.push((d.id, RETRY.delay_ms(d.attempts.max(0) as u32)));
            }
        }
    }
    sqlx::query!("DELETE FROM push_deliveries WHERE id = ANY($1)", &finished).execute(&mut *tx).await?;
    sqlx::query!("DELETE FROM push_subscriptions WHERE user_id = ANY($1)", &gone_users).execute(&mut *tx).await?;
    let (retry_ids, retry_delays): (Vec<i64>, Vec<i64>) = retry.into_iter().unzip();
    sqlx::query!(
        "UPDATE push_deliveries d SET attempts = d.attempts + 1,
                next_attempt_at = now() + make_interval(secs => (r.delay_ms / 1000.0)::float8)
         FROM unnest($1::bigint[], $2::bigint[]) AS r(id, delay_ms) WHERE d.id = r.id",
        &retry_ids,
        &retry_delays
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn web_push_request_is_encrypted_and_vapid_signed() {
        use web_push_native::p256::elliptic_curve::sec1::ToEncodedPoint;
        let ua_secret =
            web_push_native::p256::SecretKey::random(&mut web_push_native::p256::elliptic_curve::rand_core::OsRng);
        let ua_public = ua_secret.public_key();
        let auth = [7u8; 16];
        let sub = Subscription {
            endpoint: "https://push.example.net/send/abc".into(),
            keys: SubscriptionKeys {
                p256dh: Base64UrlUnpadded::encode_string(ua_public.to_encoded_point(false).as_bytes()),
                auth: Base64UrlUnpadded::encode_string(&auth),
            },
            expiration_time: None,
        };
        let vapid = web_push_native::jwt_simple::algorithms::ES256KeyPair::generate();
        let key = Base64UrlUnpadded::encode_string(&vapid.to_bytes());
        let push = WebPush::new(&key, "mailto:ops@drops.dev").unwrap();
        let req = push.request(&sub, br#"{"kind":"drop_live"}"#).unwrap();
        assert_eq!(req.uri(), "https://push.example.net/send/abc");
        assert_eq!(req.headers()["content-encoding"], "aes128gcm");
        assert!(req.headers()["authorization"].to_str().unwrap().starts_with("vapid t="));
        let plain =
            web_push_native::decrypt(req.body().clone(), &ua_secret, &web_push_native::Auth::clone_from_slice(&auth))
                .unwrap();
        assert_eq!(plain, br#"{"kind":"drop_live"}"#);
    }

    #[test]
    fn provider_statuses() {
        assert_eq!(outcome_of(201), Outcome::Delivered);
        assert_eq!(outcome_of(410), Outcome::Gone);
        assert_eq!(outcome_of(404), Outcome::Gone);
        assert!(matches!(outcome_of(503), Outcome::Retry(_)));
    }
}
