//! Liveness (`/healthz`: the process answers) and readiness (`/readyz`: Postgres and
//! Redis answer too).

use std::time::Duration;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use drops_shared::problem::{ErrorCode, Problem};
use serde_json::{json, Value};

use crate::error::ApiResult;
use crate::state::Core;

pub fn router(core: Core) -> Router {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(ready))
        .with_state(core)
}

async fn ready(State(core): State<Core>) -> ApiResult<Json<Value>> {
    let unavailable = |what: &str| Problem::new(ErrorCode::Overloaded, Some(format!("{what} is not answering")));
    let check = Duration::from_secs(2);
    let db = tokio::time::timeout(check, sqlx::query!("SELECT 1 AS one").fetch_one(&core.db)).await;
    if !matches!(db, Ok(Ok(_))) {
        return Err(unavailable("postgres").into());
    }
    let redis = tokio::time::timeout(check, async {
        let mut conn = core.redis.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await
    })
    .await;
    if !matches!(redis, Ok(Ok(_))) {
        return Err(unavailable("redis").into());
    }
    Ok(Json(json!({"status": "ready"})))
}
