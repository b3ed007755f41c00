//! The public paths of the pages the edge caches, defined once: the edge keys its
//! cache on them and the origin names them when it asks for a purge.

use uuid::Uuid;

use crate::api::DropListing;
use crate::cursor::{BadCursor, CursorKey, Limit};

/// A drop's card: `GET /v1/drops/{id}`.
pub fn card(drop_id: Uuid) -> String {
    format!("/v1/drops/{drop_id}")
}

/// A page of a list: `GET /v1/drops?status=…[&limit=…][&cursor=…]`, parameters in
/// this order and encoded. [`canonical_list`] is the one way a request becomes
/// such a path, so one page has one cache key however it was asked for.
pub fn list(status: &str, limit: Option<&str>, cursor: Option<&str>) -> String {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    query.append_pair("status", status);
    if let Some(limit) = limit {
        query.append_pair("limit", limit);
    }
    if let Some(cursor) = cursor {
        query.append_pair("cursor", cursor);
    }
    format!("/v1/drops?{}", query.finish())
}

/// The page a list request asks for, as its canonical path: `status` `live` (the
/// default) or `upcoming`, `limit` per [`Limit`] (the default not written), `cursor`
/// one that `key` signed for that list; each at most once, nothing else. Anything
/// else is refused, with the `detail` of the 400 `invalid_request` to answer, and
/// the edge refuses it before looking at its cache or asking the origin: the pages
/// that can be cached are the real ones, and nobody can make up more.
pub fn canonical_list(query: Option<&str>, key: &CursorKey) -> Result<String, String> {
    let (mut status, mut limit, mut cursor) = (None, None, None);
    for (name, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        let slot = match name.as_ref() {
            "status" => &mut status,
            "limit" => &mut limit,
            "cursor" => &mut cursor,
            other => {
                let other: String = other.chars().take(40).collect();
                return Err(format!("query `{other}`: not a parameter of this list (`status`, `limit`, `cursor`)"));
            }
        };
        if slot.replace(value.into_owned()).is_some() {
            return Err(format!("query `{name}`: given more than once"));
        }
    }
    let listing = match status.as_deref() {
        None => DropListing::Live,
        Some(s) => s.parse().map_err(|_| "query `status`: must be `live` or `upcoming`".to_owned())?,
    };
    let limit = Limit::parse(limit.as_deref()).map_err(|e| e.to_string())?;
    if let Some(c) = &cursor {
        key.verify(listing.as_str(), c).map_err(|_: BadCursor| BadCursor.to_string())?;
    }
    Ok(list(listing.as_str(), limit.canonical().as_deref(), cursor.as_deref()))
}

/// The first page of each list: what a change to any drop may make stale.
pub fn list_first_pages() -> [String; 2] {
    [list(DropListing::Live.as_str(), None, None), list(DropListing::Upcoming.as_str(), None, None)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_stable_and_encoded() {
        assert_eq!(card(Uuid::from_u128(1)), "/v1/drops/00000000-0000-0000-0000-000000000001");
        assert_eq!(list_first_pages(), ["/v1/drops?status=live", "/v1/drops?status=upcoming"]);
        assert_eq!(list("live", Some("5"), Some("a b&c")), "/v1/drops?status=live&limit=5&cursor=a+b%26c");
    }

    #[test]
    fn one_page_has_one_path_and_nothing_else_has_any() {
        use crate::cursor::Position;
        let key = CursorKey::derive(b"secret");
        let live = key.sign("live", Position { key: 1, id: Uuid::from_u128(7) });
        let upcoming = key.sign("upcoming", Position { key: 1, id: Uuid::from_u128(7) });
        let canon = |q: &str| canonical_list(Some(q), &key);
        for q in ["", "status=live", "limit=20", "status=live&limit=020", "limit=20&status=live"] {
            assert_eq!(canon(q).as_deref(), Ok("/v1/drops?status=live"), "{q}");
        }
        assert_eq!(canonical_list(None, &key).as_deref(), Ok("/v1/drops?status=live"));
        assert_eq!(canon("limit=07&status=upcoming").as_deref(), Ok("/v1/drops?status=upcoming&limit=7"));
        assert_eq!(
            canon(&format!("cursor={live}&limit=100")),
            Ok(format!("/v1/drops?status=live&limit=100&cursor={live}"))
        );
        assert_eq!(
            canon(&format!("status=upcoming&cursor={upcoming}")),
            Ok(format!("/v1/drops?status=upcoming&cursor={upcoming}"))
        );
        let forged = format!("{}A", &live[..59]);
        for bad in [
            "status=sideways".to_owned(),
            "status=".to_owned(),
            "limit=0".to_owned(),
            "limit=101".to_owned(),
            "limit=".to_owned(),
            "limit=+5".to_owned(),
            "cursor=".to_owned(),
            "cursor=bm9wZQ".to_owned(),
            format!("cursor={forged}"),
            format!("status=upcoming&cursor={live}"),
            format!("cursor={upcoming}"),
            "status=live&status=live".to_owned(),
            "limit=5&limit=5".to_owned(),
            "colour=blue".to_owned(),
            "status=live&x=".to_owned(),
            "=".to_owned(),
        ] {
            assert!(canon(&bad).is_err(), "{bad} is refused");
        }
    }
}
