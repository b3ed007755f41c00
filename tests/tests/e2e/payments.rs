//! Payments and the order lifecycle, end to end: the provider's webhook, failure,
//! cancel and expiry returning units exactly once, late payments, reconciliation.

use std::time::Duration;

use chrono::Utc;
use drops_shared::internal::{HoldAction, HoldState};
use drops_tests::client::{webhook_body, Purchase};
use drops_tests::{DropSpec, Stack, OLD_WEBHOOK_SECRET, WEBHOOK_SECRET};
use reqwest::StatusCode;
use uuid::Uuid;

async fn events_of(db: &sqlx::PgPool, order_id: Uuid, kind: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM outbox WHERE aggregate_id = $1 AND event_type = $2")
        .bind(order_id)
        .bind(kind)
        .fetch_one(db)
        .await
        .unwrap()
}

/// Waits until the edge sync has handled every event of this order so far, so drift
/// injected afterwards is not repaired by an event still on its way.
async fn wait_synced(db: &sqlx::PgPool, order_id: Uuid) {
    for _ in 0..200 {
        let pending: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM outbox o WHERE o.aggregate_id = $1
               AND o.event_type IN ('OrderConfirmed', 'OrderFailed', 'OrderCancelled', 'OrderExpired')
               AND NOT EXISTS (SELECT 1 FROM processed_events p WHERE p.consumer = 'edge-sync' AND p.event_id = o.id)",
        )
        .bind(order_id)
        .fetch_one(db)
        .await
        .unwrap();
        if pending == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the edge sync never handled the events of {order_id}");
}

