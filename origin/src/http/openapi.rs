//! The OpenAPI document of the public API (`GET /v1/openapi.json`), generated with
//! utoipa from the shared API types. Routes the edge answers itself (cards, lists,
//! stock, the buy path, media) are described here too, since apps see one API; the
//! functions below exist only to carry the descriptions.
#![allow(dead_code)]

use axum::routing::get;
use axum::{Json, Router};
use drops_shared::api::*;
use drops_shared::media::Visibility;
use drops_shared::problem::Problem;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// A file's bytes, as uploaded and served: PNG, JPEG, WebP, MP4 or WebM, judged by
/// the bytes themselves.
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
struct MediaBytes(Vec<u8>);

struct BearerAuth;

/// What every operation shares, written once: problems are
/// `application/problem+json`; any operation may answer 503 `overloaded` (the
/// edge or the origin shedding load, or the origin out of reach), and 429
/// `rate_limited` (per address, writes per user; the webhook its own bound); an operation
/// that reads a body may answer 400 and 413 (a JSON body is held to 64 KiB; another
/// kind, such as an upload, to the bound its operation states); one that needs a
/// token, 401.
struct SharedResponses;

impl Modify for SharedResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let problem = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(PROBLEM, ContentBuilder::new().schema(Some(Ref::from_schema_name("Problem"))).build())
                .build()
        };
        for (path, item) in openapi.paths.paths.iter_mut() {
            let webhook = path == "/v1/webhooks/payments";
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
                &mut item.head,
                &mut item.options,
            ];
            for op in operations.into_iter().flatten() {
                let responses = &mut op.responses.responses;
                for response in responses.values_mut() {
                    if let utoipa::openapi::RefOr::T(response) = response {
                        if let Some(content) = response.content.shift_remove("application/json") {
                            let is_problem = serde_json::to_value(&content.schema)
                                .is_ok_and(|v| v["$ref"] == "#/components/schemas/Problem");
                            let key = if is_problem { PROBLEM } else { "application/json" };
                            response.content.insert(key.to_owned(), content);
                        }
                    }
                }
                let mut add = |status: &str, description: &str| {
                    responses.entry(status.to_owned()).or_insert_with(|| problem(description).into());
                };
                add("503", "`overloaded`: shedding load, or the origin is out of reach; `Retry-After`");
                add(
                    "429",
                    if webhook {
                        "`rate_limited`: past the origin's bound on signed callers; `Retry-After`"
                    } else {
                        "`rate_limited`: too many requests from this address (or, writing, this account); `Retry-After`"
                    },
                );
                match &op.request_body {
                    Some(body) if body.content.contains_key("application/json") => {
                        add("400", "`invalid_request`: malformed JSON, a wrong or unknown field (named in `detail`)");
                        add("413", "`payload_too_large`: bodies are limited to 64 KiB");
                    }
                    Some(_) => {
                        add("400", "`invalid_request`: a malformed request (what is wrong is named in `detail`)");
                        add("413", "`payload_too_large`: the body is over this operation's bound");
                    }
                    None => {}
                }
                if op.security.is_some() {
                    add("401", "`unauthorized`: a missing, forged or expired token");
                }
            }
        }
    }
}

const PROBLEM: &str = drops_shared::problem::PROBLEM_CONTENT_TYPE;

/// An optional header is sent as a string or not at all: a header has no null, so
/// its schema does not offer one (utoipa makes an `Option` parameter nullable).
struct OptionalHeaders;

