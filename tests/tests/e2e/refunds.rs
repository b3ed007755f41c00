//! Money for orders that end unpaid: a payment that succeeds for an order its buyer
//! cancelled is refunded once (filed with the payment's success, audited), a payment
//! whose order ended unpaid is called off at the provider so that it can no longer
//! be paid, and no late success or failure moves a final order.

use std::time::Duration;

use drops_shared::internal::HoldState;
use drops_tests::client::{Answer, Purchase};
use drops_tests::stripe_double::{Mode, StripeDouble};
use drops_tests::{Buyer, DropSpec, Stack};
use reqwest::StatusCode;
use uuid::Uuid;

fn evt() -> String {
    format!("evt_refund_{}", Uuid::now_v7().simple())
}

async fn payment_status(db: &sqlx::PgPool, order_id: Uuid) -> String {
    sqlx::query_scalar("SELECT status FROM payments WHERE order_id = $1").bind(order_id).fetch_one(db).await.unwrap()
}

/// Waits until the order's payment is `status` (the reversals run in the background).
async fn wait_payment(db: &sqlx::PgPool, order_id: Uuid, status: &str) {
    for _ in 0..300 {
        if payment_status(db, order_id).await == status {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the payment of {order_id} never became {status}; it is {}", payment_status(db, order_id).await);
}

async fn count(db: &sqlx::PgPool, sql: &str, order_id: Uuid) -> i64 {
    sqlx::query_scalar(sql).bind(order_id).fetch_one(db).await.unwrap()
}

/// What the platform recorded of one order's money: refund events, and the audit's
/// refund requests and refunds issued.
async fn refunds_of(db: &sqlx::PgPool, order_id: Uuid) -> (i64, i64, i64) {
    let events = "SELECT count(*) FROM outbox WHERE aggregate_id = $1 AND event_type = 'PaymentRefunded'";
    let requested =
        "SELECT count(*) FROM audit_log WHERE subject_id = $1::text AND action = 'payment.refund_requested'";
    let issued = "SELECT count(*) FROM audit_log WHERE subject_id = $1::text AND action = 'payment.refund_issued'";
    (count(db, events, order_id).await, count(db, requested, order_id).await, count(db, issued, order_id).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_success_for_a_cancelled_order_is_refunded_once_and_the_order_stays_cancelled() {
    let stack = Stack::shared().await;
    let client = stack.client();
    let db = stack.db().await;
    let drop_id = client.create_drop(DropSpec::live(5, 1)).await;
    let p = client.purchase(drop_id).await;
    let cancelled = client.cancel(&p.buyer, p.order_id).await;
    assert_eq!((cancelled.status, cancelled.json()["status"].as_str()), (StatusCode::OK, Some("cancelled")));
    assert_eq!(client.remaining(drop_id).await, 5, "the unit is back at once");

    // The buyer had confirmed the payment before cancelling (a Stripe client secret
    // stays valid): the provider's success arrives for a cancelled order.
    let event_id = evt();
    let paid = client.pay_event(&p, &event_id, true).await;
    assert_eq!((paid.status, paid.json()["outcome"].as_str()), (StatusCode::OK, Some("applied")));
    wait_payment(&db, p.order_id, "refunded").await;
    assert_eq!(client.order(&p.buyer, p.order_id).await.json()["status"], "cancelled", "the order keeps its state");

    // Redelivered, a second success, then a late failure: none gives back twice or moves the order.
    let again = client.pay_event(&p, &event_id, true).await;
    assert_eq!(again.json()["outcome"], "duplicate");
    assert_eq!(client.pay_event(&p, &evt(), true).await.json()["outcome"], "ignored");
    assert_eq!(client.pay_event(&p, &evt(), false).await.json()["outcome"], "ignored");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(refunds_of(&db, p.order_id).await, (1, 1, 1), "refunded once, requested and issued in the audit log");
    assert_eq!(payment_status(&db, p.order_id).await, "refunded");
    assert_eq!(client.order(&p.buyer, p.order_id).await.json()["status"], "cancelled");
    assert_eq!(client.remaining(drop_id).await, 5, "the unit came back once");
    let snapshot = stack.snapshot(drop_id).await;
    assert_eq!((snapshot.sold, snapshot.held, snapshot.remaining), (0, 0, 5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_that_ended_unpaid_can_no_longer_be_paid_at_the_checkout() {
    let stack = Stack::shared().await;
    let client = stack.client();
    let db = stack.db().await;
    let drop_id = client.create_drop(DropSpec { hold_seconds: Some(6), ..DropSpec::live(5, 1) }).await;
    let cancelled = client.purchase(drop_id).await;
    let walked_away = client.purchase(drop_id).await;
    assert_eq!(client.cancel(&cancelled.buyer, cancelled.order_id).await.status, StatusCode::OK);
    client.wait_status(&walked_away.buyer, walked_away.order_id, "expired").await;

    for (what, p) in [("cancelled", &cancelled), ("expired", &walked_away)] {
        wait_payment(&db, p.order_id, "cancelled").await;
        let pay = client.checkout(p, "succeed").await;
        assert_eq!((pay.status, pay.code().as_str()), (StatusCode::CONFLICT, "conflict"), "{what}: {:?}", pay.json());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (what, p) in [("cancelled", &cancelled), ("expired", &walked_away)] {
        assert_eq!(payment_status(&db, p.order_id).await, "cancelled", "{what}: no money taken");
        assert_eq!(client.order(&p.buyer, p.order_id).await.json()["status"], what);
        assert_eq!(refunds_of(&db, p.order_id).await, (0, 0, 0), "{what}: nothing to give back");
    }
    assert_eq!(client.remaining(drop_id).await, 5);
}

/// Each final state against a late failure, then a late success.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_late_payment_event_moves_a_final_order_and_money_never_stays_taken() {
    let stack = Stack::shared().await;
    let client = stack.client();
    let db = stack.db().await;
    let drop_id = client.create_drop(DropSpec { hold_seconds: Some(2), ..DropSpec::live(1, 1) }).await;
    let other = client.create_drop(DropSpec::live(10, 1)).await;

    // confirmed: a late failure and a second success change nothing.
    let confirmed = client.purchase(other).await;
    client.pay_event(&confirmed, &evt(), true).await;
    client.wait_status(&confirmed.buyer, confirmed.order_id, "confirmed").await;
    // failed: a late failure changes nothing; a late success confirms (units remain).
    let failed = client.purchase(other).await;
    client.pay_event(&failed, &evt(), false).await;
    client.wait_status(&failed.buyer, failed.order_id, "failed").await;
    // cancelled: a late failure changes nothing; a late success is refunded.
    let cancelled = client.purchase(other).await;
    client.cancel(&cancelled.buyer, cancelled.order_id).await;
    // expired with its only unit sold to someone else since: a late success is refunded, the order fails.
    let expired = client.purchase(drop_id).await;
    client.wait_status(&expired.buyer, expired.order_id, "expired").await;
    let winner = client.purchase(drop_id).await;
    client.pay_event(&winner, &evt(), true).await;
    client.wait_status(&winner.buyer, winner.order_id, "confirmed").await;

    for p in [&confirmed, &failed, &cancelled, &expired] {
        assert_eq!(client.pay_event(p, &evt(), false).await.status, StatusCode::OK);
    }
    for (p, state) in [(&confirmed, "confirmed"), (&failed, "failed"), (&cancelled, "cancelled"), (&expired, "expired")]
    {
        assert_eq!(client.order(&p.buyer, p.order_id).await.json()["status"], state, "a late failure moved it");
    }
    for p in [&confirmed, &failed, &cancelled, &expired] {
        assert_eq!(client.pay_event(p, &evt(), true).await.status, StatusCode::OK);
    }
    client.wait_status(&failed.buyer, failed.order_id, "confirmed").await;
    let refused = client.wait_status(&expired.buyer, expired.order_id, "failed").await;
    assert!(refused["detail"].as_str().unwrap_or_default().contains("refunded"), "{refused}");
    wait_payment(&db, cancelled.order_id, "refunded").await;
    wait_payment(&db, expired.order_id, "refunded").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let expected = [
        (&confirmed, "confirmed", "succeeded", 0),
        (&failed, "confirmed", "succeeded", 0),
        (&cancelled, "cancelled", "refunded", 1),
        (&expired, "failed", "refunded", 1),
    ];
    for (p, order, payment, refunds) in expected {
        assert_eq!(client.order(&p.buyer, p.order_id).await.json()["status"], order);
        assert_eq!(payment_status(&db, p.order_id).await, payment, "{order}");
        assert_eq!(refunds_of(&db, p.order_id).await, (refunds, refunds, refunds), "{order}");
    }
    assert_eq!(client.remaining(drop_id).await, 0);
    assert_eq!(client.remaining(other).await, 8, "confirmed and failed-then-paid hold one each");
}

/// Sends again what the platform shed (a 503 changes nothing: on two busy cores a crowd
/// can exhaust the origin's pool), as a provider redelivers and a buyer retries.
async fn resent<F, Fut>(send: F) -> Answer
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Answer>,
{
    for _ in 0..20 {
        let answer = send().await;
        if answer.status != StatusCode::SERVICE_UNAVAILABLE {
            return answer;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    panic!("shed twenty times in a row");
}

/// Many buyers cancel while their payments succeed: each order ends confirmed with
/// its money kept, or cancelled with its money given back once (or never taken).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn buyers_cancelling_while_their_payments_succeed_lose_no_money() {
    let stack = Stack::shared().await;
    let client = stack.client();
    let db = stack.db().await;
    const BUYERS: usize = 40;
    let drop_id = client.create_drop(DropSpec::live(BUYERS as u32, 1)).await;
    let purchases: Vec<Purchase> = futures::future::join_all((0..BUYERS).map(|_| client.purchase(drop_id))).await;
    let races = purchases.iter().map(|p| async {
        let event_id = evt();
        let (paid, cancelled) = tokio::join!(
            resent(|| client.pay_event(p, &event_id, true)),
            resent(|| client.cancel(&p.buyer, p.order_id))
        );
        assert_eq!(paid.status, StatusCode::OK);
        assert!(
            cancelled.status == StatusCode::OK || cancelled.code() == "order_not_cancellable",
            "{:?}",
            cancelled.json()
        );
    });
    futures::future::join_all(races).await;

    let mut kept = 0;
    for p in &purchases {
        let order = client.wait_order(&p.buyer, p.order_id, 20, |v| v["status"] != "reserved").await;
        match order["status"].as_str() {
            Some("confirmed") => {
                kept += 1;
                assert_eq!(payment_status(&db, p.order_id).await, "succeeded");
                assert_eq!(refunds_of(&db, p.order_id).await, (0, 0, 0));
            }
            Some("cancelled") => {
                wait_payment(&db, p.order_id, "refunded").await;
                assert_eq!(refunds_of(&db, p.order_id).await, (1, 1, 1), "{}", p.order_id);
            }
            other => panic!("order {} ended {other:?}", p.order_id),
        }
    }
    println!("{kept} of {BUYERS} payments won the race against the cancel");
    for p in &purchases {
        let want = if client.order(&p.buyer, p.order_id).await.json()["status"] == "confirmed" {
            HoldState::Sold
        } else {
            HoldState::Released
        };
        stack.wait_hold(drop_id, p.order_id, want).await;
    }
    let snapshot = stack.snapshot(drop_id).await;
    assert_eq!((snapshot.sold as usize, snapshot.held, snapshot.remaining as usize), (kept, 0, BUYERS - kept));
}

/// With Stripe: cancelling an order cancels its PaymentIntent; one the buyer already
/// confirmed cannot be cancelled, and its success is refunded through Stripe once,
/// even when Stripe fails the first refund attempts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_stripe_an_unpaid_order_cancels_its_intent_and_a_paid_cancelled_one_is_refunded() {
    let stack = Stack::exclusive().await;
    let double = StripeDouble::default();
    let api_base = double.start().await;
    stack.restart_origin_with_stripe(api_base).await;
    let client = stack.client();
    let db = stack.db().await;
    let drop_id = client.create_drop(DropSpec::live(5, 1)).await;
    let (unpaid, paid) = (Buyer::new(), Buyer::new());
    let mut orders = Vec::new();
    for (n, b) in [&unpaid, &paid].into_iter().enumerate() {
        let a = client.buy(b, drop_id, &format!("stripe-cancel-{n:04}"), 1).await;
        assert_eq!(a.status, StatusCode::CREATED);
        let id = Uuid::parse_str(a.json()["order_id"].as_str().unwrap()).unwrap();
        let order = client.wait_order(b, id, 30, |v| v["payment"].is_object()).await;
        orders.push((
            id,
            order["payment"]["reference"].as_str().unwrap().to_owned(),
            order["amount"]["amount"].as_i64(),
        ));
    }
    let [(unpaid_id, unpaid_intent, _), (paid_id, paid_intent, paid_amount)] = <[_; 2]>::try_from(orders).unwrap();

    // The second buyer confirms with Stripe.js, then cancels before the webhook comes.
    assert!(double.confirm(&paid_intent));
    double.set(Mode::Failing);
    assert_eq!(client.cancel(&unpaid, unpaid_id).await.status, StatusCode::OK);
    assert_eq!(client.cancel(&paid, paid_id).await.status, StatusCode::OK);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(payment_status(&db, unpaid_id).await, "pending", "Stripe is failing: retried later");
    double.set(Mode::Up);
    wait_payment(&db, unpaid_id, "cancelled").await;
    assert_eq!(double.status(&unpaid_intent).as_deref(), Some("canceled"));
    assert_eq!(double.status(&paid_intent).as_deref(), Some("succeeded"), "Stripe refused: it was paid");

    // Stripe's webhook for the confirmed intent arrives; the refund fails twice first.
    let paid_purchase = Purchase {
        buyer: paid.clone(),
        order_id: paid_id,
        reference: paid_intent.clone(),
        checkout_url: String::new(),
        amount: paid_amount.expect("amount"),
    };
    double.set(Mode::Failing);
    assert_eq!(client.pay_event(&paid_purchase, &evt(), true).await.json()["outcome"], "applied");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(payment_status(&db, paid_id).await, "succeeded", "Stripe is failing: retried later");
    double.set(Mode::Up);
    wait_payment(&db, paid_id, "refunded").await;
    assert_eq!(refunds_of(&db, paid_id).await, (1, 1, 1));
    assert_eq!(client.order(&paid, paid_id).await.json()["status"], "cancelled");
    let calls = double.calls();
    let refund_key = format!("refund-{paid_id}");
    let refund_calls = calls.iter().filter(|(_, key)| *key == refund_key).count();
    assert!(refund_calls >= 2, "retried under one idempotency key: {calls:?}");
    assert!(calls.iter().any(|(_, key)| *key == format!("cancel-{unpaid_id}")));
    assert!(!calls.iter().any(|(_, key)| *key == format!("refund-{unpaid_id}")), "nothing taken, nothing refunded");
    stack.stop_origin().await;
    stack.start_origin().await;
}
