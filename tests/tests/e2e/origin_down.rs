//! Invariant 5: no order is lost when the origin stops mid-flow. The edge answers
//! the buyer without a payment and keeps forwarding until the origin has the order;
//! a payment committed just before the origin stopped still reaches the edge after.
//!
//! The tests here stop and start the one origin, so each runs alone
//! ([`Stack::exclusive`]).

use std::time::{Duration, Instant};

use drops_tests::{Buyer, DropSpec, Stack};
use reqwest::StatusCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reservations_made_while_the_origin_is_down_arrive_once_it_is_back() {
    let stack = Stack::exclusive().await;
    let client = stack.client();
    let drop_id = client.create_drop(DropSpec::live(20, 1)).await;
    let db = stack.db().await;

    stack.stop_origin().await;
    let buyers: Vec<Buyer> = (0..5).map(|_| Buyer::new()).collect();
    let mut order_ids = Vec::new();
    for b in &buyers {
        let a = client.buy(b, drop_id, &format!("down-{}", b.id), 1).await;
        assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.json());
        assert!(a.json()["payment"].is_null(), "no payment while the origin is away");
        order_ids.push(a.json()["order_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(client.remaining(drop_id).await, 15, "the reservations stand");
    let unseen = client.get(&format!("/v1/orders/{}", order_ids[0]), Some(&buyers[0].token)).await;
    assert_eq!(unseen.status, StatusCode::SERVICE_UNAVAILABLE);

    stack.start_origin().await;
    let started = Instant::now();
    for (b, id) in buyers.iter().zip(&order_ids) {
        loop {
            let a = client.get(&format!("/v1/orders/{id}"), Some(&b.token)).await;
            if a.status == StatusCode::OK {
                assert_eq!(a.json()["status"], "reserved");
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "order {id} never reached the origin");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    println!("all orders arrived {:?} after the origin came back", started.elapsed());
    // Exactly once: one row per reservation, even though the edge retried.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM orders WHERE drop_id = $1")
        .bind(drop_id)
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(rows, 5);
    let events: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM outbox WHERE event_type = 'OrderReserved' AND payload->'data'->>'drop_id' = $1",
    )
    .bind(drop_id.to_string())
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(events, 5, "one OrderReserved event per order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_committed_before_a_crash_sells_the_hold_once_after_restart() {
    use drops_shared::internal::HoldState;
    let stack = Stack::exclusive().await;
    // The origin publishes its outbox once at start and then only every minute, so
    // that stopping it right after the webhook lands between the commit and the edge
    // sync, every time.
    stack.stop_origin().await;
    stack.start_origin_with(|s| s.events.relay_interval_ms = 60_000).await;
    let client = stack.client();
    let drop_id = client.create_drop(DropSpec::live(5, 1)).await;
    let p = client.purchase(drop_id).await;
    let paid = client.pay_event(&p, &format!("evt_crash_{}", p.order_id.simple()), true).await;
    assert_eq!(paid.status, StatusCode::OK);
    // Committed in Postgres, not yet told to the edge.
    assert_eq!(client.order(&p.buyer, p.order_id).await.json()["status"], "confirmed");
    let held = stack.snapshot(drop_id).await;
    assert_eq!((held.sold, held.held), (0, 1), "the edge has not heard yet");
    stack.stop_origin().await;
    stack.start_origin().await;
    let started = Instant::now();
    loop {
        let s = stack.snapshot(drop_id).await;
        if s.sold == 1 {
            assert_eq!((s.held, s.remaining), (0, 4));
            let hold = s.holds.iter().find(|h| h.reservation_id == p.order_id).unwrap();
            assert_eq!(hold.state, HoldState::Sold);
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "the hold was never sold");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Once: a second restart republishes nothing and sells nothing more.
    stack.stop_origin().await;
    stack.start_origin().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let s = stack.snapshot(drop_id).await;
    assert_eq!((s.sold, s.held, s.remaining), (1, 0, 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_origin_down_a_stale_card_is_still_served() {
    let stack = Stack::exclusive().await;
    let client = stack.client();
    let drop_id = client.create_drop(DropSpec::live(5, 1)).await;
    // Creating and starting the drop purge its card: let those go by first.
    stack.wait_consumed(drop_id, "cache-purge").await;
    let fresh = client.get(&format!("/v1/drops/{drop_id}"), None).await;
    assert_eq!(fresh.status, StatusCode::OK);
    stack.stop_origin().await;
    tokio::time::sleep(Duration::from_millis(2_500)).await; // past the 2 s freshness
    let stale = client.get(&format!("/v1/drops/{drop_id}"), None).await;
    assert_eq!(stale.status, StatusCode::OK);
    assert_eq!(stale.header("x-cache"), Some("STALE"));
    assert_eq!(stale.json()["id"], drop_id.to_string());
    stack.start_origin().await;
}