impl Modify for OptionalHeaders {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::path::ParameterIn;
        use utoipa::openapi::schema::{Schema, SchemaType, Type};
        use utoipa::openapi::RefOr;
        for item in openapi.paths.paths.values_mut() {
            let operations =
                [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch, &mut item.head];
            for op in operations.into_iter().flatten() {
                for param in op.parameters.iter_mut().flatten() {
                    if param.parameter_in != ParameterIn::Header {
                        continue;
                    }
                    if let Some(RefOr::T(Schema::Object(object))) = &mut param.schema {
                        if let SchemaType::Array(types) = &object.schema_type {
                            let kept: Vec<Type> = types.iter().filter(|t| **t != Type::Null).cloned().collect();
                            if let [only] = kept.as_slice() {
                                object.schema_type = SchemaType::Type(only.clone());
                            }
                        }
                    }
                }
            }
        }
    }
}

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
    params(("status" = Option<DropListing>, Query, description = "`live` (default) or `upcoming`"),
           ("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "1 to 100, default 20"),
           ("cursor" = Option<String>, Query, min_length = 60, max_length = 60, pattern = "^[A-Za-z0-9_-]{60}$", description = "`next_cursor` of the page before, as given: signed by the platform for this list (and user); any other string is 400 `invalid_request`")),
    responses((status = 200, description = "Drop cards, live by `ends_at`, upcoming by `starts_at`; `x-cache` HIT|STALE|MISS", body = Page<DropCard>),
              (status = 400, description = "`invalid_request` (answered by the edge, which caches only real pages): `status` not `live` or `upcoming`, `limit` not 1 to 100, a `cursor` not issued for this list, a parameter given twice, or any other parameter", body = Problem)))]
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
           ("Idempotency-Key" = String, Header, min_length = 8, max_length = 255, pattern = "^[\\x20-\\x7e]+$",
            description = "8 to 255 printable ASCII characters; scoped to the drop and the buyer")),
    request_body = CreateOrderRequest,
    responses((status = 201, description = "Reserved, as soon as the drop's inventory committed the hold: `payment` is usually null (see `GET /v1/orders/{order_id}`); replays carry `idempotent-replayed: true`", body = OrderCreated),
              (status = 400, description = "`invalid_request`, `idempotency_key_missing`", body = Problem),
              (status = 401, body = Problem), (status = 403, body = Problem), (status = 413, body = Problem),
              (status = 404, description = "`not_found`: no such drop", body = Problem),
              (status = 409, description = "`sold_out` (with `remaining`), `drop_not_started`, `drop_ended`, `purchase_limit_reached`, `idempotency_key_in_progress`", body = Problem),
              (status = 422, description = "`idempotency_key_reused`", body = Problem),
              (status = 429, description = "`rate_limited`: this buyer is buying too fast; `Retry-After`", body = Problem)))]
fn create_order_doc() {}

#[utoipa::path(post, path = "/v1/drops", tag = "drops", request_body = CreateDrop, security(("bearer" = [])),
    responses((status = 201, body = DropCard), (status = 400, body = Problem), (status = 401, body = Problem),
              (status = 403, body = Problem), (status = 404, body = Problem)))]
fn create_drop_doc() {}

#[utoipa::path(post, path = "/v1/products", tag = "drops", request_body = CreateProduct, security(("bearer" = [])),
    responses((status = 201, body = Product),
              (status = 400, description = "`invalid_request`: a wrong or unknown field, or an `image_url` that is not `/v1/media/<key>` of a public file uploaded with `POST /v1/media`", body = Problem),
              (status = 401, body = Problem),
              (status = 403, description = "`forbidden`: a buyer, a caller with no creator profile, or a creator naming another creator", body = Problem),
              (status = 404, description = "`not_found`: an admin named a creator that does not exist", body = Problem)))]
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

#[utoipa::path(get, path = "/v1/creators/{creator_id}/followers", tag = "creators", security(("bearer" = [])),
    params(("creator_id" = uuid::Uuid, Path), ("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "1 to 100, default 20"),
           ("cursor" = Option<String>, Query, min_length = 60, max_length = 60, pattern = "^[A-Za-z0-9_-]{60}$", description = "`next_cursor` of the page before, as given: signed by the platform for this list (and user); any other string is 400 `invalid_request`")),
    responses((status = 200, description = "Who follows the creator, newest first: for the creator (the account the profile belongs to) and admins only. The count is public (`GET /v1/creators/{creator_id}`); who follows whom is not", body = Page<Follower>),
              (status = 400, description = "`invalid_request`: `limit` not 1 to 100, a `cursor` this list did not issue, or another query parameter", body = Problem),
              (status = 401, description = "`unauthorized`: no valid token", body = Problem),
              (status = 404, description = "`not_found`: no such creator, or the caller is neither that creator nor an admin", body = Problem)))]
