//! Small HTTP helpers shared by the edge's modules.

use drops_shared::problem::{ErrorCode, Problem, PROBLEM_CONTENT_TYPE};
use drops_shared::{MAX_BODY_BYTES, REQUEST_ID_HEADER};
use futures_util::StreamExt;
use worker::{Headers, Request, Response};

/// What a handler can fail with: a problem the client should see, or a fault of ours.
pub enum EdgeError {
    Problem(Problem),
    Worker(worker::Error),
}

impl From<Problem> for EdgeError {
    fn from(p: Problem) -> Self {
        Self::Problem(p)
    }
}

impl From<ErrorCode> for EdgeError {
    fn from(c: ErrorCode) -> Self {
        Self::Problem(c.into())
    }
}

impl From<worker::Error> for EdgeError {
    fn from(e: worker::Error) -> Self {
        Self::Worker(e)
    }
}

pub type EdgeResult<T = Response> = Result<T, EdgeError>;

pub fn now_ms() -> i64 {
    worker::Date::now().as_millis() as i64
}

pub fn now_utc() -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_millis(now_ms()).unwrap_or_default()
}

/// A time-ordered id (UUID v7), from the Worker's clock.
pub fn new_id() -> uuid::Uuid {
    let ms = now_ms().max(0) as u64;
    let ts = uuid::Timestamp::from_unix(uuid::NoContext, ms / 1000, ((ms % 1000) * 1_000_000) as u32);
    uuid::Uuid::new_v7(ts)
}

/// The caller's `x-request-id` when it is sane, else a fresh one.
pub fn request_id(req: &Request) -> String {
    match req.headers().get(REQUEST_ID_HEADER).ok().flatten() {
        Some(id) if !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()) => id,
        _ => new_id().to_string(),
    }
}

pub async fn with_request_id(mut resp: Response, request_id: &str) -> worker::Result<Response> {
    // A WebSocket upgrade passes through untouched: rebuilding it would drop the socket.
    if resp.status_code() == 101 || resp.headers_mut().set(REQUEST_ID_HEADER, request_id).is_ok() {
        return Ok(resp);
    }
    // Responses that came from fetch() have immutable headers: copy them over.
    let headers = Headers::new();
    for (k, v) in resp.headers().entries() {
        headers.append(&k, &v)?;
    }
    headers.set(REQUEST_ID_HEADER, request_id)?;
    let status = resp.status_code();
    let body = resp.bytes().await?;
    Ok(Response::from_bytes(body)?.with_status(status).with_headers(headers))
}

pub fn problem_response(problem: &Problem) -> worker::Result<Response> {
    let headers = Headers::new();
    headers.set("content-type", PROBLEM_CONTENT_TYPE)?;
    match problem.status {
        // The buyer limiter counts in 10-second windows.
        429 => headers.set("retry-after", "10")?,
        503 => headers.set("retry-after", "1")?,
        _ => {}
    }
    Ok(Response::from_bytes(problem.to_json().into_bytes())?.with_status(problem.status).with_headers(headers))
}

pub fn json_bytes(status: u16, body: Vec<u8>) -> worker::Result<Response> {
    let headers = Headers::new();
    headers.set("content-type", "application/json")?;
    Ok(Response::from_bytes(body)?.with_status(status).with_headers(headers))
}

pub fn json<T: serde::Serialize>(status: u16, value: &T) -> EdgeResult {
    let body = serde_json::to_vec(value).map_err(|e| worker::Error::RustError(e.to_string()))?;
    Ok(json_bytes(status, body)?)
}

/// Reads a public route's body (at most 64 KiB, API.md): see [`read_capped`].
pub async fn read_body(req: &mut Request) -> EdgeResult<Vec<u8>> {
    read_capped(req, MAX_BODY_BYTES).await
}

/// Reads a body of at most `cap` bytes, else 413 `payload_too_large`: before any of
/// it is read when the client declared a longer one (`Content-Length`), and
/// otherwise (chunked) as soon as what arrived passes the cap, holding no more
/// than the cap and one chunk. The rest is never read.
pub async fn read_capped(req: &mut Request, cap: usize) -> EdgeResult<Vec<u8>> {
    let too_large =
        || Problem::new(ErrorCode::PayloadTooLarge, Some(format!("request bodies are limited to {cap} bytes")));
    let declared = req.headers().get("content-length")?.and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > cap as u64) {
        return Err(too_large().into());
    }
    let mut body = Vec::with_capacity(declared.unwrap_or(0) as usize);
    // A request without a body has no stream.
    let Ok(mut stream) = req.stream() else { return Ok(body) };
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        if body.len() + chunk.len() > cap {
            // Dropping the stream cancels it: nothing more is read.
            return Err(too_large().into());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The development-only header of `/healthz` naming [`wasm_memory_bytes`].
pub const WASM_MEMORY_HEADER: &str = "x-dev-wasm-memory-bytes";
/// The development-only header of `/healthz` naming [`instance_started_ms`].
pub const INSTANCE_STARTED_HEADER: &str = "x-dev-instance-started-ms";
/// The development-only header of `/healthz` carrying [`crate::census::header_value`].
pub const CENSUS_HEADER: &str = "x-dev-census";

thread_local! {
    static STARTED_MS: std::cell::OnceCell<i64> = const { std::cell::OnceCell::new() };
}

/// When this wasm instance first asked (unix ms): a restarted isolate answers
/// another moment, so a client can tell a restart from a slow answer.
pub fn instance_started_ms() -> i64 {
    STARTED_MS.with(|s| *s.get_or_init(now_ms))
}

/// The size of this instance's wasm linear memory, in bytes (0 off wasm).
pub fn wasm_memory_bytes() -> usize {
    #[cfg(target_arch = "wasm32")]
    {
        core::arch::wasm32::memory_size(0) * 65_536
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        0
    }
}

pub fn header(req: &Request, name: &str) -> Option<String> {
    req.headers().get(name).ok().flatten()
}
