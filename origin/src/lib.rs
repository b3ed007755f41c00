//! The drops origin: the relational truth behind the edge.
//!
//! Layout, one module per business area, each with its own router:
//! - [`drops`]: products and drops (catalogue writes, drop cards) and pushing each
//!   drop's inventory terms to the edge.
//! - [`creators`]: creator profiles.
//! - [`followers`]: follows: the ledger in Postgres, the graph in Redis.
//! - [`orders`]: taking reservations from the edge (`/internal/v1/reservations`) and
//!   the buyer's order reads.
//! - [`payments`]: the provider trait, the sandbox and Stripe providers, the webhook.
//! - [`events`]: the transactional outbox, its relay to Redis Streams, consumer groups.
//! - [`notifications`]: stored notifications; [`live`]: sockets and presence;
//!   [`push`]: subscriptions and the push queue; [`fanout`]: "drop is live" to followers.
//! - [`reconcile`]: compares the edge's inventories with Postgres and repairs drift.
//!
//! Plumbing: [`openapi`] (the API document), [`metrics`], [`startup`] (building and running the app), [`config`], [`telemetry`],
//! [`error`] (the one error type, rendered as problem+json), [`extract`] (auth, strict
//! JSON and signed-body extractors), [`edge`] (signed calls to the edge), [`cli`].

pub mod cli;
pub mod config;
pub mod creators;
pub mod drops;
pub mod edge;
pub mod error;
pub mod events;
pub mod extract;
pub mod fanout;
pub mod followers;
pub mod health;
pub mod live;
pub mod metrics;
pub mod notifications;
pub mod openapi;
pub mod orders;
pub mod pagination;
pub mod payments;
pub mod push;
pub mod reconcile;
pub mod startup;
pub mod telemetry;
pub mod users;

pub use startup::{AppState, Application};
