//! Rate limits and load shedding: the settings, and the defaults each environment
//! starts from.

use super::{EnvSettings, Environment};

/// What one client, or one caller of the signed routes, may send: a bucket of
/// `burst` requests refilled at `per_minute` (GCRA).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_minute: u32,
    pub burst: u32,
}

/// The origin's own defences (`overload.rs`): per-client limits and load shedding.
#[derive(Debug, Clone)]
pub struct LimitSettings {
    /// Per client address for requests that come without the edge's word for the
    /// client (apps calling the origin directly): keyed by the TCP peer address.
    pub direct: Rate,
    /// Per client address the edge vouches for (`x-drops-client`, signed; see
    /// `drops_shared::client_address`). Higher than `direct`: the edge limits each
    /// client first, and this is the backstop behind it.
    pub forwarded: Rate,
    /// Per peer address on the payment webhook, which the per-client limits do not
    /// apply to.
    pub signed: Rate,
    /// The signed internal routes (`/internal/…`), all callers together: spent only
    /// by calls whose signature checks out, so neither public traffic nor unsigned
    /// junk from the edge's own addresses can drain it.
    pub internal: Rate,
    /// Requests handled at once; more wait in a short queue.
    pub max_in_flight: u32,
    /// Requests that may wait for a slot; one more is answered 503 `overloaded` at once.
    pub max_queued: u32,
    /// How long a request waits for a slot before it is answered 503 `overloaded`.
    pub queue_wait_ms: u64,
}

/// Limits where the environment decides the default: production's protect the
/// origin; development's are far above anything the end-to-end suite or the
/// benches send from their one address (tests that check a limit set their own).
struct LimitDefaults {
    client_rate_per_minute: u32,
    client_burst: u32,
    edge_client_rate_per_minute: u32,
    edge_client_burst: u32,
    signed_rate_per_minute: u32,
    signed_burst: u32,
    internal_rate_per_minute: u32,
    internal_burst: u32,
    max_in_flight: u32,
    max_queued: u32,
}

const PRODUCTION_LIMITS: LimitDefaults = LimitDefaults {
    client_rate_per_minute: 600,
    client_burst: 60,
    edge_client_rate_per_minute: 3_000,
    edge_client_burst: 300,
    signed_rate_per_minute: 60_000,
    signed_burst: 2_000,
    internal_rate_per_minute: 120_000,
    internal_burst: 5_000,
    max_in_flight: 256,
    max_queued: 256,
};

const DEVELOPMENT_LIMITS: LimitDefaults = LimitDefaults {
    client_rate_per_minute: 1_000_000,
    client_burst: 100_000,
    edge_client_rate_per_minute: 1_000_000,
    edge_client_burst: 100_000,
    signed_rate_per_minute: 1_000_000,
    signed_burst: 100_000,
    internal_rate_per_minute: 1_000_000,
    internal_burst: 100_000,
    max_in_flight: 1_024,
    max_queued: 1_024,
};

impl EnvSettings {
    /// The limits: each unset one from this environment's defaults, each at least 1.
    pub(super) fn limits(&self) -> anyhow::Result<LimitSettings> {
        let d = match self.environment {
            Environment::Production => PRODUCTION_LIMITS,
            Environment::Development => DEVELOPMENT_LIMITS,
        };
        let positive = |value: Option<u32>, default: u32, name: &str| {
            let v = value.unwrap_or(default);
            anyhow::ensure!(v >= 1, "{name}: at least 1");
            Ok(v)
        };
        let rate = |per_minute: Option<u32>, burst: Option<u32>, d: (u32, u32), names: (&str, &str)| {
            anyhow::Ok(Rate { per_minute: positive(per_minute, d.0, names.0)?, burst: positive(burst, d.1, names.1)? })
        };
        Ok(LimitSettings {
            direct: rate(
                self.client_rate_per_minute,
                self.client_burst,
                (d.client_rate_per_minute, d.client_burst),
                ("DROPS_CLIENT_RATE_PER_MINUTE", "DROPS_CLIENT_BURST"),
            )?,
            forwarded: rate(
                self.edge_client_rate_per_minute,
                self.edge_client_burst,
                (d.edge_client_rate_per_minute, d.edge_client_burst),
                ("DROPS_EDGE_CLIENT_RATE_PER_MINUTE", "DROPS_EDGE_CLIENT_BURST"),
            )?,
            signed: rate(
                self.signed_rate_per_minute,
                self.signed_burst,
                (d.signed_rate_per_minute, d.signed_burst),
                ("DROPS_SIGNED_RATE_PER_MINUTE", "DROPS_SIGNED_BURST"),
            )?,
            internal: rate(
                self.internal_rate_per_minute,
                self.internal_burst,
                (d.internal_rate_per_minute, d.internal_burst),
                ("DROPS_INTERNAL_RATE_PER_MINUTE", "DROPS_INTERNAL_BURST"),
            )?,
            max_in_flight: positive(self.max_in_flight, d.max_in_flight, "DROPS_MAX_IN_FLIGHT")?,
            max_queued: self.max_queued.unwrap_or(d.max_queued),
            queue_wait_ms: self.queue_wait_ms,
        })
    }
}
