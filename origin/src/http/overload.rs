//! The origin's own defences, so no single client, and no rush, can melt it. One
//! middleware ([`guard`]) runs on every route, after routing (it sees the route
//! template) and before any extractor reads a token:
//!
//! 1. **Per-client limits** (GCRA, `governor`, one bucket per address). The routes
//!    fall in four classes ([`class`]):
//!    - public routes (everything apps can reach): limited per client address. The
//!      address is the TCP peer's (or, from a trusted proxy, the client its
//!      `X-Forwarded-For` names: `client_address`), except when the request carries the edge's word
//!      for the client: `x-drops-client: <ip>` with a valid
//!      `x-drops-client-sig` (`drops_shared::client_address`: an HMAC under a key
//!      derived from the edge → origin secret, fresh within a minute). Those are
//!      limited per that address, on a budget of their own
//!      (`settings.limits.forwarded`, higher than the direct one: the edge has
//!      limited each client already). A missing, forged or stale header is ignored,
//!      so the request counts against its peer: naming someone else buys nothing.
//!    - the payment webhook: not held to the per-client limits (the payment
//!      provider's few addresses carry everyone's payments), but bounded: a
//!      generous budget per peer address (as `client_address` found it) of its own (`settings.limits.signed`).
//!    - the signed internal routes (`/internal/…`): one budget for the whole
//!      instance (`settings.limits.internal`), spent only by calls whose signature
//!      checks out (checked here, once the body is in). Nothing anyone else sends
//!      spends it: not public traffic through the edge, not unsigned junk sent from
//!      the edge's own addresses (a shared egress), which the route answers 401
//!      whatever the budget.
//!    - `/healthz`, `/readyz`: exempt from everything here, so the origin can be
//!      watched while it refuses work (`/metrics` is on the operators' listener).
//!
//!    IPv6 clients are counted per /64 (one subscriber's usual allocation), so
//!    walking through one's own addresses does not multiply a budget. Over the
//!    limit: 429 `rate_limited`, `Retry-After` the seconds until the next request
//!    would pass.
//! 2. **The body, before any slot**: a request's body (at most
//!    `MAX_BODY_BYTES` and one more byte: past that the route's own 413) is read
//!    here, within `server.body_read_timeout_ms` (past it: 408, the connection
//!    closed), so a client that sends its body slowly holds a connection but no
//!    slot. A body declared larger than the limit is not read at all. (The request
//!    line and headers are bounded by the server's header read timeout, `startup`.)
//! 3. **Load shedding**: at most `max_in_flight` requests are handled at once; up to
//!    `max_queued` more wait for a slot, each at most `queue_wait_ms`. Beyond that,
//!    or once the wait is out: 503 `overloaded`, `Retry-After: 1`, at once. The
//!    slot is held until the handler has its answer (a WebSocket's, once upgraded,
//!    is not: sockets have their own per-user cap).
//!
//! The third defence, a database pool that answers 503 instead of queueing, is the
//! pool's acquire timeout (`state::connect_db`) and its mapping in `error`. Each
//! refusal is marked with its [`Refusal`] and counted by `metrics`.
//!
//! Buckets of addresses not seen for a while are dropped by [`Guard::sweep`], which
//! `startup` runs every minute.

use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Request, State};
use axum::http::header::{HeaderValue, CONNECTION, CONTENT_LENGTH};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use drops_shared::client_address::{self, CLIENT_HEADER, CLIENT_SIGNATURE_HEADER};
use drops_shared::problem::{ErrorCode, Problem};
use drops_shared::signing::{verify_internal, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use drops_shared::MAX_BODY_BYTES;
use governor::clock::Clock;
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota};
use http_body::Body as _;
use http_body_util::BodyExt;
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::{Rate, Settings};
use crate::http::client_address::ClientAddress;
use crate::http::error::{problem_response, Refusal};

/// Routes outside `/internal/` that are signed by their caller and so not held to
/// the per-client limits (the payment webhook).
const SIGNED_ROUTES: &[&str] = &["/v1/webhooks/payments"];
/// Routes nothing here applies to.
const EXEMPT_ROUTES: &[&str] = &["/healthz", "/readyz"];

