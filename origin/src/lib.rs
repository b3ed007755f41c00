//! The drops origin: the relational truth behind the edge. A modular monolith: one
//! module per business area, each owning its tables and its routes, so it could be
//! split into services along its event boundaries.
//!
//! Areas, each depending only on those listed before it:
//! - [`audit`]: the append-only, hash-chained log of every event and privileged
//!   action; every area below writes its privileged actions to it.
//! - [`payments`]: providers (sandbox, Stripe), the payment webhook, payment rows, refunds.
//! - [`orders`]: reservations from the edge, the buyer's orders, the order lifecycle,
//!   edge sync, reconciliation.
//! - [`media`]: the record of the files the edge stores in R2 (who uploaded what),
//!   which products' pictures are held to.
//! - [`catalogue`]: creators, products, drops, each drop's terms at the edge, the
//!   lifecycle scheduler, cache purge.
//! - [`notifications`]: the inbox, live sockets and presence, push.
//! - [`followers`]: follows and the fan-out of "drop is live".
//! - [`analytics`]: each drop's sales figures, kept from the drop and order events
//!   (rebuildable from the outbox); the catalogue says at query time whose a drop is.
//!
//! Where a lower area needs something from a higher one it names a trait and
//! `startup` plugs the higher area's implementation in (the payment webhook
//! settling an order, a creator's follower count).
//!
//! Plumbing every area stands on: [`state`] (the [`state::Core`] every area state
//! holds), [`config`], [`http`] (the one error type, extractors, paging, client
//! addresses, overload, keep-alive, serving, health, the OpenAPI document),
//! [`events`] (outbox, relay, consumer groups), [`edge`] (signed calls to the
//! edge), [`users`], [`tasks`] (background workers, retries), [`metrics`],
//! [`telemetry`], [`dashboard`] (the page people watch a drop's analytics on).
//!
//! Only [`startup`] (routers and background workers) and [`cli`] see every area.

pub mod analytics;
pub mod audit;
pub mod catalogue;
pub mod cli;
pub mod config;
pub mod dashboard;
pub mod edge;
pub mod events;
pub mod followers;
pub mod http;
pub mod media;
pub mod metrics;
pub mod notifications;
pub mod orders;
pub mod payments;
pub mod startup;
pub mod state;
pub mod tasks;
pub mod telemetry;
pub mod users;

pub use startup::{App, Application};
