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
    ("put", "/v1/me/push-subscription"),
    ("delete", "/v1/me/push-subscription"),
    ("post", "/v1/webhooks/payments"),
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
