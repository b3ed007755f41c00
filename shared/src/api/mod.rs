//! Public request and response bodies, exactly as API.md names their fields.
//! Request types reject unknown fields so a client cannot set what it may not.
//! Orders, the catalogue and media are here; the audit log, analytics and
//! notifications have a file each, re-exported, so every body is `api::Name`.

mod analytics;
mod audit;
mod notifications;

pub use analytics::*;
pub use audit::*;
pub use notifications::*;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::problem::{ErrorCode, Problem};

/// Money as integer minor units and an ISO 4217 code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Money {
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 100_000_000_000_i64))]
    pub amount: i64,
    #[cfg_attr(feature = "openapi", schema(pattern = "^[A-Z]{3}$", min_length = 3, max_length = 3))]
    pub currency: String,
}

/// The largest amount one price may name (a billion in major units): with the
/// largest purchase limit, an order's total stays far inside an `i64`.
pub const MAX_AMOUNT: i64 = 100_000_000_000;

impl Money {
    pub fn validate(&self, field: &str) -> Result<(), Problem> {
        if self.amount <= 0 || self.amount > MAX_AMOUNT {
            return Err(invalid(format!("field `{field}.amount`: must be 1 to {MAX_AMOUNT} minor units")));
        }
        let c = self.currency.as_bytes();
        if c.len() != 3 || !c.iter().all(u8::is_ascii_uppercase) {
            return Err(invalid(format!("field `{field}.currency`: must be an ISO 4217 code such as \"EUR\"")));
        }
        Ok(())
    }

    /// The price of `quantity` units; `None` when it would overflow.
    pub fn times(&self, quantity: u32) -> Option<Money> {
        Some(Money { amount: self.amount.checked_mul(i64::from(quantity))?, currency: self.currency.clone() })
    }
}

fn invalid(detail: String) -> Problem {
    Problem::new(ErrorCode::InvalidRequest, Some(detail))
}

/// `{"items": [...], "next_cursor": ...}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

pub const DEFAULT_PAGE_LIMIT: u32 = 20;
pub const MAX_PAGE_LIMIT: u32 = 100;

// ---------------------------------------------------------------- orders

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateOrderRequest {
    /// Units to buy (at most the drop's `max_per_user`, else `purchase_limit_reached`).
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 1_000_000))]
    pub quantity: u32,
}

impl CreateOrderRequest {
    /// No drop holds more than [`MAX_DROP_STOCK`] units, so no purchase asks for more.
    pub fn validate(&self) -> Result<(), Problem> {
        if self.quantity == 0 || self.quantity > MAX_DROP_STOCK {
            return Err(invalid(format!("field `quantity`: must be 1 to {MAX_DROP_STOCK}")));
        }
        Ok(())
    }
}

/// `Idempotency-Key`: 8–255 printable ASCII characters.
pub fn validate_idempotency_key(key: &str) -> Result<(), Problem> {
    let ok_len = (8..=255).contains(&key.len());
    let printable = key.bytes().all(|b| (0x20..=0x7e).contains(&b));
    if ok_len && printable {
        Ok(())
    } else {
        Err(invalid("header `Idempotency-Key`: must be 8 to 255 printable ASCII characters".into()))
    }
}

/// Stored as text in `orders.status` (the `sqlx` feature maps it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr, strum::EnumIter)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "sqlx", derive(sqlx::Type), sqlx(type_name = "text", rename_all = "snake_case"))]
pub enum OrderStatus {
    Reserved,
    Confirmed,
    Failed,
    Cancelled,
    Expired,
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// How the buyer pays: a provider reference and where to go to pay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PaymentHandle {
    pub provider: String,
    pub reference: String,
    /// Where the buyer pays (the sandbox's checkout page).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkout_url: Option<String>,
    /// What the app confirms the payment with (Stripe.js, a mobile SDK); the
    /// order's owner alone ever sees it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
}

/// The 201 body of `POST /v1/drops/{id}/orders`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OrderCreated {
    pub order_id: Uuid,
    pub drop_id: Uuid,
    pub status: OrderStatus,
    pub quantity: u32,
    pub amount: Money,
    pub expires_at: DateTime<Utc>,
    pub payment: Option<PaymentHandle>,
}

/// `GET /v1/orders/{id}` and the items of `GET /v1/orders`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Order {
    pub order_id: Uuid,
    pub drop_id: Uuid,
    pub status: OrderStatus,
    pub quantity: u32,
    pub amount: Money,
    pub expires_at: DateTime<Utc>,
    pub payment: Option<PaymentHandle>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

