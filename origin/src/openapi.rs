//! The OpenAPI document of the public API (`GET /v1/openapi.json`), generated with
//! utoipa from the shared API types. Routes the edge answers itself (cards, lists,
//! stock, the buy path) are described here too, since apps see one API; the
//! functions below exist only to carry the descriptions.
#![allow(dead_code)]

use axum::routing::get;
use axum::{Json, Router};
use drops_shared::api::*;
use drops_shared::problem::Problem;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

#[derive(ToSchema)]
struct NotificationItem {
    id: uuid::Uuid,
    /// `order_confirmed`, `order_failed` or `order_expired`.
    kind: String,
    payload: serde_json::Value,
    created_at: chrono::DateTime<chrono::Utc>,
    read_at: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(ToSchema)]
struct NotificationPage {
    items: Vec<NotificationItem>,
    next_cursor: Option<String>,
    unread_count: i64,
}

#[derive(ToSchema)]
struct PushSubscription {
    endpoint: String,
    keys: PushKeys,
}

#[derive(ToSchema)]
struct PushKeys {
    p256dh: String,
    auth: String,
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build()),
        );
    }
}

#[utoipa::path(get, path = "/v1/drops", tag = "drops",
    params(("status" = Option<String>, Query, description = "`live` (default) or `upcoming`"),
           ("limit" = Option<u32>, Query, description = "1 to 100, default 20"), ("cursor" = Option<String>, Query)),
    responses((status = 200, description = "Drop cards, live by `ends_at`, upcoming by `starts_at`; `x-cache` HIT|STALE|MISS", body = Page<DropCard>),
              (status = 400, body = Problem)))]
fn list_drops_doc() {}

#[utoipa::path(get, path = "/v1/drops/{drop_id}", tag = "drops", params(("drop_id" = uuid::Uuid, Path)),
    responses((status = 200, description = "The card (cached at the edge; `ETag`, `x-cache`)", body = DropCard),
              (status = 304, description = "Not modified (If-None-Match)"), (status = 404, body = Problem)))]
fn show_drop_doc() {}

#[utoipa::path(patch, path = "/v1/drops/{drop_id}", tag = "drops", params(("drop_id" = uuid::Uuid, Path)),
    request_body = UpdateDrop, security(("bearer" = [])),
    responses((status = 200, body = DropCard), (status = 400, body = Problem), (status = 401, body = Problem),
              (status = 403, body = Problem), (status = 404, body = Problem),
              (status = 409, description = "`drop_already_started`", body = Problem)))]
fn update_drop_doc() {}

#[utoipa::path(get, path = "/v1/drops/{drop_id}/stock", tag = "drops", params(("drop_id" = uuid::Uuid, Path)),
    responses((status = 200, description = "Straight from the inventory, uncached", body = StockResponse),
              (status = 404, body = Problem)))]
fn drop_stock_doc() {}

#[utoipa::path(post, path = "/v1/drops/{drop_id}/orders", tag = "orders", security(("bearer" = [])),
    params(("drop_id" = uuid::Uuid, Path),
           ("Idempotency-Key" = String, Header, description = "8 to 255 printable ASCII characters")),
    request_body = CreateOrderRequest,
    responses((status = 201, description = "Reserved, as soon as the drop's inventory committed the hold: `payment` is usually null (see `GET /v1/orders/{order_id}`); replays carry `idempotent-replayed: true`", body = OrderCreated),
              (status = 400, description = "`invalid_request`, `idempotency_key_missing`", body = Problem),
              (status = 401, body = Problem), (status = 403, body = Problem), (status = 413, body = Problem),
              (status = 409, description = "`sold_out` (with `remaining`), `drop_not_started`, `drop_ended`, `purchase_limit_reached`, `idempotency_key_in_progress`", body = Problem),
              (status = 422, description = "`idempotency_key_reused`", body = Problem)))]
fn create_order_doc() {}

#[utoipa::path(post, path = "/v1/drops", tag = "drops", request_body = CreateDrop, security(("bearer" = [])),
    responses((status = 201, body = DropCard), (status = 400, body = Problem), (status = 401, body = Problem),
              (status = 403, body = Problem), (status = 404, body = Problem)))]
fn create_drop_doc() {}

#[utoipa::path(post, path = "/v1/products", tag = "drops", request_body = CreateProduct, security(("bearer" = [])),
    responses((status = 201, body = Product), (status = 400, body = Problem), (status = 401, body = Problem),
              (status = 403, body = Problem)))]
fn create_product_doc() {}

#[utoipa::path(post, path = "/v1/creators", tag = "creators", request_body = CreateCreator, security(("bearer" = [])),
    responses((status = 201, body = Creator), (status = 400, body = Problem), (status = 401, body = Problem),
              (status = 403, body = Problem), (status = 409, body = Problem)))]
fn create_creator_doc() {}

#[utoipa::path(get, path = "/v1/creators/{creator_id}", tag = "creators", params(("creator_id" = uuid::Uuid, Path)),
    responses((status = 200, description = "`follower_count` may be seconds old", body = Creator), (status = 404, body = Problem)))]
fn show_creator_doc() {}

#[utoipa::path(put, path = "/v1/creators/{creator_id}/follow", tag = "creators", security(("bearer" = [])),
    params(("creator_id" = uuid::Uuid, Path)),
    responses((status = 204, description = "Following (idempotent)"), (status = 401, body = Problem), (status = 404, body = Problem)))]
fn follow_doc() {}

