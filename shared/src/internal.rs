//! The internal routes between the edge and the origin, each defined once as an
//! [`Endpoint`]: its method, its path template, the body it takes and the body it
//! answers. The origin routes on the template, both sides' clients build paths and
//! bodies from the same definition, and the edge matches requests against it, so a
//! renamed route or a changed body is a compile error rather than a 404 in
//! production. Every call on them is signed (see [`crate::signing`]).
//!
//! | endpoint | served by | method, path |
//! | --- | --- | --- |
//! | [`TakeReservations`] | origin | `POST /internal/v1/reservations` |
//! | [`ReportExpiry`] | origin | `POST /internal/v1/orders/{order_id}/expired` |
//! | [`PutTerms`] | edge | `POST /internal/v1/drops/{drop_id}/inventory` |
//! | [`GetInventory`] | edge | `GET /internal/v1/drops/{drop_id}/inventory` |
//! | [`GetInventoryHolds`] | edge | `POST /internal/v1/drops/{drop_id}/inventory/holds` |
//! | [`MoveHold`] | edge | `POST /internal/v1/drops/{drop_id}/holds/{reservation_id}/{action}` |
//! | [`Purge`] | edge | `POST /internal/v1/purge` |
//! | [`ReportRefusals`] | origin | `POST /internal/v1/refusals` |
//! | [`RecordMedia`] | origin | `POST /internal/v1/media` |

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::api::{Money, OrderStatus};
use crate::problem::Problem;

#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::EnumString)]
#[strum(serialize_all = "UPPERCASE")]
pub enum Method {
    Get,
    Post,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// A body an internal route carries: JSON, or nothing at all (a `GET`, or a `POST`
/// whose path says everything).
pub trait Body: Sized + Send + 'static {
    fn to_bytes(&self) -> Vec<u8>;
    /// Strict: unknown fields and wrong types are a 400 naming the field.
    fn from_bytes(bytes: &[u8]) -> Result<Self, Problem>;
}

/// No body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Empty;

impl Body for Empty {
    fn to_bytes(&self) -> Vec<u8> {
        Vec::new()
    }

    fn from_bytes(_: &[u8]) -> Result<Self, Problem> {
        Ok(Empty)
    }
}

macro_rules! json_bodies {
    ($($t:ty),* $(,)?) => {$(
        impl Body for $t {
            fn to_bytes(&self) -> Vec<u8> {
                serde_json::to_vec(self).unwrap_or_default()
            }

            fn from_bytes(bytes: &[u8]) -> Result<Self, Problem> {
                crate::json::from_slice(bytes)
            }
        }
    )*};
}

json_bodies!(
    HoldsAfter,
    HoldsPage,
    ReservationBatch,
    ReservationsTaken,
    HoldExpiry,
    ExpiryAck,
    InventoryTerms,
    InventorySnapshot,
    HoldOutcome,
    PurgeRequest,
    PurgeAck,
    EdgeRefusals,
    RefusalsNoted,
    MediaUpload,
    MediaRecorded
);

/// Body of [`ReportRefusals`]: refusals by public route template and reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeRefusals {
    pub counts: Vec<RefusalCount>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefusalCount {
    /// A template of `crate::routes::PUBLIC`.
    pub route: String,
    /// `rate_limited` (429) or `overloaded` (503).
    pub reason: String,
    pub count: u64,
}

/// Body of [`RecordMedia`]: one upload, stored before it is recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaUpload {
    pub key: crate::media::MediaKey,
    pub visibility: crate::media::Visibility,
    pub content_type: String,
    pub size: u64,
    pub uploaded_by: Uuid,
    /// The uploader's role, as their token said (the audit log's actor).
    pub uploaded_by_role: crate::auth::Role,
    pub uploaded_at: DateTime<Utc>,
}

/// Answer of [`RecordMedia`]: whether these bytes were new (at this visibility).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaRecorded {
    pub first_upload: bool,
}

/// Answer of [`ReportRefusals`]: how many refusals the origin counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusalsNoted {
    pub counted: u64,
}

