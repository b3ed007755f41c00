//! Paging of every list: `?limit=&cursor=`, with the rules of
//! [`drops_shared::cursor`]: `limit` 1 to 100 (default 20; anything else a 400) and
//! signed cursors, so a cursor the platform did not issue for this list (made up,
//! tampered with, another list's or another user's) is a 400, never a 500 or a
//! silently wrong page. The edge checks the drop lists' cursors with the same key
//! before it caches anything or calls the origin.

use chrono::{DateTime, Utc};
use drops_shared::api::Page;
use drops_shared::cursor::{CursorKey, Limit, Position};
use drops_shared::problem::ErrorCode;
use secrecy::ExposeSecret;
use serde::Deserialize;
use uuid::Uuid;

use crate::http::error::ApiError;
use crate::state::Core;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    pub limit: Option<String>,
    pub cursor: Option<String>,
}

impl PageQuery {
    pub fn limit(&self) -> Result<i64, ApiError> {
        limit(self.limit.as_deref())
    }
}

/// `limit` as the query gave it, or a 400.
pub fn limit(raw: Option<&str>) -> Result<i64, ApiError> {
    Limit::parse(raw).map(|l| i64::from(l.get())).map_err(|e| ApiError::code(ErrorCode::InvalidRequest, e.to_string()))
}

/// The key cursors are signed with (derived from the origin → edge secret, which the
/// edge knows too).
pub fn cursor_key(core: &Core) -> CursorKey {
    CursorKey::derive(core.settings.edge.origin_to_edge_secret.expose_secret().as_bytes())
}

/// One list's cursors. Its name says whose list it is where that matters
/// (`orders-<user id>`), so that nobody pages on with someone else's cursor.
pub struct List {
    key: CursorKey,
    name: String,
}

impl List {
    pub fn new(core: &Core, name: impl Into<String>) -> Self {
        Self::with_key(cursor_key(core), name)
    }

    pub fn with_key(key: CursorKey, name: impl Into<String>) -> Self {
        List { key, name: name.into() }
    }

    /// Where the page asked for starts: after this position, or at the top.
    pub fn position(&self, cursor: Option<&str>) -> Result<Option<Position>, ApiError> {
        cursor
            .map(|c| self.key.verify(&self.name, c))
            .transpose()
            .map_err(|e| ApiError::code(ErrorCode::InvalidRequest, e.to_string()))
    }

    /// For a list ordered by id alone.
    pub fn after(&self, q: &PageQuery) -> Result<Option<Uuid>, ApiError> {
        Ok(self.position(q.cursor.as_deref())?.map(|p| p.id))
    }

    /// For a list ordered by (time, id).
    pub fn after_keyed(&self, q: &PageQuery) -> Result<Option<(DateTime<Utc>, Uuid)>, ApiError> {
        let Some(p) = self.position(q.cursor.as_deref())? else { return Ok(None) };
        let at = DateTime::from_timestamp_micros(p.key)
            .ok_or_else(|| ApiError::code(ErrorCode::InvalidRequest, drops_shared::cursor::BadCursor.to_string()))?;
        Ok(Some((at, p.id)))
    }

    pub fn cursor(&self, last: Uuid) -> String {
        self.key.sign(&self.name, Position { key: 0, id: last })
    }

    pub fn cursor_keyed(&self, at: DateTime<Utc>, last: Uuid) -> String {
        self.key.sign(&self.name, Position { key: at.timestamp_micros(), id: last })
    }

    pub fn cursor_at(&self, at: Position) -> String {
        self.key.sign(&self.name, at)
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
    fn limits() {
        assert!(limit(Some("0")).is_err());
        assert!(limit(Some("101")).is_err());
        assert!(limit(Some("")).is_err());
        assert_eq!(limit(None).unwrap(), 20);
        assert_eq!(limit(Some("100")).unwrap(), 100);
    }

    #[test]
    fn cursors_round_trip_and_others_are_refused() {
        let key = CursorKey::derive(b"secret");
        let orders = List::with_key(key.clone(), "orders-1");
        let id = Uuid::from_u128(42);
        let q = |c: String| PageQuery { limit: None, cursor: Some(c) };
        assert_eq!(orders.after(&q(orders.cursor(id))).unwrap(), Some(id));
        assert!(List::with_key(key.clone(), "orders-2").after(&q(orders.cursor(id))).is_err(), "another user's");
        assert!(orders.after(&q(format!("{}x", orders.cursor(id)))).is_err(), "tampered");
        assert!(orders.after(&q(String::new())).is_err(), "empty");
        let at = DateTime::from_timestamp_micros(1_800_000_000_123_456).unwrap();
        let live = List::with_key(key.clone(), "live");
        assert_eq!(live.after_keyed(&q(live.cursor_keyed(at, id))).unwrap(), Some((at, id)));
        assert!(List::with_key(key, "upcoming").after_keyed(&q(live.cursor_keyed(at, id))).is_err());
        assert_eq!(live.after_keyed(&PageQuery { limit: None, cursor: None }).unwrap(), None);
    }
}