/// What a route is held to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Per-client limits and load shedding.
    Public,
    /// The payment webhook: its own per-peer limit and load shedding.
    Signed,
    /// The edge's signed internal routes: the instance's internal budget, spent by
    /// validly signed calls only, and load shedding.
    Internal,
    /// Nothing.
    Exempt,
}

/// The class of the route template `route` (a request that matched no route is public).
pub fn class(route: Option<&str>) -> Class {
    match route {
        Some(r) if EXEMPT_ROUTES.contains(&r) => Class::Exempt,
        Some(r) if r.starts_with("/internal/") => Class::Internal,
        Some(r) if SIGNED_ROUTES.contains(&r) => Class::Signed,
        _ => Class::Public,
    }
}

/// Whom a public request counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    /// The client address the edge vouches for (budget `limits.forwarded`).
    Forwarded(IpAddr),
    /// The TCP peer: no valid word from the edge (budget `limits.direct`).
    Direct(IpAddr),
}

/// The client of a public request from `peer` with `headers`, at `now` (unix s):
/// the edge's signed client address if it checks against `secret`, else the peer.
pub fn client(peer: Option<IpAddr>, headers: &HeaderMap, secret: &[u8], now: i64) -> Client {
    let value = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    match client_address::verify(secret, value(CLIENT_HEADER), value(CLIENT_SIGNATURE_HEADER), now) {
        Ok(address) => Client::Forwarded(bucket(address)),
        Err(why) => {
            if headers.contains_key(CLIENT_HEADER) {
                tracing::debug!(error = %why, "client header ignored; counting the request against its peer");
            }
            Client::Direct(bucket(peer.unwrap_or(IpAddr::from([0, 0, 0, 0]))))
        }
    }
}

/// The bucket an address counts in: IPv4 as it is (an IPv4-mapped IPv6 address
/// too), IPv6 by its /64.
pub fn bucket(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        },
    }
}

type Limiter = DefaultKeyedRateLimiter<IpAddr>;

fn quota(rate: Rate) -> Quota {
    let one = NonZeroU32::MIN;
    let period = (Duration::from_secs(60) / rate.per_minute.max(1)).max(Duration::from_nanos(1));
    let quota = Quota::with_period(period).expect("a period above zero");
    quota.allow_burst(NonZeroU32::new(rate.burst).unwrap_or(one))
}

fn limiter(rate: Rate) -> Limiter {
    Limiter::keyed(quota(rate))
}

/// The limiters and the slots of one origin instance.
pub struct Guard {
    direct: Limiter,
    forwarded: Limiter,
    signed: Limiter,
    internal: DefaultDirectRateLimiter,
    edge_secret: SecretString,
    body_timeout: Duration,
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
    max_queued: usize,
    queue_wait: Duration,
}

impl Guard {
    pub fn new(settings: &Settings) -> Self {
        let limits = &settings.limits;
        Guard {
            direct: limiter(limits.direct),
            forwarded: limiter(limits.forwarded),
            signed: limiter(limits.signed),
            internal: DefaultDirectRateLimiter::direct(quota(limits.internal)),
            edge_secret: settings.edge.edge_to_origin_secret.clone(),
            body_timeout: Duration::from_millis(settings.server.body_read_timeout_ms),
            slots: Arc::new(Semaphore::new(limits.max_in_flight as usize)),
            waiting: AtomicUsize::new(0),
            max_queued: limits.max_queued as usize,
            queue_wait: Duration::from_millis(limits.queue_wait_ms),
        }
    }