#[utoipa::path(delete, path = "/v1/creators/{creator_id}/follow", tag = "creators", security(("bearer" = [])),
    params(("creator_id" = uuid::Uuid, Path)),
    responses((status = 204, description = "Not following (idempotent)"), (status = 401, body = Problem), (status = 404, body = Problem)))]
fn unfollow_doc() {}

#[utoipa::path(get, path = "/v1/creators/{creator_id}/followers", tag = "creators",
    params(("creator_id" = uuid::Uuid, Path), ("limit" = Option<u32>, Query), ("cursor" = Option<String>, Query)),
    responses((status = 200, description = "Newest first", body = Page<Follower>), (status = 400, body = Problem), (status = 404, body = Problem)))]
fn followers_doc() {}

#[utoipa::path(get, path = "/v1/me/following", tag = "creators", security(("bearer" = [])),
    params(("limit" = Option<u32>, Query), ("cursor" = Option<String>, Query)),
    responses((status = 200, body = Page<Following>), (status = 401, body = Problem)))]
fn following_doc() {}

#[utoipa::path(get, path = "/v1/orders/{order_id}", tag = "orders", security(("bearer" = [])),
    params(("order_id" = uuid::Uuid, Path)),
    responses((status = 200, description = "The order; while its payment is prepared, `payment` is null and `Retry-After: 1` says when to look again", body = Order),
              (status = 401, body = Problem), (status = 404, description = "Not yours, no such order, or not at the origin yet (seconds after the 201)", body = Problem)))]
fn show_order_doc() {}

#[utoipa::path(get, path = "/v1/orders", tag = "orders", security(("bearer" = [])),
    params(("limit" = Option<u32>, Query), ("cursor" = Option<String>, Query)),
    responses((status = 200, description = "Newest first", body = Page<Order>), (status = 400, body = Problem), (status = 401, body = Problem)))]
fn list_orders_doc() {}

#[utoipa::path(post, path = "/v1/orders/{order_id}/cancel", tag = "orders", security(("bearer" = [])),
    params(("order_id" = uuid::Uuid, Path)),
    responses((status = 200, description = "Cancelled; the units are back", body = Order), (status = 401, body = Problem),
              (status = 404, body = Problem), (status = 409, description = "`order_not_cancellable`", body = Problem)))]
fn cancel_order_doc() {}

#[utoipa::path(get, path = "/v1/notifications", tag = "notifications", security(("bearer" = [])),
    params(("limit" = Option<u32>, Query), ("cursor" = Option<String>, Query)),
    responses((status = 200, body = NotificationPage), (status = 401, body = Problem)))]
fn notifications_doc() {}

#[utoipa::path(post, path = "/v1/notifications/{id}/read", tag = "notifications", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path)),
    responses((status = 204), (status = 401, body = Problem), (status = 404, body = Problem)))]
fn read_notification_doc() {}

#[utoipa::path(post, path = "/v1/notifications/read-all", tag = "notifications", security(("bearer" = [])),
    responses((status = 204), (status = 401, body = Problem)))]
fn read_all_notifications_doc() {}

#[utoipa::path(get, path = "/v1/notifications/stream", tag = "notifications", security(("bearer" = [])),
    params(("access_token" = Option<String>, Query, description = "the token, for clients that cannot set headers")),
    responses((status = 101, description = "WebSocket: `{\"kind\", \"payload\", \"id\"?}` messages: `drop_live`, `order_confirmed`, `order_failed`, `order_expired`, `order_payment_ready` (`{\"order_id\", \"payment\"}`)"), (status = 401, body = Problem)))]
fn notification_stream_doc() {}

#[utoipa::path(put, path = "/v1/me/push-subscription", tag = "notifications", security(("bearer" = [])),
    request_body = PushSubscription, responses((status = 204), (status = 400, body = Problem), (status = 401, body = Problem)))]
fn put_push_subscription_doc() {}

#[utoipa::path(delete, path = "/v1/me/push-subscription", tag = "notifications", security(("bearer" = [])),
    responses((status = 204), (status = 401, body = Problem)))]
fn delete_push_subscription_doc() {}

#[utoipa::path(post, path = "/v1/webhooks/payments", tag = "payments",
    params(("Stripe-Signature" = String, Header, description = "t=<unix>,v1=<hex>[,v1=…]")),
    responses((status = 200, description = "Applied, duplicate or ignored"), (status = 400, description = "`invalid_signature`", body = Problem)))]
fn payment_webhook_doc() {}

#[derive(OpenApi)]
#[openapi(
    info(title = "drops", version = "1", description = "Limited drops, sold to a rush of followers."),
    paths(list_drops_doc, show_drop_doc, update_drop_doc, drop_stock_doc, create_order_doc, create_drop_doc,
          create_product_doc, create_creator_doc, show_creator_doc, follow_doc, unfollow_doc, followers_doc,
          following_doc, show_order_doc, list_orders_doc, cancel_order_doc, notifications_doc, read_notification_doc,
          read_all_notifications_doc, notification_stream_doc, put_push_subscription_doc, delete_push_subscription_doc,
          payment_webhook_doc),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

pub fn router() -> Router {
    Router::new().route("/v1/openapi.json", get(|| async { Json(ApiDoc::openapi()) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_names_every_route_with_its_schemas() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        assert!(doc["paths"]["/v1/drops/{drop_id}/orders"]["post"]["responses"]["422"].is_object());
        assert!(doc["components"]["schemas"]["DropCard"].is_object());
        assert!(doc["components"]["schemas"]["Problem"].is_object());
    }
}
