//! The public paths of the pages the edge caches, defined once: the edge keys its
//! cache on them and the origin names them when it asks for a purge.

use uuid::Uuid;

use crate::api::DropListing;

/// A drop's card: `GET /v1/drops/{id}`.
pub fn card(drop_id: Uuid) -> String {
    format!("/v1/drops/{drop_id}")
}

/// A page of a list: `GET /v1/drops?status=…[&limit=…][&cursor=…]`, parameters in
/// this order and encoded, so one page has one cache key however it was asked for.
/// (`status` is taken as given: a list the origin refuses is cached as its refusal.)
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
}