    /// Forgets the buckets that are full again (their addresses are as good as new).
    pub fn sweep(&self) {
        for limiter in [&self.direct, &self.forwarded, &self.signed] {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    /// `Err(seconds to wait)` when `address` is over `limiter`'s rate.
    fn check(limiter: &Limiter, address: IpAddr) -> Result<(), u64> {
        limiter.check_key(&address).map_err(|not_until| {
            let wait = not_until.wait_time_from(limiter.clock().now());
            wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
        })
    }

    /// `Err(seconds to wait)` when the internal calls are over their rate.
    fn check_internal(&self) -> Result<(), u64> {
        self.internal.check().map_err(|not_until| {
            let wait = not_until.wait_time_from(self.internal.clock().now());
            wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
        })
    }

    /// Whether `req`, whose body is `body`, carries the edge's valid signature (what
    /// the route's `Signed` extractor checks again, and answers 401 when not).
    fn signed_by_edge(&self, req: &Request, body: &[u8]) -> bool {
        let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
        let path = req.uri().path_and_query().map_or("", |p| p.as_str());
        verify_internal(
            self.edge_secret.expose_secret().as_bytes(),
            req.method().as_str(),
            path,
            header(TIMESTAMP_HEADER),
            header(SIGNATURE_HEADER),
            body,
            unix_now(),
        )
        .is_ok()
    }

    /// A slot, at once or after a short wait in a bounded queue; `None`: shed.
    async fn admit(&self) -> Option<OwnedSemaphorePermit> {
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Some(permit);
        }
        let ahead = self.waiting.fetch_add(1, Ordering::AcqRel);
        let _leaves = Waiting(&self.waiting);
        if ahead >= self.max_queued {
            return None;
        }
        tokio::time::timeout(self.queue_wait, self.slots.clone().acquire_owned()).await.ok()?.ok()
    }
}

/// One place in the queue, given back however the wait ends (a client that hangs
/// up drops it too).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// The body of a request, read before it may take a slot.
#[derive(Debug)]
enum BodyRead {
    /// Read to its end, or up to one byte past the limit (the route answers 413).
    Read(Bytes),
    /// Not read: there is none, or its declared length is over the limit.
    Left,
}

/// Reads `req`'s body within `within` (see the module's doc), and gives the request
/// back with the bytes read as its body; `Err` is the answer when the body did not
/// arrive in time (408) or could not be read (400).
async fn read_body(req: Request, within: Duration) -> Result<(Request, BodyRead), Response> {
    let declared = req.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if req.body().is_end_stream() || declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Ok((req, BodyRead::Left));
    }
    let (parts, mut body) = req.into_parts();
    let read = async {
        let mut bytes = Vec::with_capacity(declared.unwrap_or(0) as usize);
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                bytes.extend_from_slice(&data);
                if bytes.len() > MAX_BODY_BYTES {
                    break;
                }
            }
        }
        Ok::<_, axum::Error>(Bytes::from(bytes))
    };
    match tokio::time::timeout(within, read).await {
        Ok(Ok(bytes)) => Ok((Request::from_parts(parts, Body::from(bytes.clone())), BodyRead::Read(bytes))),
        Ok(Err(_)) => Err(problem_response(&Problem::new(
            ErrorCode::InvalidRequest,
            Some("could not read the request body".into()),
        ))),
        Err(_) => {
            let detail = format!("the request body did not arrive within {} ms", within.as_millis());
            let mut resp = problem_response(&Problem::new(ErrorCode::InvalidRequest, Some(detail)).with_status(408));
            resp.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
            Err(resp)
        }
    }
}

