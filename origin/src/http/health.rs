//! Liveness (`/healthz`: the process answers) and readiness (`/readyz`: Postgres and
//! Redis answer too, and the event flow is not stalled: see [`crate::events::Flow`]). Readiness is checked by one background task ([`check`], every
//! [`CHECK_EVERY`]) on a Postgres connection of its own and the shared Redis
//! connection; `/readyz` answers what the last check found, so probes, however
//! many, cost the pool and Redis nothing, and a pool busy with requests does not
//! make the instance look dead.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use drops_shared::problem::{ErrorCode, Problem};
use secrecy::ExposeSecret;
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection};

use crate::events;
use crate::http::error::ApiResult;
use crate::state::Core;

/// How often readiness is checked.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);
/// How long each check may take.
const CHECK_WITHIN: Duration = Duration::from_secs(2);
/// A check older than this (the task is stuck or stopped) does not count.
const FRESH_FOR: Duration = Duration::from_secs(10);

/// What the last readiness check found: `Err` names what did not answer.
#[derive(Default)]
pub struct Readiness {
    last: Mutex<Option<(Instant, Result<(), String>)>>,
    /// The checker's own Postgres connection, made again when it fails.
    db: tokio::sync::Mutex<Option<PgConnection>>,
}

impl Readiness {
    fn record(&self, found: Result<(), String>) {
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), found));
    }

    /// Ready, or why not.
    pub fn current(&self) -> Result<(), String> {
        match &*self.last.lock().unwrap_or_else(|e| e.into_inner()) {
            Some((at, found)) if at.elapsed() < FRESH_FOR => found.clone(),
            Some(_) => Err("readiness has not been checked lately".into()),
            None => Err("readiness has not been checked yet".into()),
        }
    }
}

/// One readiness check: the event flow's state (which is also a round trip to
/// Postgres) on the checker's own connection and `PING` on the shared Redis
/// connection, each within [`CHECK_WITHIN`].
pub async fn check(core: &Core, readiness: &Readiness) {
    let db = tokio::time::timeout(CHECK_WITHIN, async {
        let mut slot = readiness.db.lock().await;
        if slot.is_none() {
            *slot = Some(PgConnection::connect(core.settings.database.url.expose_secret()).await?);
        }
        let conn = slot.as_mut().expect("connected above");
        let answered = events::flow(&mut *conn, core.redis_prefix()).await;
        if answered.is_err() {
            slot.take();
        }
        answered
    })
    .await;
    let Ok(Ok(flow)) = db else {
        // A connection cut off mid-check is not used again.
        if let Ok(mut slot) = readiness.db.try_lock() {
            slot.take();
        }
        return readiness.record(Err("postgres is not answering".into()));
    };
    let redis = tokio::time::timeout(CHECK_WITHIN, async {
        let mut conn = core.redis_conn().await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await
    })
    .await;
    if !matches!(redis, Ok(Ok(_))) {
        return readiness.record(Err("redis is not answering".into()));
    }
    let stalled = flow.stalled(core.settings.events.stall_after);
    readiness.record(stalled.map_or(Ok(()), |why| Err(format!("the event flow is stalled: {why}"))));
}

pub fn router(readiness: Arc<Readiness>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(ready))
        .with_state(readiness)
}

async fn ready(State(readiness): State<Arc<Readiness>>) -> ApiResult<Json<Value>> {
    readiness.current().map_err(|why| Problem::new(ErrorCode::Overloaded, Some(why)))?;
    Ok(Json(json!({"status": "ready"})))
}