fn evt() -> String {
    format!("evt_test_{}", Uuid::now_v7().simple())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_is_verified_applied_once_and_accepts_both_rotation_secrets() {
    let stack = Stack::shared().await;
    let client = stack.client();
    let db = stack.db().await;
    let drop_id = client.create_drop(DropSpec::live(10, 1)).await;
    let p = client.purchase(drop_id).await;
    let body = webhook_body(&evt(), true, &p.reference, p.order_id, p.amount);
    let now = Utc::now().timestamp();
    for (name, answer) in [
        ("wrong secret", client.webhook(&body, "whsec_wrong", now).await),
        ("stale", client.webhook(&body, WEBHOOK_SECRET, now - 301).await),
        ("missing header", client.webhook_with_header(&body, None).await),
        ("garbage header", client.webhook_with_header(&body, Some("t=abc,v1=zz")).await),
    ] {
        assert_eq!((answer.status, answer.code().as_str()), (StatusCode::BAD_REQUEST, "invalid_signature"), "{name}");
    }
    assert_eq!(client.order(&p.buyer, p.order_id).await.json()["status"], "reserved", "nothing changed");

    let ok = client.webhook(&body, WEBHOOK_SECRET, now).await;
    assert_eq!(ok.status, StatusCode::OK);
    client.wait_status(&p.buyer, p.order_id, "confirmed").await;
    stack.wait_hold(drop_id, p.order_id, HoldState::Sold).await;
    let again = client.webhook(&body, WEBHOOK_SECRET, now).await;
    assert_eq!((again.status, again.json()["outcome"].as_str()), (StatusCode::OK, Some("duplicate")));
    assert_eq!(events_of(&db, p.order_id, "OrderConfirmed").await, 1, "one effect for one event");
    assert_eq!(client.remaining(drop_id).await, 9);

    // During a rotation the provider may still sign with the old secret.
    let q = client.purchase(drop_id).await;
    let old =
        client.webhook(&webhook_body(&evt(), true, &q.reference, q.order_id, q.amount), OLD_WEBHOOK_SECRET, now).await;
    assert_eq!(old.status, StatusCode::OK);
    client.wait_status(&q.buyer, q.order_id, "confirmed").await;

    // Unknown event types are acknowledged and ignored.
    let other = br#"{"id":"evt_other_1","type":"charge.dispute.created","created":1,"data":{"object":{"id":"dp_1"}}}"#;
    let ignored = client.webhook(other, WEBHOOK_SECRET, now).await;
    assert_eq!((ignored.status, ignored.json()["outcome"].as_str()), (StatusCode::OK, Some("ignored")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_order_ends_as_its_payment_did_whatever_the_delivery_order() {
    let stack = Stack::shared().await;
    let client = stack.client();
    let drop_id = client.create_drop(DropSpec::live(10, 1)).await;
    // Succeeded, then a late failure of an earlier attempt: stays confirmed.
    let a = client.purchase(drop_id).await;
    assert_eq!(client.pay_event(&a, &evt(), true).await.status, StatusCode::OK);
    let late_failure = client.pay_event(&a, &evt(), false).await;
    assert_eq!(late_failure.json()["outcome"], "ignored");
    client.wait_status(&a.buyer, a.order_id, "confirmed").await;
    stack.wait_hold(drop_id, a.order_id, HoldState::Sold).await;

    // Failed, then the buyer's retry succeeded: confirmed after all, units sold again.
    let b = client.purchase(drop_id).await;
    client.pay_event(&b, &evt(), false).await;
    client.wait_status(&b.buyer, b.order_id, "failed").await;
    client.pay_event(&b, &evt(), true).await;
    client.wait_status(&b.buyer, b.order_id, "confirmed").await;
    stack.wait_hold(drop_id, b.order_id, HoldState::Sold).await;
    assert_eq!(client.remaining(drop_id).await, 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_cancel_and_expiry_each_return_the_units_once() {
    let stack = Stack::shared().await;
    let client = stack.client();
    // Long enough for the other three to act first even on a loaded machine.
    let drop_id = client.create_drop(DropSpec { hold_seconds: Some(8), ..DropSpec::live(4, 1) }).await;
    let failed = client.purchase(drop_id).await;
    let cancelled = client.purchase(drop_id).await;
    let walked_away = client.purchase(drop_id).await;
    let paid = client.purchase(drop_id).await;
    assert_eq!(client.remaining(drop_id).await, 0);
    client.pay_event(&paid, &evt(), true).await;
    client.wait_status(&paid.buyer, paid.order_id, "confirmed").await;

    // Cancel: 200 with the order, units back at once; again: same answer.
    let c = client.cancel(&cancelled.buyer, cancelled.order_id).await;
    assert_eq!((c.status, c.json()["status"].as_str()), (StatusCode::OK, Some("cancelled")));
    assert_eq!(client.remaining(drop_id).await, 1, "cancel returns the unit at once");
    assert_eq!(client.cancel(&cancelled.buyer, cancelled.order_id).await.status, StatusCode::OK);
    let not_yours = client.cancel(&failed.buyer, cancelled.order_id).await;
    assert_eq!(not_yours.status, StatusCode::NOT_FOUND);
    let too_late = client.cancel(&paid.buyer, paid.order_id).await;
    assert_eq!((too_late.status, too_late.code().as_str()), (StatusCode::CONFLICT, "order_not_cancellable"));

    // A payment failure and a cancel racing: one wins, the unit comes back once.
    let event_id = evt();
    let (f, c) =
        tokio::join!(client.pay_event(&failed, &event_id, false), client.cancel(&failed.buyer, failed.order_id));
    assert_eq!(f.status, StatusCode::OK);
    assert!(c.status == StatusCode::OK || c.code() == "order_not_cancellable", "{:?}", c.json());
    let ended = client.wait_order(&failed.buyer, failed.order_id, 20, |v| v["status"] != "reserved").await;
    assert!(ended["status"] == "failed" || ended["status"] == "cancelled");
    stack.wait_hold(drop_id, failed.order_id, HoldState::Released).await;

    // Walking away: the hold runs out, the origin learns the order expired.
    let expired = client.wait_status(&walked_away.buyer, walked_away.order_id, "expired").await;
    assert!(expired["detail"].as_str().unwrap_or_default().contains("ran out"));
    assert_eq!(client.remaining(drop_id).await, 3, "three units back, none twice");
    let snapshot = stack.snapshot(drop_id).await;
    assert_eq!((snapshot.sold, snapshot.held, snapshot.remaining), (1, 0, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_after_expiry_is_honoured_while_units_remain_and_refunded_when_not() {
    let stack = Stack::shared().await;
    let client = stack.client();
    let db = stack.db().await;
    // Units remain: the late payment takes its unit again.
    let roomy = client.create_drop(DropSpec { hold_seconds: Some(1), ..DropSpec::live(2, 1) }).await;
    let late = client.purchase(roomy).await;
    client.wait_status(&late.buyer, late.order_id, "expired").await;
    assert_eq!(client.remaining(roomy).await, 2);
    client.pay_event(&late, &evt(), true).await;
    client.wait_status(&late.buyer, late.order_id, "confirmed").await;
    stack.wait_hold(roomy, late.order_id, HoldState::Sold).await;
    assert_eq!(client.remaining(roomy).await, 1);

    // The only unit went to someone else meanwhile: refunded, failed, the other buyer keeps it.
    let scarce = client.create_drop(DropSpec { hold_seconds: Some(1), ..DropSpec::live(1, 1) }).await;
    let slow: Purchase = client.purchase(scarce).await;
    client.wait_status(&slow.buyer, slow.order_id, "expired").await;
    let quick = client.purchase(scarce).await;
    client.pay_event(&quick, &evt(), true).await;
    client.pay_event(&slow, &evt(), true).await;
    let failed = client.wait_status(&slow.buyer, slow.order_id, "failed").await;
    assert!(failed["detail"].as_str().unwrap_or_default().contains("refunded"), "{failed}");
    client.wait_status(&quick.buyer, quick.order_id, "confirmed").await;
    // The refund is filed with the order's failure and given back in the background.
    let refunded = "SELECT count(*) FROM payments WHERE order_id = $1 AND status = 'refunded'";
    for _ in 0..200 {
        if sqlx::query_scalar::<_, i64>(refunded).bind(slow.order_id).fetch_one(&db).await.unwrap() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(events_of(&db, slow.order_id, "PaymentRefunded").await, 1, "refunded, once");
    stack.wait_hold(scarce, quick.order_id, HoldState::Sold).await;
    assert_eq!(client.remaining(scarce).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciliation_finds_injected_drift_repairs_it_and_says_so() {
    let stack = Stack::shared().await;
    let client = stack.client();
    let db = stack.db().await;
    let drop_id = client.create_drop(DropSpec::live(10, 1)).await;
    // (a) A forward the origin lost: the edge holds units for an order Postgres lacks
    // (and no longer means to forward it: it had been acknowledged).
    let lost = client.purchase(drop_id).await;
    wait_synced(&db, lost.order_id).await;
    for _ in 0..100 {
        if !stack.snapshot(drop_id).await.unforwarded.contains(&lost.order_id) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sqlx::query("DELETE FROM payments WHERE order_id = $1").bind(lost.order_id).execute(&db).await.unwrap();
    sqlx::query("DELETE FROM orders WHERE id = $1").bind(lost.order_id).execute(&db).await.unwrap();
    // (b) A release that never reached the edge: the order failed, the hold still holds.
    let unreleased = client.purchase(drop_id).await;
    wait_synced(&db, unreleased.order_id).await;
    sqlx::query("UPDATE orders SET status = 'failed' WHERE id = $1")
        .bind(unreleased.order_id)
        .execute(&db)
        .await
        .unwrap();
    // (c) A paid order whose hold was released.
    let paid = client.purchase(drop_id).await;
    wait_synced(&db, paid.order_id).await;
    sqlx::query("UPDATE orders SET status = 'confirmed' WHERE id = $1").bind(paid.order_id).execute(&db).await.unwrap();
    let order_id = paid.order_id;
    stack
        .with_origin(move |s| async move { s.core.edge.move_hold(drop_id, order_id, HoldAction::Release).await })
        .await
        .unwrap();
    assert_eq!(client.remaining(drop_id).await, 8);

    let repairs =
        stack.with_origin(move |s| async move { s.reconcile_drops(&[drop_id], Duration::ZERO).await }).await.unwrap();
    let kinds: Vec<(&str, Option<Uuid>)> = repairs.iter().map(|r| (r.repair, r.order_id)).collect();
    assert!(kinds.contains(&("order_recovered", Some(lost.order_id))), "{kinds:?}");
    assert!(kinds.contains(&("hold_released", Some(unreleased.order_id))), "{kinds:?}");
    assert!(kinds.contains(&("hold_resold", Some(paid.order_id))), "{kinds:?}");

    client.wait_status(&lost.buyer, lost.order_id, "reserved").await;
    assert_eq!(stack.hold_state(drop_id, unreleased.order_id).await, HoldState::Released);
    assert_eq!(stack.hold_state(drop_id, paid.order_id).await, HoldState::Sold);
    assert_eq!(client.remaining(drop_id).await, 8, "lost and paid hold units; the failed one came back");
    let audited: i64 = sqlx::query_scalar("SELECT count(*) FROM reconcile_audit WHERE drop_id = $1")
        .bind(drop_id)
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(audited, 3);
    // A second pass finds nothing left to repair.
    let again =
        stack.with_origin(move |s| async move { s.reconcile_drops(&[drop_id], Duration::ZERO).await }).await.unwrap();
    assert!(again.is_empty(), "{again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_left_pending_by_a_dead_consumer_are_reclaimed_and_handled_once() {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use drops_origin::events::bus::{Consumer, Handled, Member};
    use drops_origin::tasks::Workers;
    use drops_shared::events::{DomainEvent, EventEnvelope};
    use redis::aio::ConnectionManager;

    let stack = Stack::shared().await;
    let counts = stack
        .with_origin(|s| async move {
            let stream = format!("{}:reclaim-test-{}", s.core.settings.redis.prefix, Uuid::now_v7().simple());
            // A group of its own, named once per run: a consumer's group name lives as long as the process.
            let group: &'static str = format!("reclaim-test-{}", Uuid::now_v7().simple()).leak();
            let mut conn = ConnectionManager::new(s.core.redis.clone()).await.unwrap();
            let envelopes: Vec<EventEnvelope> = (0..20)
                .map(|_| EventEnvelope {
                    id: Uuid::now_v7(),
                    occurred_at: Utc::now(),
                    event: DomainEvent::PaymentSucceeded { order_id: Uuid::now_v7(), reference: "pi_x".into() },
                })
                .collect();
            let publish = |conn: &mut ConnectionManager| {
                let mut pipe = redis::pipe();
                for e in &envelopes {
                    pipe.cmd("XADD").arg(&stream).arg("*").arg("event").arg(serde_json::to_string(e).unwrap()).ignore();
                }
                let mut conn = conn.clone();
                async move { pipe.query_async::<()>(&mut conn).await.unwrap() }
            };
            /// Counts how often it is handed each event.
            struct Counting {
                group: &'static str,
                counts: Arc<Mutex<HashMap<Uuid, usize>>>,
            }
            impl Consumer for Counting {
                fn group(&self) -> &'static str {
                    self.group
                }
                fn interested(&self, _: &DomainEvent) -> bool {
                    true
                }
                fn handle<'a>(&'a self, event: &'a EventEnvelope) -> Handled<'a> {
                    *self.counts.lock().unwrap().entry(event.id).or_default() += 1;
                    Box::pin(async { Ok(()) })
                }
            }
            let counts: Arc<Mutex<HashMap<Uuid, usize>>> = Arc::default();
            let consumer: Arc<dyn Consumer> = Arc::new(Counting { group, counts: counts.clone() });
            let member = || Member::new(stream.clone(), consumer.clone(), 300);
            let doomed = member();
            doomed.ensure_group(&mut conn).await.unwrap();
            publish(&mut conn).await;
            // The doomed member takes the whole batch and dies before acknowledging any.
            let taken = doomed.read(&mut conn, Duration::from_millis(100)).await.unwrap();
            assert_eq!(taken.len(), 20);
            drop(doomed);

            let run_survivor = || {
                let workers = Workers::new();
                member().spawn(&workers, s.core.redis.clone(), s.core.db.clone());
                workers
            };
            let survivor = run_survivor();
            for _ in 0..100 {
                if counts.lock().unwrap().len() == 20 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            survivor.shutdown().await;
            let pending: redis::streams::StreamPendingReply =
                redis::cmd("XPENDING").arg(&stream).arg(group).query_async(&mut conn).await.unwrap();
            assert_eq!(pending.count(), 0, "everything acknowledged");

            // The same events delivered again (a relay replay): handled already, so skipped.
            publish(&mut conn).await;
            let survivor = run_survivor();
            tokio::time::sleep(Duration::from_millis(1500)).await;
            survivor.shutdown().await;
            let counts = counts.lock().unwrap().clone();
            counts
        })
        .await;
    assert_eq!(counts.len(), 20, "every event handled");
    assert!(counts.values().all(|n| *n == 1), "each exactly once: {counts:?}");
}

/// What a buyer in the mixed run does after reserving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Pay,
    Fail,
    FailThenPay,
    Cancel,
    WalkAway,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mixed_run_ends_with_every_unit_and_every_order_accounted_for() {
    use futures::future::join_all;
    use rand::seq::SliceRandom;
    use rand::Rng;

    let stack = Stack::shared().await;
    let client = stack.client();
    let total = 100u32;
    // Holds long enough that every paying, failing or cancelling buyer acts in time on
    // a loaded machine; the ones who walk away see theirs run out.
    let drop_id = client.create_drop(DropSpec { hold_seconds: Some(12), ..DropSpec::live(total, 1) }).await;
    let buyers: Vec<_> = (0..300).map(|_| drops_tests::Buyer::new()).collect();
    let keys: Vec<String> = buyers.iter().map(|b| format!("mixed-{}", b.id)).collect();
    let answers = join_all(buyers.iter().zip(&keys).map(|(b, k)| client.buy(b, drop_id, k, 1))).await;
    let winners: Vec<_> = buyers
        .iter()
        .zip(&answers)
        .filter(|(_, a)| a.status == StatusCode::CREATED)
        .map(|(b, a)| (b.clone(), Uuid::parse_str(a.json()["order_id"].as_str().unwrap()).unwrap()))
        .collect();
    assert_eq!(winners.len(), total as usize);

    let mut rng = rand::rng();
    let fates = [Fate::Pay, Fate::Fail, Fate::FailThenPay, Fate::Cancel, Fate::WalkAway];
    let plan: Vec<(drops_tests::Buyer, Uuid, Fate)> =
        winners.into_iter().map(|(b, id)| (b, id, fates[rng.random_range(0..fates.len())])).collect();
    // Every webhook twice, all shuffled together.
    let mut webhooks = Vec::new();
    let mut cancels = Vec::new();
    let orders =
        join_all(plan.iter().map(|(b, id, _)| client.wait_order(b, *id, 30, |v| v["payment"].is_object()))).await;
    for ((buyer, order_id, fate), order) in plan.iter().zip(orders) {
        let p = Purchase {
            buyer: buyer.clone(),
            order_id: *order_id,
            reference: order["payment"]["reference"].as_str().unwrap().to_owned(),
            checkout_url: String::new(),
            amount: order["amount"]["amount"].as_i64().unwrap(),
        };
        let mut event = |succeeded: bool| {
            let id = evt();
            webhooks.push((p.clone(), id.clone(), succeeded));
            webhooks.push((p.clone(), id, succeeded));
        };
        match fate {
            Fate::Pay => event(true),
            Fate::Fail => event(false),
            Fate::FailThenPay => {
                event(false);
                event(true);
            }
            Fate::Cancel => cancels.push(p.clone()),
            Fate::WalkAway => {}
        }
    }
    webhooks.shuffle(&mut rng);
    let sent = join_all(webhooks.iter().map(|(p, id, ok)| client.pay_event(p, id, *ok))).await;
    let refused: Vec<_> = sent.iter().filter(|a| a.status != StatusCode::OK).map(|a| (a.status, a.json())).collect();
    assert!(refused.is_empty(), "the provider would have to redeliver: {refused:?}");
    join_all(cancels.iter().map(|p| client.cancel(&p.buyer, p.order_id))).await;

    // Every order settles to what happened to its payment.
    let mut confirmed = 0;
    for (buyer, order_id, fate) in &plan {
        let want = match fate {
            Fate::Pay | Fate::FailThenPay => "confirmed",
            Fate::Fail => "failed",
            Fate::Cancel => "cancelled",
            Fate::WalkAway => "expired",
        };
        client.wait_order(buyer, *order_id, 30, |v| v["status"] == want).await;
        confirmed += u32::from(want == "confirmed");
    }
    // ...and the edge follows: confirmed units sold, everything else back in stock.
    let mut snapshot = stack.snapshot(drop_id).await;
    for _ in 0..100 {
        if snapshot.sold == confirmed && snapshot.held == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        snapshot = stack.snapshot(drop_id).await;
    }
    assert_eq!(snapshot.sold, confirmed);
    assert_eq!(snapshot.held, 0);
    assert_eq!(confirmed + snapshot.remaining, total, "confirmed units + remaining = total");
    assert_eq!(client.remaining(drop_id).await, u64::from(total - confirmed));
}

#[tokio::test]
async fn metrics_show_orders_webhooks_and_lag() {
    let stack = Stack::shared().await;
    let client = stack.client();
    let drop_id = client.create_drop(DropSpec::live(3, 1)).await;
    let p = client.purchase(drop_id).await;
    client.pay_event(&p, &evt(), true).await;
    client.wait_status(&p.buyer, p.order_id, "confirmed").await;
    let value = |text: &str, series: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{series} missing from:\n{text}"))
    };
    // The gauges are read every few seconds by one task, not at each scrape.
    let confirmed = "drops_orders{state=\"confirmed\"}";
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let text = loop {
        let text = client.get_raw_metrics().await;
        if text.lines().any(|l| l.starts_with(confirmed)) && value(&text, confirmed) >= 1.0 {
            break text;
        }
        assert!(std::time::Instant::now() < deadline, "no confirmed order on /metrics:\n{text}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let value = |series: &str| value(&text, series);
    assert!(value("drops_webhook_events_total{outcome=\"applied\"}") >= 1.0);
    assert!(value("drops_outbox_lag_seconds") >= 0.0);
    assert!(value("drops_consumer_pending{group=\"edge-sync\"}") >= 0.0);
}
