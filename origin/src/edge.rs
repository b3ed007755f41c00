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

    async fn call(&self, route: InternalRoute, body: Vec<u8>) -> anyhow::Result<reqwest::Response> {
        let path = route.path();
        let now = Utc::now().timestamp();
        let signature = sign_internal(self.secret.expose_secret().as_bytes(), route.method(), &path, now, &body);
        let method = reqwest::Method::from_bytes(route.method().as_bytes())?;
        let resp = self
            .http
            .request(method, format!("{}{path}", self.base_url))
            .header("content-type", "application/json")
            .header(TIMESTAMP_HEADER, now.to_string())
            .header(SIGNATURE_HEADER, signature)
            .body(body)
            .send()
            .await?;
        if !resp.status().is_success() {
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            anyhow::bail!("edge answered {status} on {path}: {text}");
        }
        Ok(resp)
    }

    /// Creates or updates a drop's inventory at the edge.
    pub async fn upsert_inventory(&self, drop_id: Uuid, terms: &InventoryTerms) -> anyhow::Result<()> {
        self.call(InternalRoute::UpsertInventory { drop_id }, serde_json::to_vec(terms)?).await?;
        Ok(())
    }
}
