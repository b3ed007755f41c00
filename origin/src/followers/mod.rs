//! Follows. Postgres keeps the durable ledger (`follows`); Redis serves the graph: a
//! sorted set per creator, scored by the follow time in microseconds, so counts are
//! `ZCARD` and pages are score ranges. A follow or unfollow writes Redis right after
//! its Postgres commit; the `FollowChanged` consumer then re-applies the ledger's
//! state as it is when the event is handled, so the set converges whatever order
//! writes land in; `drops-origin followers-rebuild` rebuilds every set from Postgres.
//!
//! Pages are keyset-paged on (followed_at, user id), newest first: follows that land
//! while someone pages appear before the cursor, never as duplicates, and no row that
//! existed when paging began is skipped.
//!
//! Owns the table `follows` and the Redis follower sets. Stands on the catalogue
//! (creators) and on notifications ([`fanout`] delivers "drop is live").

pub mod fanout;

use async_trait::async_trait;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, put};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use drops_shared::api::{Follower, Following, Page};
use drops_shared::auth::Role;
use drops_shared::events::{DomainEvent, EventEnvelope};
use redis::AsyncCommands;
use uuid::Uuid;

use crate::catalogue::{self, FollowerCounts};
use crate::events;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{path_id, AuthUser, StrictQuery};
use crate::http::paging::{self, PageQuery};
use crate::state::Core;

pub const CONSUMER: &str = "followers";

/// The `followers` group: the Redis follower sets follow the ledger.
pub struct FollowerSets(pub Core);

impl crate::events::bus::Consumer for FollowerSets {
    fn group(&self) -> &'static str {
        CONSUMER
    }

    fn interested(&self, event: &DomainEvent) -> bool {
        matches!(event, DomainEvent::FollowChanged { .. })
    }

    fn handle<'a>(&'a self, event: &'a EventEnvelope) -> crate::events::bus::Handled<'a> {
        Box::pin(handle(&self.0, event))
    }
}

pub fn router(core: Core) -> Router {
    Router::new()
        .route("/v1/creators/{creator_id}/follow", put(follow).delete(unfollow))
        .route("/v1/creators/{creator_id}/followers", get(followers))
        .route("/v1/me/following", get(following))
        .with_state(core)
}

pub fn set_key(prefix: &str, creator_id: Uuid) -> String {
    format!("{prefix}:followers:{creator_id}")
}

async fn redis(state: &Core) -> redis::RedisResult<redis::aio::ConnectionManager> {
    state.redis_conn().await
}

/// Writes one follow's state to the creator's set: in it since `followed_at`, or out.
async fn write_set(
    state: &Core,
    creator_id: Uuid,
    user_id: Uuid,
    followed_at: Option<DateTime<Utc>>,
) -> redis::RedisResult<()> {
    let key = set_key(state.redis_prefix(), creator_id);
    let mut conn = redis(state).await?;
    match followed_at {
        Some(at) => conn.zadd(&key, user_id.to_string(), at.timestamp_micros()).await,
        None => conn.zrem(&key, user_id.to_string()).await,
    }
}

/// [`write_set`] on the request path: best effort, since the consumer and the
/// rebuild command repair what a failure here leaves.
async fn mirror(state: &Core, creator_id: Uuid, user_id: Uuid, followed_at: Option<DateTime<Utc>>) {
    if let Err(e) = write_set(state, creator_id, user_id, followed_at).await {
        tracing::warn!(%creator_id, error = %e, "follower set not updated; the consumer will");
    }
}

/// The creator a follow route names, once it is known to exist.
async fn followed(state: &Core, raw: &str) -> ApiResult<Uuid> {
    let creator_id = path_id(raw)?;
    catalogue::creators::name(&state.db, creator_id).await?.ok_or_else(ApiError::not_found)?;
    Ok(creator_id)
}

