//! A push sender that dies mid-batch (issue 22): what it had sent is sent again once
//! its lease is over, since a push service cannot be asked what it already has. A
//! batch is 500 users; the sender records what it sent a chunk at a time, so a crash
//! sends at most one chunk twice. Real Postgres, a real HTTP receiver, and a crash:
//! the sender's runtime dropped with its batch half sent.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use drops_origin::config::Settings;
use drops_origin::notifications::push::{self, Priority, SEND_CHUNK};
use drops_origin::tasks::{Next, Workers};
use drops_origin::App;
use uuid::Uuid;

const USERS: usize = 500;
/// The receiver answers this many pushes, then holds every later one unanswered (the
/// sender is killed while they hang).
const ANSWERED_BEFORE_CRASH: usize = 250;

#[derive(Default)]
struct Receiver {
    received: Mutex<HashMap<Uuid, usize>>,
    total: AtomicUsize,
    stalling: AtomicBool,
    released: tokio::sync::Notify,
}

async fn receive(State(r): State<Arc<Receiver>>, Path(user): Path<Uuid>) -> StatusCode {
    *r.received.lock().unwrap().entry(user).or_default() += 1;
    let n = r.total.fetch_add(1, Ordering::SeqCst) + 1;
    if n > ANSWERED_BEFORE_CRASH && r.stalling.load(Ordering::SeqCst) {
        r.released.notified().await;
    }
    StatusCode::CREATED
}

async fn settings() -> Settings {
    support::fresh_settings("push").await
}

/// Runs the push sender until nothing is queued.
async fn send_all(app: &App) {
    let (workers, slots) = (Workers::new(), push::sender_slots());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let next = push::round(&app.notifications, &workers, &slots).await.expect("a sender round");
        let queued: i64 =
            sqlx::query_scalar("SELECT count(*) FROM push_batches").fetch_one(&app.core.db).await.unwrap();
        if queued == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{queued} batch(es) still queued");
        if next == Next::Later {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    workers.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_killed_mid_batch_sends_at_most_one_chunk_twice() {
    let receiver = Arc::new(Receiver::default());
    receiver.stalling.store(true, Ordering::SeqCst);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let routes = Router::new().route("/push/{user}", post(receive)).with_state(receiver.clone());
    tokio::spawn(async move { axum::serve(listener, routes).await });

    let settings = settings().await;
    let app = App::connect(settings.clone()).await.expect("the origin connects and migrates");
    let users: Vec<Uuid> = (0..USERS).map(|_| Uuid::now_v7()).collect();
    let endpoints: Vec<String> = users.iter().map(|u| format!("http://127.0.0.1:{port}/push/{u}")).collect();
    let db = app.core.db.clone();
    sqlx::query("INSERT INTO users (id, role) SELECT unnest($1::uuid[]), 'buyer'")
        .bind(&users)
        .execute(&db)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO push_subscriptions (user_id, endpoint, p256dh, auth)
         SELECT u, e, 'k', 'a' FROM unnest($1::uuid[], $2::text[]) AS s(u, e)",
    )
    .bind(&users)
    .bind(&endpoints)
    .execute(&db)
    .await
    .unwrap();
    let event_id = Uuid::now_v7();
    let mut tx = db.begin().await.unwrap();
    push::store_message(&mut tx, event_id, &serde_json::json!({"kind": "drop_live"})).await.unwrap();
    assert_eq!(push::enqueue(&mut tx, event_id, &users, Priority::Fanout, 0).await.unwrap(), USERS as u64);
    tx.commit().await.unwrap();
    let batches: i64 = sqlx::query_scalar("SELECT count(*) FROM push_batches").fetch_one(&db).await.unwrap();
    assert_eq!(batches, 1, "one batch of {USERS}");

    // The sender on a runtime of its own, dropped (a crash: nothing settles) once the
    // receiver holds pushes past the first 250.
    let crashing = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    crashing.spawn(async move {
        let app = App::connect(settings).await.expect("the sender's origin");
        send_all(&app).await;
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while receiver.total.load(Ordering::SeqCst) <= ANSWERED_BEFORE_CRASH {
        assert!(Instant::now() < deadline, "the sender never got past {ANSWERED_BEFORE_CRASH} pushes");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    crashing.shutdown_background();
    let before_crash = receiver.total.load(Ordering::SeqCst);
    receiver.stalling.store(false, Ordering::SeqCst);
    receiver.released.notify_waiters();

    // Another sender, once the dead one's lease is over.
    sqlx::query("UPDATE push_batches SET next_attempt_at = now()").execute(&db).await.unwrap();
    send_all(&app).await;

    let received = receiver.received.lock().unwrap().clone();
    let missing = users.iter().filter(|u| !received.contains_key(u)).count();
    let twice: usize = received.values().map(|n| n.saturating_sub(1)).sum();
    println!(
        "{before_crash} pushes received before the crash; {twice} of {USERS} users got theirs twice; {missing} none"
    );
    assert_eq!(missing, 0, "every user gets the push");
    assert!(twice <= SEND_CHUNK, "{twice} duplicates: more than one chunk ({SEND_CHUNK}) sent again");
}