fn followers_doc() {}

#[utoipa::path(get, path = "/v1/me/following", tag = "creators", security(("bearer" = [])),
    params(("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "1 to 100, default 20"),
           ("cursor" = Option<String>, Query, min_length = 60, max_length = 60, pattern = "^[A-Za-z0-9_-]{60}$", description = "`next_cursor` of the page before, as given: signed by the platform for this list (and user); any other string is 400 `invalid_request`")),
    responses((status = 200, body = Page<Following>), (status = 400, body = Problem), (status = 401, body = Problem)))]
fn following_doc() {}

#[utoipa::path(get, path = "/v1/orders/{order_id}", tag = "orders", security(("bearer" = [])),
    params(("order_id" = uuid::Uuid, Path)),
    responses((status = 200, description = "The order; while its payment is prepared, `payment` is null and `Retry-After: 1` says when to look again", body = Order),
              (status = 401, body = Problem), (status = 404, description = "Not yours, no such order, or not at the origin yet (seconds after the 201)", body = Problem)))]
fn show_order_doc() {}

#[utoipa::path(get, path = "/v1/orders", tag = "orders", security(("bearer" = [])),
    params(("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "1 to 100, default 20"),
           ("cursor" = Option<String>, Query, min_length = 60, max_length = 60, pattern = "^[A-Za-z0-9_-]{60}$", description = "`next_cursor` of the page before, as given: signed by the platform for this list (and user); any other string is 400 `invalid_request`")),
    responses((status = 200, description = "Newest first", body = Page<Order>), (status = 400, body = Problem), (status = 401, body = Problem)))]
fn list_orders_doc() {}

#[utoipa::path(post, path = "/v1/orders/{order_id}/cancel", tag = "orders", security(("bearer" = [])),
    params(("order_id" = uuid::Uuid, Path)),
    responses((status = 200, description = "Cancelled; the units are back", body = Order), (status = 401, body = Problem),
              (status = 404, body = Problem), (status = 409, description = "`order_not_cancellable`", body = Problem)))]
fn cancel_order_doc() {}

#[utoipa::path(get, path = "/v1/notifications", tag = "notifications", security(("bearer" = [])),
    params(("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "1 to 100, default 20"),
           ("cursor" = Option<String>, Query, min_length = 60, max_length = 60, pattern = "^[A-Za-z0-9_-]{60}$", description = "`next_cursor` of the page before, as given: signed by the platform for this list (and user); any other string is 400 `invalid_request`")),
    responses((status = 200, body = NotificationPage), (status = 400, body = Problem), (status = 401, body = Problem)))]
fn notifications_doc() {}

#[utoipa::path(post, path = "/v1/notifications/{id}/read", tag = "notifications", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path)),
    responses((status = 204), (status = 401, body = Problem), (status = 404, body = Problem)))]
fn read_notification_doc() {}

#[utoipa::path(post, path = "/v1/notifications/read-all", tag = "notifications", security(("bearer" = [])),
    responses((status = 204), (status = 401, body = Problem)))]
fn read_all_notifications_doc() {}

#[utoipa::path(get, path = "/v1/notifications/stream", tag = "notifications", security(("bearer" = [])),
    params(("ticket" = Option<String>, Query, description = "for clients that cannot set headers (browsers): a ticket from `POST /v1/notifications/stream-ticket`, used once; a token in the URL (`access_token`) is refused")),
    responses((status = 101, description = "WebSocket: `{\"kind\", \"payload\", \"id\"?}` messages: `drop_live`, `order_confirmed`, `order_failed`, `order_expired`, `order_payment_ready` (`{\"order_id\", \"payment\"}`). The server closes it with code 4001 (\"token expired\") when the token it was opened with (or that obtained its ticket) expires"),
              (status = 400, description = "`invalid_request`: valid credentials, but not a WebSocket upgrade", body = Problem),
              (status = 401, description = "`unauthorized`: no valid bearer token or ticket (checked before anything else)", body = Problem),
              (status = 429, description = "`rate_limited`: the user already has the most sockets allowed open (5 by default); `Retry-After`", body = Problem)))]
