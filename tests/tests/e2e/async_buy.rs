//! The buy path answers at the speed of the inventory object's decision: the 201
//! comes before the origin knows, the order and its payment follow within seconds
//! (the buyer's socket hears when the payment is ready), and the payment is
//! prepared in the background, whatever the provider does meanwhile. "Sold out"
//! means nothing remains.

use std::time::{Duration, Instant};

use drops_tests::stripe_double::{Mode, StripeDouble};
use drops_tests::{Buyer, DropSpec, Stack};
use reqwest::StatusCode;
use uuid::Uuid;

fn order_id(answer: &drops_tests::client::Answer) -> Uuid {
    answer.json()["order_id"].as_str().and_then(|s| s.parse().ok()).expect("an order id")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_order_and_its_payment_follow_the_201_and_the_socket_hears_it() {
    let stack = Stack::shared().await;
    let client = stack.client();
    let drop_id = client.create_drop(DropSpec::live(5, 1)).await;
    let buyer = Buyer::new();
    let (socket, task) = stack.listen(&buyer).await;
    let bought = client.buy(&buyer, drop_id, "async-buy-0001", 1).await;
    assert_eq!(bought.status, StatusCode::CREATED);
    assert!(bought.json()["payment"].is_null(), "the 201 does not wait for the payment: {:?}", bought.json());
    let id = order_id(&bought);
    let order = client.wait_order(&buyer, id, 20, |v| v["payment"].is_object()).await;
    assert_eq!(order["status"], "reserved");
    assert_eq!(order["payment"]["provider"], "sandbox");
    let deadline = Instant::now() + Duration::from_secs(10);
    let ready = loop {
        let seen = socket.lock().unwrap().iter().find(|m| m["kind"] == "order_payment_ready").cloned();
        if let Some(m) = seen {
            break m;
        }
        assert!(Instant::now() < deadline, "no order_payment_ready: {:?}", socket.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(ready["payload"]["order_id"], id.to_string());
    assert_eq!(ready["payload"]["payment"], order["payment"], "the socket names the payment the order has");
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fewer_units_than_asked_for_is_sold_out_with_what_remains_and_the_rest_still_sell() {
    let stack = Stack::shared().await;
    let client = stack.client();
    let drop_id = client.create_drop(DropSpec::live(3, 2)).await;
    assert_eq!(client.buy(&Buyer::new(), drop_id, "remains-0001", 2).await.status, StatusCode::CREATED);
    let too_many = client.buy(&Buyer::new(), drop_id, "remains-0002", 2).await;
    assert_eq!((too_many.status, too_many.code().as_str()), (StatusCode::CONFLICT, "sold_out"));
    assert_eq!(too_many.json()["remaining"], 1, "{:?}", too_many.json());
    // That refusal said a unit remains: nobody is told "sold out" for it.
    let last = client.buy(&Buyer::new(), drop_id, "remains-0003", 1).await;
    assert_eq!(last.status, StatusCode::CREATED, "{:?}", last.json());
    let after = client.buy(&Buyer::new(), drop_id, "remains-0004", 1).await;
    assert_eq!((after.status, after.code().as_str()), (StatusCode::CONFLICT, "sold_out"));
    assert_eq!(after.json()["remaining"], 0);
    assert_eq!(client.remaining(drop_id).await, 0);
}

/// Stripe, through a local double of its API: the buyer's order stands while the
/// provider fails or crawls, and the payment arrives once it answers, with the
/// PaymentIntent's client secret for the order's owner and no invented checkout URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_stripe_failing_then_slow_orders_reserve_and_payments_arrive_when_it_recovers() {
    let stack = Stack::exclusive().await;
    let double = StripeDouble::default();
    double.set(Mode::Failing);
    let api_base = double.start().await;
    stack.restart_origin_with_stripe(api_base).await;
    let client = stack.client();
    let drop_id = client.create_drop(DropSpec::live(10, 1)).await;
    let buyers: Vec<Buyer> = (0..3).map(|_| Buyer::new()).collect();
    let mut ids = Vec::new();
    for (n, b) in buyers.iter().enumerate() {
        let a = client.buy(b, drop_id, &format!("stripe-down-{n:04}"), 1).await;
        assert_eq!(a.status, StatusCode::CREATED, "the provider failing does not stop buying");
        ids.push(order_id(&a));
    }
    // The orders are there; their payments are not, and the order says when to look again.
    let waiting = client.wait_order(&buyers[0], ids[0], 20, |v| v["status"] == "reserved").await;
    assert!(waiting["payment"].is_null());
    let again = client.order(&buyers[0], ids[0]).await;
    assert_eq!(again.header("retry-after"), Some("1"), "while the payment is prepared");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(double.calls().len() >= 3, "the provider was asked: {:?}", double.calls());

    double.set(Mode::Slow(Duration::from_millis(800)));
    for (b, id) in buyers.iter().zip(&ids) {
        let order = client.wait_order(b, *id, 30, |v| v["payment"].is_object()).await;
        let payment = &order["payment"];
        assert_eq!(payment["provider"], "stripe");
        assert!(payment["reference"].as_str().unwrap().starts_with("pi_double_"));
        assert!(payment["client_secret"].as_str().unwrap().contains("_secret_"), "{payment}");
        assert!(payment.get("checkout_url").is_none(), "no invented checkout URL: {payment}");
        assert_eq!(client.order(b, *id).await.header("retry-after"), None);
    }
    // The client secret is for the order's owner only.
    assert_eq!(client.order(&Buyer::new(), ids[0]).await.status, StatusCode::NOT_FOUND);
    // Retried after each failure, yet one PaymentIntent per order: the order id is the key.
    assert_eq!(double.intents(), 3);
    let calls = double.calls();
    assert!(calls.iter().all(|(auth, _)| auth == "Bearer sk_test_double"));
    for id in &ids {
        assert!(calls.iter().any(|(_, key)| *key == format!("order-{id}")), "idempotency key of {id}");
    }
    stack.stop_origin().await;
    stack.start_origin().await;
}

/// A rush reaches the origin in batches: far fewer handoff requests than units,
/// one order row each.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rush_reaches_the_origin_in_batches() {
    // It counts the origin's handoff requests: nothing else may buy meanwhile.
    let stack = Stack::exclusive().await;
    let client = stack.client();
    let drop_id = client.create_drop(DropSpec::live(100, 1)).await;
    let route = "/internal/v1/reservations";
    let before = client.origin_requests("POST", route).await;
    let buyers: Vec<Buyer> = (0..200).map(|_| Buyer::new()).collect();
    let keys: Vec<String> = buyers.iter().map(|b| format!("batch-{}", b.id)).collect();
    let answers =
        futures::future::join_all(buyers.iter().zip(&keys).map(|(b, key)| client.buy(b, drop_id, key, 1))).await;
    let sold = answers.iter().filter(|a| a.status == StatusCode::CREATED).count();
    assert_eq!(sold, 100);
    let db = stack.db().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders WHERE drop_id = $1")
            .bind(drop_id)
            .fetch_one(&db)
            .await
            .unwrap();
        if orders == 100 {
            break;
        }
        assert!(Instant::now() < deadline, "{orders} of 100 orders reached the origin");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let requests = client.origin_requests("POST", route).await - before;
    println!("100 reservations reached the origin in {requests} request(s)");
    assert!(requests <= 25, "{requests} handoff requests for 100 reservations");
}
