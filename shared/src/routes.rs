//! Every public route (what apps call through the edge) with the methods it takes.
//! The edge answers from this table what no handler should have to: a path that
//! names no route is 404, a method a route does not take is 405 with `Allow`, and
//! `OPTIONS` lists the methods. The origin's routers and the OpenAPI document are
//! held to it by tests (`tests/tests/e2e/contract.rs`).

/// A public route: its path template (`{name}` stands for one segment) and methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublicRoute {
    pub path: &'static str,
    pub methods: &'static [&'static str],
    /// Described in the OpenAPI document (the document itself and the sandbox's
    /// checkout, a development stand-in for a provider's page, are not).
    pub documented: bool,
}

const fn route(path: &'static str, methods: &'static [&'static str]) -> PublicRoute {
    PublicRoute { path, methods, documented: true }
}

pub const PUBLIC: &[PublicRoute] = &[
    route("/v1/drops", &["GET", "POST"]),
    route("/v1/drops/{drop_id}", &["GET", "PATCH"]),
    route("/v1/drops/{drop_id}/stock", &["GET"]),
    route("/v1/drops/{drop_id}/orders", &["POST"]),
    route("/v1/drops/{drop_id}/analytics", &["GET"]),
    route("/v1/products", &["POST"]),
    route("/v1/creators", &["POST"]),
    route("/v1/creators/{creator_id}", &["GET"]),
    route("/v1/creators/{creator_id}/follow", &["PUT", "DELETE"]),
    route("/v1/creators/{creator_id}/followers", &["GET"]),
    route("/v1/creators/{creator_id}/analytics", &["GET"]),
    route("/v1/me/following", &["GET"]),
    route("/v1/me/push-subscription", &["PUT", "DELETE"]),
    route("/v1/orders", &["GET"]),
    route("/v1/orders/{order_id}", &["GET"]),
    route("/v1/orders/{order_id}/cancel", &["POST"]),
    route("/v1/notifications", &["GET"]),
    route("/v1/notifications/{id}/read", &["POST"]),
    route("/v1/notifications/read-all", &["POST"]),
    route("/v1/notifications/stream", &["GET"]),
    route("/v1/notifications/stream-ticket", &["POST"]),
    route("/v1/media", &["POST"]),
    route("/v1/media/{key}", &["GET"]),
    route("/v1/private/{key}", &["GET"]),
    route("/v1/private/{key}/links", &["POST"]),
    route("/v1/admin/audit", &["GET"]),
    route("/v1/admin/audit/verify", &["GET"]),
    route("/v1/webhooks/payments", &["POST"]),
    PublicRoute { path: "/v1/openapi.json", methods: &["GET"], documented: false },
    PublicRoute { path: "/v1/sandbox/checkout/{reference}", methods: &["GET", "POST"], documented: false },
];

fn matches(template: &str, path: &str) -> bool {
    let mut want = template.split('/');
    let mut got = path.split('/');
    loop {
        match (want.next(), got.next()) {
            (None, None) => return true,
            (Some(w), Some(g)) if w.starts_with('{') && w.ends_with('}') => {
                if g.is_empty() {
                    return false;
                }
            }
            (Some(w), Some(g)) if w == g => {}
            _ => return false,
        }
    }
}

/// The route `path` names, if any (a literal segment wins over a parameter).
pub fn find(path: &str) -> Option<&'static PublicRoute> {
    let mut found = PUBLIC.iter().filter(|r| matches(r.path, path));
    let first = found.next()?;
    Some(
        found
            .fold(first, |best, r| if r.path.matches('{').count() < best.path.matches('{').count() { r } else { best }),
    )
}

impl PublicRoute {
    /// Whether the route answers `method` (HEAD wherever GET; OPTIONS everywhere).
    pub fn takes(&self, method: &str) -> bool {
        self.methods.contains(&method) || method == "OPTIONS" || (method == "HEAD" && self.methods.contains(&"GET"))
    }

    /// The `Allow` header of a 405 or an OPTIONS answer.
    pub fn allow(&self) -> String {
        let mut methods: Vec<&str> = self.methods.to_vec();
        if methods.contains(&"GET") {
            methods.push("HEAD");
        }
        methods.push("OPTIONS");
        methods.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_find_their_route_and_literals_win_over_parameters() {
        assert_eq!(find("/v1/drops").map(|r| r.path), Some("/v1/drops"));
        assert_eq!(find("/v1/drops/abc/stock").map(|r| r.path), Some("/v1/drops/{drop_id}/stock"));
        assert_eq!(find("/v1/notifications/read-all").map(|r| r.path), Some("/v1/notifications/read-all"));
        assert_eq!(find("/v1/notifications/stream").map(|r| r.path), Some("/v1/notifications/stream"));
        assert_eq!(find("/v1/notifications/abc/read").map(|r| r.path), Some("/v1/notifications/{id}/read"));
        assert!(find("/v1/drops/").is_none(), "an empty segment names nothing");
        assert!(find("/v1/drops/a/b").is_none());
        assert!(find("/v1/nothing").is_none());
    }

    #[test]
    fn methods_and_allow() {
        let stock = find("/v1/drops/x/stock").unwrap();
        assert!(stock.takes("GET") && stock.takes("HEAD") && stock.takes("OPTIONS"));
        assert!(!stock.takes("POST") && !stock.takes("get") && !stock.takes("PROPFIND") && !stock.takes("TRACE"));
        assert_eq!(stock.allow(), "GET, HEAD, OPTIONS");
        assert_eq!(find("/v1/me/push-subscription").unwrap().allow(), "PUT, DELETE, OPTIONS");
    }
}
