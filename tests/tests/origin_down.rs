//! Invariant 5: no order is lost when the origin stops mid-flow. The edge answers
//! the buyer without a payment and keeps forwarding until the origin has the order.

use std::time::{Duration, Instant};

use drops_tests::{Buyer, DropSpec, Stack};
use reqwest::StatusCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reservations_made_while_the_origin_is_down_arrive_once_it_is_back() {
    let stack = Stack::get();
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
