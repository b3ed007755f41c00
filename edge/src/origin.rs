//! Talking to the origin: signed internal calls, and the proxy for the public
//! routes the origin owns (catalogue writes, orders, and the rest).

use drops_shared::client_address::{self, CLIENT_HEADER, CLIENT_SIGNATURE_HEADER};
use drops_shared::internal::{Endpoint, Method as RouteMethod};
use drops_shared::problem::{ErrorCode, Problem};
use drops_shared::signing::{sign_internal, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use drops_shared::REQUEST_ID_HEADER;
use worker::wasm_bindgen::JsValue;
use worker::{Env, Fetch, Headers, Method, Request, RequestInit, Response};

use crate::config::EdgeConfig;
use crate::http::{now_ms, read_body, EdgeResult};

/// Headers a client may send that the origin needs.
const FORWARDED_REQUEST_HEADERS: &[&str] =
    &["authorization", "content-type", "idempotency-key", "if-none-match", "accept"];

/// Sends a signed call on internal endpoint `E` to the origin, with `body` (the
/// bytes of an `E::Request`, as built or as stored in the outbound queue).
pub async fn signed<E: Endpoint>(cfg: &EdgeConfig, route: &E, body: &[u8]) -> worker::Result<Response> {
    let path = route.path();
    let timestamp = now_ms() / 1000;
    let signature = sign_internal(cfg.edge_to_origin_secret.as_bytes(), E::METHOD.as_str(), &path, timestamp, body);
    let headers = Headers::new();
    headers.set("content-type", "application/json")?;
    headers.set(TIMESTAMP_HEADER, &timestamp.to_string())?;
    headers.set(SIGNATURE_HEADER, &signature)?;
    let mut init = RequestInit::new();
    let method = match E::METHOD {
        RouteMethod::Get => Method::Get,
        RouteMethod::Post => Method::Post,
    };
    init.with_method(method).with_headers(headers);
    if !body.is_empty() {
        init.with_body(Some(JsValue::from(js_sys_bytes(body))));
    }
    let req = Request::new_with_init(&format!("{}{path}", cfg.origin_url), &init)?;
    Fetch::Request(req).send().await
}

/// Says, signed, which client a request to the origin is for (the address
/// Cloudflare gave, `CF-Connecting-IP`), so that the origin's per-client limits
/// count the client and not the edge. Headers of that name from the client are
/// replaced; without an address, none are sent.
pub fn vouch(cfg: &EdgeConfig, headers: &Headers, client: Option<&str>) -> worker::Result<()> {
    headers.delete(CLIENT_HEADER)?;
    headers.delete(CLIENT_SIGNATURE_HEADER)?;
    if let Some(client) = client {
        for (name, value) in client_address::headers(cfg.edge_to_origin_secret.as_bytes(), client, now_ms() / 1000) {
            headers.set(name, &value)?;
        }
    }
    Ok(())
}

fn js_sys_bytes(body: &[u8]) -> worker::js_sys::Uint8Array {
    worker::js_sys::Uint8Array::from(body)
}

/// Passes a public request through to the origin and its answer back.
pub async fn proxy(mut req: Request, env: &Env, request_id: &str) -> EdgeResult {
    let cfg = EdgeConfig::get(env)?;
    let url = req.url()?;
    let target = match url.query() {
        Some(q) => format!("{}{}?{q}", cfg.origin_url, url.path()),
        None => format!("{}{}", cfg.origin_url, url.path()),
    };
    let headers = Headers::new();
    let client = req.headers().get("cf-connecting-ip")?;
    if req.headers().get("upgrade")?.is_some_and(|u| u.eq_ignore_ascii_case("websocket")) {
        // A WebSocket (the notification stream): hand the upgrade through as it is;
        // the origin authenticates it, and the runtime joins the two sockets.
        for (name, value) in req.headers().entries() {
            if name != "host" {
                headers.set(&name, &value)?;
            }
        }
        headers.set(REQUEST_ID_HEADER, request_id)?;
        vouch(&cfg, &headers, client.as_deref())?;
        let mut init = RequestInit::new();
        init.with_method(Method::Get).with_headers(headers);
        return Ok(Fetch::Request(Request::new_with_init(&target, &init)?).send().await?);
    }
    for name in FORWARDED_REQUEST_HEADERS {
        if let Some(v) = req.headers().get(name)? {
            headers.set(name, &v)?;
        }
    }
    headers.set(REQUEST_ID_HEADER, request_id)?;
    vouch(&cfg, &headers, client.as_deref())?;
    let method = req.method();
    let mut init = RequestInit::new();
    init.with_method(method.clone()).with_headers(headers);
    if !matches!(method, Method::Get | Method::Head) {
        let body = read_body(&mut req).await?;
        init.with_body(Some(JsValue::from(js_sys_bytes(&body))));
    }
    // A read is sent a second time if the first attempt lost its connection (a
    // pooled connection the origin had just closed): it changes nothing. A write
    // is not: the origin may have acted on it.
    let attempts = if matches!(method, Method::Get | Method::Head) { 2 } else { 1 };
    let mut last_error = None;
    for _ in 0..attempts {
        match Fetch::Request(Request::new_with_init(&target, &init)?).send().await {
            Ok(resp) => return Ok(resp),
            Err(err) => last_error = Some(err),
        }
    }
    let err = last_error.map(|e| e.to_string()).unwrap_or_default();
    worker::console_warn!("origin unreachable for {request_id}: {err}");
    Err(Problem::new(ErrorCode::Overloaded, Some("the origin is unreachable; retry shortly".into())).into())
}