/// One internal route. `Self` is the route with its path parameters.
pub trait Endpoint: Sized + Send + Sync + 'static {
    const METHOD: Method;
    /// The path, `{name}` for each parameter (axum's syntax: the origin routes on it).
    const PATH: &'static str;
    type Request: Body;
    type Response: Body + Serialize;

    /// The path parameters by name, as `PATH` names them.
    fn params(&self) -> Vec<(&'static str, String)>;
    /// The route named by a matched path, or `None` when a parameter does not parse.
    fn from_params(params: &Params<'_>) -> Option<Self>;

    fn path(&self) -> String {
        let params = self.params();
        Self::PATH
            .split('/')
            .map(|segment| match segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(name) => params.iter().find(|(n, _)| *n == name).map(|(_, v)| v.clone()).unwrap_or_default(),
                None => segment.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("/")
    }

    /// This endpoint, if `method` and `path` are a request for it.
    fn matches(method: &str, path: &str) -> Option<Self> {
        if method != Self::METHOD.as_str() {
            return None;
        }
        Self::from_params(&Params::of(Self::PATH, path)?)
    }
}

/// The parameters of a path that matched a template.
pub struct Params<'a>(Vec<(&'a str, &'a str)>);

impl<'a> Params<'a> {
    /// Matches `path` against `template` segment by segment.
    pub fn of(template: &'a str, path: &'a str) -> Option<Self> {
        let (template, path): (Vec<&str>, Vec<&str>) = (template.split('/').collect(), path.split('/').collect());
        if template.len() != path.len() {
            return None;
        }
        let mut params = Vec::new();
        for (t, p) in template.into_iter().zip(path) {
            match t.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(name) => params.push((name, p)),
                None if t == p => {}
                None => return None,
            }
        }
        Some(Params(params))
    }

    pub fn get(&self, name: &str) -> Option<&'a str> {
        self.0.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }

    pub fn id(&self, name: &str) -> Option<Uuid> {
        Uuid::parse_str(self.get(name)?).ok()
    }
}

/// Defines each endpoint: a struct of its path parameters (each `Display` and
/// `FromStr`, named as in the path) and its [`Endpoint`] implementation.
macro_rules! endpoints {
    ($(
        $(#[$doc:meta])*
        $name:ident { $($field:ident: $ty:ty),* } = $method:ident $path:literal, $request:ty => $response:ty;
    )*) => {$(
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub struct $name { $(pub $field: $ty),* }

        impl Endpoint for $name {
            const METHOD: Method = Method::$method;
            const PATH: &'static str = $path;
            type Request = $request;
            type Response = $response;

            fn params(&self) -> Vec<(&'static str, String)> {
                vec![$((stringify!($field), self.$field.to_string())),*]
            }

            fn from_params(_params: &Params<'_>) -> Option<Self> {
                Some(Self { $($field: _params.get(stringify!($field))?.parse().ok()?),* })
            }
        }
    )*};
}

endpoints! {
    /// origin: the edge hands over reservations its inventory object granted, a
    /// batch at a time (idempotent on each reservation id, which is the order id).
    TakeReservations {} = Post "/internal/v1/reservations", ReservationBatch => ReservationsTaken;
    /// origin: the edge let a hold run out unpaid; its units are back in stock.
    ReportExpiry { order_id: Uuid } = Post "/internal/v1/orders/{order_id}/expired", HoldExpiry => ExpiryAck;
    /// edge: the origin creates or updates a drop's inventory; answers the snapshot.
    PutTerms { drop_id: Uuid } = Post "/internal/v1/drops/{drop_id}/inventory", InventoryTerms => InventorySnapshot;
    /// edge: the inventory of a drop, for reconciliation, with its first page of holds.
    GetInventory { drop_id: Uuid } = Get "/internal/v1/drops/{drop_id}/inventory", Empty => InventorySnapshot;
    /// edge: the next page of a drop's holds, in reservation id order.
    GetInventoryHolds { drop_id: Uuid } = Post "/internal/v1/drops/{drop_id}/inventory/holds", HoldsAfter => HoldsPage;
    /// edge: sell a hold, return its units, or take released units again (idempotent).
    MoveHold { drop_id: Uuid, reservation_id: Uuid, action: HoldAction } =
        Post "/internal/v1/drops/{drop_id}/holds/{reservation_id}/{action}", Empty => HoldOutcome;
    /// edge: evict cached pages.
    Purge {} = Post "/internal/v1/purge", PurgeRequest => PurgeAck;
    /// origin: what the edge refused (429, 503) since it last said, for `/metrics`.
    ReportRefusals {} = Post "/internal/v1/refusals", EdgeRefusals => RefusalsNoted;
    /// origin: a file the edge has stored in R2, and who uploaded it (idempotent on
    /// key, visibility and uploader).
    RecordMedia {} = Post "/internal/v1/media", MediaUpload => MediaRecorded;
}

/// The routes the edge serves, matched from a request line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EdgeRoute {
    PutTerms(PutTerms),
    GetInventory(GetInventory),
    GetInventoryHolds(GetInventoryHolds),
    MoveHold(MoveHold),
    Purge(Purge),
}