fn notification_stream_doc() {}

#[utoipa::path(post, path = "/v1/notifications/stream-ticket", tag = "notifications", security(("bearer" = [])),
    responses((status = 201, description = "A ticket to open the notification stream once, for clients that cannot set headers on a WebSocket", body = StreamTicket),
              (status = 401, body = Problem)))]
fn stream_ticket_doc() {}

#[utoipa::path(put, path = "/v1/me/push-subscription", tag = "notifications", security(("bearer" = [])),
    request_body = PushSubscription, responses((status = 204), (status = 400, body = Problem), (status = 401, body = Problem)))]
fn put_push_subscription_doc() {}

#[utoipa::path(delete, path = "/v1/me/push-subscription", tag = "notifications", security(("bearer" = [])),
    responses((status = 204), (status = 401, body = Problem)))]
fn delete_push_subscription_doc() {}

#[utoipa::path(post, path = "/v1/webhooks/payments", tag = "payments",
    params(("Stripe-Signature" = String, Header, description = "t=<unix>,v1=<hex>[,v1=…]")),
    request_body(content = serde_json::Value, description = "The provider's event, as signed"),
    responses((status = 200, description = "Applied, duplicate or ignored"), (status = 400, description = "`invalid_signature`", body = Problem)))]
fn payment_webhook_doc() {}

#[utoipa::path(post, path = "/v1/media", tag = "media", security(("bearer" = [])),
    params(("visibility" = Option<Visibility>, Query,
            description = "`public` (default): served to anyone at `/v1/media/<key>`; `private`: only through signed, expiring links")),
    request_body(description = "The file's raw bytes, at most 10 MiB. Its type is judged by its bytes (PNG, JPEG, WebP, MP4, WebM), whatever `Content-Type` says",
        content((inline(MediaBytes) = "application/octet-stream"), (inline(MediaBytes) = "image/png"),
                (inline(MediaBytes) = "image/jpeg"), (inline(MediaBytes) = "image/webp"),
                (inline(MediaBytes) = "video/mp4"), (inline(MediaBytes) = "video/webm"))),
    responses((status = 201, description = "Stored and recorded. Public: `url` is the file's permanent address (`/v1/media/<key>`, the key being the SHA-256 of the bytes: the same bytes always get the same URL). Private: `url` is a signed link valid for an hour, `expires_at` its expiry", body = UploadedMedia,
               headers(("Location" = String, description = "public uploads: the file's `url`"))),
              (status = 400, description = "`invalid_request`: `visibility` is not `public` or `private`, or the query names anything else", body = Problem),
              (status = 401, body = Problem),
              (status = 403, description = "`forbidden`: only creators and admins upload", body = Problem),
              (status = 413, description = "`payload_too_large`: over 10 MiB", body = Problem),
              (status = 415, description = "`unsupported_media_type`: the bytes are not a PNG, JPEG, WebP, MP4 or WebM file", body = Problem),
              (status = 503, description = "`overloaded`: shedding load, or the origin could not record the upload; `Retry-After`", body = Problem)))]
fn upload_media_doc() {}

