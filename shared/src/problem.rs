//! Errors as `application/problem+json` (RFC 9457). The `code` strings are part of
//! the public contract (API.md): never rename one.

use serde::{Deserialize, Serialize};

pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

/// The wire name (`code`) is the snake_case variant name, one table for serde and
/// `as_str`: a rename here is a contract change.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    strum::IntoStaticStr,
    strum::EnumString,
    strum::EnumIter,
    strum::Display,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum ErrorCode {
    Unauthorized,
    Forbidden,
    NotFound,
    InvalidRequest,
    PayloadTooLarge,
    IdempotencyKeyMissing,
    IdempotencyKeyReused,
    IdempotencyKeyInProgress,
    SoldOut,
    DropNotStarted,
    DropEnded,
    PurchaseLimitReached,
    OrderNotCancellable,
    DropAlreadyStarted,
    Conflict,
    RateLimited,
    Overloaded,
    InvalidSignature,
    LinkExpired,
    /// The path exists, not with this method (or the method is not one HTTP defines
    /// for this API); the `Allow` header names those that work.
    MethodNotAllowed,
    /// An upload that is not one of the media types taken (judged by its bytes).
    UnsupportedMediaType,
    #[serde(rename = "internal_error")]
    #[strum(serialize = "internal_error")]
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    pub fn status(self) -> u16 {
        match self {
            Self::Unauthorized => 401,
            Self::Forbidden => 403,
            Self::NotFound => 404,
            Self::InvalidRequest | Self::IdempotencyKeyMissing | Self::InvalidSignature => 400,
            Self::PayloadTooLarge => 413,
            Self::IdempotencyKeyReused => 422,
            Self::IdempotencyKeyInProgress
            | Self::SoldOut
            | Self::DropNotStarted
            | Self::DropEnded
            | Self::PurchaseLimitReached
            | Self::OrderNotCancellable
            | Self::DropAlreadyStarted
            | Self::Conflict => 409,
            Self::LinkExpired => 410,
            Self::MethodNotAllowed => 405,
            Self::UnsupportedMediaType => 415,
            Self::RateLimited => 429,
            Self::Overloaded => 503,
            Self::Internal => 500,
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Self::Unauthorized => "Authentication required",
            Self::Forbidden => "Not allowed",
            Self::NotFound => "Not found",
            Self::InvalidRequest => "Invalid request",
            Self::PayloadTooLarge => "Request body too large",
            Self::IdempotencyKeyMissing => "Idempotency-Key header missing",
            Self::IdempotencyKeyReused => "Idempotency key reused with another request",
            Self::IdempotencyKeyInProgress => "A request with this idempotency key is in progress",
            Self::SoldOut => "Sold out",
            Self::DropNotStarted => "Drop has not started",
            Self::DropEnded => "Drop has ended",
            Self::PurchaseLimitReached => "Purchase limit reached",
            Self::OrderNotCancellable => "Order can no longer be cancelled",
            Self::DropAlreadyStarted => "Drop has already started",
            Self::Conflict => "Conflict",
            Self::RateLimited => "Too many requests",
            Self::Overloaded => "Service overloaded",
            Self::InvalidSignature => "Invalid signature",
            Self::LinkExpired => "Link expired",
            Self::MethodNotAllowed => "Method not allowed",
            Self::UnsupportedMediaType => "Unsupported media type",
            Self::Internal => "Internal error",
        }
    }
}

/// An RFC 9457 problem document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Problem {
    #[serde(rename = "type")]
    pub type_uri: String,
    pub title: String,
    pub status: u16,
    pub code: ErrorCode,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// `sold_out`: the units that remain (fewer than were asked for; 0 when none do).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining: Option<u32>,
}

impl Problem {
    pub fn new(code: ErrorCode, detail: impl Into<Option<String>>) -> Self {
        Self {
            type_uri: format!("https://drops.dev/problems/{}", code.as_str()),
            title: code.title().to_owned(),
            status: code.status(),
            code,
            detail: detail.into(),
            remaining: None,
        }
    }

    /// 409 `sold_out`, saying how many units remain.
    pub fn sold_out(remaining: u32) -> Self {
        let detail = match remaining {
            0 => "nothing remains".to_owned(),
            n => format!("only {n} unit(s) remain"),
        };
        Self { remaining: Some(remaining), ..Self::new(ErrorCode::SoldOut, Some(detail)) }
    }

    pub fn with_status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"))
    }
}

impl From<ErrorCode> for Problem {
    fn from(code: ErrorCode) -> Self {
        Problem::new(code, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problem_names_code_type_and_status() {
        let p = Problem::new(ErrorCode::SoldOut, Some("no units left".into()));
        let v: serde_json::Value = serde_json::from_str(&p.to_json()).unwrap();
        assert_eq!(v["type"], "https://drops.dev/problems/sold_out");
        assert_eq!(v["status"], 409);
        assert_eq!(v["code"], "sold_out");
        assert_eq!(v["detail"], "no units left");
    }

    #[test]
    fn serde_name_matches_wire_code() {
        use strum::IntoEnumIterator;
        for code in ErrorCode::iter() {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            assert_eq!(serde_json::from_str::<ErrorCode>(&json).unwrap(), code);
        }
        assert_eq!(ErrorCode::Internal.as_str(), "internal_error");
    }
}
