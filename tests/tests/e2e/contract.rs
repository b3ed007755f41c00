//! The OpenAPI document (through the edge) describes the public routes of API.md.

use drops_tests::Stack;
use reqwest::StatusCode;

/// API.md's public routes that this platform serves today.
const ROUTES: &[(&str, &str)] = &[
    ("get", "/v1/drops"),
    ("get", "/v1/drops/{drop_id}"),
    ("patch", "/v1/drops/{drop_id}"),
    ("get", "/v1/drops/{drop_id}/stock"),
    ("post", "/v1/drops/{drop_id}/orders"),
    ("post", "/v1/drops"),
    ("post", "/v1/products"),
    ("post", "/v1/creators"),
    ("get", "/v1/creators/{creator_id}"),
    ("put", "/v1/creators/{creator_id}/follow"),
    ("delete", "/v1/creators/{creator_id}/follow"),
    ("get", "/v1/creators/{creator_id}/followers"),
    ("get", "/v1/me/following"),
    ("get", "/v1/orders/{order_id}"),
    ("get", "/v1/orders"),
    ("post", "/v1/orders/{order_id}/cancel"),
    ("get", "/v1/notifications"),
    ("post", "/v1/notifications/{id}/read"),
    ("post", "/v1/notifications/read-all"),
    ("get", "/v1/notifications/stream"),
    ("post", "/v1/notifications/stream-ticket"),
    ("put", "/v1/me/push-subscription"),
    ("delete", "/v1/me/push-subscription"),
    ("post", "/v1/webhooks/payments"),
    ("post", "/v1/media"),
    ("get", "/v1/media/{key}"),
    ("get", "/v1/private/{key}"),
    ("post", "/v1/private/{key}/links"),
    ("get", "/v1/admin/audit"),
    ("get", "/v1/admin/audit/verify"),
    ("get", "/v1/drops/{drop_id}/analytics"),
    ("get", "/v1/creators/{creator_id}/analytics"),
];

#[tokio::test]
async fn the_openapi_document_describes_every_public_route() {
    let stack = Stack::shared().await;
    let client = stack.client();
    let doc = client.get("/v1/openapi.json", None).await;
    assert_eq!(doc.status, StatusCode::OK);
    let doc = doc.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for (method, path) in ROUTES {
        assert!(doc["paths"][path][method].is_object(), "{method} {path} is not described");
    }
    let buy = &doc["paths"]["/v1/drops/{drop_id}/orders"]["post"];
    for status in ["201", "400", "401", "403", "409", "413", "422"] {
        assert!(buy["responses"][status].is_object(), "the buy path documents {status}");
    }
    for schema in ["DropCard", "OrderCreated", "Order", "Problem", "Money", "StockResponse"] {
        assert!(doc["components"]["schemas"][schema].is_object(), "schema {schema}");
    }
}

/// The edge's route table (`drops_shared::routes`), the OpenAPI document and the
/// origin's routers name the same routes with the same methods.
#[tokio::test]
async fn the_route_table_the_document_and_the_origin_agree() {
    use drops_shared::routes::PUBLIC;
    let stack = Stack::shared().await;
    let client = stack.client();
    let doc = client.get("/v1/openapi.json", None).await.json();
    let documented: std::collections::BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| item.as_object().unwrap().keys().map(move |m| (path.clone(), m.to_uppercase())))
        .collect();
    let table: std::collections::BTreeSet<(String, String)> = PUBLIC
        .iter()
        .filter(|r| r.documented)
        .flat_map(|r| r.methods.iter().map(|m| (r.path.to_owned(), (*m).to_owned())))
        .collect();
    assert_eq!(documented, table, "the document and the edge's table differ");

    // The edge answers these itself (the drop's inventory object decides them; the
    // edge stores and serves media).
    let edge_alone = [
        "/v1/drops/{drop_id}/stock",
        "/v1/drops/{drop_id}/orders",
        "/v1/media",
        "/v1/media/{key}",
        "/v1/private/{key}",
        "/v1/private/{key}/links",
    ];
    let id = uuid::Uuid::now_v7();
    for route in PUBLIC.iter().filter(|r| !edge_alone.contains(&r.path)) {
        let path = route.path.split('/').map(|s| if s.starts_with('{') { id.to_string() } else { s.to_owned() });
        let url = format!("{}{}", stack.origin_url, path.collect::<Vec<_>>().join("/"));
        for method in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
            let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
            let answer = client.send(client.http.request(m, &url)).await;
            let takes = route.methods.contains(&method);
            assert_eq!(
                answer.status == StatusCode::METHOD_NOT_ALLOWED,
                !takes,
                "the origin answers {method} {} with {}",
                route.path,
                answer.status
            );
        }
    }
}