#[utoipa::path(get, path = "/v1/media/{key}", tag = "media",
    params(("key" = String, Path, pattern = r"^[0-9a-f]{64}\.(png|jpg|webp|mp4|webm)$",
            description = "`<sha-256 of the bytes, hex>.<png|jpg|webp|mp4|webm>`, as `POST /v1/media` answered"),
           ("If-None-Match" = Option<String>, Header, description = "the `ETag` of a copy already held: 304 if it is this file's"),
           ("Range" = Option<String>, Header, description = "one byte range (`bytes=0-1023`, `bytes=1024-`, `bytes=-500`): 206 with just those bytes")),
    responses((status = 200, description = "The bytes, with the type they were found to be. Immutable: `Cache-Control: public, max-age=31536000, immutable`, a strong `ETag`, `Accept-Ranges: bytes`",
               content((inline(MediaBytes) = "image/png"), (inline(MediaBytes) = "image/jpeg"), (inline(MediaBytes) = "image/webp"),
                       (inline(MediaBytes) = "video/mp4"), (inline(MediaBytes) = "video/webm")),
               headers(("ETag" = String, description = "the SHA-256 of the bytes, quoted"),
                       ("Cache-Control" = String, description = "`public, max-age=31536000, immutable`"),
                       ("x-cache" = String, description = "`HIT` (from the edge's cache) or `MISS` (from the bucket)"))),
              (status = 206, description = "The range asked for (`Content-Range: bytes <first>-<last>/<size>`)",
               content((inline(MediaBytes) = "image/png"), (inline(MediaBytes) = "image/jpeg"), (inline(MediaBytes) = "image/webp"),
                       (inline(MediaBytes) = "video/mp4"), (inline(MediaBytes) = "video/webm")),
               headers(("Content-Range" = String, description = "`bytes <first>-<last>/<size>`"))),
              (status = 304, description = "Not modified: `If-None-Match` named this file"),
              (status = 404, description = "`not_found`: no public file has this key (or it is not a key)", body = Problem),
              (status = 416, description = "`Range` starts past the end of the file (`Content-Range: bytes */<size>`)", body = Problem,
               headers(("Content-Range" = String, description = "`bytes */<size>`")))))]
fn get_media_doc() {}

#[utoipa::path(get, path = "/v1/private/{key}", tag = "media",
    params(("key" = String, Path, pattern = r"^[0-9a-f]{64}\.(png|jpg|webp|mp4|webm)$",
            description = "the private file's key"),
           ("exp" = i64, Query, description = "the link's expiry, unix seconds"),
           ("sig" = String, Query, description = "the link's signature (hex HMAC-SHA256 over the key and `exp`)"),
           ("Range" = Option<String>, Header, description = "one byte range, as for public files: 206 with just those bytes")),
    responses((status = 200, description = "The bytes (`Cache-Control: private`), while the link is genuine and unexpired",
               content((inline(MediaBytes) = "image/png"), (inline(MediaBytes) = "image/jpeg"), (inline(MediaBytes) = "image/webp"),
                       (inline(MediaBytes) = "video/mp4"), (inline(MediaBytes) = "video/webm")),
               headers(("Cache-Control" = String, description = "`private`"))),
              (status = 206, description = "The range asked for (`Content-Range: bytes <first>-<last>/<size>`)",
               content((inline(MediaBytes) = "image/png"), (inline(MediaBytes) = "image/jpeg"), (inline(MediaBytes) = "image/webp"),
                       (inline(MediaBytes) = "video/mp4"), (inline(MediaBytes) = "video/webm")),
               headers(("Content-Range" = String, description = "`bytes <first>-<last>/<size>`"))),
              (status = 403, description = "`invalid_signature`: `exp` or `sig` missing, malformed, or not made by the platform for this key and expiry", body = Problem),
              (status = 404, description = "`not_found`: a genuine link to a file that is not stored", body = Problem),
              (status = 410, description = "`link_expired`: a genuine link past its expiry", body = Problem),
              (status = 416, description = "`Range` starts past the end of the file (`Content-Range: bytes */<size>`)", body = Problem,
               headers(("Content-Range" = String, description = "`bytes */<size>`")))))]
fn get_private_media_doc() {}

#[utoipa::path(post, path = "/v1/private/{key}/links", tag = "media", security(("bearer" = [])),
    params(("key" = String, Path, pattern = r"^[0-9a-f]{64}\.(png|jpg|webp|mp4|webm)$",
            description = "the private file's key")),
    request_body = CreateLink,
    responses((status = 201, description = "A signed link to the file, valid `ttl_seconds`", body = PrivateLink),
              (status = 400, description = "`invalid_request`: `ttl_seconds` missing or not 1 to 604800 (a week), or another field", body = Problem),
              (status = 401, body = Problem),
              (status = 404, description = "`not_found`: no such private file, or the caller neither uploaded it nor is an admin", body = Problem)))]
