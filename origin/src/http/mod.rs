//! The HTTP plumbing every area's routes stand on; no business here.
//!
//! - [`error`]: the one error type, rendered as problem+json, never leaking internals.
//! - [`extract`]: auth, strict JSON and query, signed internal calls, request ids.
//! - [`paging`]: signed cursors and page limits for every list.
//! - [`client_address`]: who the client is, behind trusted proxies.
//! - [`overload`]: per-client limits, slow bodies, load shedding.
//! - [`keepalive`]: closing the connections that must close.
//! - [`server`]: serving, with slow clients bounded.
//! - [`health`]: `/healthz` and `/readyz`.
//! - [`openapi`]: the OpenAPI document, built from the handlers' own types.

pub mod client_address;
pub mod error;
pub mod extract;
pub mod health;
pub mod keepalive;
pub mod openapi;
pub mod overload;
pub mod paging;
pub mod server;