/// The middleware: the limit of the request's class, the body, then a slot.
pub async fn guard(State(guard): State<Arc<Guard>>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map(|p| p.as_str());
    // The TCP peer, or the client a trusted proxy names (`client_address`).
    let peer = req.extensions().get::<ClientAddress>().map(|c| c.0);
    let class = class(route);
    let limited = match class {
        Class::Exempt => return next.run(req).await,
        Class::Signed => {
            let peer = bucket(peer.unwrap_or(IpAddr::from([0, 0, 0, 0])));
            Guard::check(&guard.signed, peer)
        }
        // Once the body is in and the signature checked, below.
        Class::Internal => Ok(()),
        Class::Public => match client(peer, req.headers(), guard.edge_secret.expose_secret().as_bytes(), unix_now()) {
            Client::Forwarded(address) => Guard::check(&guard.forwarded, address),
            Client::Direct(address) => Guard::check(&guard.direct, address),
        },
    };
    if let Err(wait) = limited {
        return Refusal::RateLimited.response("too many requests from this client; retry after the pause", wait);
    }
    let (req, body) = match read_body(req, guard.body_timeout).await {
        Ok(read) => read,
        Err(refused) => return refused,
    };
    if class == Class::Internal {
        let body = match &body {
            BodyRead::Read(bytes) => bytes.as_ref(),
            BodyRead::Left => &[],
        };
        if guard.signed_by_edge(&req, body) {
            if let Err(wait) = guard.check_internal() {
                return Refusal::RateLimited.response("too many internal calls; retry after the pause", wait);
            }
        }
    }
    let Some(slot) = guard.admit().await else {
        return Refusal::Overloaded.response("the origin is at capacity; retry shortly", 1);
    };
    let resp = next.run(req).await;
    drop(slot);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;
    use futures::StreamExt;

    const SECRET: &[u8] = b"edge-secret";
    const NOW: i64 = 1_800_000_000;

    fn peer(ip: &str) -> Option<IpAddr> {
        Some(ip.parse().unwrap())
    }

    fn with_client(client: &str, sig: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(CLIENT_HEADER, HeaderValue::from_str(client).unwrap());
        h.insert(CLIENT_SIGNATURE_HEADER, HeaderValue::from_str(sig).unwrap());
        h
    }

    #[test]
    fn routes_fall_in_their_class() {
        assert_eq!(class(Some("/v1/drops/{drop_id}")), Class::Public);
        assert_eq!(class(Some("/v1/sandbox/checkout/{reference}")), Class::Public);
        assert_eq!(class(None), Class::Public, "an unmatched path is someone's request too");
        assert_eq!(class(Some("/v1/webhooks/payments")), Class::Signed);
        assert_eq!(class(Some("/internal/v1/reservations")), Class::Internal);
        for exempt in ["/healthz", "/readyz"] {
            assert_eq!(class(Some(exempt)), Class::Exempt);
        }
    }

    #[test]
    fn the_edge_names_the_client_only_with_a_valid_signature() {
        let edge = peer("10.0.0.5");
        let signed = client_address::sign(SECRET, "203.0.113.7", NOW);
        let vouched = client(edge, &with_client("203.0.113.7", &signed), SECRET, NOW);
        assert_eq!(vouched, Client::Forwarded("203.0.113.7".parse().unwrap()));
        // Forged, for another address, stale, with another secret, or no signature:
        // the request counts against its peer.
        let direct = Client::Direct("10.0.0.5".parse().unwrap());
        assert_eq!(client(edge, &with_client("198.51.100.1", &signed), SECRET, NOW), direct);
        assert_eq!(client(edge, &with_client("203.0.113.7", "t=1,v1=00"), SECRET, NOW), direct);
        assert_eq!(client(edge, &with_client("203.0.113.7", &signed), SECRET, NOW + 3_600), direct);
        assert_eq!(client(edge, &with_client("203.0.113.7", &signed), b"other", NOW), direct);
        let mut unsigned = HeaderMap::new();
        unsigned.insert(CLIENT_HEADER, HeaderValue::from_static("203.0.113.7"));
        assert_eq!(client(edge, &unsigned, SECRET, NOW), direct);
        assert_eq!(client(edge, &HeaderMap::new(), SECRET, NOW), direct);
        // No peer known (a router served without connection info): one shared bucket.
        assert_eq!(client(None, &HeaderMap::new(), SECRET, NOW), Client::Direct("0.0.0.0".parse().unwrap()));
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let b = |s: &str| bucket(s.parse().unwrap());
        assert_eq!(b("2001:db8:1:2:aaaa::1"), b("2001:db8:1:2:ffff:ffff:ffff:ffff"));
        assert_eq!(b("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::".parse::<IpAddr>().unwrap());
        assert_ne!(b("2001:db8:1:2::1"), b("2001:db8:1:3::1"));
        assert_eq!(b("::ffff:203.0.113.7"), "203.0.113.7".parse::<IpAddr>().unwrap());
        assert_eq!(b("203.0.113.7"), "203.0.113.7".parse::<IpAddr>().unwrap());
        let signed = client_address::sign(SECRET, "2001:db8:1:2::99", NOW);
        assert_eq!(
            client(peer("10.0.0.5"), &with_client("2001:db8:1:2::99", &signed), SECRET, NOW),
            Client::Forwarded("2001:db8:1:2::".parse().unwrap())
        );
    }

    #[test]
    fn a_bucket_holds_its_burst_then_says_how_long_to_wait() {
        let limiter = limiter(Rate { per_minute: 2, burst: 3 });
        let (a, b): (IpAddr, IpAddr) = ("203.0.113.7".parse().unwrap(), "203.0.113.8".parse().unwrap());
        for _ in 0..3 {
            assert_eq!(Guard::check(&limiter, a), Ok(()));
        }
        let wait = Guard::check(&limiter, a).unwrap_err();
        assert!((1..=30).contains(&wait), "one request every 30 s: {wait}");
        assert_eq!(Guard::check(&limiter, b), Ok(()), "another address has its own bucket");
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_is_read_whole_cut_past_the_limit_and_refused_when_slow() {
        let post = |body: Body| Request::post("/v1/products").body(body).unwrap();
        let chunks = |n: usize, size: usize| {
            Body::from_stream(futures::stream::iter((0..n).map(move |_| Ok::<_, std::io::Error>(vec![b'x'; size]))))
        };
        let (_, read) = read_body(post(chunks(4, 1_000)), Duration::from_secs(1)).await.unwrap();
        assert!(matches!(read, BodyRead::Read(b) if b.len() == 4_000));
        // Past the limit: read no further than one byte over (the route answers 413).
        let (_, read) = read_body(post(chunks(100, 1_024)), Duration::from_secs(1)).await.unwrap();
        assert!(matches!(read, BodyRead::Read(b) if b.len() > MAX_BODY_BYTES && b.len() <= MAX_BODY_BYTES + 1_024));
        let mut declared = post(Body::from("x"));
        declared.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from(MAX_BODY_BYTES + 1));
        assert!(matches!(read_body(declared, Duration::from_secs(1)).await.unwrap().1, BodyRead::Left));
        // A body that stalls: 408 once the timeout is out, the connection closed.
        let stalled = futures::stream::iter([Ok::<_, std::io::Error>(b"{".to_vec())]).chain(futures::stream::pending());
        let refused = read_body(post(Body::from_stream(stalled)), Duration::from_secs(1)).await.unwrap_err();
        assert_eq!(refused.status(), 408);
        assert_eq!(refused.headers()[CONNECTION], "close");
    }

    #[tokio::test(start_paused = true)]
    async fn beyond_the_slots_and_the_short_queue_requests_are_shed() {
        let mut settings = Settings::development();
        settings.limits.max_in_flight = 2;
        settings.limits.max_queued = 1;
        settings.limits.queue_wait_ms = 50;
        let guard = Arc::new(Guard::new(&settings));
        let first = guard.admit().await.expect("a free slot");
        let _second = guard.admit().await.expect("a free slot");
        // The third waits in the queue; the fourth finds the queue full.
        let queued = tokio::spawn({
            let guard = guard.clone();
            async move { guard.admit().await }
        });
        tokio::task::yield_now().await;
        assert!(guard.admit().await.is_none(), "queue full: shed at once");
        drop(first);
        let _third = queued.await.unwrap().expect("a slot freed within the wait goes to the one queued");
        // Nothing frees up: the queued one is shed once its wait is out.
        let started = tokio::time::Instant::now();
        assert!(guard.admit().await.is_none());
        assert_eq!(started.elapsed(), Duration::from_millis(50));
        assert_eq!(guard.waiting.load(Ordering::Acquire), 0, "every place in the queue given back");
    }
}
