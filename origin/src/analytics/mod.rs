//! Analytics: each drop's sales figures for its creator and the admins: orders by
//! state, revenue, conversion, when it sold out, and a timeline of units reserved,
//! confirmed and released (`GET /v1/drops/{drop_id}/analytics`,
//! `GET /v1/creators/{creator_id}/analytics`).
//!
//! The figures come from the events alone: the consumer group [`CONSUMER`] applies
//! each drop and order event once ([`ledger`]), in the same transaction that records
//! it as applied, so they are at most a bus round behind (the relay's interval and
//! one read of the stream, well under a second when the origin is not busy), exact
//! (each order counted once, in its latest state) and rebuildable from the outbox
//! ([`ledger::rebuild`], `drops-origin analytics rebuild`). At query time the catalogue
//! says whose a drop is and its terms ([`catalogue::facts`]): the total stock, the
//! currency and the start the figures are reported against.
//!
//! Owns the tables `analytics_drops`, `analytics_orders`, `analytics_buckets` and
//! `analytics_applied`. Stands on the catalogue (read at query time only).

pub mod ledger;

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Duration, DurationRound, Utc};
use drops_shared::api::{CreatorAnalytics, DropAnalytics, OrderCounts, Revenue, StockFigures, TimelineBucket};
use drops_shared::auth::{Identity, Role};
use drops_shared::events::{DomainEvent, EventEnvelope};
use sqlx::PgPool;
use uuid::Uuid;

use crate::catalogue::facts::{self, DropFacts};
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{path_id, AuthUser};
use crate::state::Core;

pub const CONSUMER: &str = "analytics";

/// The `analytics` group: each drop's figures moved once per event.
pub struct Analytics(pub Core);

impl crate::events::bus::Consumer for Analytics {
    fn group(&self) -> &'static str {
        CONSUMER
    }

    fn interested(&self, event: &DomainEvent) -> bool {
        interested(event)
    }

    fn handle<'a>(&'a self, event: &'a EventEnvelope) -> crate::events::bus::Handled<'a> {
        Box::pin(handle(&self.0, event))
    }
}

/// The drop and order events (payments matter only as the order states they lead to).
pub fn interested(event: &DomainEvent) -> bool {
    matches!(
        event,
        DomainEvent::DropCreated { .. }
            | DomainEvent::DropUpdated { .. }
            | DomainEvent::OrderReserved { .. }
            | DomainEvent::OrderConfirmed { .. }
            | DomainEvent::OrderFailed { .. }
            | DomainEvent::OrderCancelled { .. }
            | DomainEvent::OrderExpired { .. }
    )
}

/// The bus handler: applies the event, once, in outbox order per order.
pub async fn handle(core: &Core, event: &EventEnvelope) -> anyhow::Result<()> {
    let mut tx = core.db.begin().await?;
    // The event's place in the log: what orders one order's events (see `ledger`).
    let seq = sqlx::query_scalar!("SELECT seq FROM outbox WHERE id = $1", event.id).fetch_optional(&mut *tx).await?;
    let Some(seq) = seq else {
        tracing::warn!(event_id = %event.id, "an event the outbox does not hold; not applied");
        return Ok(());
    };
    ledger::apply(&mut tx, seq, event).await?;
    tx.commit().await?;
    Ok(())
}

pub fn router(core: Core) -> Router {
    Router::new()
        .route("/v1/drops/{drop_id}/analytics", get(drop_analytics))
        .route("/v1/creators/{creator_id}/analytics", get(creator_analytics))
        .with_state(core)
}

/// The owner of what is asked about, or an admin: anyone else is told it does not exist.
fn may_see(caller: &Identity, owner: Uuid) -> bool {
    caller.role == Role::Admin || caller.user_id == owner
}

#[tracing::instrument(skip_all, fields(user_id = %caller.user_id))]
async fn drop_analytics(
    State(core): State<Core>,
    AuthUser(caller): AuthUser,
    Path(drop_id): Path<String>,
) -> ApiResult<Json<DropAnalytics>> {
    let drop = facts::drop_facts(&core.db, path_id(&drop_id)?).await?.ok_or_else(ApiError::not_found)?;
    if !may_see(&caller, drop.owner) {
        return Err(ApiError::not_found());
    }
    let mut figures = figures(&core.db, std::slice::from_ref(&drop)).await?;
    figures.pop().map(Json).ok_or_else(ApiError::not_found)
}

#[tracing::instrument(skip_all, fields(user_id = %caller.user_id))]
async fn creator_analytics(
    State(core): State<Core>,
    AuthUser(caller): AuthUser,
    Path(creator_id): Path<String>,
) -> ApiResult<Json<CreatorAnalytics>> {
    let creator_id = path_id(&creator_id)?;
    let owner = facts::creator_owner(&core.db, creator_id).await?.ok_or_else(ApiError::not_found)?;
    if !may_see(&caller, owner) {
        return Err(ApiError::not_found());
    }
    let drops = facts::drops_of_creator(&core.db, creator_id).await?;
    let drops = figures(&core.db, &drops).await?;
    Ok(Json(summed(creator_id, drops)))
}

