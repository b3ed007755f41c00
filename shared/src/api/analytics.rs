//! A drop's and a creator's figures (`/v1/drops/{id}/analytics`, `/v1/creators/{id}/analytics`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A drop's units: all it sells, and those neither held nor sold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StockFigures {
    pub total: u64,
    pub remaining: u64,
}

/// Orders by the state they are in now (each order counted once).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OrderCounts {
    pub reserved: u64,
    pub confirmed: u64,
    pub failed: u64,
    pub cancelled: u64,
    pub expired: u64,
}

/// Money taken (confirmed orders), in minor units; 0 when none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Revenue {
    #[cfg_attr(feature = "openapi", schema(minimum = 0))]
    pub amount: i64,
    pub currency: String,
}

/// Units reserved, confirmed and released (failed, cancelled, expired) in one
/// bucket starting `at`: a second during the first minutes of a drop, coarser after.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TimelineBucket {
    pub at: DateTime<Utc>,
    pub reserved: u64,
    pub confirmed: u64,
    pub released: u64,
}

/// Answer of `GET /v1/drops/{drop_id}/analytics`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DropAnalytics {
    pub drop_id: Uuid,
    pub stock: StockFigures,
    pub orders: OrderCounts,
    pub revenue: Revenue,
    /// Confirmed orders ÷ all orders (0 when there are none).
    #[cfg_attr(feature = "openapi", schema(minimum = 0.0, maximum = 1.0))]
    pub conversion: f64,
    /// Seconds from the drop's start until no unit remained; `null` while some do.
    pub sold_out_after_seconds: Option<i64>,
    pub timeline: Vec<TimelineBucket>,
}

/// Answer of `GET /v1/creators/{creator_id}/analytics`: the same figures for each of
/// the creator's drops, and their sums (revenue per currency).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreatorAnalytics {
    pub creator_id: Uuid,
    pub stock: StockFigures,
    pub orders: OrderCounts,
    pub revenue: Vec<Revenue>,
    #[cfg_attr(feature = "openapi", schema(minimum = 0.0, maximum = 1.0))]
    pub conversion: f64,
    pub drops: Vec<DropAnalytics>,
}
