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
//! Every fetch of one key is coalesced inside the isolate: concurrent misses and
//! concurrent stale hits share one origin request. A card's stock is patched from the
//! drop's inventory object at refresh time, so it is at most a few seconds old.

use std::cell::RefCell;
use std::collections::HashMap;

use drops_shared::api::{DropCard, Page, StockResponse};
use futures_util::future::{join_all, LocalBoxFuture, Shared};
use futures_util::FutureExt;
use sha2::{Digest, Sha256};
use uuid::Uuid;
use worker::{Cache, Context, Env, Fetch, Headers, Method, Request, Response};

use crate::config::EdgeConfig;
use crate::http::{header, now_ms, EdgeResult};
use crate::inventory_object;

const STORED_AT: &str = "x-drops-stored-at";

#[derive(Clone, Copy)]
struct Policy {
    fresh_ms: i64,
    grace_ms: i64,
    stale_if_error_ms: i64,
}

impl Policy {
    fn from_env(env: &Env) -> Self {
        let secs = |name: &str, default: i64| {
            env.var(name).ok().and_then(|v| v.to_string().parse::<i64>().ok()).unwrap_or(default) * 1000
        };
        Self {
            fresh_ms: secs("PAGE_FRESH_SECS", 2),
            grace_ms: secs("PAGE_GRACE_SECS", 30),
            stale_if_error_ms: secs("STALE_IF_ERROR_SECS", 86_400),
        }
    }
}

/// What a page is, for fetching and patching.
#[derive(Clone)]
enum Kind {
    Card,
    List,
}

/// A cached page.
#[derive(Clone)]
struct Entry {
    body: std::rc::Rc<Vec<u8>>,
    etag: String,
    stored_at_ms: i64,
}

/// What a fetch brought back: a page to serve and keep, or an origin answer that
/// is not a page (404, 400) to pass on as it is.
#[derive(Clone)]
enum Fetched {
    Page(Entry),
    Answer(u16, std::rc::Rc<Vec<u8>>),
}

type Refresh = Shared<LocalBoxFuture<'static, Result<Fetched, String>>>;

thread_local! {
    static IN_FLIGHT: RefCell<HashMap<String, Refresh>> = RefCell::new(HashMap::new());
}