impl EdgeRoute {
    pub fn parse(method: &str, path: &str) -> Option<Self> {
        None.or_else(|| PutTerms::matches(method, path).map(Self::PutTerms))
            .or_else(|| GetInventory::matches(method, path).map(Self::GetInventory))
            .or_else(|| GetInventoryHolds::matches(method, path).map(Self::GetInventoryHolds))
            .or_else(|| MoveHold::matches(method, path).map(Self::MoveHold))
            .or_else(|| Purge::matches(method, path).map(Self::Purge))
    }
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr, strum::EnumString, strum::Display,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum HoldAction {
    Sell,
    Release,
    /// Take the units of a released hold again and sell them (a payment that
    /// arrived after the hold ran out), if stock allows.
    Reinstate,
}

impl HoldAction {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// One hold the inventory object granted, as the origin takes it. The reservation
/// id is the order id the buyer was given.
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

/// Body of [`TakeReservations`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReservationBatch {
    pub reservations: Vec<ReservationHandoff>,
}

/// The origin's answer: it has an order for each of these reservations (new or
/// from an earlier delivery), committed before it answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservationsTaken {
    pub orders: Vec<Uuid>,
}

/// Body of [`PutTerms`]: the terms a drop sells on.
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
    /// Bumped by the origin on every change of these terms. Pushes can land out of
    /// order (a write's own push racing the sync loop's): the inventory keeps the
    /// highest version it has seen. Terms stored before versions existed read as 0.
    #[serde(default)]
    pub version: u64,
}

/// Stored as text in the inventory object's `holds.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr, strum::EnumString)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum HoldState {
    Held,
    Sold,
    Released,
}

impl HoldState {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// Answer of [`MoveHold`]: the hold's state after the call. A sell of a released
/// hold (or a release of a sold one) changes nothing and answers the state the
/// hold is in, so the caller can decide what follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldOutcome {
    pub reservation_id: Uuid,
    pub state: HoldState,
    /// True when this call moved the hold.
    pub changed: bool,
    pub remaining: u32,
}

/// Body of [`Purge`]: public paths whose cached pages to evict (see
/// [`crate::api::paths`]). Evicting twice is harmless.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurgeRequest {
    pub paths: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurgeAck {
    pub evicted: usize,
}

/// Body of [`ReportExpiry`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HoldExpiry {
    pub drop_id: Uuid,
    pub expired_at: DateTime<Utc>,
}

/// Answer of [`ReportExpiry`]: the order's state once the notice is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpiryAck {
    pub order_id: Uuid,
    pub status: OrderStatus,
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

/// The holds a snapshot or a page carries at most. A drop's holds are as many as
/// its purchases; built whole, a large drop's snapshot (its JSON, the rows and the
/// keys beside it) would be the largest allocation the Worker ever makes, and wasm
/// memory keeps its high-water mark for the isolate's life.
pub const HOLDS_PAGE: u32 = 1_000;

/// Body of [`GetInventoryHolds`]: the holds after `after` (a reservation id), at
/// most `limit` (capped at [`HOLDS_PAGE`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HoldsAfter {
    pub after: Uuid,
    pub limit: u32,
}

