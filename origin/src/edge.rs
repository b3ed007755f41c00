//! Signed calls from the origin to the edge's internal endpoints, typed by their
//! definitions in `drops_shared::internal`.

use std::time::Duration;

use chrono::Utc;
use drops_shared::internal::{
    Body, Empty, Endpoint, GetInventory, GetInventoryHolds, HoldAction, HoldOutcome, HoldsAfter, HoldsPage,
    InventorySnapshot, InventoryTerms, MoveHold, Purge, PurgeRequest, PutTerms, HOLDS_PAGE,
};
use drops_shared::problem::{ErrorCode, Problem};
use drops_shared::signing::{sign_internal, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use secrecy::{ExposeSecret, SecretString};
use uuid::Uuid;

use crate::config::Settings;

#[derive(Clone)]
pub struct EdgeClient {
    http: reqwest::Client,
    base_url: String,
    secret: SecretString,
}

/// How a call went wrong: the edge refused it with a problem, or it did not
/// get an answer at all.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("the edge answered {status}: {problem:?}")]
    Refused { status: u16, problem: Option<Problem> },
    #[error(transparent)]
    Transport(#[from] anyhow::Error),
}

impl CallError {
    fn code(&self) -> Option<(u16, ErrorCode)> {
        match self {
            Self::Refused { status, problem } => problem.as_ref().map(|p| (*status, p.code)),
            Self::Transport(_) => None,
        }
    }
}

impl From<reqwest::Error> for CallError {
    fn from(e: reqwest::Error) -> Self {
        Self::Transport(e.into())
    }
}

impl EdgeClient {
    pub fn new(settings: &Settings) -> anyhow::Result<Self> {
        Ok(Self {
            http: reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?,
            base_url: settings.edge.url.clone(),
            secret: settings.edge.origin_to_edge_secret.clone(),
        })
    }

    /// Calls endpoint `E` at the edge, signed; a non-2xx answer is [`CallError::Refused`].
    pub async fn call<E: Endpoint>(&self, route: &E, body: &E::Request) -> Result<E::Response, CallError> {
        let path = route.path();
        let body = body.to_bytes();
        let now = Utc::now().timestamp();
        let signature = sign_internal(self.secret.expose_secret().as_bytes(), E::METHOD.as_str(), &path, now, &body);
        let method = reqwest::Method::from_bytes(E::METHOD.as_str().as_bytes()).map_err(anyhow::Error::from)?;
        let resp = self
            .http
            .request(method, format!("{}{path}", self.base_url))
            .header("content-type", "application/json")
            .header(TIMESTAMP_HEADER, now.to_string())
            .header(SIGNATURE_HEADER, signature)
            .body(body)
            .send()
            .await?;
        let status = resp.status();
        let bytes = resp.bytes().await?;
        if !status.is_success() {
            let problem = serde_json::from_slice::<Problem>(&bytes).ok();
            return Err(CallError::Refused { status: status.as_u16(), problem });
        }
        E::Response::from_bytes(&bytes)
            .map_err(|p| CallError::Transport(anyhow::anyhow!("unreadable answer on {path}: {:?}", p.detail)))
    }

    /// Creates or updates a drop's inventory at the edge.
    pub async fn put_terms(&self, drop_id: Uuid, terms: &InventoryTerms) -> Result<InventorySnapshot, CallError> {
        self.call(&PutTerms { drop_id }, terms).await
    }

    /// The full inventory of a drop, for reconciliation; `None` when the edge has none.
    /// The drop's inventory with every hold, fetched a page at a time (the edge
    /// builds at most [`HOLDS_PAGE`] holds per answer). Holds are read in
    /// reservation id order while the drop goes on selling: a hold is seen once, in
    /// the state it had when its page was read, and one granted meanwhile may be
    /// missing, as it would be from a snapshot taken a moment earlier.
    pub async fn snapshot(&self, drop_id: Uuid) -> anyhow::Result<Option<InventorySnapshot>> {
        let mut snapshot = match self.call(&GetInventory { drop_id }, &Empty).await {
            Ok(snapshot) => snapshot,
            Err(CallError::Refused { status: 404, .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        while let Some(after) = snapshot.holds_after.take() {
            let next = self.holds_after(drop_id, after, HOLDS_PAGE).await?;
            anyhow::ensure!(
                next.next_after.is_none_or(|n| n > after),
                "the edge's pages of holds for drop {drop_id} do not move forward"
            );
            snapshot.holds.extend(next.holds);
            snapshot.holds_after = next.next_after;
        }
        Ok(Some(snapshot))
    }

    /// At most `limit` of a drop's holds after reservation `after` (the edge caps
    /// `limit` at [`HOLDS_PAGE`]), and where the next page starts.
    pub async fn holds_after(&self, drop_id: Uuid, after: Uuid, limit: u32) -> anyhow::Result<HoldsPage> {
        Ok(self.call(&GetInventoryHolds { drop_id }, &HoldsAfter { after, limit }).await?)
    }

    pub async fn move_hold(&self, drop_id: Uuid, reservation_id: Uuid, action: HoldAction) -> anyhow::Result<HoldMove> {
        match self.call(&MoveHold { drop_id, reservation_id, action }, &Empty).await {
            Ok(outcome) => Ok(HoldMove::Now(outcome)),
            Err(e) => match e.code() {
                Some((404, _)) => Ok(HoldMove::Unknown),
                Some((409, ErrorCode::SoldOut)) => Ok(HoldMove::SoldOut),
                Some((409, ErrorCode::PurchaseLimitReached)) => Ok(HoldMove::LimitReached),
                _ => Err(anyhow::anyhow!("moving hold {reservation_id} ({}): {e}", action.as_str())),
            },
        }
    }

    /// Evicts cached pages at the edge; returns how many were cached.
    pub async fn purge(&self, paths: &[String]) -> anyhow::Result<usize> {
        Ok(self.call(&Purge {}, &PurgeRequest { paths: paths.to_vec() }).await?.evicted)
    }
}

/// What the edge answered when asked to move a hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldMove {
    /// The hold's state after the call (unchanged when it was already there, or
    /// when a sell found it released).
    Now(HoldOutcome),
    /// `reinstate`: the units are gone.
    SoldOut,
    /// `reinstate`: the buyer would exceed the drop's per-user limit.
    LimitReached,
    /// The edge has no such hold.
    Unknown,
}