/// The canonical public path of a list request, or `None` for a query the origin
/// must judge (unknown parameters are its to refuse).
fn list_path(req: &Request) -> worker::Result<Option<String>> {
    let url = req.url()?;
    let mut status = None;
    let mut limit = None;
    let mut cursor = None;
    for (k, v) in url.query_pairs() {
        match k.as_ref() {
            "status" if status.is_none() => status = Some(v.into_owned()),
            "limit" if limit.is_none() => limit = Some(v.into_owned()),
            "cursor" if cursor.is_none() => cursor = Some(v.into_owned()),
            _ => return Ok(None),
        }
    }
    let mut path = format!("/v1/drops?status={}", status.unwrap_or_else(|| "live".into()));
    if let Some(l) = limit {
        path.push_str(&format!("&limit={}", urlencode(&l)));
    }
    if let Some(c) = cursor {
        path.push_str(&format!("&cursor={}", urlencode(&c)));
    }
    Ok(Some(path))
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Where cached pages live: the public base URL, so that a zone purge by URL finds them.
pub fn cache_url(env: &Env, req_url: &worker::Url, path: &str) -> String {
    let base = env
        .var("PUBLIC_BASE_URL")
        .map(|v| v.to_string())
        .unwrap_or_else(|_| format!("{}://{}", req_url.scheme(), req_url.host_str().unwrap_or("localhost")));
    let base = match req_url.port() {
        Some(port) if env.var("PUBLIC_BASE_URL").is_err() => format!("{base}:{port}"),
        _ => base,
    };
    format!("{}{path}", base.trim_end_matches('/'))
}

pub async fn card(req: &Request, env: &Env, ctx: &Context, drop_id: Uuid) -> EdgeResult {
    serve(req, env, ctx, format!("/v1/drops/{drop_id}"), Kind::Card).await
}

pub async fn list(req: Request, env: &Env, ctx: &Context, request_id: &str) -> EdgeResult {
    match list_path(&req)? {
        Some(path) => serve(&req, env, ctx, path, Kind::List).await,
        None => crate::origin::proxy(req, env, request_id).await,
    }
}

async fn serve(req: &Request, env: &Env, ctx: &Context, path: String, kind: Kind) -> EdgeResult {
    let policy = Policy::from_env(env);
    let key = cache_url(env, &req.url()?, &path);
    let cached = read(&key).await;
    let now = now_ms();
    let if_none_match = header(req, "if-none-match");
    if let Some(entry) = &cached {
        let age = now - entry.stored_at_ms;
        if age < policy.fresh_ms {
            return respond(entry, "HIT", &policy, if_none_match.as_deref());
        }
        if age < policy.fresh_ms + policy.grace_ms {
            let refresh = refresh(env, key.clone(), path.clone(), kind);
            ctx.wait_until(async move {
                let _ = refresh.await;
            });
            return respond(entry, "STALE", &policy, if_none_match.as_deref());
        }
    }
    match refresh(env, key, path, kind).await {
        Ok(Fetched::Page(entry)) => respond(&entry, "MISS", &policy, if_none_match.as_deref()),
        Ok(Fetched::Answer(status, body)) => Ok(crate::http::json_bytes(status, body.to_vec())?),
        Err(why) => match cached {
            Some(entry) if now - entry.stored_at_ms < policy.fresh_ms + policy.grace_ms + policy.stale_if_error_ms => {
                worker::console_warn!("serving a stale page, the origin failed: {why}");
                respond(&entry, "STALE", &policy, if_none_match.as_deref())
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

/// The one fetch of `key` in flight in this isolate, started if there is none.
fn refresh(env: &Env, key: String, path: String, kind: Kind) -> Refresh {
    IN_FLIGHT.with(|m| {
        if let Some(running) = m.borrow().get(&key) {
            return running.clone();
        }
        let env = env.clone();
        let owner = key.clone();
        let fut: LocalBoxFuture<'static, Result<Fetched, String>> = Box::pin(async move {
            let result = fetch_and_store(&env, &owner, &path, kind).await.map_err(|e| e.to_string());
            IN_FLIGHT.with(|m| m.borrow_mut().remove(&owner));
            result
        });
        let shared = fut.shared();
        m.borrow_mut().insert(key, shared.clone());
        shared
    })
}

async fn fetch_and_store(env: &Env, key: &str, path: &str, kind: Kind) -> worker::Result<Fetched> {
    let cfg = EdgeConfig::from_env(env).map_err(|_| worker::Error::RustError("edge settings missing".into()))?;
    let mut resp = Fetch::Url(worker::Url::parse(&format!("{}{path}", cfg.origin_url))?).send().await?;
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
    let policy = Policy::from_env(env);
    let retain = (policy.fresh_ms + policy.grace_ms + policy.stale_if_error_ms) / 1000;
    headers.set("cache-control", &format!("public, max-age={retain}"))?;
    Cache::default().put(key, Response::from_bytes(body.clone())?.with_headers(headers)).await?;
    Ok(Fetched::Page(Entry { body: std::rc::Rc::new(body), etag, stored_at_ms }))
}

/// The card's stock and status, from the drop's inventory object now.
async fn patch_stock(env: &Env, card: &mut DropCard) {
    let stock = async {
        let mut resp = inventory_object::call::<()>(env, card.id, Method::Get, "stock", None).await?;
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
    let cache = Cache::default();
    let mut evicted = 0;
    for path in paths {
        let outcome = cache.delete(cache_url(env, req_url, path), true).await?;
        evicted += usize::from(matches!(outcome, worker::CacheDeletionOutcome::Success));
    }
    Ok(evicted)
}