fn private_link_doc() {}

#[utoipa::path(get, path = "/v1/admin/audit", tag = "audit", security(("bearer" = [])),
    params(("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "1 to 100, default 20"),
           ("cursor" = Option<String>, Query, min_length = 60, max_length = 60, pattern = "^[A-Za-z0-9_-]{60}$", description = "`next_cursor` of the page before, as given: signed by the platform for this list (and user); any other string is 400 `invalid_request`"),
           ("subject_id" = Option<String>, Query, max_length = 200,
            description = "only the entries about this subject (an order's, a drop's, a creator's id, a media key)")),
    responses((status = 200, description = "Audit entries, oldest first. `hash` is the hex SHA-256 of `prev_hash` followed by the entry's canonical JSON (every other field, keys sorted, no whitespace, `at` with microseconds)", body = Page<AuditEntry>),
              (status = 400, description = "`invalid_request`: `limit` not 1 to 100, a `cursor` this list did not issue, a `subject_id` over 200 characters, or another query parameter", body = Problem),
              (status = 401, body = Problem),
              (status = 403, description = "`forbidden`: admins only", body = Problem)))]
fn audit_log_doc() {}

#[utoipa::path(get, path = "/v1/admin/audit/verify", tag = "audit", security(("bearer" = [])),
    responses((status = 200, description = "The whole chain recomputed: `first_invalid_seq` is the first entry whose seq, `prev_hash` or `hash` does not hold", body = AuditVerification),
              (status = 401, body = Problem),
              (status = 403, description = "`forbidden`: admins only", body = Problem)))]
fn audit_verify_doc() {}

#[utoipa::path(get, path = "/v1/drops/{drop_id}/analytics", tag = "analytics", security(("bearer" = [])),
    params(("drop_id" = uuid::Uuid, Path)),
    responses((status = 200, description = "The drop's sales figures, at most a few seconds behind its orders: orders by the state they are in now, revenue (confirmed orders), conversion (confirmed ÷ all orders), seconds from the start until no unit remained, and a timeline of units reserved, confirmed and released (per second for the first ten minutes, per minute to a day, hourly after; only buckets with something in them)", body = DropAnalytics),
              (status = 401, body = Problem),
              (status = 404, description = "`not_found`: no such drop, or the caller is neither its creator nor an admin", body = Problem)))]
fn drop_analytics_doc() {}

#[utoipa::path(get, path = "/v1/creators/{creator_id}/analytics", tag = "analytics", security(("bearer" = [])),
    params(("creator_id" = uuid::Uuid, Path)),
    responses((status = 200, description = "The figures of each of the creator's drops (oldest start first) and their sums; revenue per currency", body = CreatorAnalytics),
              (status = 401, body = Problem),
              (status = 404, description = "`not_found`: no such creator, or the caller is neither that creator nor an admin", body = Problem)))]
fn creator_analytics_doc() {}