/// A creator's figures: each drop's, and their sums (revenue per currency).
pub fn summed(creator_id: Uuid, drops: Vec<DropAnalytics>) -> CreatorAnalytics {
    let mut stock = StockFigures { total: 0, remaining: 0 };
    let mut orders = OrderCounts::default();
    let mut revenue = BTreeMap::<String, i64>::new();
    for d in &drops {
        stock.total += d.stock.total;
        stock.remaining += d.stock.remaining;
        orders.reserved += d.orders.reserved;
        orders.confirmed += d.orders.confirmed;
        orders.failed += d.orders.failed;
        orders.cancelled += d.orders.cancelled;
        orders.expired += d.orders.expired;
        *revenue.entry(d.revenue.currency.clone()).or_default() += d.revenue.amount;
    }
    CreatorAnalytics {
        creator_id,
        stock,
        conversion: conversion(&orders),
        orders,
        revenue: revenue.into_iter().map(|(currency, amount)| Revenue { amount, currency }).collect(),
        drops,
    }
}

/// Confirmed orders ÷ all orders; 0 when there are none.
fn conversion(orders: &OrderCounts) -> f64 {
    let all = orders.reserved + orders.confirmed + orders.failed + orders.cancelled + orders.expired;
    if all == 0 {
        0.0
    } else {
        orders.confirmed as f64 / all as f64
    }
}

fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// The figures of `drops` (in that order), from the analytics tables.
pub async fn figures(db: &PgPool, drops: &[DropFacts]) -> sqlx::Result<Vec<DropAnalytics>> {
    let ids: Vec<Uuid> = drops.iter().map(|d| d.drop_id).collect();
    let rows = sqlx::query!(
        "SELECT drop_id, reserved, confirmed, failed, cancelled, expired, held_units, sold_units, revenue, sold_out_at
         FROM analytics_drops WHERE drop_id = ANY($1)",
        &ids
    )
    .fetch_all(db)
    .await?;
    let buckets = sqlx::query!(
        "SELECT drop_id, second, reserved, confirmed, released FROM analytics_buckets
         WHERE drop_id = ANY($1) AND (reserved <> 0 OR confirmed <> 0 OR released <> 0) ORDER BY drop_id, second",
        &ids
    )
    .fetch_all(db)
    .await?;
    Ok(drops
        .iter()
        .map(|drop| {
            let row = rows.iter().find(|r| r.drop_id == drop.drop_id);
            let get = |f: fn(&_) -> i64| row.map(f).unwrap_or(0);
            let orders = OrderCounts {
                reserved: count(get(|r| r.reserved)),
                confirmed: count(get(|r| r.confirmed)),
                failed: count(get(|r| r.failed)),
                cancelled: count(get(|r| r.cancelled)),
                expired: count(get(|r| r.expired)),
            };
            let total = count(i64::from(drop.total));
            let committed = count(get(|r| r.held_units) + get(|r| r.sold_units));
            let seconds = buckets
                .iter()
                .filter(|b| b.drop_id == drop.drop_id)
                .map(|b| (b.second, [b.reserved, b.confirmed, b.released]));
            DropAnalytics {
                drop_id: drop.drop_id,
                stock: StockFigures { total, remaining: total.saturating_sub(committed) },
                conversion: conversion(&orders),
                orders,
                revenue: Revenue { amount: get(|r| r.revenue), currency: drop.currency.clone() },
                sold_out_after_seconds: row
                    .and_then(|r| r.sold_out_at)
                    .map(|at| (at - drop.starts_at).num_seconds().max(0)),
                timeline: timeline(drop.starts_at, seconds),
            }
        })
        .collect())
}

