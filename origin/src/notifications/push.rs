//! Push to users who are not online: their subscription (`PUT /v1/me/push-subscription`,
//! a Web Push subscription as browsers give it), a durable queue (`push_batches`: a row
//! per batch of users, the message stored once in `push_messages`) retried with
//! backoff, and the provider behind a trait: Web Push (RFC 8030 with VAPID, payload
//! encrypted per RFC 8291) or a plain signed HTTP callback, for tests and for operators
//! with their own gateway. A provider answering 404 or 410 means the subscription is
//! gone: it is dropped. At most [`PER_HOST`] requests go to one push service host at
//! once from one instance, and a host that asks for a pause (429 or 503 with
//! `Retry-After`) is sent nothing until it is over.
//!
//! The endpoint is named by the user, so the origin must not become their way into
//! its own network (server-side request forgery). Unless development allows private
//! endpoints (`push_allow_private_endpoints`, which production refuses), an endpoint
//! must be `https` on a public address: never loopback, private, shared (CGNAT),
//! link-local (cloud metadata), documentation, benchmarking, multicast or reserved
//! IPv4, nor the IPv6 equivalents, nor an IPv6 form carrying such an IPv4 address
//! (IPv4-mapped or -compatible, NAT64, 6to4); see [`refused_range`]. This is checked
//! when subscribing (a 400 naming `endpoint`: the host must resolve, and only to public
//! addresses) and again at every send, on the addresses actually connected to (a
//! resolver that drops the others, so a name that turns private later, as in DNS
//! rebinding, reaches nothing; IP literals, which skip the resolver, are checked
//! first). A push never follows a redirect (a 3xx drops the subscription, see
//! [`outcome_of`]), uses no proxy, connects within 2 s and gets its answer within 5 s.
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

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::put;
use axum::Router;
use chrono::Utc;
use drops_shared::backoff::Backoff;
use drops_shared::problem::ErrorCode;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use uuid::Uuid;

use super::NotificationsState;
use crate::config::{PushProvider as ProviderSettings, Settings};
use crate::error::{ApiError, ApiResult};
use crate::extract::{AuthUser, StrictJson};

mod sender;

pub use sender::{round, sender_slots};

const MAX_ATTEMPTS: i32 = 8;
/// Users per queued batch: a million followers are two thousand rows.
pub const QUEUED_BATCH: i64 = 500;
/// Users of a batch sent before the sender records how far it got: a sender that dies
/// mid-batch leaves at most this many to be pushed twice.
pub const SEND_CHUNK: usize = 50;
/// Between attempts at one delivery.
const RETRY: Backoff = Backoff::new(Duration::from_secs(2), Duration::from_secs(600));
/// How often the sender looks for due batches when it has caught up.
pub const IDLE: Duration = Duration::from_millis(200);
/// Connecting to a push endpoint.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A whole request to a push endpoint: resolving, connecting, sending, the answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Whatever a provider does, its send is given up after this (and retried).
const SEND_DEADLINE: Duration = Duration::from_secs(10);
/// A claimed delivery is its sender's for this long (seconds): far longer than its
/// send may take ([`SEND_DEADLINE`]) and the settling after, so no other round sends it
/// meanwhile; a sender that died leaves it due again once the lease is over.
const LEASE_SECS: f64 = 60.0;
/// Batches one sender has out at once (their requests bounded per host by [`PER_HOST`]).
const IN_FLIGHT: usize = 8;
/// Resolving an endpoint's host when subscribing.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_ENDPOINT_LEN: usize = 2048;

fn count(outcome: &'static str) {
    metrics::counter!("drops_push_deliveries_total", "outcome" => outcome).increment(1);
}

/// IPv4 networks no push goes to: (network, prefix length, what it is).
const REFUSED_V4: &[(Ipv4Addr, u8, &str)] = &[
    (Ipv4Addr::new(0, 0, 0, 0), 8, "in \"this\" network (0/8)"),
    (Ipv4Addr::new(10, 0, 0, 0), 8, "private (10/8)"),
    (Ipv4Addr::new(100, 64, 0, 0), 10, "shared address space (100.64/10)"),
    (Ipv4Addr::new(127, 0, 0, 0), 8, "loopback (127/8)"),
    (Ipv4Addr::new(169, 254, 0, 0), 16, "link-local (169.254/16)"),
    (Ipv4Addr::new(172, 16, 0, 0), 12, "private (172.16/12)"),
    (Ipv4Addr::new(192, 0, 0, 0), 24, "IETF protocol assignments (192.0.0/24)"),
    (Ipv4Addr::new(192, 0, 2, 0), 24, "documentation (192.0.2/24)"),
    (Ipv4Addr::new(192, 168, 0, 0), 16, "private (192.168/16)"),
    (Ipv4Addr::new(198, 18, 0, 0), 15, "benchmarking (198.18/15)"),
    (Ipv4Addr::new(198, 51, 100, 0), 24, "documentation (198.51.100/24)"),
    (Ipv4Addr::new(203, 0, 113, 0), 24, "documentation (203.0.113/24)"),
    (Ipv4Addr::new(224, 0, 0, 0), 4, "multicast (224/4)"),
    // Holds the broadcast address too.
    (Ipv4Addr::new(240, 0, 0, 0), 4, "reserved (240/4)"),
];