// ---------------------------------------------------------------- catalogue

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateCreator {
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 200, pattern = "\\S"))]
    pub name: String,
    pub user_id: Uuid,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Creator {
    pub id: Uuid,
    pub name: String,
    /// The creator's account: in the answer to the admin who made the profile only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<Uuid>,
    pub follower_count: u64,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateProduct {
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 200, pattern = "\\S"))]
    pub title: String,
    #[cfg_attr(feature = "openapi", schema(max_length = 10_000))]
    pub description: String,
    #[serde(default)]
    #[cfg_attr(
        feature = "openapi",
        schema(min_length = 1, max_length = 2_000, pattern = "^/v1/media/[0-9a-f]{64}\\.(png|jpg|webp|mp4|webm)$")
    )]
    pub image_url: Option<String>,
    /// Whose product: omitted, the caller's own creator profile; another creator's
    /// only for admins (else 403).
    #[serde(default)]
    pub creator_id: Option<Uuid>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Product {
    pub id: Uuid,
    pub creator_id: Uuid,
    pub title: String,
    pub description: String,
    pub image_url: Option<String>,
    pub created_at: DateTime<Utc>,
}

pub fn validate_text(field: &str, value: &str, max_chars: usize) -> Result<(), Problem> {
    let n = value.trim().chars().count();
    if n == 0 || value.chars().count() > max_chars {
        return Err(invalid(format!("field `{field}`: must be 1 to {max_chars} characters")));
    }
    Ok(())
}

impl CreateProduct {
    pub fn validate(&self) -> Result<(), Problem> {
        validate_text("title", &self.title, 200)?;
        if self.description.chars().count() > 10_000 {
            return Err(invalid("field `description`: at most 10000 characters".into()));
        }
        if let Some(url) = &self.image_url {
            validate_text("image_url", url, 2_000)?;
        }
        Ok(())
    }
}

/// An item of `GET /v1/creators/{id}/followers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Follower {
    pub user_id: Uuid,
    pub followed_at: DateTime<Utc>,
}

/// An item of `GET /v1/me/following`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Following {
    pub creator_id: Uuid,
    pub name: String,
    pub followed_at: DateTime<Utc>,
}

/// `GET /v1/creators/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreatorProfile {
    pub id: Uuid,
    pub name: String,
    pub follower_count: u64,
}

/// Largest stock one drop may have; see DESIGN.md on sharding larger drops.
pub const MAX_DROP_STOCK: u32 = 1_000_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateDrop {
    pub product_id: Uuid,
    pub price: Money,
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 1_000_000))]
    pub stock: u32,
    /// At most `stock`.
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 1_000_000))]
    pub max_per_user: u32,
    pub starts_at: DateTime<Utc>,
    /// After `starts_at`.
    pub ends_at: DateTime<Utc>,
    /// How long a reservation holds its units before they return to stock
    /// (default: the platform's setting, 10 minutes).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 3600))]
    pub hold_seconds: Option<u32>,
}

/// Bounds of `CreateDrop::hold_seconds`.
pub const HOLD_SECONDS: std::ops::RangeInclusive<u32> = 1..=3600;

impl CreateDrop {
    pub fn validate(&self) -> Result<(), Problem> {
        self.price.validate("price")?;
        if self.stock == 0 || self.stock > MAX_DROP_STOCK {
            return Err(invalid(format!("field `stock`: must be 1 to {MAX_DROP_STOCK}")));
        }
        if self.max_per_user == 0 || self.max_per_user > self.stock {
            return Err(invalid("field `max_per_user`: must be 1 to `stock`".into()));
        }
        if self.ends_at <= self.starts_at {
            return Err(invalid("field `ends_at`: must be after `starts_at`".into()));
        }
        if self.hold_seconds.is_some_and(|h| !HOLD_SECONDS.contains(&h)) {
            return Err(invalid("field `hold_seconds`: must be 1 to 3600".into()));
        }
        if self.price.times(self.max_per_user).is_none() {
            return Err(invalid("field `price.amount`: too large".into()));
        }
        Ok(())
    }
}

/// `PATCH /v1/drops/{id}`: any of a drop's terms, before it starts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UpdateDrop {
    pub price: Option<Money>,
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 1_000_000))]
    pub stock: Option<u32>,
    /// At most the drop's `stock` (after this change).
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 1_000_000))]
    pub max_per_user: Option<u32>,
    pub starts_at: Option<DateTime<Utc>>,
    /// After the drop's `starts_at` (after this change).
    pub ends_at: Option<DateTime<Utc>>,
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 3600))]
    pub hold_seconds: Option<u32>,
}

impl UpdateDrop {
    /// The drop as it would be after this update (validated like a new one).
    pub fn apply(&self, current: &CreateDrop) -> Result<CreateDrop, Problem> {
        let next = CreateDrop {
            product_id: current.product_id,
            price: self.price.clone().unwrap_or_else(|| current.price.clone()),
            stock: self.stock.unwrap_or(current.stock),
            max_per_user: self.max_per_user.unwrap_or(current.max_per_user),
            starts_at: self.starts_at.unwrap_or(current.starts_at),
            ends_at: self.ends_at.unwrap_or(current.ends_at),
            hold_seconds: self.hold_seconds.or(current.hold_seconds),
        };
        next.validate()?;
        Ok(next)
    }
}

