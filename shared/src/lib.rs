//! The contract the edge (wasm32 Worker) and the origin (native axum service) compile
//! against. Nothing here may depend on a runtime: no tokio, no `worker`, no clock.
//! Code that needs the time takes it as an argument, because `SystemTime::now()`
//! panics on wasm32-unknown-unknown.
//!
//! - [`api`]: public request and response bodies (API.md).
//! - [`backoff`]: the retry delays every queue and retry loop uses.
//! - [`bloom`]: a compact set of user ids (who may replay a purchase).
//! - [`cursor`]: list paging: signed cursors and the `limit` rule.
//! - [`problem`]: the error codes and their `application/problem+json` shape.
//! - [`auth`]: bearer-token (JWT, HS256 only) verification and minting.
//! - [`signing`]: HMAC signatures of edge <-> origin internal calls.
//! - [`events`]: domain events written to the outbox and carried by the event bus.
//! - [`internal`]: the internal endpoints (method, path, request and answer) and their bodies.
//! - [`inventory`]: the stock rules of one drop; the edge's inventory object runs them.
//! - [`json`]: strict JSON decoding that names the offending field.
//! - [`media`]: what an uploaded file is (by its bytes), its content-addressed key, private links.
//! - [`pages`]: the public paths of the pages the edge caches.
//! - [`routes`]: every public route and the methods it takes.

pub mod api;
pub mod auth;
pub mod backoff;
pub mod bloom;
pub mod client_address;
pub mod cursor;
pub mod events;
pub mod internal;
pub mod inventory;
pub mod json;
pub mod media;
pub mod pages;
pub mod problem;
pub mod routes;
pub mod signing;

/// Largest request body any public route accepts.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Header carrying the request id from the edge to the origin and back.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
