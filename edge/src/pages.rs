//! Drop pages — the card (`GET /v1/drops/{id}`) and the lists (`GET /v1/drops?status=`)
//! — served from the Workers Cache API with stale-while-revalidate done here, since
//! the Cache API itself ignores `stale-while-revalidate`:
//!
//! - fresh (younger than `PAGE_FRESH_SECS`): served, `x-cache: HIT`;
//! - stale within `PAGE_GRACE_SECS` more: served at once, `STALE`, and refreshed in
//!   the background (`wait_until`);
//! - missing or older: fetched, `MISS`;
//! - the origin failing: a stale entry up to `STALE_IF_ERROR_SECS` old is served.
//!
//! Fetches of one key are coalesced inside the isolate: one request claims the key
//! and fetches; concurrent stale hits are served the stale page without fetching, and
//! concurrent misses wait for the claimant's page to land in the cache (a request
//! may not await I/O another request started: the runtime would cancel it as hung).
//! Answers that are not pages (404, 400) are remembered for a second, so a flood of
//! bad ids costs one fetch too.
//!
//! A list is cached only as a canonical page: one key per (status, limit, cursor),
//! the limit as a number (the default unwritten), the cursor one the origin signed
//! for that list. Anything else (a forged or foreign cursor, a bad limit or status,
//! another parameter) is a 400 answered here, before the cache or the origin. A card's stock is patched from the drop's inventory
//! object at refresh time, so it is at most a few seconds old.

use std::cell::RefCell;
use std::collections::HashMap;

use drops_shared::api::{DropCard, Page, StockResponse};
use drops_shared::cursor::CursorKey;
use drops_shared::pages;
use drops_shared::problem::{ErrorCode, Problem};
use futures_util::future::join_all;
use sha2::{Digest, Sha256};
use uuid::Uuid;
use worker::{Cache, Context, Env, Fetch, Headers, Request, Response};

use crate::config::{EdgeConfig, PagePolicy as Policy};
use crate::http::{header, now_ms, EdgeResult};
use crate::inventory_object::{self, Command};

const STORED_AT: &str = "x-drops-stored-at";

/// What a page is, for fetching and patching.
enum Kind {
    Card,
    List,
}

/// A cached page.
struct Entry {
    body: std::rc::Rc<Vec<u8>>,
    etag: String,
    stored_at_ms: i64,
}

/// What a fetch brought back: a page to serve and keep, or an origin answer that
/// is not a page (404, 400) to pass on as it is.
enum Fetched {
    Page(Entry),
    Answer(u16, std::rc::Rc<Vec<u8>>),
}

/// The state of a key in this isolate.
enum Flight {
    /// A request is fetching it.
    Running { since_ms: i64 },
    /// The origin's last answer was not a page; remembered briefly.
    Answered { status: u16, body: std::rc::Rc<Vec<u8>>, until_ms: i64 },
}

thread_local! {
    static FLIGHTS: RefCell<HashMap<String, Flight>> = RefCell::new(HashMap::new());
}

/// Keys this isolate holds a claim or a remembered answer for.
pub fn flights_held() -> usize {
    FLIGHTS.with(|f| f.borrow().len())
}

/// A claim older than this is presumed abandoned.
const CLAIM_TIMEOUT_MS: i64 = 10_000;
/// How long concurrent misses wait for the claimant's page.
const WAIT_FOR_PAGE_MS: i64 = 5_000;
const ANSWER_MEMORY_MS: i64 = 1_000;
/// Keys this isolate keeps state for at most (claims and remembered answers).
const MAX_FLIGHTS: usize = 10_000;

/// True when the caller should fetch `key`: nobody else is.
fn claim(key: &str, now: i64) -> bool {
    FLIGHTS.with(|f| {
        let mut f = f.borrow_mut();
        if let Some(Flight::Running { since_ms }) = f.get(key) {
            if now - since_ms < CLAIM_TIMEOUT_MS {
                return false;
            }
        }
        f.insert(key.to_owned(), Flight::Running { since_ms: now });
        true
    })
}

fn running(key: &str) -> bool {
    FLIGHTS.with(|f| matches!(f.borrow().get(key), Some(Flight::Running { .. })))
}

fn finish(key: &str, fetched: &Result<Fetched, worker::Error>) {
    FLIGHTS.with(|f| {
        let mut f = f.borrow_mut();
        match fetched {
            Ok(Fetched::Answer(status, body)) => {
                let now = now_ms();
                if f.len() >= MAX_FLIGHTS {
                    // A flood of distinct keys (random ids): forget the answers that
                    // ran out, and if that is not enough, every remembered answer.
                    f.retain(|_, flight| match flight {
                        Flight::Answered { until_ms, .. } => *until_ms > now,
                        Flight::Running { .. } => true,
                    });
                    if f.len() >= MAX_FLIGHTS {
                        f.retain(|_, flight| matches!(flight, Flight::Running { .. }));
                    }
                }
                let until_ms = now + ANSWER_MEMORY_MS;
                f.insert(key.to_owned(), Flight::Answered { status: *status, body: body.clone(), until_ms });
            }
            _ => {
                f.remove(key);
            }
        }
    })
}

