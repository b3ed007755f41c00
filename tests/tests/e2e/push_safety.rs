//! Push endpoints are named by users, so the origin must not become their way into
//! its own network (issue 10, item 6): with private endpoints not allowed (as in
//! production) a subscription naming plain http, a loopback, private or link-local
//! address, or a name that resolves to one, is a 400 naming `endpoint` and stores
//! nothing; a push service's redirect is never followed; and an endpoint that takes
//! the connection and never answers holds up no one else's pushes.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use drops_tests::{Buyer, Stack};
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

fn subscription(endpoint: &str) -> Value {
    json!({"endpoint": endpoint, "keys": {"p256dh": "BPlaceholderKey", "auth": "placeholder"}})
}

async fn stored_endpoint(db: &sqlx::PgPool, user: Uuid) -> Option<String> {
    sqlx::query_scalar("SELECT endpoint FROM push_subscriptions WHERE user_id = $1")
        .bind(user)
        .fetch_optional(db)
        .await
        .expect("push_subscriptions")
}

/// Waits (up to 20 s) until `done` holds, saying `what` if it never does.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A drop of the creator that is already live: its followers who are offline are
/// each queued a push.
async fn go_live(client: &drops_tests::Client, creator_token: &str, product: Uuid) -> Uuid {
    let starts_at = Utc::now() - chrono::Duration::seconds(1);
    let body = json!({"product_id": product, "price": {"amount": 900, "currency": "EUR"}, "stock": 5, "max_per_user": 1,
                      "starts_at": starts_at, "ends_at": starts_at + chrono::Duration::hours(1)});
    let d = client.post_json("/v1/drops", Some(creator_token), body).await;
    assert_eq!(d.status, StatusCode::CREATED, "{:?}", d.json());
    Uuid::parse_str(d.json()["id"].as_str().unwrap()).unwrap()
}

