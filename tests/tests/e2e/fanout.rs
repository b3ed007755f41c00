//! "Drop is live!" at scale: online followers first, on every origin instance, then the
//! push queue for the rest; each follower told once per drop through restarts; a big
//! audience holding up no one else's news; push services that fail or say "gone".

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use drops_tests::{listen_on, Buyer, Socket, Stack};
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

/// What a push service of the test's own saw.
#[derive(Default)]
struct Seen {
    /// Per user (the `?user=` of their endpoint): the payloads pushed, in order.
    by_user: HashMap<Uuid, Vec<Value>>,
    /// When each request came, per user.
    times: HashMap<Uuid, Vec<Instant>>,
}

#[derive(Clone)]
struct PushService {
    url: String,
    seen: Arc<Mutex<Seen>>,
    in_flight: Arc<AtomicUsize>,
    most_in_flight: Arc<AtomicUsize>,
}

impl PushService {
    /// A push service answering after `delay`: 201, or as the endpoint's `mode` says
    /// (see [`answer`]).
    async fn start(delay: Duration) -> Self {
        use axum::extract::Query;
        let seen: Arc<Mutex<Seen>> = Arc::default();
        let (in_flight, most_in_flight) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (sink, now, most) = (seen.clone(), in_flight.clone(), most_in_flight.clone());
        let app = axum::Router::new().route(
            "/push",
            axum::routing::post(move |Query(q): Query<HashMap<String, String>>, body: axum::body::Bytes| {
                let (sink, now, most) = (sink.clone(), now.clone(), most.clone());
                async move {
                    let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(n, Ordering::SeqCst);
                    tokio::time::sleep(delay).await;
                    now.fetch_sub(1, Ordering::SeqCst);
                    let user = q.get("user").and_then(|u| Uuid::parse_str(u).ok()).unwrap_or_default();
                    let mut seen = sink.lock().unwrap();
                    seen.times.entry(user).or_default().push(Instant::now());
                    let nth = seen.times[&user].len();
                    let status = answer(q.get("mode").map(String::as_str), nth);
                    if (200..300).contains(&status) {
                        let payload = serde_json::from_slice(&body).unwrap_or(Value::Null);
                        seen.by_user.entry(user).or_default().push(payload);
                    }
                    axum::http::StatusCode::from_u16(status).unwrap()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/push", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        PushService { url, seen, in_flight, most_in_flight }
    }

    fn endpoint(&self, user: Uuid) -> String {
        format!("{}?user={user}", self.url)
    }

    /// How many pushes of `drop_id` each user got.
    fn counts(&self, drop_id: Uuid) -> HashMap<Uuid, usize> {
        let seen = self.seen.lock().unwrap();
        seen.by_user
            .iter()
            .map(|(u, ps)| (*u, ps.iter().filter(|p| p["payload"]["drop_id"] == drop_id.to_string()).count()))
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}

/// The status for the `nth` request to an endpoint of `mode`: `gone` says 410, `flaky`
/// fails twice with 503 and then takes the push.
fn answer(mode: Option<&str>, nth: usize) -> u16 {
    match mode {
        Some("gone") => 410,
        Some("flaky") if nth <= 2 => 503,
        _ => 201,
    }
}

async fn subscribe(client: &drops_tests::Client, who: &Buyer, endpoint: &str) {
    let sub = json!({"endpoint": endpoint, "keys": {"p256dh": "BPlaceholderKey", "auth": "placeholder"}});
    assert_eq!(client.subscribe_push(who, &sub).await.status, StatusCode::NO_CONTENT);
}

/// `n` followers of `creator_id` made in bulk, each subscribed to `service`.
async fn audience(db: &sqlx::PgPool, creator_id: Uuid, n: i64, service: &PushService) -> Vec<Uuid> {
    let users: Vec<Uuid> = sqlx::query_scalar(
        "WITH u AS (INSERT INTO users (id, role) SELECT gen_random_uuid(), 'buyer' FROM generate_series(1, $2) RETURNING id),
              f AS (INSERT INTO follows (creator_id, user_id) SELECT $1, id FROM u RETURNING user_id)
         INSERT INTO push_subscriptions (user_id, endpoint, p256dh, auth)
         SELECT user_id, $3 || '?user=' || user_id, 'k', 'a' FROM f RETURNING user_id",
    )
    .bind(creator_id)
    .bind(n)
    .bind(&service.url)
    .fetch_all(db)
    .await
    .unwrap();
    users
}

fn drop_live_count(socket: &Socket, drop_id: Uuid) -> usize {
    socket
        .lock()
        .unwrap()
        .iter()
        .filter(|m| m["kind"] == "drop_live" && m["payload"]["drop_id"] == drop_id.to_string())
        .count()
}

async fn until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Followers online on either of two origin instances hear of the drop on their
/// socket, once, and get no push (though subscribed); the offline one gets one push;
/// someone online who does not follow hears nothing. Replaying the event changes
/// nothing. More users are online than follow, so the fan-out walks the followers
/// and checks them against the online sets.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn online_followers_on_every_instance_hear_first_and_once_and_only_the_rest_are_pushed() {
    let stack = Stack::exclusive().await;
    let client = stack.client();
    let second = stack.extra_origin().await;
    let service = PushService::start(Duration::ZERO).await;
    let (creator_id, creator_token, product) = client.creator().await;
    let (here, there, away) = (Buyer::new(), Buyer::new(), Buyer::new());
    for fan in [&here, &there, &away] {
        assert_eq!(client.follow(fan, creator_id).await, StatusCode::NO_CONTENT);
        subscribe(&client, fan, &service.endpoint(fan.id)).await;
    }
    let (on_first, _t1) = stack.listen(&here).await;
    let (on_second, _t2) = listen_on(&second.url, &there).await;
    let strangers: Vec<Buyer> = (0..4).map(|_| Buyer::new()).collect();
    let mut stranger_sockets = Vec::new();
    for (i, stranger) in strangers.iter().enumerate() {
        let url = if i % 2 == 0 { second.url.clone() } else { stack.origin_url.clone() };
        stranger_sockets.push(listen_on(&url, stranger).await);
    }

    let drop_id = client.drop_starting_in(&creator_token, product, 2).await;
    until("both online followers heard", Duration::from_secs(15), || {
        drop_live_count(&on_first, drop_id) == 1 && drop_live_count(&on_second, drop_id) == 1
    })
    .await;
    until("the offline follower was pushed", Duration::from_secs(15), || {
        service.counts(drop_id).contains_key(&away.id)
    })
    .await;

    // The same DropStarted again (a replay of the log), on top of the first delivery.
    stack.replay_drop_started(drop_id).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(drop_live_count(&on_first, drop_id), 1, "once on the socket of the first instance");
    assert_eq!(drop_live_count(&on_second, drop_id), 1, "once on the socket of the second instance");
    assert_eq!(service.counts(drop_id), HashMap::from([(away.id, 1)]), "one push, to the offline follower only");
    for (socket, _) in &stranger_sockets {
        assert_eq!(drop_live_count(socket, drop_id), 0, "only followers hear of it");
    }
    let live = on_first.lock().unwrap().iter().find(|m| m["kind"] == "drop_live").cloned().unwrap();
    assert_eq!(live["payload"]["creator"]["id"], creator_id.to_string());
    assert!(live["id"].is_string(), "drop_live carries an id for clients to tell repeats by: {live}");
    second.stop().await;
}

/// A fan-out to thousands, with the origin stopped while pushes are going out and
/// started again: every offline follower gets exactly one push, the online ones
/// hear once on their socket and are not pushed. Fewer are online than follow, so
/// the online users are probed against the follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fan_out_stopped_midway_tells_each_follower_exactly_once() {
    let stack = Stack::exclusive().await;
    let client = stack.client();
    let db = stack.db().await;
    // Slow enough (60 ms a push, a host's bound at once) that the stop lands mid-send.
    let service = PushService::start(Duration::from_millis(60)).await;
    let (creator_id, creator_token, product) = client.creator().await;
    let offline = audience(&db, creator_id, 6_000, &service).await;
    let online: Vec<Buyer> = (0..3).map(|_| Buyer::new()).collect();
    let mut sockets = Vec::new();
    for fan in &online {
        assert_eq!(client.follow(fan, creator_id).await, StatusCode::NO_CONTENT);
        subscribe(&client, fan, &service.endpoint(fan.id)).await;
        sockets.push(stack.listen(fan).await);
    }
    let drop_id = client.drop_starting_in(&creator_token, product, 2).await;
    until("pushes started", Duration::from_secs(20), || service.counts(drop_id).len() >= 300).await;
    stack.stop_origin().await;
    let at_stop = service.counts(drop_id).len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stack.start_origin().await;
    until("every offline follower pushed", Duration::from_secs(60), || service.counts(drop_id).len() >= offline.len())
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let counts = service.counts(drop_id);
    println!("{at_stop} of {} followers pushed when the origin stopped", offline.len());
    assert!(at_stop < offline.len(), "the stop came after the last push: it proved nothing");
    assert_eq!(counts.len(), offline.len(), "every offline follower, and no one else");
    assert!(offline.iter().all(|u| counts.get(u) == Some(&1)), "each exactly once");
    for (fan, (socket, _)) in online.iter().zip(&sockets) {
        assert_eq!(drop_live_count(socket, drop_id), 1, "the online follower heard once");
        assert!(!counts.contains_key(&fan.id), "and was not pushed");
    }
}

/// A creator with a big audience goes live; moments later a small creator does. The
/// small creator's follower is pushed long before the big fan-out is through, and the
/// big audience's push service never has more than the per-host bound of requests
/// from the origin at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_big_fan_out_holds_up_no_one_else_and_each_push_service_gets_a_bounded_load() {
    let stack = Stack::exclusive().await;
    let client = stack.client();
    let db = stack.db().await;
    let big_service = PushService::start(Duration::from_millis(100)).await;
    let small_service = PushService::start(Duration::ZERO).await;
    let (big, big_token, big_product) = client.creator().await;
    let big_audience = audience(&db, big, 8_000, &big_service).await;
    let (small, small_token, small_product) = client.creator().await;
    let fan = Buyer::new();
    assert_eq!(client.follow(&fan, small).await, StatusCode::NO_CONTENT);
    subscribe(&client, &fan, &small_service.endpoint(fan.id)).await;

    let big_drop = client.drop_starting_in(&big_token, big_product, 2).await;
    until("the big fan-out is sending", Duration::from_secs(20), || big_service.counts(big_drop).len() >= 200).await;
    let small_drop = client.drop_starting_in(&small_token, small_product, 1).await;
    until("the small creator's follower was pushed", Duration::from_secs(20), || {
        small_service.counts(small_drop).contains_key(&fan.id)
    })
    .await;
    let big_done = big_service.counts(big_drop).len();
    println!("the small fan-out's push arrived when the big one had pushed {big_done} of {}", big_audience.len());
    assert!(big_done < big_audience.len() * 3 / 4, "the small fan-out waited for most of the big one ({big_done})");
    until("the big fan-out is through", Duration::from_secs(60), || {
        big_service.counts(big_drop).len() == big_audience.len()
    })
    .await;
    let most = big_service.most_in_flight.load(Ordering::SeqCst);
    println!("at most {most} requests at once to the big audience's push service");
    assert!((2..=128).contains(&most), "the origin's load on one push service host: {most} at once");
    assert_eq!(big_service.in_flight.load(Ordering::SeqCst), 0);
}

/// A push service that says a subscription is gone (410) loses it; one that fails
/// (503) is retried, with a pause that grows, until the push is delivered; the
/// others are pushed once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gone_subscriptions_are_dropped_and_failed_pushes_retried_with_backoff() {
    let stack = Stack::shared().await;
    let client = stack.client();
    let db = stack.db().await;
    let service = PushService::start(Duration::ZERO).await;
    let (creator_id, creator_token, product) = client.creator().await;
    let fans: Vec<Buyer> = (0..9).map(|_| Buyer::new()).collect();
    let kind = |fan: &Buyer| fans.iter().position(|f| f.id == fan.id).unwrap_or(0) % 3;
    for fan in &fans {
        assert_eq!(client.follow(fan, creator_id).await, StatusCode::NO_CONTENT);
        let mode = ["gone", "flaky", "fine"][kind(fan)];
        subscribe(&client, fan, &format!("{}&mode={mode}", service.endpoint(fan.id))).await;
    }
    let drop_id = client.drop_starting_in(&creator_token, product, 1).await;
    until("the flaky and the fine are pushed", Duration::from_secs(40), || {
        service.counts(drop_id).len() == fans.iter().filter(|f| kind(f) != 0).count()
    })
    .await;
    let seen = service.seen.lock().unwrap().times.clone();
    for fan in &fans {
        let stored: Option<String> = sqlx::query_scalar("SELECT endpoint FROM push_subscriptions WHERE user_id = $1")
            .bind(fan.id)
            .fetch_optional(&db)
            .await
            .unwrap();
        let times = &seen[&fan.id];
        match kind(fan) {
            0 => {
                assert_eq!(times.len(), 1, "a gone subscription is not retried");
                assert_eq!(stored, None, "and is dropped");
            }
            1 => {
                assert_eq!(times.len(), 3, "two failures, then delivered");
                let (first, second) = (times[1] - times[0], times[2] - times[1]);
                assert!(first >= Duration::from_millis(900), "a pause before the retry: {first:?}");
                assert!(second > first, "a longer pause before the next: {first:?} then {second:?}");
                assert!(stored.is_some());
            }
            _ => {
                assert_eq!(times.len(), 1);
                assert!(stored.is_some());
            }
        }
    }
}

/// A buyer with sockets on two origin instances (a phone and a laptop) hears that
/// their order is confirmed on both, once each, and gets no push for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_buyer_on_two_instances_hears_of_their_order_on_both() {
    let stack = Stack::exclusive().await;
    let client = stack.client();
    let second = stack.extra_origin().await;
    let service = PushService::start(Duration::ZERO).await;
    let drop_id = client.create_drop(drops_tests::DropSpec::live(3, 1)).await;
    let p = client.purchase(drop_id).await;
    subscribe(&client, &p.buyer, &service.endpoint(p.buyer.id)).await;
    let (phone, _t1) = stack.listen(&p.buyer).await;
    let (laptop, _t2) = listen_on(&second.url, &p.buyer).await;
    client.pay_event(&p, &format!("evt_{}", Uuid::now_v7().simple()), true).await;
    let confirmed = |socket: &Socket| {
        socket
            .lock()
            .unwrap()
            .iter()
            .filter(|m| m["kind"] == "order_confirmed" && m["payload"]["order_id"] == p.order_id.to_string())
            .count()
    };
    until("both sockets heard", Duration::from_secs(15), || confirmed(&phone) == 1 && confirmed(&laptop) == 1).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!((confirmed(&phone), confirmed(&laptop)), (1, 1), "once on each");
    assert!(service.seen.lock().unwrap().by_user.is_empty(), "online: no push");
    second.stop().await;
}