fn remembered(key: &str, now: i64) -> Option<(u16, std::rc::Rc<Vec<u8>>)> {
    FLIGHTS.with(|f| match f.borrow().get(key) {
        Some(Flight::Answered { status, body, until_ms }) if now < *until_ms => Some((*status, body.clone())),
        _ => None,
    })
}

/// An origin answer that is not a page, passed on: a refusal stays a problem.
fn answer(status: u16, body: &[u8]) -> EdgeResult {
    let resp = crate::http::json_bytes(status, body.to_vec())?;
    if status >= 400 {
        resp.headers().set("content-type", drops_shared::problem::PROBLEM_CONTENT_TYPE)?;
    }
    Ok(resp)
}

/// Fetches `key` as its claimant, and releases the claim.
async fn fetch_claimed(env: &Env, key: &str, path: &str, kind: &Kind, client: Option<&str>) -> worker::Result<Fetched> {
    let fetched = fetch_and_store(env, key, path, kind, client).await;
    finish(key, &fetched);
    fetched
}

/// The canonical public path of a list request (`drops_shared::pages::canonical_list`),
/// or the 400 it gets here: a bad `status` or `limit`, a cursor the origin did not
/// sign for this list (checked with the key the origin signs with, derived from the
/// origin → edge secret), any other parameter. A refused request touches neither
/// the cache nor the origin, so junk cannot fill the cache or reach the database.
fn list_path(req: &Request, cfg: &EdgeConfig) -> EdgeResult<String> {
    let key = CursorKey::derive(cfg.origin_to_edge_secret.as_bytes());
    pages::canonical_list(req.url()?.query(), &key)
        .map_err(|detail| Problem::new(ErrorCode::InvalidRequest, Some(detail)).into())
}

/// Where cached pages live: the public base URL, so that a zone purge by URL finds them.
pub fn cache_url(cfg: &EdgeConfig, req_url: &worker::Url, path: &str) -> String {
    let base = match (&cfg.public_base_url, req_url.port()) {
        (Some(base), _) => base.clone(),
        (None, Some(port)) => format!("{}://{}:{port}", req_url.scheme(), req_url.host_str().unwrap_or("localhost")),
        (None, None) => format!("{}://{}", req_url.scheme(), req_url.host_str().unwrap_or("localhost")),
    };
    format!("{}{path}", base.trim_end_matches('/'))
}

pub async fn card(req: &Request, env: &Env, ctx: &Context, drop_id: Uuid) -> EdgeResult {
    serve(req, env, ctx, pages::card(drop_id), Kind::Card).await
}

pub async fn list(req: &Request, env: &Env, ctx: &Context) -> EdgeResult {
    let path = list_path(req, &*EdgeConfig::get(env)?)?;
    serve(req, env, ctx, path, Kind::List).await
}

async fn serve(req: &Request, env: &Env, ctx: &Context, path: String, kind: Kind) -> EdgeResult {
    let cfg = EdgeConfig::get(env)?;
    let policy = cfg.pages;
    let key = cache_url(&cfg, &req.url()?, &path);
    let client = header(req, "cf-connecting-ip");
    let cached = read(&key).await;
    let now = now_ms();
    let if_none_match = header(req, "if-none-match");
    let inm = if_none_match.as_deref();
    if let Some(entry) = &cached {
        let age = now - entry.stored_at_ms;
        if age < policy.fresh_ms {
            return respond(entry, "HIT", &policy, inm);
        }
        if age < policy.fresh_ms + policy.grace_ms {
            if claim(&key, now) {
                let (env, key, client) = (env.clone(), key.clone(), client.clone());
                ctx.wait_until(async move {
                    if let Err(e) = fetch_claimed(&env, &key, &path, &kind, client.as_deref()).await {
                        worker::console_warn!("background refresh of {key} failed: {e}");
                    }
                });
            }
            return respond(entry, "STALE", &policy, inm);
        }
    }
    if let Some((status, body)) = remembered(&key, now) {
        return answer(status, &body);
    }
    let fetched = if claim(&key, now) {
        fetch_claimed(env, &key, &path, &kind, client.as_deref()).await
    } else {
        // Someone in this isolate is fetching it: wait for the page to land.
        loop {
            worker::Delay::from(std::time::Duration::from_millis(20)).await;
            let t = now_ms();
            if let Some(entry) = read(&key).await.filter(|e| t - e.stored_at_ms < policy.fresh_ms) {
                return respond(&entry, "MISS", &policy, inm);
            }
            if let Some((status, body)) = remembered(&key, t) {
                return answer(status, &body);
            }
            if t - now > WAIT_FOR_PAGE_MS || !running(&key) {
                break Err(worker::Error::RustError("the fetch this request waited for failed".into()));
            }
        }
    };
    match fetched {
        Ok(Fetched::Page(entry)) => respond(&entry, "MISS", &policy, inm),
        Ok(Fetched::Answer(status, body)) => answer(status, &body),
        Err(why) => match cached {
            Some(entry) if now - entry.stored_at_ms < policy.fresh_ms + policy.grace_ms + policy.stale_if_error_ms => {
                worker::console_warn!("serving a stale page, the origin failed: {why}");
                respond(&entry, "STALE", &policy, inm)
            }
            _ => Err(drops_shared::problem::Problem::new(
                drops_shared::problem::ErrorCode::Overloaded,
                Some("the origin is unreachable; retry shortly".into()),
            )
            .into()),
        },
    }
}