/// `GET /v1/drops?status=`: which list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr, strum::EnumString)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum DropListing {
    Live,
    Upcoming,
}

impl DropListing {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum DropStatus {
    Upcoming,
    Live,
    SoldOut,
    Ended,
}

impl DropStatus {
    /// A drop's status at `now`, given its window and remaining stock.
    pub fn at(now: DateTime<Utc>, starts_at: DateTime<Utc>, ends_at: DateTime<Utc>, remaining: u32) -> Self {
        if now < starts_at {
            Self::Upcoming
        } else if now >= ends_at {
            Self::Ended
        } else if remaining == 0 {
            Self::SoldOut
        } else {
            Self::Live
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreatorRef {
    pub id: Uuid,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProductRef {
    pub id: Uuid,
    pub title: String,
    pub description: String,
    pub image_url: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StockLevel {
    pub total: u32,
    pub remaining: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DropCard {
    pub id: Uuid,
    pub status: DropStatus,
    pub creator: CreatorRef,
    pub product: ProductRef,
    pub price: Money,
    pub stock: StockLevel,
    pub max_per_user: u32,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
}

/// `GET /v1/drops/{id}/stock`, answered by the inventory object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StockResponse {
    pub total: u32,
    pub remaining: u32,
    pub status: DropStatus,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_key_bounds() {
        assert!(validate_idempotency_key("abcdefgh").is_ok());
        assert!(validate_idempotency_key("abcdefg").is_err());
        assert!(validate_idempotency_key(&"k".repeat(255)).is_ok());
        assert!(validate_idempotency_key(&"k".repeat(256)).is_err());
        assert!(validate_idempotency_key("abcdefg\u{e9}").is_err());
        assert!(validate_idempotency_key("abcd\nefgh").is_err());
    }

    #[test]
    fn drop_status_follows_window_and_stock() {
        let t = |s: i64| DateTime::<Utc>::from_timestamp(s, 0).unwrap();
        assert_eq!(DropStatus::at(t(5), t(10), t(20), 3), DropStatus::Upcoming);
        assert_eq!(DropStatus::at(t(10), t(10), t(20), 3), DropStatus::Live);
        assert_eq!(DropStatus::at(t(15), t(10), t(20), 0), DropStatus::SoldOut);
        assert_eq!(DropStatus::at(t(20), t(10), t(20), 3), DropStatus::Ended);
    }

    #[test]
    fn create_drop_rules() {
        let t = |s: i64| DateTime::<Utc>::from_timestamp(s, 0).unwrap();
        let ok = CreateDrop {
            product_id: Uuid::nil(),
            price: Money { amount: 2500, currency: "EUR".into() },
            stock: 100,
            max_per_user: 2,
            starts_at: t(10),
            ends_at: t(20),
            hold_seconds: None,
        };
        assert!(ok.validate().is_ok());
        assert!(CreateDrop { max_per_user: 101, ..ok.clone() }.validate().is_err());
        assert!(CreateDrop { ends_at: t(10), ..ok.clone() }.validate().is_err());
        assert!(CreateDrop { price: Money { amount: 1, currency: "eur".into() }, ..ok.clone() }.validate().is_err());
        assert!(CreateDrop { stock: 0, ..ok }.validate().is_err());
    }
}

/// Answer of `POST /v1/media` (201). Public: `url` is the file's permanent address.
/// Private: `url` is a signed link valid for an hour, `expires_at` its expiry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UploadedMedia {
    /// `<sha-256 of the bytes, hex>.<png|jpg|webp|mp4|webm>`
    pub key: String,
    pub url: String,
    pub visibility: crate::media::Visibility,
    /// The type the bytes were found to be, whatever the request claimed.
    pub content_type: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
}

/// Body of `POST /v1/private/{key}/links`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateLink {
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 604_800))]
    pub ttl_seconds: u32,
}

impl CreateLink {
    pub fn validate(&self) -> Result<(), Problem> {
        if !(1..=crate::media::MAX_LINK_TTL_SECONDS).contains(&self.ttl_seconds) {
            return Err(invalid(format!(
                "field `ttl_seconds`: must be 1 to {} (a week)",
                crate::media::MAX_LINK_TTL_SECONDS
            )));
        }
        Ok(())
    }
}

/// Answer of `POST /v1/private/{key}/links` (201): a signed link and when it stops working.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PrivateLink {
    pub url: String,
    pub expires_at: DateTime<Utc>,
}