/// IPv6 networks no push goes to: (network, prefix length, what it is).
const REFUSED_V6: &[(Ipv6Addr, u8, &str)] = &[
    (Ipv6Addr::UNSPECIFIED, 128, "unspecified (::)"),
    (Ipv6Addr::LOCALHOST, 128, "loopback (::1)"),
    (Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0), 48, "local-use NAT64 (64:ff9b:1::/48)"),
    (Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0), 64, "discard-only (100::/64)"),
    (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32, "documentation (2001:db8::/32)"),
    (Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7, "unique local (fc00::/7)"),
    (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10, "link-local (fe80::/10)"),
    (Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0), 10, "site-local (fec0::/10)"),
    (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8, "multicast (ff00::/8)"),
];

/// IPv6 networks whose addresses carry an IPv4 address, judged by it: (network, prefix
/// length, how far right of the IPv4 address's last bit the address ends).
const EMBEDDING_V6: &[(Ipv6Addr, u8, u32)] = &[
    (Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96, 0),    // IPv4-mapped
    (Ipv6Addr::new(0, 0, 0, 0, 0xffff, 0, 0, 0), 96, 0),    // IPv4-translated (SIIT)
    (Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 0), 96, 0),         // IPv4-compatible (deprecated)
    (Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96, 0), // NAT64, well-known prefix
    (Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0), 16, 80),   // 6to4: 2002:AABB:CCDD::/48
];

/// Whether the top `len` of `bits` bits of `addr` and `net` agree.
fn in_prefix(addr: u128, net: u128, len: u8, bits: u32) -> bool {
    let len = u32::from(len);
    len == 0 || (addr ^ net) >> (bits - len) == 0
}

/// Why no push may go to `ip`, if none may: the reserved range it is in. An IPv6
/// address that carries an IPv4 address (mapped, compatible, NAT64, 6to4) is judged by
/// that IPv4 address, since that is where a connection to it ends up.
pub fn refused_range(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => REFUSED_V4
            .iter()
            .find(|(net, len, _)| in_prefix(u32::from(v4).into(), u32::from(*net).into(), *len, 32))
            .map(|(_, _, what)| *what),
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            if let Some((_, _, what)) =
                REFUSED_V6.iter().find(|(net, len, _)| in_prefix(bits, (*net).into(), *len, 128))
            {
                return Some(what);
            }
            EMBEDDING_V6.iter().find(|(net, len, _)| in_prefix(bits, (*net).into(), *len, 128)).and_then(
                |(_, _, shift)| refused_range(IpAddr::V4(Ipv4Addr::from(((bits >> shift) & 0xffff_ffff) as u32))),
            )
        }
    }
}

/// Whether a push may go to `ip` (see [`refused_range`]).
pub fn is_public(ip: IpAddr) -> bool {
    refused_range(ip).is_none()
}

/// The checks of an endpoint that need no name resolution, made when subscribing and
/// again before each send: the length, the scheme, and the address when the host is
/// one (an IP literal is connected to as is: no resolver sees it). Why not, if not.
fn endpoint_url(endpoint: &str, allow_private: bool) -> Result<reqwest::Url, String> {
    if endpoint.len() > MAX_ENDPOINT_LEN {
        return Err(format!("longer than {MAX_ENDPOINT_LEN} bytes"));
    }
    let url = reqwest::Url::parse(endpoint).map_err(|_| "not a URL".to_owned())?;
    match url.scheme() {
        "https" => {}
        "http" if allow_private => {}
        _ if allow_private => return Err("must be an http(s) URL".into()),
        _ => return Err("must be an https URL".into()),
    }
    let host = url.host_str().filter(|h| !h.is_empty()).ok_or("needs a host")?;
    // The URL parser has already turned every spelling of an address (`0x7f.1`,
    // `2130706433`, `[::ffff:7f00:1]`) into its canonical form.
    let literal = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host).parse::<IpAddr>();
    if let (Ok(ip), false) = (literal, allow_private) {
        if let Some(range) = refused_range(ip) {
            return Err(format!("{ip} is {range}: pushes go to public addresses only"));
        }
    }
    Ok(url)
}