/// Answer of [`GetInventoryHolds`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldsPage {
    pub holds: Vec<HoldSnapshot>,
    /// Where the next page starts, when there is one.
    pub next_after: Option<Uuid>,
}

/// Answer of [`GetInventory`] and [`PutTerms`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventorySnapshot {
    pub drop_id: Uuid,
    pub terms: InventoryTerms,
    pub remaining: u32,
    pub held: u32,
    pub sold: u32,
    /// The first [`HOLDS_PAGE`] holds, in reservation id order; the origin's client
    /// fetches the rest ([`GetInventoryHolds`]) and hands on the whole list.
    pub holds: Vec<HoldSnapshot>,
    /// Where the next page of holds starts, when there is one.
    #[serde(default)]
    pub holds_after: Option<Uuid>,
    /// Reservations not yet acknowledged by the origin.
    pub unforwarded: Vec<Uuid>,
    /// Holds that ran out whose notice the origin has not acknowledged yet.
    #[serde(default)]
    pub unreported_expiries: Vec<Uuid>,
    /// Buy attempts this object has decided since it was last loaded (a measure of
    /// how much traffic reaches it; the Worker answers most sold-out rushes itself).
    pub decisions: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<E: Endpoint + PartialEq + std::fmt::Debug>(route: E) {
        assert_eq!(E::matches(E::METHOD.as_str(), &route.path()), Some(route));
    }

    #[test]
    fn every_route_parses_back_from_its_own_path() {
        let d = Uuid::from_u128(1);
        let r = Uuid::from_u128(2);
        round_trip(TakeReservations {});
        round_trip(ReportExpiry { order_id: r });
        round_trip(PutTerms { drop_id: d });
        round_trip(GetInventory { drop_id: d });
        round_trip(GetInventoryHolds { drop_id: d });
        for action in [HoldAction::Sell, HoldAction::Release, HoldAction::Reinstate] {
            round_trip(MoveHold { drop_id: d, reservation_id: r, action });
        }
        round_trip(Purge {});
        round_trip(ReportRefusals {});
        assert_eq!(
            MoveHold { drop_id: d, reservation_id: r, action: HoldAction::Reinstate }.path(),
            format!("/internal/v1/drops/{d}/holds/{r}/reinstate")
        );
    }

    #[test]
    fn the_edge_matches_its_routes_and_nothing_else() {
        let d = Uuid::from_u128(1);
        assert_eq!(
            EdgeRoute::parse("GET", &format!("/internal/v1/drops/{d}/inventory")),
            Some(EdgeRoute::GetInventory(GetInventory { drop_id: d }))
        );
        assert_eq!(
            EdgeRoute::parse("POST", &format!("/internal/v1/drops/{d}/inventory")),
            Some(EdgeRoute::PutTerms(PutTerms { drop_id: d }))
        );
        assert_eq!(
            EdgeRoute::parse("POST", &format!("/internal/v1/drops/{d}/inventory/holds")),
            Some(EdgeRoute::GetInventoryHolds(GetInventoryHolds { drop_id: d }))
        );
        assert_eq!(EdgeRoute::parse("GET", "/internal/v1/reservations"), None);
        assert_eq!(EdgeRoute::parse("POST", "/internal/v1/reservations"), None, "the origin serves that one");
        assert_eq!(EdgeRoute::parse("POST", "/internal/v1/drops/not-a-uuid/inventory"), None);
        assert_eq!(EdgeRoute::parse("POST", "/v1/drops"), None);
        assert_eq!(EdgeRoute::parse("POST", &format!("/internal/v1/drops/{d}/holds/{d}/steal")), None);
        assert_eq!(EdgeRoute::parse("POST", &format!("/internal/v1/drops/{d}/holds/{d}/sell/x")), None);
    }

    #[test]
    fn empty_bodies_stay_empty_and_json_bodies_are_strict() {
        assert!(Empty.to_bytes().is_empty());
        let err = PurgeRequest::from_bytes(br#"{"paths":[],"extra":1}"#).unwrap_err();
        assert_eq!(err.status, 400);
    }
}
