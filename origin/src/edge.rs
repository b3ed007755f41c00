//! Signed calls from the origin to the edge's internal routes.

use std::time::Duration;

use chrono::Utc;
use drops_shared::internal::{InternalRoute, InventoryTerms};
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

impl EdgeClient {
    pub fn new(settings: &Settings) -> anyhow::Result<Self> {
        Ok(Self {
            http: reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?,
            base_url: settings.edge_url.trim_end_matches('/').to_owned(),
            secret: settings.origin_to_edge_secret.clone(),
        })
    }

    /// Sends a signed internal call; the answer is returned whatever its status.
    async fn send(&self, route: InternalRoute, body: Vec<u8>) -> anyhow::Result<reqwest::Response> {
        let path = route.path();
        let now = Utc::now().timestamp();
        let signature = sign_internal(self.secret.expose_secret().as_bytes(), route.method(), &path, now, &body);
        let method = reqwest::Method::from_bytes(route.method().as_bytes())?;
        Ok(self
            .http
            .request(method, format!("{}{path}", self.base_url))
            .header("content-type", "application/json")
            .header(TIMESTAMP_HEADER, now.to_string())
            .header(SIGNATURE_HEADER, signature)
            .body(body)
            .send()
            .await?)
    }

    /// Like [`Self::send`], but a non-2xx answer is an error.
    async fn call(&self, route: InternalRoute, body: Vec<u8>) -> anyhow::Result<reqwest::Response> {
        let resp = self.send(route, body).await?;
        if !resp.status().is_success() {
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            anyhow::bail!("edge answered {status} on {}: {text}", route.path());
        }
        Ok(resp)
    }

    /// Creates or updates a drop's inventory at the edge.
    pub async fn upsert_inventory(&self, drop_id: Uuid, terms: &InventoryTerms) -> anyhow::Result<()> {
        self.call(InternalRoute::UpsertInventory { drop_id }, serde_json::to_vec(terms)?).await?;
        Ok(())
    }
}

/// What the edge answered when asked to move a hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldMove {
    /// The hold's state after the call (unchanged when it was already there, or
    /// when a sell found it released).
    Now(drops_shared::internal::HoldOutcome),
    /// `reinstate`: the units are gone.
    SoldOut,
    /// `reinstate`: the buyer would exceed the drop's per-user limit.
    LimitReached,
    /// The edge has no such hold.
    Unknown,
}

impl EdgeClient {
    pub async fn move_hold(
        &self,
        drop_id: Uuid,
        reservation_id: Uuid,
        action: drops_shared::internal::HoldAction,
    ) -> anyhow::Result<HoldMove> {
        let route = InternalRoute::Hold { drop_id, reservation_id, action };
        let resp = self.send(route, Vec::new()).await?;
        let status = resp.status();
        let bytes = resp.bytes().await?;
        if status.is_success() {
            return Ok(HoldMove::Now(serde_json::from_slice(&bytes)?));
        }
        let code = serde_json::from_slice::<drops_shared::problem::Problem>(&bytes).map(|p| p.code).unwrap_or_default();
        match (status.as_u16(), code.as_str()) {
            (404, _) => Ok(HoldMove::Unknown),
            (409, "sold_out") => Ok(HoldMove::SoldOut),
            (409, "purchase_limit_reached") => Ok(HoldMove::LimitReached),
            _ => anyhow::bail!("edge answered {status} moving hold {reservation_id}: {code}"),
        }
    }

    /// The full inventory of a drop, for reconciliation.
    pub async fn snapshot(&self, drop_id: Uuid) -> anyhow::Result<Option<drops_shared::internal::InventorySnapshot>> {
        let resp = self.send(InternalRoute::InventorySnapshot { drop_id }, Vec::new()).await?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        anyhow::ensure!(resp.status().is_success(), "edge answered {} for the snapshot of {drop_id}", resp.status());
        Ok(Some(resp.json().await?))
    }
}

impl EdgeClient {
    /// Evicts cached pages at the edge.
    pub async fn purge(&self, paths: &[String]) -> anyhow::Result<()> {
        let body = serde_json::to_vec(&drops_shared::internal::PurgeRequest { paths: paths.to_vec() })?;
        self.call(InternalRoute::Purge, body).await?;
        Ok(())
    }
}
