//! Push to users who are not online: their subscription (`PUT /v1/me/push-subscription`,
//! a Web Push subscription as browsers give it), a durable queue (`push_batches`: a row
//! per batch of users, the message stored once in `push_messages`) retried with
//! backoff, and the provider behind a trait: Web Push (RFC 8030 with VAPID, payload
//! encrypted per RFC 8291) or a plain signed HTTP callback, for tests and for operators
//! with their own gateway. A provider answering 404 or 410 means the subscription is
//! gone: it is dropped. At most [`provider::PER_HOST`] requests go to one push service host at
//! once from one instance, and a host that asks for a pause (429 or 503 with
//! `Retry-After`) is sent nothing until it is over.
//!
//! The endpoint is named by the user, so the origin must not become their way into
//! its own network (server-side request forgery). Unless development allows private
//! endpoints (`push_allow_private_endpoints`, which production refuses), an endpoint
//! must be `https` on a public address: never loopback, private, shared (CGNAT),
//! link-local (cloud metadata), documentation, benchmarking, multicast or reserved
//! IPv4, nor the IPv6 equivalents, nor an IPv6 form carrying such an IPv4 address
//! (IPv4-mapped or -compatible, NAT64, 6to4); see [`endpoint::refused_range`]. This is checked
//! when subscribing (a 400 naming `endpoint`: the host must resolve, and only to public
//! addresses) and again at every send, on the addresses actually connected to (a
//! resolver that drops the others, so a name that turns private later, as in DNS
//! rebinding, reaches nothing; IP literals, which skip the resolver, are checked
//! first). A push never follows a redirect (a 3xx drops the subscription, see
//! `provider::outcome_of`), uses no proxy, connects within 2 s and gets its answer within 5 s.
//!
//! Sending holds no database transaction: one statement claims a batch (moving it a
//! lease ahead, so no other sender takes it), its requests are prepared on a blocking
//! thread (encryption is the CPU-heavy part) and go out with nothing open, and one short
//! transaction settles the batch, whatever its size. Batches are sent in tasks of their
//! own, a few at once, so one that waits on endpoints that never answer holds up no push
//! due meanwhile. A batch goes out [`SEND_CHUNK`] users at a time, each chunk recorded
//! before the next; a sender that dies mid-batch leaves it due again when its lease
//! ends, from the chunk it was sending: those users may get that push twice (a push
//! service cannot be asked whether it already has a message), never none.
//!
//! The module's parts: [`endpoint`] (the guard: which endpoints may be pushed to),
//! [`provider`] (the providers, what a push service's answer means, the per-host
//! bounds), [`web_push`] (RFC 8291 encryption and VAPID), [`queue`] (storing and
//! queueing), [`sender`] (the rounds that deliver), and here the subscription's routes.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::put;
use axum::Router;
use drops_shared::api::PushSubscription;
use drops_shared::problem::ErrorCode;
use secrecy::ExposeSecret;

use super::NotificationsState;
use crate::config::{PushProvider as ProviderSettings, Settings};
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{AuthUser, StrictJson};

pub mod endpoint;
pub mod provider;
pub mod queue;
mod sender;
pub mod web_push;

pub use endpoint::check_endpoint;
pub use provider::{CallbackPush, Outcome, Prepared, PushProvider, Pusher};
pub use queue::{enqueue, store_message, Priority, QUEUED_BATCH};
pub use sender::{round, sender_slots, IDLE, SEND_CHUNK};

pub fn pusher(settings: &Settings) -> anyhow::Result<Pusher> {
    let allow_private = settings.notifications.push_allow_private_endpoints;
    let provider: Box<dyn PushProvider> = match &settings.push {
        ProviderSettings::WebPush { vapid_private_key, contact } => {
            Box::new(web_push::WebPush::new(vapid_private_key.expose_secret(), contact)?)
        }
        ProviderSettings::Callback { secret } => Box::new(CallbackPush::new(secret.expose_secret())),
    };
    Pusher::new(provider, allow_private)
}

pub fn router() -> Router<NotificationsState> {
    Router::new().route("/v1/me/push-subscription", put(subscribe).delete(unsubscribe))
}

async fn subscribe(
    State(state): State<NotificationsState>,
    user: AuthUser,
    StrictJson(sub): StrictJson<PushSubscription>,
) -> ApiResult<StatusCode> {
    if sub.keys.p256dh.len() > 256 || sub.keys.auth.len() > 64 {
        return Err(ApiError::code(ErrorCode::InvalidRequest, "field `keys`: too long"));
    }
    let allow_private = state.core.settings.notifications.push_allow_private_endpoints;
    if let Err(why) = check_endpoint(&sub.endpoint, allow_private).await {
        return Err(ApiError::code(ErrorCode::InvalidRequest, format!("field `endpoint`: {why}")));
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
