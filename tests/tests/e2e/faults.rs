//! Faults: a component dies mid-flow and the platform recovers by itself. Each test
//! starts the server it kills on a port of its own, never the machine's shared one.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use drops_tests::{free_port, Buyer, Stack};
use reqwest::StatusCode;
use uuid::Uuid;

/// A Redis of the test's own, keeping nothing on disk: killed, it comes back empty.
fn start_redis(port: u16) -> Child {
    Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server starts")
}

async fn wait_redis(port: u16) {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    for _ in 0..100 {
        if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
            if redis::cmd("PING").query_async::<String>(&mut conn).await.is_ok() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("redis on {port} never answered");
}

/// Events about `creator_id` not yet published, and not yet handled by each of
/// the `followers` and `audit` groups.
async fn behind(db: &sqlx::PgPool, creator_id: Uuid) -> (i64, i64, i64) {
    let unhandled = |group: &'static str| {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM outbox o WHERE o.aggregate_id = $1 AND NOT EXISTS
               (SELECT 1 FROM processed_events p WHERE p.consumer = $2 AND p.event_id = o.id)",
        )
        .bind(creator_id)
        .bind(group)
        .fetch_one(db)
    };
    let unpublished =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE aggregate_id = $1 AND published_at IS NULL")
            .bind(creator_id)
            .fetch_one(db)
            .await
            .unwrap();
    (unpublished, unhandled("followers").await.unwrap(), unhandled("audit").await.unwrap())
}

/// `/readyz`'s status, once it has said so for a check or two (it answers the last check).
async fn wait_readiness(stack: &Stack, want: StatusCode) {
    let url = format!("{}/readyz", stack.origin_url);
    for _ in 0..100 {
        if reqwest::get(&url).await.is_ok_and(|r| r.status() == want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("/readyz never answered {want}");
}

async fn wait_caught_up(db: &sqlx::PgPool, creator_id: Uuid, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let lag = behind(db, creator_id).await;
        if lag == (0, 0, 0) {
            return started.elapsed();
        }
        assert!(started.elapsed() < within, "still behind after {within:?} (unpublished, followers, audit): {lag:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_flow_resumes_by_itself_after_redis_is_killed_and_comes_back_empty() {
    let stack = Stack::exclusive().await;
    let port = free_port();
    let mut redis = start_redis(port);
    wait_redis(port).await;
    stack.stop_origin().await;
    let url = format!("redis://127.0.0.1:{port}");
    stack.start_origin_with(move |s| s.redis.url = url.into()).await;
    let client = stack.client();
    let db = stack.db().await;
    let (creator_id, _, _) = client.creator().await;
    let follow = |n: usize| {
        let client = client.clone();
        async move {
            for _ in 0..n {
                assert_eq!(client.follow(&Buyer::new(), creator_id).await, StatusCode::NO_CONTENT);
            }
        }
    };
    follow(3).await;
    wait_caught_up(&db, creator_id, Duration::from_secs(20)).await;

    // Killed (SIGKILL) with the flow running; follows go on, into the outbox.
    redis.kill().expect("SIGKILL");
    redis.wait().expect("reaped");
    follow(3).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let down = behind(&db, creator_id).await;
    assert!(down.0 >= 3, "nothing can be published while Redis is down: {down:?}");
    wait_readiness(&stack, StatusCode::SERVICE_UNAVAILABLE).await;

    // Back, empty: the relay publishes what waited, the groups are made again and
    // take it, and what comes after flows too, with nobody restarting anything.
    let mut redis = start_redis(port);
    wait_redis(port).await;
    follow(3).await;
    let took = wait_caught_up(&db, creator_id, Duration::from_secs(30)).await;
    println!("caught up {took:?} after Redis came back");
    wait_readiness(&stack, StatusCode::OK).await;
    let handled: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM outbox o JOIN processed_events p ON p.event_id = o.id AND p.consumer = 'followers'
         WHERE o.aggregate_id = $1",
    )
    .bind(creator_id)
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(handled, 9, "every follow handled once");

    let _ = redis.kill();
    let _ = redis.wait();
    stack.stop_origin().await;
    stack.start_origin().await;
}

/// Events about `creator_id` the `followers` group has handled.
async fn handled_by_followers(db: &sqlx::PgPool, creator_id: Uuid) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM outbox o JOIN processed_events p ON p.event_id = o.id AND p.consumer = 'followers'
         WHERE o.aggregate_id = $1",
    )
    .bind(creator_id)
    .fetch_one(db)
    .await
    .unwrap()
}

async fn readiness_body(stack: &Stack) -> (StatusCode, String) {
    let answer = reqwest::get(format!("{}/readyz", stack.origin_url)).await.expect("/readyz answers");
    (answer.status(), answer.text().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_a_lost_stream_held_for_consumers_are_delivered_again_from_the_outbox() {
    let stack = Stack::exclusive().await;
    let port = free_port();
    let mut redis = start_redis(port);
    wait_redis(port).await;
    let url = format!("redis://127.0.0.1:{port}");
    let on_private_redis = |groups: Option<Vec<String>>| {
        let url = url.clone();
        move |s: &mut drops_origin::config::Settings| {
            s.redis.url = url.into();
            s.events.groups = groups;
            s.events.stall_after = Duration::from_secs(2);
        }
    };
    stack.stop_origin().await;
    stack.start_origin_with(on_private_redis(None)).await;
    let client = stack.client();
    let db = stack.db().await;
    let (creator_id, _, _) = client.creator().await;
    let follow = |n: usize| {
        let client = client.clone();
        async move {
            for _ in 0..n {
                assert_eq!(client.follow(&Buyer::new(), creator_id).await, StatusCode::NO_CONTENT);
            }
        }
    };
    follow(2).await;
    wait_caught_up(&db, creator_id, Duration::from_secs(20)).await;

    // The consumers stop (an instance that runs none of them); the relay goes on, so
    // three follows reach the stream and wait there, unread by their groups.
    stack.stop_origin().await;
    stack.start_origin_with(on_private_redis(Some(vec![]))).await;
    follow(3).await;
    let started = Instant::now();
    while behind(&db, creator_id).await != (0, 3, 3) {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "published, not handled: {:?}",
            behind(&db, creator_id).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Redis is up, the events wait: the flow is stalled, and readiness says so.
    let started = Instant::now();
    loop {
        let (status, body) = readiness_body(&stack).await;
        if status == StatusCode::SERVICE_UNAVAILABLE && body.contains("event flow is stalled") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "/readyz never said the flow stalled: {status} {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Redis dies with the three in its stream, and comes back empty.
    redis.kill().expect("SIGKILL");
    redis.wait().expect("reaped");
    let mut redis = start_redis(port);
    wait_redis(port).await;

    // The consumers run again: the three are delivered from the outbox, each once.
    stack.stop_origin().await;
    stack.start_origin_with(on_private_redis(None)).await;
    follow(1).await;
    let took = wait_caught_up(&db, creator_id, Duration::from_secs(30)).await;
    println!("every group caught up {took:?} after the consumers came back");
    assert_eq!(handled_by_followers(&db, creator_id).await, 6, "every follow handled once");
    let losses: i64 = sqlx::query_scalar("SELECT losses FROM event_stream_progress WHERE stream = $1")
        .bind(format!("{}:events", stack.settings.redis.prefix))
        .fetch_one(&db)
        .await
        .unwrap();
    assert!(losses >= 1, "the loss was noticed and counted");
    wait_readiness(&stack, StatusCode::OK).await;

    let _ = redis.kill();
    let _ = redis.wait();
    stack.stop_origin().await;
    stack.start_origin().await;
}
