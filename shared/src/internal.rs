//! The internal routes between the edge and the origin, as one typed table that
//! both sides use to build and to match paths, so a mismatch is a compile error
//! rather than a 404 in production. Every call on them is signed (see [`crate::signing`]).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::api::{Money, PaymentHandle};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldAction {
    Sell,
    Release,
    /// Take the units of a released hold again and sell them (a payment that
    /// arrived after the hold ran out), if stock allows.
    Reinstate,
}

impl HoldAction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sell => "sell",
            Self::Release => "release",
            Self::Reinstate => "reinstate",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InternalRoute {
    /// origin: the edge hands over a reservation (idempotent on its id).
    Reservations,
    /// edge: the origin creates or updates a drop's inventory.
    UpsertInventory { drop_id: Uuid },
    /// edge: full inventory snapshot, for reconciliation.
    InventorySnapshot { drop_id: Uuid },
    /// edge: mark a hold sold or return its units (idempotent).
    Hold { drop_id: Uuid, reservation_id: Uuid, action: HoldAction },
    /// edge: evict cached pages.
    Purge,
    /// origin: the edge let a hold run out unpaid; its units are back in stock.
    HoldExpired { order_id: Uuid },
}

impl InternalRoute {
    pub fn method(&self) -> &'static str {
        match self {
            Self::InventorySnapshot { .. } => "GET",
            _ => "POST",
        }
    }

    pub fn path(&self) -> String {
        match self {
            Self::Reservations => "/internal/v1/reservations".into(),
            Self::UpsertInventory { drop_id } | Self::InventorySnapshot { drop_id } => {
                format!("/internal/v1/drops/{drop_id}/inventory")
            }
            Self::Hold { drop_id, reservation_id, action } => {
                format!("/internal/v1/drops/{drop_id}/holds/{reservation_id}/{}", action.as_str())
            }
            Self::Purge => "/internal/v1/purge".into(),
            Self::HoldExpired { order_id } => format!("/internal/v1/orders/{order_id}/expired"),
        }
    }

    /// Matches a request line; `None` for anything that is not an internal route.
    pub fn parse(method: &str, path: &str) -> Option<Self> {
        let rest = path.strip_prefix("/internal/v1/")?;
        let segments: Vec<&str> = rest.split('/').collect();
        let id = |s: &str| Uuid::parse_str(s).ok();
        let route = match (method, segments.as_slice()) {
            ("POST", ["reservations"]) => Self::Reservations,
            ("POST", ["purge"]) => Self::Purge,
            ("POST", ["orders", o, "expired"]) => Self::HoldExpired { order_id: id(o)? },
            ("POST", ["drops", d, "inventory"]) => Self::UpsertInventory { drop_id: id(d)? },
            ("GET", ["drops", d, "inventory"]) => Self::InventorySnapshot { drop_id: id(d)? },
            ("POST", ["drops", d, "holds", r, action]) => Self::Hold {
                drop_id: id(d)?,
                reservation_id: id(r)?,
                action: match *action {
                    "sell" => HoldAction::Sell,
                    "release" => HoldAction::Release,
                    "reinstate" => HoldAction::Reinstate,
                    _ => return None,
                },
            },
            _ => return None,
        };
        Some(route)
    }
}

/// Body of `POST /internal/v1/reservations`: a hold the inventory object granted.
/// The reservation id is the order id the buyer was given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReservationHandoff {
    pub reservation_id: Uuid,
    pub drop_id: Uuid,
    pub user_id: Uuid,
    pub idempotency_key: String,
    pub quantity: u32,
    pub amount: Money,
    pub reserved_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// The origin's answer: it has the order, and this is how the buyer pays.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservationAck {
    pub order_id: Uuid,
    pub payment: Option<PaymentHandle>,
}

/// Body of `POST /internal/v1/drops/{id}/inventory`: the terms a drop sells on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InventoryTerms {
    pub total: u32,
    pub max_per_user: u32,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub price: Money,
    /// How long a hold lasts before its units return to stock.
    pub hold_seconds: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HoldState {
    Held,
    Sold,
    Released,
}

/// Answer of the sell/release/reinstate routes: the hold's state after the call.
/// A sell of a released hold (or a release of a sold one) changes nothing and
/// answers the state the hold is in, so the caller can decide what follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldOutcome {
    pub reservation_id: Uuid,
    pub state: HoldState,
    /// True when this call moved the hold.
    pub changed: bool,
    pub remaining: u32,
}

/// Body of `POST /internal/v1/purge`: public paths whose cached pages to evict
/// (`/v1/drops/{id}`, `/v1/drops?status=live`, ...). Evicting twice is harmless.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurgeRequest {
    pub paths: Vec<String>,
}

/// Body of `POST /internal/v1/orders/{id}/expired`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HoldExpiry {
    pub drop_id: Uuid,
    pub expired_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldSnapshot {
    pub reservation_id: Uuid,
    pub user_id: Uuid,
    pub quantity: u32,
    pub state: HoldState,
    pub expires_at: DateTime<Utc>,
    /// The buyer's key, while the edge still keeps its idempotency record (24 h).
    pub idempotency_key: Option<String>,
}

/// `GET /internal/v1/drops/{id}/inventory`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventorySnapshot {
    pub drop_id: Uuid,
    pub terms: InventoryTerms,
    pub remaining: u32,
    pub held: u32,
    pub sold: u32,
    pub holds: Vec<HoldSnapshot>,
    /// Reservations not yet acknowledged by the origin.
    pub unforwarded: Vec<Uuid>,
    /// Buy attempts this object has decided since it was last loaded (a measure of
    /// how much traffic reaches it; the Worker answers most sold-out rushes itself).
    pub decisions: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_parses_back_from_its_own_path() {
        let d = Uuid::from_u128(1);
        let r = Uuid::from_u128(2);
        for route in [
            InternalRoute::Reservations,
            InternalRoute::UpsertInventory { drop_id: d },
            InternalRoute::InventorySnapshot { drop_id: d },
            InternalRoute::Hold { drop_id: d, reservation_id: r, action: HoldAction::Sell },
            InternalRoute::Hold { drop_id: d, reservation_id: r, action: HoldAction::Release },
            InternalRoute::Hold { drop_id: d, reservation_id: r, action: HoldAction::Reinstate },
            InternalRoute::Purge,
            InternalRoute::HoldExpired { order_id: r },
        ] {
            assert_eq!(InternalRoute::parse(route.method(), &route.path()), Some(route));
        }
    }

    #[test]
    fn rejects_other_paths() {
        assert_eq!(InternalRoute::parse("GET", "/internal/v1/reservations"), None);
        assert_eq!(InternalRoute::parse("POST", "/internal/v1/drops/not-a-uuid/inventory"), None);
        assert_eq!(InternalRoute::parse("POST", "/v1/drops"), None);
        let d = Uuid::from_u128(1);
        assert_eq!(InternalRoute::parse("POST", &format!("/internal/v1/drops/{d}/holds/{d}/steal")), None);
    }
}
