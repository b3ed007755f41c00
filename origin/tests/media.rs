//! The media area against a fresh Postgres database, through the origin's own
//! router: the edge's signed `RecordMedia` calls (idempotent, one file and one row
//! per uploader however many arrive at once) and the rule that a product's
//! `image_url` names a recorded public file. (The edge's side, storing and serving
//! the bytes, is in the end-to-end suite, `tests/tests/e2e/media.rs`.)

mod support;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use chrono::{Duration, Utc};
use drops_origin::catalogue::demo;
use drops_origin::config::Settings;
use drops_origin::{media, App};
use drops_shared::auth::{mint, Identity, Role};
use drops_shared::internal::{Body as _, Endpoint, MediaUpload, RecordMedia};
use drops_shared::media::{MediaKey, MediaType, Visibility};
use drops_shared::signing::{sign_internal, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use secrecy::ExposeSecret;
use tower::ServiceExt;
use uuid::Uuid;

struct Origin {
    app: App,
    router: Router,
    settings: Settings,
}

impl Origin {
    /// An origin on a database of its own, seeded with the demo data.
    async fn fresh() -> Origin {
        let settings = support::fresh_settings("media").await;
        let app = App::connect(settings.clone()).await.expect("the origin connects and migrates");
        let mut tx = app.core.db.begin().await.unwrap();
        demo::seed(&mut tx, 600).await.expect("seeded");
        tx.commit().await.unwrap();
        let router = drops_origin::startup::router(&app);
        Origin { app, router, settings }
    }

    async fn send(&self, req: Request<Body>) -> (StatusCode, serde_json::Value) {
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
    }

    /// `RecordMedia`, signed as the edge signs it.
    async fn record(&self, upload: &MediaUpload) -> (StatusCode, serde_json::Value) {
        let body = upload.to_bytes();
        let now = Utc::now().timestamp();
        let secret = self.settings.edge.edge_to_origin_secret.expose_secret().as_bytes();
        let signature = sign_internal(secret, "POST", RecordMedia::PATH, now, &body);
        let req = Request::post(RecordMedia::PATH)
            .header("content-type", "application/json")
            .header(TIMESTAMP_HEADER, now.to_string())
            .header(SIGNATURE_HEADER, signature)
            .body(Body::from(body))
            .unwrap();
        self.send(req).await
    }

    async fn create_product(&self, role: Role, user: Uuid, image_url: &str) -> (StatusCode, serde_json::Value) {
        let secret = self.settings.auth.jwt_secret.expose_secret().as_bytes();
        let token = mint(Identity { user_id: user, role }, secret, Utc::now() + Duration::hours(1));
        let body = serde_json::json!({"title": "Printed Tee", "description": "A tee.", "image_url": image_url});
        let req = Request::post("/v1/products")
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        self.send(req).await
    }

    async fn count(&self, sql: &str, key: &MediaKey) -> i64 {
        sqlx::query_scalar(sql).bind(key.to_string()).fetch_one(&self.app.core.db).await.unwrap()
    }
}

fn upload(key: MediaKey, visibility: Visibility, by: Uuid) -> MediaUpload {
    MediaUpload {
        key,
        visibility,
        content_type: key.kind().content_type().to_owned(),
        size: 1234,
        uploaded_by: by,
        uploaded_by_role: Role::Creator,
        uploaded_at: Utc::now(),
    }
}

fn random_key(kind: MediaType) -> MediaKey {
    let mut digest = [0u8; 32];
    digest[..16].copy_from_slice(Uuid::new_v4().as_bytes());
    digest[16..].copy_from_slice(Uuid::new_v4().as_bytes());
    MediaKey::from_digest(digest, kind)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn uploads_are_recorded_once_per_file_and_once_per_uploader() {
    let origin = Origin::fresh().await;
    let key = random_key(MediaType::Webp);
    let (alice, bob) = (Uuid::now_v7(), Uuid::now_v7());

    // Unsigned, or signed with another secret: refused, nothing recorded.
    let forged = Request::post(RecordMedia::PATH)
        .header(TIMESTAMP_HEADER, Utc::now().timestamp().to_string())
        .header(SIGNATURE_HEADER, "00".repeat(32))
        .body(Body::from(upload(key, Visibility::Public, alice).to_bytes()))
        .unwrap();
    assert_eq!(origin.send(forged).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(origin.count("SELECT count(*) FROM media WHERE key = $1", &key).await, 0);

    let (status, first) = origin.record(&upload(key, Visibility::Public, alice)).await;
    assert_eq!((status, &first), (StatusCode::OK, &serde_json::json!({"first_upload": true})));
    // The same call again (a retry), and the same bytes from someone else.
    for by in [alice, bob, bob] {
        let (status, again) = origin.record(&upload(key, Visibility::Public, by)).await;
        assert_eq!((status, &again), (StatusCode::OK, &serde_json::json!({"first_upload": false})));
    }
    // The same bytes stored private are another file.
    let (_, private) = origin.record(&upload(key, Visibility::Private, alice)).await;
    assert_eq!(private, serde_json::json!({"first_upload": true}));

    assert_eq!(origin.count("SELECT count(*) FROM media WHERE key = $1", &key).await, 2);
    let first_uploader: Uuid =
        sqlx::query_scalar("SELECT uploaded_by FROM media WHERE key = $1 AND visibility = 'public'")
            .bind(key.to_string())
            .fetch_one(&origin.app.core.db)
            .await
            .unwrap();
    assert_eq!(first_uploader, alice);
    let uploads = "SELECT count(*) FROM media_uploads WHERE key = $1 AND visibility = 'public'";
    assert_eq!(origin.count(uploads, &key).await, 2, "alice and bob, once each");
    assert!(media::is_public(&origin.app.core.db, &key).await.unwrap());

    // Twenty first uploads of one file at once: one is first, all are kept.
    let key = random_key(MediaType::Mp4);
    let uploaders: Vec<Uuid> = (0..20).map(|_| Uuid::now_v7()).collect();
    let calls: Vec<MediaUpload> = uploaders.iter().map(|by| upload(key, Visibility::Public, *by)).collect();
    let answers = futures::future::join_all(calls.iter().map(|call| origin.record(call))).await;
    assert!(answers.iter().all(|(status, _)| *status == StatusCode::OK), "{answers:?}");
    let firsts = answers.iter().filter(|(_, body)| body["first_upload"] == true).count();
    assert_eq!(firsts, 1, "{answers:?}");
    assert_eq!(origin.count("SELECT count(*) FROM media_uploads WHERE key = $1", &key).await, 20);
}

#[tokio::test]
async fn what_the_edge_says_of_a_file_must_agree_with_its_key() {
    let origin = Origin::fresh().await;
    let key = random_key(MediaType::Png);
    let by = Uuid::now_v7();
    let wrong_type = MediaUpload { content_type: "image/jpeg".into(), ..upload(key, Visibility::Public, by) };
    let empty = MediaUpload { size: 0, ..upload(key, Visibility::Public, by) };
    let huge = MediaUpload { size: 10 * 1024 * 1024 + 1, ..upload(key, Visibility::Public, by) };
    for bad in [wrong_type, empty, huge] {
        let (status, body) = origin.record(&bad).await;
        assert_eq!((status, body["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_request")), "{bad:?}");
    }
    assert_eq!(origin.count("SELECT count(*) FROM media WHERE key = $1", &key).await, 0);
}

#[tokio::test]
async fn a_products_image_is_a_recorded_public_file() {
    let origin = Origin::fresh().await;
    let creator = demo::CREATOR_USER;
    let public = random_key(MediaType::Jpeg);
    let private = random_key(MediaType::Png);
    origin.record(&upload(public, Visibility::Public, creator)).await;
    origin.record(&upload(private, Visibility::Private, creator)).await;

    let unknown = random_key(MediaType::Png);
    for bad in [
        unknown.public_path(),
        private.public_path(),
        format!("/v1/private/{private}"),
        format!("https://images.example.com{}", public.public_path()),
        format!("{}?v=2", public.public_path()),
        public.to_string(),
        public.public_path().to_uppercase(),
        "/v1/media/".to_owned(),
    ] {
        let (status, body) = origin.create_product(Role::Creator, creator, &bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_eq!(body["code"], "invalid_request", "{bad}");
        assert!(body["detail"].as_str().unwrap().contains("image_url"), "{bad}: {body}");
    }
    let (status, product) = origin.create_product(Role::Creator, creator, &public.public_path()).await;
    assert_eq!(status, StatusCode::CREATED, "{product}");
    assert_eq!(product["image_url"], public.public_path());
    // The seeded picture is recorded: it passes the same rule.
    let (status, product) = origin.create_product(Role::Creator, creator, &demo::product_image().public_path()).await;
    assert_eq!(status, StatusCode::CREATED, "{product}");
}