/// Whether `endpoint` may receive pushes, as checked when subscribing: why not, if not.
/// Beyond [`endpoint_url`], a host name must resolve, and only to public addresses
/// (unless private ones are allowed: then it is not resolved at all, so development and
/// tests may name hosts that resolve only where the pushes are sent from).
pub async fn check_endpoint(endpoint: &str, allow_private: bool) -> Result<(), String> {
    let url = endpoint_url(endpoint, allow_private)?;
    let host = url.host_str().unwrap_or_default();
    if allow_private || host.starts_with('[') || host.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    let port = url.port_or_known_default().unwrap_or(443);
    let resolved = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((host, port))).await;
    let addresses: Vec<IpAddr> = match resolved {
        Ok(Ok(found)) => found.map(|a| a.ip()).collect(),
        _ => Vec::new(),
    };
    // One answer for "does not resolve" and "resolves to a private address": which of
    // the two would tell a stranger what names our own network has.
    if addresses.is_empty() || !addresses.iter().copied().all(is_public) {
        return Err(format!("its host `{host}` must resolve, and to public addresses only"));
    }
    Ok(())
}

/// Resolves a push endpoint's host at send time and keeps its public addresses only
/// (none left: an error, and the delivery is retried). The check is on the addresses
/// actually connected to, so a name that was public when subscribed and points
/// inside since (DNS rebinding) reaches nothing.
struct PublicAddressesOnly;

