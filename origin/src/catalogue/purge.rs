//! Cache invalidation: the `cache-purge` consumer evicts the edge's cached pages a
//! domain event made stale. Two ways to evict, behind one trait: the edge's own
//! signed route (what `wrangler dev` runs) and Cloudflare's purge-by-URL API (for a
//! zone in production).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use drops_shared::events::{DomainEvent, EventEnvelope};
use drops_shared::pages;
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use crate::config::CachePurger;
use crate::edge::EdgeClient;
use crate::orders;
use crate::state::Core;

pub const CONSUMER: &str = "cache-purge";

/// The `cache-purge` group: the edge's cached pages evicted when they change.
pub struct CachePurge {
    pub core: Core,
    pub purger: Arc<dyn Purger>,
}

impl crate::events::bus::Consumer for CachePurge {
    fn group(&self) -> &'static str {
        CONSUMER
    }

    /// The events that can make a cached page stale (see [`stale_paths`]).
    fn interested(&self, event: &DomainEvent) -> bool {
        matches!(
            event,
            DomainEvent::DropCreated { .. }
                | DomainEvent::DropUpdated { .. }
                | DomainEvent::DropStarted { .. }
                | DomainEvent::DropEnded { .. }
                | DomainEvent::OrderConfirmed { .. }
                | DomainEvent::OrderReserved { .. }
        )
    }

    fn handle<'a>(&'a self, event: &'a EventEnvelope) -> crate::events::bus::Handled<'a> {
        Box::pin(handle(&self.core, self.purger.as_ref(), event))
    }
}

#[async_trait]
pub trait Purger: Send + Sync {
    /// Evicts the cached pages of these public paths; evicting twice is harmless.
    async fn purge(&self, paths: &[String]) -> anyhow::Result<()>;
}

pub struct EdgePurger(pub EdgeClient);

#[async_trait]
impl Purger for EdgePurger {
    async fn purge(&self, paths: &[String]) -> anyhow::Result<()> {
        self.0.purge(paths).await.map(|_| ())
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
pub fn purger(core: &Core) -> anyhow::Result<Arc<dyn Purger>> {
    Ok(match &core.settings.cache_purger {
        CachePurger::Edge => Arc::new(EdgePurger(core.edge.clone())),
        CachePurger::Cloudflare { zone_id, api_token, public_edge_url, api_base } => {
            Arc::new(CloudflarePurger::new(api_base, zone_id, api_token.expose_secret(), public_edge_url)?)
        }
    })
}

/// The pages an event makes stale.
pub async fn stale_paths(core: &Core, event: &DomainEvent) -> anyhow::Result<Vec<String>> {
    let card_and_lists = |drop_id| {
        let mut paths = vec![pages::card(drop_id)];
        paths.extend(pages::list_first_pages());
        paths
    };
    let [live, _] = pages::list_first_pages();
    Ok(match event {
        DomainEvent::DropCreated { drop_id, .. }
        | DomainEvent::DropUpdated { drop_id, .. }
        | DomainEvent::DropStarted { drop_id, .. }
        | DomainEvent::DropEnded { drop_id, .. } => card_and_lists(*drop_id),
        // The stock snapshot on the card moved.
        DomainEvent::OrderConfirmed { drop_id, .. } => vec![pages::card(*drop_id), live],
        // A reservation only matters to the pages when it sold the drop out.
        DomainEvent::OrderReserved { drop_id, .. } if sold_out(core, *drop_id).await? => {
            vec![pages::card(*drop_id), live]
        }
        _ => Vec::new(),
    })
}

async fn sold_out(core: &Core, drop_id: Uuid) -> sqlx::Result<bool> {
    let stock = sqlx::query_scalar!("SELECT stock FROM drops WHERE id = $1", drop_id).fetch_optional(&core.db).await?;
    let Some(stock) = stock else { return Ok(false) };
    let committed = orders::committed_units(&core.db, &[drop_id]).await?.get(&drop_id).copied().unwrap_or(0);
    Ok(i64::from(stock) <= committed)
}

pub async fn handle(core: &Core, purger: &dyn Purger, event: &EventEnvelope) -> anyhow::Result<()> {
    let paths = stale_paths(core, &event.event).await?;
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
        let p =
            CloudflarePurger::new(crate::config::CLOUDFLARE_API, "zone123", "tok", "https://api.drops.dev/").unwrap();
        let paths: Vec<String> = (0..31).map(|i| format!("/v1/drops/{i}")).collect();
        let reqs = p.requests(&paths);
        assert_eq!(reqs.len(), 2);
        assert_eq!(reqs[0].0, "https://api.cloudflare.com/client/v4/zones/zone123/purge_cache");
        assert_eq!(reqs[0].1["files"].as_array().unwrap().len(), 30);
        assert_eq!(reqs[0].1["files"][0], "https://api.drops.dev/v1/drops/0");
        assert_eq!(reqs[1].1["files"], json!(["https://api.drops.dev/v1/drops/30"]));
    }
}