/// Serves `app` on a port of its own; returns its base URL.
async fn serve(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

/// What a push receiver got: each payload, and when it came.
type Pushes = Arc<Mutex<Vec<(Value, Instant)>>>;

/// A push receiver: keeps each push it is sent (and answers 201).
async fn push_receiver() -> (String, Pushes) {
    let got = Pushes::default();
    let sink = got.clone();
    let app = axum::Router::new().route(
        "/push",
        axum::routing::post(move |body: axum::body::Bytes| {
            let sink = sink.clone();
            async move {
                let payload = serde_json::from_slice(&body).unwrap_or(Value::Null);
                sink.lock().unwrap().push((payload, Instant::now()));
                axum::http::StatusCode::CREATED
            }
        }),
    );
    (format!("{}/push", serve(app).await), got)
}

/// When the push about `drop_id` came, if it did.
fn pushed_about(pushes: &Pushes, drop_id: Uuid) -> Option<Instant> {
    pushes.lock().unwrap().iter().find(|(p, _)| p["payload"]["drop_id"] == drop_id.to_string()).map(|(_, at)| *at)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_and_plain_http_push_endpoints_are_refused_naming_the_field_and_store_nothing() {
    let stack = Stack::exclusive().await;
    stack.stop_origin().await;
    stack.start_origin_with(|s| s.notifications.push_allow_private_endpoints = false).await;
    let client = stack.client();
    let db = stack.db().await;

    // A public address is accepted (an IP literal: the test machine may resolve no public name).
    let buyer = Buyer::new();
    let public = "https://8.8.8.8/push/abc";
    let put = client.subscribe_push(&buyer, &subscription(public)).await;
    assert_eq!(put.status, StatusCode::NO_CONTENT, "{:?}", put.json());

    let refused = [
        "http://127.0.0.1:9/push",                  // plain http, and loopback
        "http://8.8.8.8/push",                      // plain http to a public address
        "https://10.0.0.1/push",                    // private
        "https://169.254.169.254/latest/meta-data", // link-local: cloud metadata
        "https://[::ffff:127.0.0.1]/push",          // loopback, IPv4-mapped in IPv6
        "https://[::1]/push",                       // IPv6 loopback
        "https://0x7f.1/push",                      // 127.0.0.1 spelled another way
        "https://localhost/push",                   // a name that resolves to loopback
        "https://no-such-host.invalid/push",        // a name that does not resolve
    ];
    for endpoint in refused {
        let put = client.subscribe_push(&buyer, &subscription(endpoint)).await;
        assert_eq!((put.status, put.code().as_str()), (StatusCode::BAD_REQUEST, "invalid_request"), "{endpoint}");
        assert_eq!(put.header("content-type"), Some("application/problem+json"), "{endpoint}");
        let detail = put.json()["detail"].as_str().unwrap_or_default().to_owned();
        assert!(detail.contains("`endpoint`"), "{endpoint}: {detail}");
        assert_eq!(
            stored_endpoint(&db, buyer.id).await.as_deref(),
            Some(public),
            "{endpoint} replaced the subscription"
        );

        let newcomer = Buyer::new();
        let put = client.subscribe_push(&newcomer, &subscription(endpoint)).await;
        assert_eq!(put.status, StatusCode::BAD_REQUEST, "{endpoint}");
        assert_eq!(stored_endpoint(&db, newcomer.id).await, None, "{endpoint} was stored");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_services_redirect_is_not_followed() {
    let stack = Stack::shared().await;
    let client = stack.client();
    let db = stack.db().await;
    // Where the redirect points: it must never be called.
    let elsewhere_hits = Arc::new(AtomicUsize::new(0));
    let counted = elsewhere_hits.clone();
    let elsewhere = serve(axum::Router::new().fallback(move || {
        counted.fetch_add(1, Ordering::SeqCst);
        async { axum::http::StatusCode::OK }
    }))
    .await;
    let redirects = Arc::new(AtomicUsize::new(0));
    let counted = redirects.clone();
    let target = format!("{elsewhere}/internal/admin");
    let redirecting = serve(axum::Router::new().route(
        "/push",
        axum::routing::post(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            let target = target.clone();
            async move { (axum::http::StatusCode::FOUND, [(axum::http::header::LOCATION, target)]) }
        }),
    ))
    .await;

    let (creator_id, creator_token, product) = client.creator().await;
    let fan = Buyer::new();
    assert_eq!(client.follow(&fan, creator_id).await, StatusCode::NO_CONTENT);
    let put = client.subscribe_push(&fan, &subscription(&format!("{redirecting}/push"))).await;
    assert_eq!(put.status, StatusCode::NO_CONTENT, "{:?}", put.json());
    go_live(&client, &creator_token, product).await;

    eventually("the push service was never called", || redirects.load(Ordering::SeqCst) > 0).await;
    // Once the delivery is settled, whatever the origin did with the answer is done.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let queued: i64 = sqlx::query_scalar("SELECT count(*) FROM push_batches WHERE $1 = ANY(users)")
            .bind(fan.id)
            .fetch_one(&db)
            .await
            .unwrap();
        if queued == 0 || elsewhere_hits.load(Ordering::SeqCst) > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the redirected delivery was never settled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(elsewhere_hits.load(Ordering::SeqCst), 0, "the origin followed the push service's redirect");
    assert_eq!(redirects.load(Ordering::SeqCst), 1, "a redirect is not retried");
    assert_eq!(stored_endpoint(&db, fan.id).await, None, "an endpoint that redirects can never be pushed to: dropped");
}

/// When the origin gave up on the black hole's first request (closed the connection).
type GivenUp = Arc<Mutex<Option<Instant>>>;

/// An endpoint that takes the connection, reads the request and never answers.
/// Returns its URL, whether its first request has arrived, and when the origin
/// gave up on that request.
async fn black_hole() -> (String, Arc<AtomicBool>, GivenUp) {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/push", listener.local_addr().unwrap());
    let (arrived, closed) = (Arc::new(AtomicBool::new(false)), GivenUp::default());
    let (first_arrived, first_closed) = (arrived.clone(), closed.clone());
    tokio::spawn(async move {
        let mut first = true;
        while let Ok((mut conn, _)) = listener.accept().await {
            let watched = first.then(|| (first_arrived.clone(), first_closed.clone()));
            first = false;
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = conn.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    if let Some((arrived, _)) = &watched {
                        arrived.store(true, Ordering::SeqCst);
                    }
                }
                if let Some((_, closed)) = &watched {
                    closed.lock().unwrap().get_or_insert_with(Instant::now);
                }
            });
        }
    });
    (url, arrived, closed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_endpoint_that_never_answers_holds_up_no_one_elses_push() {
    let stack = Stack::shared().await;
    let client = stack.client();
    let (hole, hole_has_request, hole_given_up) = black_hole().await;
    let (endpoint, pushes) = push_receiver().await;

    // Two followers of one creator, pushed in the same round: one endpoint never answers.
    let (first_creator, first_token, first_product) = client.creator().await;
    let stuck = Buyer::new();
    let neighbour = Buyer::new();
    for (who, at) in [(&stuck, &hole), (&neighbour, &endpoint)] {
        assert_eq!(client.follow(who, first_creator).await, StatusCode::NO_CONTENT);
        let put = client.subscribe_push(who, &subscription(at)).await;
        assert_eq!(put.status, StatusCode::NO_CONTENT, "{:?}", put.json());
    }
    // A follower of another creator, whose drop goes live while the first push hangs.
    let (later_creator, later_token, later_product) = client.creator().await;
    let later = Buyer::new();
    assert_eq!(client.follow(&later, later_creator).await, StatusCode::NO_CONTENT);
    let put = client.subscribe_push(&later, &subscription(&endpoint)).await;
    assert_eq!(put.status, StatusCode::NO_CONTENT, "{:?}", put.json());

    let given_up = || *hole_given_up.lock().unwrap();
    let first_drop = go_live(&client, &first_token, first_product).await;
    eventually("the neighbour's push never came", || pushed_about(&pushes, first_drop).is_some()).await;
    eventually("the never-answering endpoint was never called", || hole_has_request.load(Ordering::SeqCst)).await;
    assert_eq!(given_up(), None, "the origin gave up on the endpoint at once");

    // While the origin still waits on the black hole, another creator's drop goes live.
    let later_drop = go_live(&client, &later_token, later_product).await;
    eventually("the later push never came", || pushed_about(&pushes, later_drop).is_some()).await;
    // The origin gives up on the black hole within its request timeout.
    eventually("the origin never gave up on the endpoint", || given_up().is_some()).await;
    let (pushed, gave_up) = (pushed_about(&pushes, later_drop).unwrap(), given_up().unwrap());
    println!("the later push came {:?} before the origin gave up on the black hole", gave_up.duration_since(pushed));
    assert!(
        pushed < gave_up,
        "the later push waited until the origin gave up on the endpoint that never answers \
         ({:?} after it)",
        pushed - gave_up
    );
}