fn respond(entry: &Entry, x_cache: &str, policy: &Policy, if_none_match: Option<&str>) -> EdgeResult {
    let headers = Headers::new();
    headers.set("etag", &entry.etag)?;
    headers.set(
        "cache-control",
        &format!("public, max-age={}, stale-while-revalidate={}", policy.fresh_ms / 1000, policy.grace_ms / 1000),
    )?;
    headers.set("x-cache", x_cache)?;
    let matches = if_none_match.is_some_and(|v| v.split(',').any(|t| t.trim() == entry.etag || t.trim() == "*"));
    if matches {
        return Ok(Response::empty()?.with_status(304).with_headers(headers));
    }
    headers.set("content-type", "application/json")?;
    Ok(Response::from_bytes(entry.body.to_vec())?.with_headers(headers))
}

async fn read(key: &str) -> Option<Entry> {
    let mut resp = Cache::default().get(key, true).await.ok().flatten()?;
    let stored_at_ms = resp.headers().get(STORED_AT).ok().flatten()?.parse().ok()?;
    let etag = resp.headers().get("etag").ok().flatten()?;
    let body = resp.bytes().await.ok()?;
    Some(Entry { body: std::rc::Rc::new(body), etag, stored_at_ms })
}

/// Fetches a page from the origin on behalf of `client` (the request that found it
/// missing or stale: a flood of misses counts against whoever sends it).
async fn fetch_and_store(
    env: &Env,
    key: &str,
    path: &str,
    kind: &Kind,
    client: Option<&str>,
) -> worker::Result<Fetched> {
    let cfg = EdgeConfig::get(env).map_err(|_| worker::Error::RustError("edge settings missing".into()))?;
    let headers = worker::Headers::new();
    crate::origin::vouch(&cfg, &headers, client)?;
    let mut init = worker::RequestInit::new();
    init.with_headers(headers);
    let request = Request::new_with_init(&format!("{}{path}", cfg.origin_url), &init)?;
    let mut resp = Fetch::Request(request).send().await?;
    let status = resp.status_code();
    let body = resp.bytes().await?;
    if status != 200 {
        if status >= 500 {
            return Err(worker::Error::RustError(format!("origin answered {status}")));
        }
        return Ok(Fetched::Answer(status, std::rc::Rc::new(body)));
    }
    let body = match kind {
        Kind::Card => {
            let mut card: DropCard = serde_json::from_slice(&body)?;
            patch_stock(env, &mut card).await;
            serde_json::to_vec(&card)?
        }
        Kind::List => {
            let mut page: Page<DropCard> = serde_json::from_slice(&body)?;
            join_all(page.items.iter_mut().map(|card| patch_stock(env, card))).await;
            serde_json::to_vec(&page)?
        }
    };
    let etag = format!("\"{}\"", &hex::encode(Sha256::digest(&body))[..32]);
    let stored_at_ms = now_ms();
    let headers = Headers::new();
    headers.set("content-type", "application/json")?;
    headers.set("etag", &etag)?;
    headers.set(STORED_AT, &stored_at_ms.to_string())?;
    // Kept for the longest any request may still use it (stale-if-error included).
    let policy = cfg.pages;
    let retain = (policy.fresh_ms + policy.grace_ms + policy.stale_if_error_ms) / 1000;
    headers.set("cache-control", &format!("public, max-age={retain}"))?;
    Cache::default().put(key, Response::from_bytes(body.clone())?.with_headers(headers)).await?;
    Ok(Fetched::Page(Entry { body: std::rc::Rc::new(body), etag, stored_at_ms }))
}

/// The card's stock and status, from the drop's inventory object now.
async fn patch_stock(env: &Env, card: &mut DropCard) {
    let stock = async {
        let mut resp = inventory_object::call(env, card.id, &Command::Stock).await?;
        if resp.status_code() != 200 {
            return Err(worker::Error::RustError(format!("inventory answered {}", resp.status_code())));
        }
        resp.json::<StockResponse>().await
    };
    match stock.await {
        Ok(s) => {
            card.stock.remaining = s.remaining;
            card.status = s.status;
        }
        Err(e) => worker::console_warn!("card {} keeps the origin's stock figure: {e}", card.id),
    }
}

/// Evicts the cached pages of these public paths.
pub async fn purge(env: &Env, req_url: &worker::Url, paths: &[String]) -> worker::Result<usize> {
    let cfg = EdgeConfig::get(env).map_err(|_| worker::Error::RustError("edge settings missing".into()))?;
    let cache = Cache::default();
    let mut evicted = 0;
    for path in paths {
        let outcome = cache.delete(cache_url(&cfg, req_url, path), true).await?;
        evicted += usize::from(matches!(outcome, worker::CacheDeletionOutcome::Success));
    }
    Ok(evicted)
}
