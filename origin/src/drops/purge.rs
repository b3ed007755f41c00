//! Cache invalidation: the `cache-purge` consumer evicts the edge's cached pages a
//! domain event made stale. Two ways to evict, behind one trait: the edge's own
//! signed route (what `wrangler dev` runs) and Cloudflare's purge-by-URL API (for a
//! zone in production).

use std::time::Duration;

use async_trait::async_trait;
use drops_shared::events::{DomainEvent, EventEnvelope};
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use crate::edge::EdgeClient;
use crate::startup::AppState;

pub const CONSUMER: &str = "cache-purge";

#[async_trait]
pub trait Purger: Send + Sync {
    /// Evicts the cached pages of these public paths; evicting twice is harmless.
    async fn purge(&self, paths: &[String]) -> anyhow::Result<()>;
}

pub struct EdgePurger(pub EdgeClient);

#[async_trait]
impl Purger for EdgePurger {
    async fn purge(&self, paths: &[String]) -> anyhow::Result<()> {
        self.0.purge(paths).await
    }
}

/// Cloudflare's purge-by-URL: `POST /client/v4/zones/{zone}/purge_cache` with
/// `{"files": [...]}`, at most 30 URLs a call.
pub struct CloudflarePurger {
    http: reqwest::Client,
    api_base: String,
    zone_id: String,
    token: String,
    /// The public base URL the cached pages live under (`https://api.example.com`).
    public_base: String,
}

pub const CLOUDFLARE_API: &str = "https://api.cloudflare.com";
const CLOUDFLARE_FILES_PER_CALL: usize = 30;

impl CloudflarePurger {
    pub fn new(api_base: &str, zone_id: &str, token: &str, public_base: &str) -> anyhow::Result<Self> {
        Ok(Self {
            http: reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?,
            api_base: api_base.trim_end_matches('/').to_owned(),
            zone_id: zone_id.to_owned(),
            token: token.to_owned(),
            public_base: public_base.trim_end_matches('/').to_owned(),
        })
    }

    /// The calls that purge `paths`: (URL, JSON body) each.
    pub fn requests(&self, paths: &[String]) -> Vec<(String, serde_json::Value)> {
        let url = format!("{}/client/v4/zones/{}/purge_cache", self.api_base, self.zone_id);
        paths
            .chunks(CLOUDFLARE_FILES_PER_CALL)
            .map(|chunk| {
                let files: Vec<String> = chunk.iter().map(|p| format!("{}{p}", self.public_base)).collect();
                (url.clone(), json!({ "files": files }))
            })
            .collect()
    }
}

#[derive(Deserialize)]
struct CloudflareAnswer {
    success: bool,
    #[serde(default)]
    errors: Vec<serde_json::Value>,
}

#[async_trait]
impl Purger for CloudflarePurger {
    async fn purge(&self, paths: &[String]) -> anyhow::Result<()> {
        for (url, body) in self.requests(paths) {
            let resp = self.http.post(url).bearer_auth(&self.token).json(&body).send().await?;
            let status = resp.status();
            let answer: CloudflareAnswer = resp.json().await?;
            anyhow::ensure!(status.is_success() && answer.success, "cloudflare purge refused: {:?}", answer.errors);
        }
        Ok(())
    }
}

/// The purger the settings ask for.
pub fn purger(state: &AppState) -> anyhow::Result<std::sync::Arc<dyn Purger>> {
    use secrecy::ExposeSecret;
    let s = &state.settings;
    Ok(match s.cache_purger.as_str() {
        "edge" => std::sync::Arc::new(EdgePurger(state.edge.clone())),
        "cloudflare" => {
            let (Some(zone), Some(token), Some(base)) =
                (&s.cloudflare_zone_id, &s.cloudflare_api_token, &s.public_edge_url)
            else {
                anyhow::bail!(
                    "the cloudflare purger needs DROPS_CLOUDFLARE_ZONE_ID, _API_TOKEN and DROPS_PUBLIC_EDGE_URL"
                );
            };
            std::sync::Arc::new(CloudflarePurger::new(CLOUDFLARE_API, zone, token.expose_secret(), base)?)
        }
        other => anyhow::bail!("unknown cache purger `{other}`"),
    })
}

pub fn card_path(drop_id: Uuid) -> String {
    format!("/v1/drops/{drop_id}")
}

pub const LIST_PATHS: [&str; 2] = ["/v1/drops?status=live", "/v1/drops?status=upcoming"];

/// The pages an event makes stale.
pub async fn stale_paths(state: &AppState, event: &DomainEvent) -> anyhow::Result<Vec<String>> {
    let card_and_lists = |drop_id| {
        let mut paths = vec![card_path(drop_id)];
        paths.extend(LIST_PATHS.iter().map(|p| p.to_string()));
        paths
    };
    Ok(match event {
        DomainEvent::DropCreated { drop_id, .. }
        | DomainEvent::DropUpdated { drop_id, .. }
        | DomainEvent::DropStarted { drop_id, .. }
        | DomainEvent::DropEnded { drop_id, .. } => card_and_lists(*drop_id),
        // The stock snapshot on the card moved.
        DomainEvent::OrderConfirmed { drop_id, .. } => vec![card_path(*drop_id), LIST_PATHS[0].to_owned()],
        // A reservation only matters to the pages when it sold the drop out.
        DomainEvent::OrderReserved { drop_id, .. } if sold_out(state, *drop_id).await? => {
            vec![card_path(*drop_id), LIST_PATHS[0].to_owned()]
        }
        _ => Vec::new(),
    })
}

async fn sold_out(state: &AppState, drop_id: Uuid) -> sqlx::Result<bool> {
    sqlx::query_scalar(
        "SELECT d.stock <= COALESCE((SELECT SUM(quantity) FROM orders
                                     WHERE drop_id = d.id AND status IN ('reserved', 'confirmed')), 0)
         FROM drops d WHERE d.id = $1",
    )
    .bind(drop_id)
    .fetch_optional(&state.db)
    .await
    .map(|v| v.unwrap_or(false))
}

pub async fn handle(state: &AppState, purger: &dyn Purger, event: &EventEnvelope) -> anyhow::Result<()> {
    let paths = stale_paths(state, &event.event).await?;
    if paths.is_empty() {
        return Ok(());
    }
    purger.purge(&paths).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cloudflare_requests_name_full_urls_thirty_at_a_time() {
        let p = CloudflarePurger::new(CLOUDFLARE_API, "zone123", "tok", "https://api.drops.dev/").unwrap();
        let paths: Vec<String> = (0..31).map(|i| format!("/v1/drops/{i}")).collect();
        let reqs = p.requests(&paths);
        assert_eq!(reqs.len(), 2);
        assert_eq!(reqs[0].0, "https://api.cloudflare.com/client/v4/zones/zone123/purge_cache");
        assert_eq!(reqs[0].1["files"].as_array().unwrap().len(), 30);
        assert_eq!(reqs[0].1["files"][0], "https://api.drops.dev/v1/drops/0");
        assert_eq!(reqs[1].1["files"], json!(["https://api.drops.dev/v1/drops/30"]));
    }
}