#[derive(OpenApi)]
#[openapi(
    info(title = "drops", version = "1", description = "Limited drops, sold to a rush of followers."),
    paths(list_drops_doc, show_drop_doc, update_drop_doc, drop_stock_doc, create_order_doc, create_drop_doc,
          create_product_doc, create_creator_doc, show_creator_doc, follow_doc, unfollow_doc, followers_doc,
          following_doc, show_order_doc, list_orders_doc, cancel_order_doc, notifications_doc, read_notification_doc,
          read_all_notifications_doc, notification_stream_doc, stream_ticket_doc, put_push_subscription_doc, delete_push_subscription_doc,
          payment_webhook_doc, upload_media_doc, get_media_doc, get_private_media_doc, private_link_doc,
          audit_log_doc, audit_verify_doc, drop_analytics_doc, creator_analytics_doc),
    // Schemas only parameters name are not collected on their own.
    components(schemas(DropListing, Visibility, UploadedMedia, CreateLink, PrivateLink)),
    modifiers(&BearerAuth, &SharedResponses, &OptionalHeaders)
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

    #[test]
    fn problems_are_problem_json_and_shared_answers_are_everywhere() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let mut operations = 0;
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                operations += 1;
                let responses = op["responses"].as_object().unwrap();
                for (status, response) in responses {
                    let content = response["content"].as_object().cloned().unwrap_or_default();
                    for (media, body) in &content {
                        let problem = body["schema"]["$ref"] == "#/components/schemas/Problem";
                        assert_eq!(problem, media == PROBLEM, "{method} {path} {status}: {media}");
                    }
                }
                assert!(responses.contains_key("503"), "{method} {path} documents 503");
                if op.get("requestBody").is_some() {
                    assert!(responses.contains_key("400") && responses.contains_key("413"), "{method} {path}");
                }
                if op.get("security").is_some() {
                    assert!(responses.contains_key("401"), "{method} {path} documents 401");
                }
            }
        }
        assert!(operations >= 28, "{operations}");
    }

    #[test]
    fn bounds_the_server_enforces_are_declared() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let param = |path: &str, method: &str, name: &str| {
            doc["paths"][path][method]["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == name)
                .cloned()
                .unwrap_or_else(|| panic!("{method} {path} has no {name}"))
        };
        let key = param("/v1/drops/{drop_id}/orders", "post", "Idempotency-Key");
        assert_eq!((key["schema"]["minLength"].as_u64(), key["schema"]["maxLength"].as_u64()), (Some(8), Some(255)));
        for (path, method) in [("/v1/drops", "get"), ("/v1/orders", "get"), ("/v1/notifications", "get")] {
            let limit = param(path, method, "limit");
            assert_eq!(
                (limit["schema"]["minimum"].as_u64(), limit["schema"]["maximum"].as_u64()),
                (Some(1), Some(100))
            );
        }
        let schemas = &doc["components"]["schemas"];
        assert_eq!(schemas["CreateOrderRequest"]["properties"]["quantity"]["minimum"], 1);
        assert_eq!(schemas["Money"]["properties"]["amount"]["minimum"], 1);
        assert_eq!(schemas["Money"]["properties"]["currency"]["pattern"], "^[A-Z]{3}$");
        assert_eq!(schemas["CreateProduct"]["properties"]["title"]["maxLength"], 200);
        let status = param("/v1/drops", "get", "status");
        let listing = match status["schema"]["$ref"].as_str() {
            Some(r) => schemas[r.trim_start_matches("#/components/schemas/")].clone(),
            None => status["schema"].clone(),
        };
        assert!(listing.to_string().contains(r#"["live","upcoming"]"#), "{status} {listing}");
        // Every list's cursor has the shape of the cursors the platform signs.
        let mut cursors = 0;
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                for p in op["parameters"].as_array().into_iter().flatten().filter(|p| p["name"] == "cursor") {
                    cursors += 1;
                    let schema = &p["schema"];
                    assert_eq!(schema["pattern"], drops_shared::cursor::CURSOR_PATTERN, "{method} {path}");
                    let len = drops_shared::cursor::CURSOR_LEN as u64;
                    assert_eq!((schema["minLength"].as_u64(), schema["maxLength"].as_u64()), (Some(len), Some(len)));
                }
            }
        }
        assert!(cursors >= 6, "{cursors}");
    }

    #[test]
    fn a_creators_followers_are_for_the_creator_and_admins() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let op = &doc["paths"]["/v1/creators/{creator_id}/followers"]["get"];
        assert!(op["security"].is_array(), "needs a token");
        for status in ["200", "400", "401", "404"] {
            assert!(op["responses"][status].is_object(), "documents {status}");
        }
        assert!(doc["paths"]["/v1/creators/{creator_id}"]["get"]["security"].is_null(), "the count is public");
    }

    #[test]
    fn audit_routes_are_admin_only_and_name_their_schemas() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        for (path, expected) in [
            ("/v1/admin/audit", &["200", "400", "401", "403", "429", "503"][..]),
            ("/v1/admin/audit/verify", &["200", "401", "403", "429", "503"][..]),
        ] {
            let op = &doc["paths"][path]["get"];
            assert!(op["security"].is_array(), "{path} needs a token");
            for status in expected {
                assert!(op["responses"][status].is_object(), "{path} documents {status}");
            }
        }
        let schemas = &doc["components"]["schemas"];
        for schema in ["AuditEntry", "AuditActor", "AuditSubject", "AuditVerification"] {
            assert!(schemas[schema].is_object(), "{schema}");
        }
        let params = doc["paths"]["/v1/admin/audit"]["get"]["parameters"].as_array().unwrap();
        let subject = params.iter().find(|p| p["name"] == "subject_id").unwrap();
        assert_eq!(subject["schema"]["maxLength"], 200);
    }

    #[test]
    fn media_routes_are_described_with_every_answer_the_edge_gives() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let statuses = |path: &str, method: &str| -> Vec<String> {
            doc["paths"][path][method]["responses"].as_object().unwrap().keys().cloned().collect()
        };
        for (path, method, expected) in [
            ("/v1/media", "post", &["201", "400", "401", "403", "413", "415", "429", "503"][..]),
            ("/v1/media/{key}", "get", &["200", "206", "304", "404", "416", "429", "503"][..]),
            ("/v1/private/{key}", "get", &["200", "206", "403", "404", "410", "416", "429", "503"][..]),
            ("/v1/private/{key}/links", "post", &["201", "400", "401", "404", "413", "429", "503"][..]),
        ] {
            let got = statuses(path, method);
            for status in expected {
                assert!(got.contains(&status.to_string()), "{method} {path} documents {status}: {got:?}");
            }
        }
        // The upload is raw bytes of any of the taken types, not JSON; its 400 and 413
        // are not the JSON bodies' ones.
        let upload = &doc["paths"]["/v1/media"]["post"];
        let content = upload["requestBody"]["content"].as_object().unwrap();
        for media in ["application/octet-stream", "image/png", "image/jpeg", "image/webp", "video/mp4", "video/webm"] {
            assert_eq!(content[media]["schema"]["format"], "binary", "{media}");
        }
        assert!(!content.contains_key("application/json"));
        assert!(upload["responses"]["413"]["description"].as_str().unwrap().contains("10 MiB"));
        let visibility = upload["parameters"].as_array().unwrap().iter().find(|p| p["name"] == "visibility").unwrap();
        assert_eq!(visibility["required"], false);
        let schemas = &doc["components"]["schemas"];
        assert!(schemas["Visibility"].to_string().contains(r#"["public","private"]"#), "{}", schemas["Visibility"]);
        for schema in ["UploadedMedia", "CreateLink", "PrivateLink"] {
            assert!(schemas[schema].is_object(), "{schema}");
        }
        assert_eq!(schemas["CreateLink"]["properties"]["ttl_seconds"]["maximum"], 604_800);
        // A key is the hash and an extension; a link's `exp` and `sig` are required;
        // an optional header is a string, never null.
        let pattern = r"^[0-9a-f]{64}\.(png|jpg|webp|mp4|webm)$";
        for (path, method) in
            [("/v1/media/{key}", "get"), ("/v1/private/{key}", "get"), ("/v1/private/{key}/links", "post")]
        {
            let params = doc["paths"][path][method]["parameters"].as_array().unwrap();
            let key = params.iter().find(|p| p["name"] == "key").unwrap();
            assert_eq!(key["schema"]["pattern"], pattern, "{path}");
            for header in params.iter().filter(|p| p["in"] == "header") {
                assert_eq!(header["schema"]["type"], "string", "{path}: {header}");
            }
        }
        let link = doc["paths"]["/v1/private/{key}"]["get"]["parameters"].as_array().unwrap();
        for name in ["exp", "sig"] {
            assert_eq!(link.iter().find(|p| p["name"] == name).unwrap()["required"], true, "{name}");
        }
        // A product's picture is a public media path.
        let image_url = &schemas["CreateProduct"]["properties"]["image_url"]["pattern"];
        assert!(image_url.as_str().unwrap().starts_with("^/v1/media/"), "{image_url}");
    }
}
