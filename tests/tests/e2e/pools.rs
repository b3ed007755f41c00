//! The origin's two Postgres pools (issue 22): requests have one, background work
//! (outbox relay, consumer groups, payments, pushes, scheduler) another. With every
//! request connection taken, events still flow and `/readyz` stays ready: a busy
//! request pool is not a dead instance.

use std::time::{Duration, Instant};

use drops_shared::events::DomainEvent;
use drops_tests::{DropSpec, Stack};
use reqwest::StatusCode;

/// Request connections of the restarted origin: all of them are held.
const REQUEST_POOL: u32 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_request_connection_held_events_still_flow_and_the_origin_stays_ready() {
    let stack = Stack::exclusive().await;
    let client = stack.client();
    let drop_id = client.create_drop(DropSpec::live(5, 1)).await;
    stack.wait_consumed(drop_id, "audit").await;
    let stall_after = Duration::from_secs(2);
    stack.stop_origin().await;
    stack
        .start_origin_with(|s| {
            s.database.max_connections = REQUEST_POOL;
            s.database.acquire_timeout_ms = 100;
            s.events.stall_after = stall_after;
        })
        .await;
    let ready = client.send(client.http.get(format!("{}/readyz", stack.origin_url))).await;
    assert_eq!(ready.status, StatusCode::OK, "ready to begin with: {:?}", ready.json());

    let mut held = stack.hold_pool(REQUEST_POOL as usize).await;
    let card = client.send(client.http.get(format!("{}/v1/drops/{drop_id}", stack.origin_url))).await;
    assert_eq!(card.status, StatusCode::SERVICE_UNAVAILABLE, "requests find no connection: {:?}", card.json());

    // A change of the drop written meanwhile by another instance (here: the test, on a
    // connection of its own): this instance's relay and consumers must carry it.
    let db = stack.db().await;
    let (creator_id, starts_at, ends_at, stock): (uuid::Uuid, chrono::DateTime<chrono::Utc>, _, i32) =
        sqlx::query_as("SELECT creator_id, starts_at, ends_at, stock FROM drops WHERE id = $1")
            .bind(drop_id)
            .fetch_one(&db)
            .await
            .unwrap();
    let mut tx = db.begin().await.unwrap();
    let event = DomainEvent::DropUpdated { drop_id, creator_id, starts_at, ends_at, stock: stock as u32 };
    drops_origin::events::record(&mut tx, event).await.unwrap();
    tx.commit().await.unwrap();

    // Probed for longer than it takes an unconsumed event to count as a stall.
    let until = Instant::now() + stall_after * 2;
    let mut probes = 0;
    while Instant::now() < until {
        let ready = client.send(client.http.get(format!("{}/readyz", stack.origin_url))).await;
        assert_eq!(ready.status, StatusCode::OK, "ready while the request pool is held: {:?}", ready.json());
        probes += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stack.wait_consumed(drop_id, "audit").await;
    assert!(probes > 1);
    assert!(held.holding(), "the event flowed while every request connection was held");
    held.release().await;
}