impl reqwest::dns::Resolve for PublicAddressesOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let public: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.filter(|a| is_public(a.ip())).collect();
            if public.is_empty() {
                return Err(format!("{host} resolves to no public address").into());
            }
            Ok(Box::new(public.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// What every provider sends with: a client that follows no redirect, uses no proxy
/// (one would connect on our behalf to addresses our resolver never saw), gives up
/// quickly, and reaches public addresses only (unless private ones are allowed).
struct PushHttp {
    client: reqwest::Client,
    allow_private: bool,
}

impl PushHttp {
    fn new(allow_private: bool) -> anyhow::Result<Self> {
        let builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT);
        let builder = if allow_private { builder } else { builder.dns_resolver(Arc::new(PublicAddressesOnly)) };
        Ok(Self { client: builder.build()?, allow_private })
    }

    /// The URL to send to, if `endpoint` may still be sent to.
    fn target(&self, endpoint: &str) -> Result<reqwest::Url, String> {
        endpoint_url(endpoint, self.allow_private)
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Outcome {
        match request.send().await {
            Ok(resp) => match (resp.status().as_u16(), retry_after(resp.headers(), Utc::now())) {
                (429 | 503, Some(pause)) => Outcome::Busy(pause),
                (status, _) => outcome_of(status),
            },
            Err(e) => {
                let mut why = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(cause) = source {
                    why = format!("{why}: {cause}");
                    source = cause.source();
                }
                Outcome::Retry(why)
            }
        }
    }
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
    /// 404 / 410 (or a redirect, or an endpoint no longer allowed): the subscription is
    /// of no use any more.
    Gone,
    Retry(String),
    /// The push service asked for a pause (429 or 503 with `Retry-After`): the push is
    /// retried no sooner, and the host is sent nothing meanwhile.
    Busy(Duration),
}

/// A push ready to go out: the request a provider made of a message (the CPU part:
/// encryption, signing), to an endpoint already checked.
pub struct Prepared {
    pub url: reqwest::Url,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
}

/// A way to push: turns a message for a subscription into the request that carries it.
pub trait PushProvider: Send + Sync {
    fn prepare(&self, subscription: &Subscription, url: reqwest::Url, payload: &[u8]) -> anyhow::Result<Prepared>;
}

/// The longest pause a push service's `Retry-After` is taken for.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// How long a push service asked us to stay away: `Retry-After` as seconds or as an
/// HTTP date, capped at [`MAX_RETRY_AFTER`].
fn retry_after(headers: &reqwest::header::HeaderMap, now: chrono::DateTime<Utc>) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim();
    let secs = match value.parse::<u64>() {
        Ok(secs) => secs,
        Err(_) => {
            (chrono::DateTime::parse_from_rfc2822(value).ok()?.with_timezone(&Utc) - now).num_seconds().max(0) as u64
        }
    };
    Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

fn outcome_of(status: u16) -> Outcome {
    match status {
        200..=299 => Outcome::Delivered,
        // Redirects are never followed (their target could be anywhere, our own network
        // included), so an endpoint that redirects can never be pushed to: it is treated
        // as gone, not retried (every retry would get the same answer, for every message).
        // Push services do not redirect pushes; a browser whose subscription was dropped
        // gets a fresh one when the app subscribes again.
        300..=399 => Outcome::Gone,
        404 | 410 => Outcome::Gone,
        other => Outcome::Retry(format!("push service answered {other}")),
    }
}

impl Outcome {
    /// A subscription we cannot even encrypt to is as good as gone.
    fn unusable(why: anyhow::Error) -> Self {
        tracing::warn!(error = %why, "unusable push subscription dropped");
        Self::Gone
    }

    /// So is one whose endpoint may no longer be sent to (subscribed while private
    /// endpoints were allowed, say).
    fn refused(why: String) -> Self {
        tracing::warn!(%why, "push subscription to a refused endpoint dropped");
        Self::Gone
    }
}

/// POSTs the JSON payload to the subscription's endpoint, signed like a payment
/// webhook (`x-drops-signature: t=…,v1=…` over `"<t>.<body>"`).
pub struct CallbackPush {
    secret: String,
}

impl CallbackPush {
    pub fn new(secret: &str) -> Self {
        Self { secret: secret.to_owned() }
    }
}

impl PushProvider for CallbackPush {
    fn prepare(&self, _: &Subscription, url: reqwest::Url, payload: &[u8]) -> anyhow::Result<Prepared> {
        let signature =
            drops_shared::signing::stripe_signature(self.secret.as_bytes(), Utc::now().timestamp(), payload);
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
        headers.insert("x-drops-signature", http::HeaderValue::from_str(&signature)?);
        Ok(Prepared { url, headers, body: payload.to_vec() })
    }
}

/// Requests one push service host may have from one instance at once.
const PER_HOST: usize = 128;
/// Hosts whose bounds are kept; beyond it, idle ones are forgotten.
const HOSTS_KEPT: usize = 4_096;

/// Sends pushes: checks each endpoint, has the provider prepare the request, and sends
/// it with at most [`PER_HOST`] requests to one push service host at once.
pub struct Pusher {
    provider: Box<dyn PushProvider>,
    http: PushHttp,
    hosts: std::sync::Mutex<HashMap<String, Arc<Semaphore>>>,
    /// Hosts that asked for a pause, until when.
    paused: std::sync::Mutex<HashMap<String, std::time::Instant>>,
}

impl Pusher {
    /// `allow_private`: may push to http and to loopback or private addresses (development).
    pub fn new(provider: Box<dyn PushProvider>, allow_private: bool) -> anyhow::Result<Self> {
        Ok(Self {
            provider,
            http: PushHttp::new(allow_private)?,
            hosts: Default::default(),
            paused: Default::default(),
        })
    }

    /// The request for `payload` to `subscription`, or why there will never be one.
    pub fn prepare(&self, subscription: &Subscription, payload: &[u8]) -> Result<Prepared, Outcome> {
        let url = self.http.target(&subscription.endpoint).map_err(Outcome::refused)?;
        self.provider.prepare(subscription, url, payload).map_err(Outcome::unusable)
    }

    fn host(url: &reqwest::Url) -> String {
        format!("{}:{}", url.host_str().unwrap_or_default(), url.port_or_known_default().unwrap_or(0))
    }

    fn host_bound(&self, host: &str) -> Arc<Semaphore> {
        let mut hosts = self.hosts.lock().expect("push hosts");
        if hosts.len() >= HOSTS_KEPT && !hosts.contains_key(host) {
            hosts.retain(|_, bound| bound.available_permits() < PER_HOST);
        }
        hosts.entry(host.to_owned()).or_insert_with(|| Arc::new(Semaphore::new(PER_HOST))).clone()
    }

    /// What is left of the pause `host` asked for, if any.
    fn pause_left(&self, host: &str) -> Option<Duration> {
        let mut paused = self.paused.lock().expect("paused hosts");
        let now = std::time::Instant::now();
        paused.retain(|_, until| *until > now);
        paused.get(host).map(|until| *until - now)
    }

    /// Sends a prepared push, waiting for a free slot of its host first; a host that
    /// asked for a pause is sent nothing until it is over.
    pub async fn send(&self, prepared: Prepared) -> Outcome {
        let host = Self::host(&prepared.url);
        if let Some(left) = self.pause_left(&host) {
            return Outcome::Busy(left);
        }
        let bound = self.host_bound(&host);
        let Ok(_permit) = bound.acquire_owned().await else { return Outcome::Retry("closed".into()) };
        let request = self.http.client.post(prepared.url).headers(prepared.headers).body(prepared.body);
        let outcome = tokio::time::timeout(SEND_DEADLINE, self.http.send(request))
            .await
            .unwrap_or_else(|_| Outcome::Retry(format!("no answer within {SEND_DEADLINE:?}")));
        if let Outcome::Busy(pause) = outcome {
            tracing::warn!(%host, ?pause, "push service asked for a pause");
            self.paused.lock().expect("paused hosts").insert(host, std::time::Instant::now() + pause);
        }
        outcome
    }

    /// Prepares and sends one push.
    #[cfg(test)]
    pub async fn push(&self, subscription: &Subscription, payload: &[u8]) -> Outcome {
        match self.prepare(subscription, payload) {
            Ok(prepared) => self.send(prepared).await,
            Err(outcome) => outcome,
        }
    }
}

pub fn pusher(settings: &Settings) -> anyhow::Result<Pusher> {
    let allow_private = settings.notifications.push_allow_private_endpoints;
    let provider: Box<dyn PushProvider> = match &settings.push {
        ProviderSettings::WebPush { vapid_private_key, contact } => {
            Box::new(super::web_push::WebPush::new(vapid_private_key.expose_secret(), contact)?)
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
    StrictJson(sub): StrictJson<Subscription>,
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

/// Which pushes go first when many are due: a buyer's news before a fan-out's batches.
#[derive(Debug, Clone, Copy)]
pub enum Priority {
    Transactional = 0,
    Fanout = 1,
}

/// Stores what the pushes of an event say, once for all of them.
pub async fn store_message(
    conn: &mut sqlx::PgConnection,
    event_id: Uuid,
    payload: &serde_json::Value,
) -> sqlx::Result<()> {
    sqlx::query!(
        "INSERT INTO push_messages (event_id, payload) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        event_id,
        payload
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Queues the event's message (see [`store_message`]) for each of `users` who has a
/// subscription, in batches of [`QUEUED_BATCH`] users: one statement, a row per batch.
/// The batches are ranked from `first_rank` on (a fan-out's later chunks rank after
/// its earlier ones; see `push_batches.rank`). Returns how many users were queued.
/// The caller queues each user once per event.
pub async fn enqueue(
    conn: &mut sqlx::PgConnection,
    event_id: Uuid,
    users: &[Uuid],
    priority: Priority,
    first_rank: i64,
) -> sqlx::Result<u64> {
    if users.is_empty() {
        return Ok(0);
    }
    let queued = sqlx::query_scalar!(
        r#"WITH subscribed AS (
               SELECT s.user_id, (row_number() OVER (ORDER BY s.user_id) - 1) / $3 AS batch
               FROM push_subscriptions s WHERE s.user_id = ANY($2)),
           queued AS (
               INSERT INTO push_batches (event_id, users, priority, rank)
               SELECT $1, array_agg(user_id ORDER BY user_id), $4, $5 + batch FROM subscribed GROUP BY batch
               RETURNING cardinality(users) AS n)
           SELECT coalesce(sum(n), 0)::bigint AS "queued!" FROM queued"#,
        event_id,
        users,
        QUEUED_BATCH,
        priority as i16,
        first_rank
    )
    .fetch_one(conn)
    .await?;
    Ok(queued as u64)
}

/// A slice of a creator's followers, in user id order: those in `[from, below)` after
/// `after`, at most `limit`.
pub struct Followers {
    pub creator_id: Uuid,
    pub from: Uuid,
    pub below: Option<Uuid>,
    pub after: Option<Uuid>,
    pub limit: i64,
}

/// What [`enqueue_followers`] did: followers walked, the last of them, users queued.
pub struct Walked {
    pub followers: i64,
    pub last: Option<Uuid>,
    pub queued: i64,
}

/// A fan-out's chunk: queues the event's message for the subscribed followers of the
/// slice but those the fan-out told on their socket (`fanout_online`), as ranked
/// batches from `first_rank` on. One statement, all of it in Postgres: a million
/// followers cross no wire twice.
pub async fn enqueue_followers(
    conn: &mut sqlx::PgConnection,
    event_id: Uuid,
    slice: Followers,
    first_rank: i64,
) -> sqlx::Result<Walked> {
    let walked = sqlx::query!(
        r#"WITH chunk AS (
               SELECT f.user_id FROM follows f
               WHERE f.creator_id = $1 AND f.user_id >= $2 AND ($3::uuid IS NULL OR f.user_id < $3)
                 AND ($4::uuid IS NULL OR f.user_id > $4)
               ORDER BY f.user_id LIMIT $5),
           first AS (SELECT user_id FROM chunk ORDER BY user_id LIMIT 1),
           last AS (SELECT user_id FROM chunk ORDER BY user_id DESC LIMIT 1),
           pushed AS (
               SELECT c.user_id, (row_number() OVER (ORDER BY c.user_id) - 1) / $7 AS batch
               FROM chunk c JOIN push_subscriptions s ON s.user_id = c.user_id
               -- The chunk's range, so the subscriptions are read by their key's range,
               -- not scanned whole for every chunk.
               WHERE s.user_id >= (SELECT user_id FROM first) AND s.user_id <= (SELECT user_id FROM last)
                 AND NOT EXISTS (SELECT 1 FROM fanout_online o WHERE o.event_id = $6 AND o.user_id = c.user_id)),
           queued AS (
               INSERT INTO push_batches (event_id, users, priority, rank)
               SELECT $6, array_agg(user_id ORDER BY user_id), $8, $9 + batch FROM pushed GROUP BY batch
               RETURNING cardinality(users) AS n)
           SELECT (SELECT count(*) FROM chunk) AS "followers!",
                  (SELECT user_id FROM last) AS last,
                  (SELECT coalesce(sum(n), 0) FROM queued)::bigint AS "queued!""#,
        slice.creator_id,
        slice.from,
        slice.below,
        slice.after,
        slice.limit,
        event_id,
        QUEUED_BATCH,
        Priority::Fanout as i16,
        first_rank
    )
    .fetch_one(conn)
    .await?;
    Ok(Walked { followers: walked.followers, last: walked.last, queued: walked.queued })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_read_as_seconds_or_a_date_and_capped() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-26T12:00:00Z").unwrap().with_timezone(&Utc);
        let with = |v: &str| {
            let mut headers = reqwest::header::HeaderMap::new();
            headers.insert(reqwest::header::RETRY_AFTER, v.parse().unwrap());
            retry_after(&headers, now)
        };
        assert_eq!(with("120"), Some(Duration::from_secs(120)));
        assert_eq!(with("Thu, 26 Nov 2026 12:00:30 GMT"), Some(Duration::from_secs(30)));
        assert_eq!(with("Thu, 26 Nov 2026 11:00:00 GMT"), Some(Duration::ZERO), "a date past is no pause");
        assert_eq!(with("999999"), Some(MAX_RETRY_AFTER));
        assert_eq!(with("soon"), None);
        assert_eq!(retry_after(&reqwest::header::HeaderMap::new(), now), None);
    }

    #[tokio::test]
    async fn a_push_service_that_asks_for_a_pause_gets_one() {
        use std::sync::atomic::Ordering;
        let (busy, hits) = listener(StatusCode::TOO_MANY_REQUESTS, Some(("retry-after", "30".into()))).await;
        let pusher = Pusher::new(Box::new(CallbackPush::new("secret")), true).unwrap();
        let first = pusher.push(&subscription(format!("http://127.0.0.1:{busy}/push")), b"{}").await;
        assert_eq!(first, Outcome::Busy(Duration::from_secs(30)));
        let second = pusher.push(&subscription(format!("http://127.0.0.1:{busy}/other")), b"{}").await;
        assert!(matches!(second, Outcome::Busy(left) if left <= Duration::from_secs(30)), "{second:?}");
        assert_eq!(hits.load(Ordering::SeqCst), 1, "the host is sent nothing during its pause");
        // Without `Retry-After`, a 429 is an ordinary failure, retried on the backoff.
        let (plain, _) = listener(StatusCode::TOO_MANY_REQUESTS, None).await;
        let third = pusher.push(&subscription(format!("http://127.0.0.1:{plain}/push")), b"{}").await;
        assert!(matches!(third, Outcome::Retry(_)), "{third:?}");
    }

    #[test]
    fn provider_statuses() {
        assert_eq!(outcome_of(201), Outcome::Delivered);
        assert_eq!(outcome_of(410), Outcome::Gone);
        assert_eq!(outcome_of(404), Outcome::Gone);
        assert!(matches!(outcome_of(503), Outcome::Retry(_)));
        // Never followed, so never deliverable.
        for redirect in [301, 302, 303, 307, 308] {
            assert_eq!(outcome_of(redirect), Outcome::Gone, "{redirect}");
        }
    }

    /// Each range on both sides of its edges, and the IPv6 forms that carry an IPv4 address.
    const ADDRESSES: &[(&str, bool)] = &[
        // (address, refused)
        ("0.0.0.0", true),
        ("0.255.255.255", true),
        ("1.0.0.0", false),
        ("1.1.1.1", false),
        ("8.8.8.8", false),
        ("9.255.255.255", false),
        ("10.0.0.0", true),
        ("10.255.255.255", true),
        ("11.0.0.0", false),
        ("100.63.255.255", false),
        ("100.64.0.0", true),
        ("100.127.255.255", true),
        ("100.128.0.0", false),
        ("126.255.255.255", false),
        ("127.0.0.0", true),
        ("127.0.0.1", true),
        ("127.255.255.255", true),
        ("128.0.0.0", false),
        ("169.253.255.255", false),
        ("169.254.0.0", true),
        ("169.254.169.254", true),
        ("169.254.255.255", true),
        ("169.255.0.0", false),
        ("172.15.255.255", false),
        ("172.16.0.0", true),
        ("172.31.255.255", true),
        ("172.32.0.0", false),
        ("191.255.255.255", false),
        ("192.0.0.0", true),
        ("192.0.0.255", true),
        ("192.0.1.0", false),
        ("192.0.1.255", false),
        ("192.0.2.0", true),
        ("192.0.2.255", true),
        ("192.0.3.0", false),
        ("192.167.255.255", false),
        ("192.168.0.0", true),
        ("192.168.255.255", true),
        ("192.169.0.0", false),
        ("198.17.255.255", false),
        ("198.18.0.0", true),
        ("198.19.255.255", true),
        ("198.20.0.0", false),
        ("198.51.99.255", false),
        ("198.51.100.0", true),
        ("198.51.100.255", true),
        ("198.51.101.0", false),
        ("203.0.112.255", false),
        ("203.0.113.0", true),
        ("203.0.113.255", true),
        ("203.0.114.0", false),
        ("223.255.255.255", false),
        ("224.0.0.0", true),
        ("239.255.255.255", true),
        ("240.0.0.0", true),
        ("255.255.255.254", true),
        ("255.255.255.255", true),
        // IPv6
        ("::", true),
        ("::1", true),
        ("2001:4860:4860::8888", false),
        ("2606:4700:4700::1111", false),
        ("2001:db7:ffff:ffff:ffff:ffff:ffff:ffff", false),
        ("2001:db8::", true),
        ("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", true),
        ("2001:db9::", false),
        ("fbff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", false),
        ("fc00::", true),
        ("fd12:3456::1", true),
        ("fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", true),
        ("fe00::", false),
        ("fe7f:ffff:ffff:ffff:ffff:ffff:ffff:ffff", false),
        ("fe80::", true),
        ("fe80::1", true),
        ("febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff", true),
        ("ff00::", true),
        ("ff02::1", true),
        ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", true),
        // IPv4-mapped ::ffff:0:0/96: the IPv4 address decides.
        ("::ffff:127.0.0.1", true),
        ("::ffff:10.1.2.3", true),
        ("::ffff:169.254.169.254", true),
        ("::ffff:0.0.0.0", true),
        ("::ffff:8.8.8.8", false),
        ("::fffe:ffff:ffff", false), // just below the mapped range, outside ::/96 too
        // IPv4-compatible ::/96.
        ("::127.0.0.1", true),
        ("::10.0.0.1", true),
        ("::8.8.8.8", false),
        ("::1:0:0", false), // just above ::/96
        // IPv4-translated ::ffff:0:0:0/96.
        ("::ffff:0:127.0.0.1", true),
        ("::ffff:0:8.8.8.8", false),
        // NAT64 64:ff9b::/96, and its local-use /48.
        ("64:ff9b::127.0.0.1", true),
        ("64:ff9b::192.168.0.1", true),
        ("64:ff9b::8.8.8.8", false),
        ("64:ff9b:1::8.8.8.8", true),
        // 6to4 2002::/16: the IPv4 address is the next 32 bits.
        ("2002:7f00:1::", true),
        ("2002:a00:1::1", true),
        ("2002:a9fe:a9fe::", true),
        ("2002:808:808::1", false),
        ("2001:ffff:ffff:ffff:ffff:ffff:ffff:ffff", false),
        ("2003::1", false),
    ];

    #[test]
    fn the_address_classifier_refuses_every_non_public_range_and_nothing_else() {
        for (address, refused) in ADDRESSES {
            let ip: IpAddr = address.parse().unwrap();
            assert_eq!(refused_range(ip).is_some(), *refused, "{address}: {:?}", refused_range(ip));
            assert_eq!(is_public(ip), !refused, "{address}");
        }
        assert_eq!(refused_range("::ffff:127.0.0.1".parse().unwrap()), Some("loopback (127/8)"));
        assert_eq!(refused_range("2002:a9fe:a9fe::".parse().unwrap()), Some("link-local (169.254/16)"));
    }

    #[tokio::test]
    async fn subscribing_refuses_plain_http_and_every_non_public_endpoint() {
        let refused = [
            "http://8.8.8.8/push",
            "ftp://8.8.8.8/push",
            "not a url",
            "https://10.0.0.1/push",
            "https://127.0.0.1:8443/push",
            "https://169.254.169.254/latest/meta-data/",
            "https://[::1]/push",
            "https://[::ffff:127.0.0.1]/push",
            "https://[::ffff:7f00:1]/push",
            "https://[fe80::1]/push",
            "https://[64:ff9b::a00:1]/push",
            "https://[2002:c0a8:101::1]/push",
            "https://0x7f.1/push",     // 127.0.0.1, however spelled
            "https://2130706433/push", // 127.0.0.1 as one number
            "https://017700000001/",   // and in octal
            "https://localhost/push",  // a name that resolves to loopback
            "https://localhost./push",
            "https://no-such-host.invalid/push", // a name that does not resolve
        ];
        for endpoint in refused {
            let why = check_endpoint(endpoint, false).await;
            assert!(why.is_err(), "{endpoint} was accepted");
        }
        let long = format!("https://8.8.8.8/{}", "a".repeat(MAX_ENDPOINT_LEN));
        assert!(check_endpoint(&long, false).await.unwrap_err().contains("longer"));
        let why = check_endpoint("https://[::ffff:127.0.0.1]/", false).await.unwrap_err();
        assert!(why.contains("127.0.0.1") && why.contains("loopback"), "{why}");
        let why = check_endpoint("https://localhost/", false).await.unwrap_err();
        assert!(why.contains("public"), "{why}");
        assert_eq!(
            check_endpoint("https://no-such-host.invalid/", false).await.unwrap_err(),
            "its host `no-such-host.invalid` must resolve, and to public addresses only",
            "the same answer as for a private address: no map of our network"
        );
        assert!(check_endpoint("http://8.8.8.8/", false).await.unwrap_err().contains("https"));

        for endpoint in ["https://8.8.8.8/push/abc", "https://8.8.8.8:8443/push", "https://[2606:4700:4700::1111]/push"]
        {
            assert_eq!(check_endpoint(endpoint, false).await, Ok(()), "{endpoint}");
        }
    }

    #[tokio::test]
    async fn development_may_push_to_http_and_to_private_addresses() {
        for endpoint in [
            "http://127.0.0.1:9/push",
            "https://10.0.0.1/push",
            "http://localhost:9/push",
            "https://push.example.net/send/abc", // not resolved when subscribing
        ] {
            assert_eq!(check_endpoint(endpoint, true).await, Ok(()), "{endpoint}");
        }
        assert!(check_endpoint("ftp://127.0.0.1/", true).await.is_err());
        assert!(check_endpoint("not a url", true).await.is_err());
        let long = format!("http://127.0.0.1/{}", "a".repeat(MAX_ENDPOINT_LEN));
        assert!(check_endpoint(&long, true).await.is_err());
    }

    #[tokio::test]
    async fn the_send_time_resolver_keeps_public_addresses_only() {
        use reqwest::dns::Resolve;
        let refused = PublicAddressesOnly.resolve("localhost".parse().unwrap()).await;
        let why = refused.err().expect("localhost is loopback only").to_string();
        assert!(why.contains("no public address"), "{why}");
    }

    /// A local listener that counts the requests it gets and answers `status`.
    async fn listener(
        status: StatusCode,
        header: Option<(&'static str, String)>,
    ) -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let hits = Arc::new(AtomicUsize::new(0));
        let counted = hits.clone();
        let app = Router::new().fallback(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            let header = header.clone();
            async move {
                let mut resp = axum::response::IntoResponse::into_response(status);
                if let Some((name, value)) = header {
                    resp.headers_mut().insert(name, value.parse().unwrap());
                }
                resp
            }
        });
        let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = socket.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(socket, app).await.unwrap() });
        (port, hits)
    }

    fn subscription(endpoint: String) -> Subscription {
        Subscription {
            endpoint,
            keys: SubscriptionKeys { p256dh: "k".into(), auth: "a".into() },
            expiration_time: None,
        }
    }

    #[tokio::test]
    async fn sends_reach_no_private_address_and_follow_no_redirect() {
        use std::sync::atomic::Ordering;
        let (target, target_hits) = listener(StatusCode::OK, None).await;
        // Subscribed while private endpoints were allowed, or a name that points
        // inside since (DNS rebinding): a strict sender reaches neither.
        let strict = Pusher::new(Box::new(CallbackPush::new("secret")), false).unwrap();
        let literal = strict.push(&subscription(format!("http://127.0.0.1:{target}/push")), b"{}").await;
        assert_eq!(literal, Outcome::Gone, "an endpoint no longer allowed is dropped");
        // The client itself connects to no name that resolves inside (IP literals skip
        // its resolver: `target`, above, refuses those).
        let client = PushHttp::new(false).unwrap();
        let by_name = client.send(client.client.post(format!("http://localhost:{target}/push"))).await;
        assert!(matches!(&by_name, Outcome::Retry(why) if why.contains("no public address")), "{by_name:?}");
        assert_eq!(target_hits.load(Ordering::SeqCst), 0);

        // A redirect is not followed, even where private addresses are allowed.
        let (redirecting, redirect_hits) =
            listener(StatusCode::TEMPORARY_REDIRECT, Some(("location", format!("http://127.0.0.1:{target}/inside"))))
                .await;
        let dev = Pusher::new(Box::new(CallbackPush::new("secret")), true).unwrap();
        let redirected = dev.push(&subscription(format!("http://127.0.0.1:{redirecting}/push")), b"{}").await;
        assert_eq!(redirected, Outcome::Gone);
        assert_eq!(redirect_hits.load(Ordering::SeqCst), 1);
        assert_eq!(target_hits.load(Ordering::SeqCst), 0, "the redirect was followed");
        let delivered = dev.push(&subscription(format!("http://127.0.0.1:{target}/push")), b"{}").await;
        assert_eq!(delivered, Outcome::Delivered);
    }
}