/// Per-second buckets for the first ten minutes of a drop, per-minute ones up to a
/// day, hourly ones after: each boundary is a whole minute (hour) so the buckets
/// follow each other in time.
pub fn timeline(
    starts_at: DateTime<Utc>,
    seconds: impl Iterator<Item = (DateTime<Utc>, [i64; 3])>,
) -> Vec<TimelineBucket> {
    let ceil = |at: DateTime<Utc>, unit: Duration| {
        let floor = at.duration_trunc(unit).unwrap_or(at);
        if floor == at {
            at
        } else {
            floor + unit
        }
    };
    let minutes_from = ceil(starts_at + Duration::minutes(10), Duration::minutes(1));
    let hours_from = ceil(starts_at + Duration::days(1), Duration::hours(1));
    let mut coarse = BTreeMap::<DateTime<Utc>, [i64; 3]>::new();
    for (second, flows) in seconds {
        let at = if second < minutes_from {
            second
        } else if second < hours_from {
            second.duration_trunc(Duration::minutes(1)).unwrap_or(second)
        } else {
            second.duration_trunc(Duration::hours(1)).unwrap_or(second)
        };
        let bucket = coarse.entry(at).or_default();
        for (sum, n) in bucket.iter_mut().zip(flows) {
            *sum += n;
        }
    }
    coarse
        .into_iter()
        .filter(|(_, b)| b.iter().any(|n| *n != 0))
        .map(|(at, [reserved, confirmed, released])| TimelineBucket {
            at,
            reserved: count(reserved),
            confirmed: count(confirmed),
            released: count(released),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_030 + secs, 0).unwrap()
    }

    #[test]
    fn the_timeline_is_per_second_then_coarser_and_in_order() {
        let start = at(0);
        let seconds = [
            (at(1), [3, 0, 0]),
            (at(2), [1, 2, 0]),
            (at(599), [0, 0, 1]),
            // After ten minutes (the boundary is the next whole minute): per minute.
            (at(640), [1, 0, 0]),
            (at(650), [1, 1, 0]),
            (at(86_400 + 4_000), [0, 1, 0]),
            (at(86_400 + 4_100), [0, 1, 0]),
        ];
        let line = timeline(start, seconds.into_iter());
        let ats: Vec<DateTime<Utc>> = line.iter().map(|b| b.at).collect();
        assert!(ats.windows(2).all(|w| w[0] < w[1]), "{ats:?}");
        assert_eq!(line.len(), 5, "three seconds, a minute, an hour: {line:?}");
        assert_eq!((line[3].reserved, line[3].confirmed), (2, 1), "the minute sums its seconds");
        assert_eq!(line[4].confirmed, 2, "the hour sums its seconds");
        let sum: u64 = line.iter().map(|b| b.reserved).sum();
        assert_eq!(sum, 6);
    }

    #[test]
    fn only_the_owner_and_admins_see_figures() {
        let owner = Uuid::from_u128(1);
        let as_ = |user: u128, role| Identity { user_id: Uuid::from_u128(user), role };
        assert!(may_see(&as_(1, Role::Creator), owner));
        assert!(may_see(&as_(9, Role::Admin), owner));
        assert!(!may_see(&as_(2, Role::Creator), owner));
        assert!(!may_see(&as_(3, Role::Buyer), owner));
    }

    #[test]
    fn both_routes_are_documented_with_their_answers() {
        use utoipa::OpenApi;
        let doc = serde_json::to_value(crate::http::openapi::ApiDoc::openapi()).unwrap();
        for path in ["/v1/drops/{drop_id}/analytics", "/v1/creators/{creator_id}/analytics"] {
            let responses = doc["paths"][path]["get"]["responses"].as_object().unwrap();
            for status in ["200", "401", "404", "429", "503"] {
                assert!(responses.contains_key(status), "{path} documents {status}");
            }
        }
        let schemas = &doc["components"]["schemas"];
        assert_eq!(schemas["DropAnalytics"]["properties"]["conversion"]["maximum"], 1.0);
        for schema in ["CreatorAnalytics", "StockFigures", "OrderCounts", "Revenue", "TimelineBucket"] {
            assert!(schemas[schema].is_object(), "{schema}");
        }
    }

    #[test]
    fn the_consumer_and_the_rebuild_read_the_same_events() {
        let (id, at) = (Uuid::from_u128(1), DateTime::from_timestamp(0, 0).unwrap());
        let events = [
            DomainEvent::DropCreated { drop_id: id, creator_id: id, starts_at: at, ends_at: at, stock: 1 },
            DomainEvent::DropUpdated { drop_id: id, creator_id: id, starts_at: at, ends_at: at, stock: 1 },
            DomainEvent::DropStarted { drop_id: id, creator_id: id },
            DomainEvent::DropEnded { drop_id: id, creator_id: id },
            DomainEvent::FollowChanged { creator_id: id, user_id: id, following: true },
            DomainEvent::OrderReserved {
                order_id: id,
                drop_id: id,
                user_id: id,
                quantity: 1,
                amount: None,
                reserved_at: None,
            },
            DomainEvent::OrderConfirmed { order_id: id, drop_id: id, user_id: id, quantity: 1 },
            DomainEvent::OrderFailed { order_id: id, drop_id: id, user_id: id, quantity: 1, reason: String::new() },
            DomainEvent::OrderCancelled { order_id: id, drop_id: id, user_id: id, quantity: 1 },
            DomainEvent::OrderExpired { order_id: id, drop_id: id, user_id: id, quantity: 1 },
            DomainEvent::PaymentSucceeded { order_id: id, reference: String::new() },
            DomainEvent::PaymentReady { order_id: id, user_id: id },
        ];
        for event in &events {
            assert_eq!(interested(event), ledger::EVENT_TYPES.contains(&event.type_name()), "{event:?}");
        }
    }

    #[test]
    fn conversion_is_zero_without_orders() {
        assert_eq!(conversion(&OrderCounts::default()), 0.0);
        let orders = OrderCounts { reserved: 1, confirmed: 3, failed: 0, cancelled: 0, expired: 0 };
        assert_eq!(conversion(&orders), 0.75);
    }
}
