//! Opaque cursors: base64url of `<list>:<uuid>`. A cursor from another list or a
//! tampered one is a 400, never a 500 or a silently wrong page.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use drops_shared::api::{Page, DEFAULT_PAGE_LIMIT, MAX_PAGE_LIMIT};
use drops_shared::problem::ErrorCode;
use serde::Deserialize;
use uuid::Uuid;

use crate::error::ApiError;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    pub limit: Option<String>,
    pub cursor: Option<String>,
}

impl PageQuery {
    pub fn limit(&self) -> Result<i64, ApiError> {
        match &self.limit {
            None => Ok(i64::from(DEFAULT_PAGE_LIMIT)),
            Some(raw) => match raw.parse::<u32>() {
                Ok(n) if (1..=MAX_PAGE_LIMIT).contains(&n) => Ok(i64::from(n)),
                _ => Err(ApiError::code(
                    ErrorCode::InvalidRequest,
                    format!("query `limit`: must be 1 to {MAX_PAGE_LIMIT}"),
                )),
            },
        }
    }

    pub fn after(&self, list: &str) -> Result<Option<Uuid>, ApiError> {
        self.cursor.as_deref().map(|c| decode(list, c)).transpose()
    }
}

/// A cursor over a list ordered by (time, id).
pub fn encode_keyed(list: &str, at: DateTime<Utc>, last: Uuid) -> String {
    URL_SAFE_NO_PAD.encode(format!("{list}:{}:{last}", at.timestamp_micros()))
}

impl PageQuery {
    pub fn after_keyed(&self, list: &str) -> Result<Option<(DateTime<Utc>, Uuid)>, ApiError> {
        let Some(cursor) = self.cursor.as_deref() else { return Ok(None) };
        let bad = || ApiError::code(ErrorCode::InvalidRequest, "query `cursor`: not a cursor of this list");
        let raw = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| bad())?;
        let text = String::from_utf8(raw).map_err(|_| bad())?;
        let rest = text.strip_prefix(list).and_then(|r| r.strip_prefix(':')).ok_or_else(bad)?;
        let (micros, id) = rest.split_once(':').ok_or_else(bad)?;
        let at = micros.parse::<i64>().ok().and_then(DateTime::from_timestamp_micros).ok_or_else(bad)?;
        Ok(Some((at, Uuid::parse_str(id).map_err(|_| bad())?)))
    }
}

/// One page out of `rows`, fetched with `LIMIT limit + 1`: the extra row only
/// says there is more, and the cursor names the last row kept.
pub fn page<T>(mut rows: Vec<T>, limit: i64, cursor_of: impl Fn(&T) -> String) -> Page<T> {
    let more = rows.len() as i64 > limit;
    rows.truncate(limit.max(0) as usize);
    let next_cursor = if more { rows.last().map(cursor_of) } else { None };
    Page { items: rows, next_cursor }
}

pub fn encode(list: &str, last: Uuid) -> String {
    URL_SAFE_NO_PAD.encode(format!("{list}:{last}"))
}

fn decode(list: &str, cursor: &str) -> Result<Uuid, ApiError> {
    let bad = || ApiError::code(ErrorCode::InvalidRequest, "query `cursor`: not a cursor of this list");
    let raw = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| bad())?;
    let text = String::from_utf8(raw).map_err(|_| bad())?;
    let id = text.strip_prefix(list).and_then(|r| r.strip_prefix(':')).ok_or_else(bad)?;
    Uuid::parse_str(id).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_keeps_limit_rows_and_points_past_the_last() {
        let p = page(vec![1, 2, 3], 2, |n| n.to_string());
        assert_eq!((p.items, p.next_cursor), (vec![1, 2], Some("2".to_owned())));
        let p = page(vec![1, 2], 2, |n| n.to_string());
        assert_eq!((p.items, p.next_cursor), (vec![1, 2], None));
    }

    #[test]
    fn round_trip_and_foreign_cursors() {
        let id = Uuid::from_u128(42);
        let c = encode("orders", id);
        let q = PageQuery { limit: None, cursor: Some(c.clone()) };
        assert_eq!(q.after("orders").unwrap(), Some(id));
        assert!(q.after("followers").is_err());
        let tampered = PageQuery { limit: None, cursor: Some(format!("{c}x")) };
        assert!(tampered.after("orders").is_err());
        assert!(PageQuery { limit: Some("0".into()), cursor: None }.limit().is_err());
        assert!(PageQuery { limit: Some("101".into()), cursor: None }.limit().is_err());
        assert_eq!(PageQuery { limit: None, cursor: None }.limit().unwrap(), 20);
        let at = DateTime::from_timestamp_micros(1_800_000_000_123_456).unwrap();
        let keyed = PageQuery { limit: None, cursor: Some(encode_keyed("live", at, id)) };
        assert_eq!(keyed.after_keyed("live").unwrap(), Some((at, id)));
        assert!(keyed.after_keyed("upcoming").is_err());
    }
}
