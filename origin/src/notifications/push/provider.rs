//! The push providers (Web Push, see [`super::web_push`], and the signed callback) and
//! what a push service's answer means; [`Pusher`] sends with at most [`PER_HOST`]
//! requests to one host at once, and none to a host that asked for a pause.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use drops_shared::api::PushSubscription;
use tokio::sync::Semaphore;

use super::endpoint;

/// Whatever a provider does, its send is given up after this (and retried).
const SEND_DEADLINE: Duration = Duration::from_secs(10);

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
    fn prepare(&self, subscription: &PushSubscription, url: reqwest::Url, payload: &[u8]) -> anyhow::Result<Prepared>;
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
    fn prepare(&self, _: &PushSubscription, url: reqwest::Url, payload: &[u8]) -> anyhow::Result<Prepared> {
        let signature =
            drops_shared::signing::stripe_signature(self.secret.as_bytes(), Utc::now().timestamp(), payload);
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
        headers.insert("x-drops-signature", http::HeaderValue::from_str(&signature)?);
        Ok(Prepared { url, headers, body: payload.to_vec() })
    }
}

/// The client pushes are sent with (see [`endpoint::client`]) and whether private
/// endpoints are allowed.
struct PushHttp {
    client: reqwest::Client,
    allow_private: bool,
}

impl PushHttp {
    fn new(allow_private: bool) -> anyhow::Result<Self> {
        Ok(Self { client: endpoint::client(allow_private)?, allow_private })
    }

    /// The URL to send to, if `endpoint` may still be sent to.
    fn target(&self, endpoint: &str) -> Result<reqwest::Url, String> {
        endpoint::endpoint_url(endpoint, self.allow_private)
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

/// Requests one push service host may have from one instance at once.
pub const PER_HOST: usize = 128;
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
    pub fn prepare(&self, subscription: &PushSubscription, payload: &[u8]) -> Result<Prepared, Outcome> {
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
    pub async fn push(&self, subscription: &PushSubscription, payload: &[u8]) -> Outcome {
        match self.prepare(subscription, payload) {
            Ok(prepared) => self.send(prepared).await,
            Err(outcome) => outcome,
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;
    use axum::Router;

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

    fn subscription(endpoint: String) -> PushSubscription {
        use drops_shared::api::PushKeys;
        PushSubscription { endpoint, keys: PushKeys { p256dh: "k".into(), auth: "a".into() }, expiration_time: None }
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