async fn follow(State(state): State<Core>, user: AuthUser, Path(creator_id): Path<String>) -> ApiResult<StatusCode> {
    let creator_id = followed(&state, &creator_id).await?;
    let user_id = user.0.user_id;
    let mut tx = state.db.begin().await?;
    let followed_at = sqlx::query_scalar!(
        "INSERT INTO follows (creator_id, user_id) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING followed_at",
        creator_id,
        user_id
    )
    .fetch_optional(&mut *tx)
    .await?;
    if followed_at.is_some() {
        events::record(&mut tx, DomainEvent::FollowChanged { creator_id, user_id, following: true }).await?;
    }
    tx.commit().await?;
    if let Some(at) = followed_at {
        mirror(&state, creator_id, user_id, Some(at)).await;
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn unfollow(State(state): State<Core>, user: AuthUser, Path(creator_id): Path<String>) -> ApiResult<StatusCode> {
    let creator_id = followed(&state, &creator_id).await?;
    let user_id = user.0.user_id;
    let mut tx = state.db.begin().await?;
    let removed = sqlx::query!("DELETE FROM follows WHERE creator_id = $1 AND user_id = $2", creator_id, user_id)
        .execute(&mut *tx)
        .await?;
    if removed.rows_affected() == 1 {
        events::record(&mut tx, DomainEvent::FollowChanged { creator_id, user_id, following: false }).await?;
    }
    tx.commit().await?;
    if removed.rows_affected() == 1 {
        mirror(&state, creator_id, user_id, None).await;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// The consumer: the set follows the ledger, whatever order the events come in.
pub async fn handle(state: &Core, event: &EventEnvelope) -> anyhow::Result<()> {
    let DomainEvent::FollowChanged { creator_id, user_id, .. } = event.event else { return Ok(()) };
    let at = sqlx::query_scalar!(
        "SELECT followed_at FROM follows WHERE creator_id = $1 AND user_id = $2",
        creator_id,
        user_id
    )
    .fetch_optional(&state.db)
    .await?;
    Ok(write_set(state, creator_id, user_id, at).await?)
}

/// How many follow a creator: the set's size, or the ledger's count without Redis.
pub async fn count(state: &Core, creator_id: Uuid) -> ApiResult<u64> {
    let key = set_key(state.redis_prefix(), creator_id);
    let from_set: redis::RedisResult<u64> = async { redis(state).await?.zcard(&key).await }.await;
    match from_set {
        Ok(n) => Ok(n),
        Err(e) => {
            tracing::warn!(error = %e, "follower count from Postgres");
            let n = sqlx::query_scalar!(r#"SELECT count(*) AS "n!" FROM follows WHERE creator_id = $1"#, creator_id)
                .fetch_one(&state.db)
                .await?;
            Ok(n as u64)
        }
    }
}

/// The catalogue's view of follower counts.
pub struct Counts;

#[async_trait]
impl FollowerCounts for Counts {
    async fn count(&self, core: &Core, creator_id: Uuid) -> anyhow::Result<u64> {
        count(core, creator_id).await.map_err(|e| anyhow::anyhow!("follower count: {e}"))
    }
}

/// `GET /v1/creators/{id}/followers`: newest first, from the creator's set. Who
/// follows whom is not public (the count is): only the creator (the account its
/// profile belongs to) and admins read the list; anyone else is told there is no
/// such creator (404), and a caller without a token is asked for one (401).
async fn followers(
    State(state): State<Core>,
    AuthUser(caller): AuthUser,
    Path(creator_id): Path<String>,
    StrictQuery(page): StrictQuery<PageQuery>,
) -> ApiResult<Json<Page<Follower>>> {
    let creator_id = path_id(&creator_id)?;
    let owner = catalogue::facts::creator_owner(&state.db, creator_id).await?.ok_or_else(ApiError::not_found)?;
    if caller.role != Role::Admin && caller.user_id != owner {
        return Err(ApiError::not_found());
    }
    let limit = page.limit()? as usize;
    let list = paging::List::new(&state, format!("followers-{creator_id}"));
    let after = list.after_keyed(&page)?.map(|(at, id)| (at.timestamp_micros(), id));
    let key = set_key(state.redis_prefix(), creator_id);
    // Equal scores are possible: over-fetch and drop those at or before the cursor.
    let max = after.map(|(m, _)| m.to_string()).unwrap_or_else(|| "+inf".into());
    let rows: Vec<(String, f64)> = redis::cmd("ZRANGE")
        .arg(&key)
        .arg(&max)
        .arg("-inf")
        .arg("BYSCORE")
        .arg("REV")
        .arg("LIMIT")
        .arg(0)
        .arg(limit + 1 + 64)
        .arg("WITHSCORES")
        .query_async(&mut redis(&state).await.map_err(anyhow::Error::from)?)
        .await
        .map_err(anyhow::Error::from)?;
    let mut items: Vec<(i64, Uuid)> = rows
        .into_iter()
        .filter_map(|(member, score)| Some((score as i64, Uuid::parse_str(&member).ok()?)))
        .filter(|(score, id)| match after {
            Some((m, last)) => *score < m || (*score == m && *id < last),
            None => true,
        })
        .collect();
    items.sort_by(|a, b| b.cmp(a));
    let more = items.len() > limit;
    items.truncate(limit);
    let at = |micros: i64| DateTime::from_timestamp_micros(micros).unwrap_or_default();
    let next_cursor = if more { items.last().map(|(m, id)| list.cursor_keyed(at(*m), *id)) } else { None };
    let items = items.into_iter().map(|(m, id)| Follower { user_id: id, followed_at: at(m) }).collect();
    Ok(Json(Page { items, next_cursor }))
}

/// `GET /v1/me/following`: the creators the caller follows, newest first.
async fn following(
    State(state): State<Core>,
    user: AuthUser,
    StrictQuery(page): StrictQuery<PageQuery>,
) -> ApiResult<Json<Page<Following>>> {
    let list = paging::List::new(&state, format!("following-{}", user.0.user_id));
    let limit = page.limit()?;
    let after = list.after_keyed(&page)?;
    let rows = sqlx::query!(
        "SELECT creator_id, followed_at FROM follows
         WHERE user_id = $1 AND ($2::timestamptz IS NULL OR (followed_at, creator_id) < ($2, $3))
         ORDER BY followed_at DESC, creator_id DESC LIMIT $4",
        user.0.user_id,
        after.map(|(at, _)| at),
        after.map(|(_, id)| id),
        limit + 1
    )
    .fetch_all(&state.db)
    .await?;
    let ids: Vec<Uuid> = rows.iter().map(|r| r.creator_id).collect();
    let names: std::collections::HashMap<Uuid, String> =
        catalogue::creators::names(&state.db, &ids).await?.into_iter().collect();
    let items: Vec<Following> = rows
        .into_iter()
        .map(|r| Following {
            name: names.get(&r.creator_id).cloned().unwrap_or_default(),
            creator_id: r.creator_id,
            followed_at: r.followed_at,
        })
        .collect();
    Ok(Json(paging::page(items, limit, |f| list.cursor_keyed(f.followed_at, f.creator_id))))
}

/// Rebuilds every creator's set from the ledger; returns how many follows it wrote.
pub async fn rebuild(state: &Core) -> anyhow::Result<u64> {
    let mut conn = redis(state).await?;
    let creators = catalogue::creators::all_ids(&state.db).await?;
    let mut total = 0;
    for creator_id in creators {
        let key = set_key(state.redis_prefix(), creator_id);
        let fresh = format!("{key}:rebuild");
        let _: () = conn.del(&fresh).await?;
        let mut after: Option<(DateTime<Utc>, Uuid)> = None;
        loop {
            let rows = sqlx::query!(
                "SELECT user_id, followed_at FROM follows WHERE creator_id = $1
                   AND ($2::timestamptz IS NULL OR (followed_at, user_id) > ($2, $3))
                 ORDER BY followed_at, user_id LIMIT 10000",
                creator_id,
                after.map(|a| a.0),
                after.map(|a| a.1)
            )
            .fetch_all(&state.db)
            .await?;
            let Some(last) = rows.last() else { break };
            after = Some((last.followed_at, last.user_id));
            let members: Vec<(i64, String)> =
                rows.iter().map(|r| (r.followed_at.timestamp_micros(), r.user_id.to_string())).collect();
            let _: () = conn.zadd_multiple(&fresh, &members).await?;
            total += rows.len() as u64;
        }
        // Swap in whole, so readers never see a half-built set.
        let exists: bool = conn.exists(&fresh).await?;
        if exists {
            let _: () = conn.rename(&fresh, &key).await?;
        } else {
            let _: () = conn.del(&key).await?;
        }
    }
    Ok(total)
}
