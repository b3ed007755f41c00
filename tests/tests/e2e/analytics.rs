//! Analytics through the edge: after a mixed rush the figures are Postgres's own
//! (orders by state, revenue, what remains at the edge), the timeline sums to them,
//! only the creator and admins see them, and neither a redelivered event nor a
//! rebuild from the outbox changes them.

use std::time::{Duration, Instant};

use drops_shared::auth::Role;
use drops_tests::client::{token, Answer, Purchase};
use drops_tests::{Buyer, Client, DropSpec, Stack};
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::Value;
use uuid::Uuid;

fn id(v: &Value) -> Uuid {
    v.as_str().and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("an id: {v}"))
}

/// Waits until nothing more will happen to the drop's orders: none is still held,
/// the edge sync has acted on every change (a late payment may still fail an
/// order), and the analytics have applied every event about the drop and its orders.
async fn wait_quiet(db: &sqlx::PgPool, drop_id: Uuid, within: Duration) {
    let deadline = Instant::now() + within;
    let mut quiet_rounds = 0;
    loop {
        let (held, unsynced, unapplied): (i64, i64, i64) = sqlx::query_as(
            "WITH events AS (
                 SELECT o.id, o.event_type FROM outbox o
                 WHERE o.aggregate_id = $1 OR o.payload->'data'->>'drop_id' = $1::text)
             SELECT (SELECT count(*) FROM orders WHERE drop_id = $1 AND status = 'reserved'),
                    (SELECT count(*) FROM events e
                      WHERE e.event_type IN ('OrderConfirmed', 'OrderFailed', 'OrderCancelled', 'OrderExpired')
                        AND NOT EXISTS (SELECT 1 FROM processed_events p
                                         WHERE p.consumer = 'edge-sync' AND p.event_id = e.id)),
                    (SELECT count(*) FROM events e
                      WHERE e.event_type IN ('DropCreated', 'DropUpdated', 'OrderReserved', 'OrderConfirmed',
                                             'OrderFailed', 'OrderCancelled', 'OrderExpired')
                        AND NOT EXISTS (SELECT 1 FROM analytics_applied a WHERE a.event_id = e.id))",
        )
        .bind(drop_id)
        .fetch_one(db)
        .await
        .expect("the drop's state");
        quiet_rounds = if held == 0 && unsynced == 0 && unapplied == 0 { quiet_rounds + 1 } else { 0 };
        if quiet_rounds == 3 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "drop {drop_id} never went quiet: {held} held, {unsynced} unsynced, {unapplied} not in the analytics"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn analytics(client: &Client, path: &str, token: &str) -> Value {
    let answer = client.get(path, Some(token)).await;
    assert_eq!(answer.status, StatusCode::OK, "{path}: {:?}", answer.json());
    answer.json()
}

/// What Postgres says of a drop's orders: per state, (orders, units, amount).
async fn truth(db: &sqlx::PgPool, drop_id: Uuid) -> std::collections::HashMap<String, (i64, i64, i64)> {
    let rows: Vec<(String, i64, i64, i64)> = sqlx::query_as(
        "SELECT status, count(*), sum(quantity)::int8, sum(amount)::int8 FROM orders WHERE drop_id = $1 GROUP BY status",
    )
    .bind(drop_id)
    .fetch_all(db)
    .await
    .expect("orders");
    rows.into_iter().map(|(s, n, units, amount)| (s, (n, units, amount))).collect()
}

/// The drop's figures are Postgres's, its remaining stock the edge's, and its
/// timeline sums to its orders.
async fn assert_matches_postgres(client: &Client, db: &sqlx::PgPool, figures: &Value, total: u64) {
    let drop_id = id(&figures["drop_id"]);
    let truth = truth(db, drop_id).await;
    let of = |state: &str| truth.get(state).copied().unwrap_or_default();
    let states = ["reserved", "confirmed", "failed", "cancelled", "expired"];
    for state in states {
        assert_eq!(figures["orders"][state].as_i64(), Some(of(state).0), "{state} orders: {figures}");
    }
    assert_eq!(figures["revenue"]["amount"].as_i64(), Some(of("confirmed").2), "revenue: {figures}");
    assert_eq!(figures["revenue"]["currency"], "EUR");
    let all: i64 = states.iter().map(|s| of(s).0).sum();
    let conversion = if all == 0 { 0.0 } else { of("confirmed").0 as f64 / all as f64 };
    assert!((figures["conversion"].as_f64().unwrap() - conversion).abs() < 1e-9, "conversion: {figures}");
    assert_eq!(figures["stock"]["total"].as_u64(), Some(total));
    let committed = (of("reserved").1 + of("confirmed").1) as u64;
    assert_eq!(figures["stock"]["remaining"].as_u64(), Some(total - committed), "remaining: {figures}");
    assert_eq!(figures["stock"]["remaining"].as_u64(), Some(client.remaining(drop_id).await), "the edge's remaining");

    let timeline = figures["timeline"].as_array().expect("a timeline");
    let sum = |flow: &str| timeline.iter().map(|b| b[flow].as_i64().unwrap()).sum::<i64>();
    let units = |states: &[&str]| states.iter().map(|s| of(s).1).sum::<i64>();
    assert_eq!(sum("reserved"), units(&states), "every unit ordered was reserved once");
    assert_eq!(sum("confirmed"), units(&["confirmed"]));
    assert_eq!(sum("released"), units(&["failed", "cancelled", "expired"]));
    let ats: Vec<&str> = timeline.iter().map(|b| b["at"].as_str().unwrap()).collect();
    assert!(ats.windows(2).all(|w| w[0] < w[1]), "buckets in time order: {ats:?}");
}

/// An order's payment, once the origin has prepared it.
async fn purchase_of(client: &Client, buyer: &Buyer, order_id: Uuid) -> Purchase {
    let order = client.wait_order(buyer, order_id, 60, |v| v["payment"].is_object()).await;
    Purchase {
        buyer: buyer.clone(),
        order_id,
        reference: order["payment"]["reference"].as_str().expect("reference").to_owned(),
        checkout_url: order["payment"]["checkout_url"].as_str().expect("checkout").to_owned(),
        amount: order["amount"]["amount"].as_i64().expect("amount"),
    }
}

fn order_id(answer: &Answer) -> Uuid {
    id(&answer.json()["order_id"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_mixed_rush_of_300_buyers_the_analytics_are_exactly_postgres() {
    const BUYERS: usize = 300;
    const STOCK: u32 = 200;
    let stack = Stack::shared().await;
    let client = stack.client();
    let db = stack.db().await;
    let (owner, product_id) = client.creator_with_product().await;
    // Holds long enough to pay for on a loaded machine; those left alone run out.
    let spec = DropSpec { hold_seconds: Some(30), ..DropSpec::live(STOCK, 2) };
    let card = client.create_drop_as(&owner, product_id, spec).await;
    let (drop_id, creator_id) = (id(&card["id"]), id(&card["creator"]["id"]));
    let small = client.create_drop_as(&owner, product_id, DropSpec::live(5, 1)).await;
    let small_id = id(&small["id"]);

    // The rush: every fifth buyer asks for two, so demand outruns the stock.
    let buyers: Vec<Buyer> = (0..BUYERS).map(|_| Buyer::new()).collect();
    let answers: Vec<(Buyer, Answer)> = futures::stream::iter(buyers.into_iter().enumerate())
        .map(|(i, buyer)| {
            let client = client.clone();
            async move {
                let quantity = if i % 5 == 0 { 2 } else { 1 };
                let answer = client.buy(&buyer, drop_id, &format!("analytics-{}", buyer.id), quantity).await;
                (buyer, answer)
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let mut bought = Vec::new();
    let (mut sold_out, mut none_left) = (0, 0);
    for (buyer, answer) in answers {
        match (answer.status, answer.code().as_str()) {
            (StatusCode::CREATED, _) => bought.push((buyer.clone(), order_id(&answer))),
            (StatusCode::CONFLICT, "sold_out") => {
                sold_out += 1;
                none_left += usize::from(answer.json()["remaining"] == 0);
            }
            (status, code) => panic!("a buy answered {status} {code}: {:?}", answer.json()),
        }
    }
    assert!(sold_out > 0 && !bought.is_empty(), "{} bought, {sold_out} sold out", bought.len());

    // A quarter each: paid, payment failed, cancelled, left to run out.
    futures::stream::iter(bought.iter().enumerate())
        .map(|(i, (buyer, order_id))| {
            let client = client.clone();
            async move {
                match i % 4 {
                    0 | 1 => {
                        let purchase = purchase_of(&client, buyer, *order_id).await;
                        let outcome = if i % 4 == 0 { "succeed" } else { "fail" };
                        let paid = client.checkout(&purchase, outcome).await;
                        assert!(paid.status.is_success(), "checkout: {} {:?}", paid.status, paid.json());
                    }
                    2 => {
                        let cancelled = client.cancel(buyer, *order_id).await;
                        // An order the origin has not heard of yet is not the buyer's yet.
                        if cancelled.status == StatusCode::NOT_FOUND {
                            client.wait_order(buyer, *order_id, 60, |_| true).await;
                            client.cancel(buyer, *order_id).await;
                        }
                    }
                    _ => {}
                }
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
    // The small drop: one order paid, one still held (its hold is the default ten minutes).
    let paid = client.purchase(small_id).await;
    assert!(client.checkout(&paid, "succeed").await.status.is_success());
    let _held = client.purchase(small_id).await;
    client.wait_status(&paid.buyer, paid.order_id, "confirmed").await;

    wait_quiet(&db, drop_id, Duration::from_secs(120)).await;
    let figures = analytics(&client, &format!("/v1/drops/{drop_id}/analytics"), &owner).await;
    assert_matches_postgres(&client, &db, &figures, u64::from(STOCK)).await;
    let counts = &figures["orders"];
    for state in ["confirmed", "failed", "cancelled", "expired"] {
        assert!(counts[state].as_u64() > Some(0), "the run has {state} orders: {figures}");
    }
    // Every unit was held at once during the rush (nothing came back until it ended,
    // and buyers were told none remained): the figures say when.
    if none_left > 0 {
        let sold_out_after = figures["sold_out_after_seconds"].as_i64().expect("it sold out");
        assert!((0..600).contains(&sold_out_after), "{sold_out_after}");
    }

    // The creator's figures: both drops, summed.
    let waited = Instant::now();
    let small_figures = loop {
        let f = analytics(&client, &format!("/v1/drops/{small_id}/analytics"), &owner).await;
        if f["orders"]["confirmed"] == 1 && f["orders"]["reserved"] == 1 {
            break f;
        }
        assert!(waited.elapsed() < Duration::from_secs(20), "the small drop's figures: {f}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_matches_postgres(&client, &db, &small_figures, 5).await;
    let creator = analytics(&client, &format!("/v1/creators/{creator_id}/analytics"), &owner).await;
    assert_eq!(creator["creator_id"], creator_id.to_string());
    let drops = creator["drops"].as_array().expect("drops");
    assert_eq!(drops.len(), 2, "{creator}");
    assert_eq!(drops.iter().map(|d| id(&d["drop_id"])).collect::<Vec<_>>(), vec![drop_id, small_id]);
    for state in ["reserved", "confirmed", "failed", "cancelled", "expired"] {
        let sum = figures["orders"][state].as_u64().unwrap() + small_figures["orders"][state].as_u64().unwrap();
        assert_eq!(creator["orders"][state].as_u64(), Some(sum), "{state}");
    }
    for field in ["total", "remaining"] {
        let sum = figures["stock"][field].as_u64().unwrap() + small_figures["stock"][field].as_u64().unwrap();
        assert_eq!(creator["stock"][field].as_u64(), Some(sum), "{field}");
    }
    let revenue = figures["revenue"]["amount"].as_i64().unwrap() + small_figures["revenue"]["amount"].as_i64().unwrap();
    assert_eq!(creator["revenue"], serde_json::json!([{"amount": revenue, "currency": "EUR"}]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_creator_and_admins_see_the_figures() {
    let stack = Stack::shared().await;
    let client = stack.client();
    let (owner, product_id) = client.creator_with_product().await;
    let card = client.create_drop_as(&owner, product_id, DropSpec::live(5, 1)).await;
    let (drop_id, creator_id) = (id(&card["id"]), id(&card["creator"]["id"]));
    let (other_creator, _) = client.creator_with_product().await;
    let admin = token(Uuid::now_v7(), Role::Admin);
    let buyer = Buyer::new();
    for path in [format!("/v1/drops/{drop_id}/analytics"), format!("/v1/creators/{creator_id}/analytics")] {
        for (who, token) in [("the creator", &owner), ("an admin", &admin)] {
            assert_eq!(client.get(&path, Some(token)).await.status, StatusCode::OK, "{who}: {path}");
        }
        for (who, token) in [("another creator", &other_creator), ("a buyer", &buyer.token)] {
            let refused = client.get(&path, Some(token)).await;
            assert_eq!((refused.status, refused.code().as_str()), (StatusCode::NOT_FOUND, "not_found"), "{who}");
        }
        let anonymous = client.get(&path, None).await;
        assert_eq!((anonymous.status, anonymous.code().as_str()), (StatusCode::UNAUTHORIZED, "unauthorized"));
    }
    let figures = analytics(&client, &format!("/v1/drops/{drop_id}/analytics"), &owner).await;
    assert_eq!(figures["stock"], serde_json::json!({"total": 5, "remaining": 5}));
    assert_eq!((figures["conversion"].as_f64(), figures["sold_out_after_seconds"].is_null()), (Some(0.0), true));
    for path in [format!("/v1/drops/{}/analytics", Uuid::now_v7()), "/v1/creators/not-an-id/analytics".to_owned()] {
        assert_eq!(client.get(&path, Some(&admin)).await.status, StatusCode::NOT_FOUND, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_event_and_a_rebuild_from_the_outbox_change_nothing() {
    let stack = Stack::shared().await;
    let client = stack.client();
    let db = stack.db().await;
    let (owner, product_id) = client.creator_with_product().await;
    let card = client.create_drop_as(&owner, product_id, DropSpec::live(10, 1)).await;
    let drop_id = id(&card["id"]);
    let (paid, failed, cancelled, _held) = tokio::join!(
        client.purchase(drop_id),
        client.purchase(drop_id),
        client.purchase(drop_id),
        client.purchase(drop_id)
    );
    client.checkout(&paid, "succeed").await;
    client.checkout(&failed, "fail").await;
    client.cancel(&cancelled.buyer, cancelled.order_id).await;
    client.wait_status(&paid.buyer, paid.order_id, "confirmed").await;
    client.wait_status(&failed.buyer, failed.order_id, "failed").await;
    wait_applied(&db, drop_id).await;
    let path = format!("/v1/drops/{drop_id}/analytics");
    let before = analytics(&client, &path, &owner).await;
    assert_eq!(
        before["orders"],
        serde_json::json!({"reserved": 1, "confirmed": 1, "failed": 1, "cancelled": 1, "expired": 0})
    );

    // Every event of the drop delivered again, past the bus's own bookkeeping: the
    // analytics' record of what they applied must absorb it.
    let seqs: Vec<i64> = sqlx::query_scalar(
        "SELECT seq FROM outbox WHERE aggregate_id = $1 OR payload->'data'->>'drop_id' = $1::text ORDER BY seq",
    )
    .bind(drop_id)
    .fetch_all(&db)
    .await
    .unwrap();
    sqlx::query(
        "DELETE FROM processed_events p USING outbox o
         WHERE p.consumer = 'analytics' AND p.event_id = o.id AND o.seq = ANY($1)",
    )
    .bind(&seqs)
    .execute(&db)
    .await
    .unwrap();
    for seq in seqs.clone() {
        stack
            .with_origin(move |app| async move { drops_origin::events::relay::replay(&app.core, seq, seq).await })
            .await
            .expect("replayed");
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let handled: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM processed_events p JOIN outbox o ON o.id = p.event_id
             WHERE p.consumer = 'analytics' AND o.seq = ANY($1)",
        )
        .bind(&seqs)
        .fetch_one(&db)
        .await
        .unwrap();
        // Events of no interest to the analytics are acknowledged unrecorded.
        let interesting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM outbox WHERE seq = ANY($1) AND event_type IN
               ('DropCreated', 'DropUpdated', 'OrderReserved', 'OrderConfirmed', 'OrderFailed', 'OrderCancelled',
                'OrderExpired')",
        )
        .bind(&seqs)
        .fetch_one(&db)
        .await
        .unwrap();
        if handled == interesting {
            break;
        }
        assert!(Instant::now() < deadline, "the analytics handled {handled} of {interesting} redelivered events");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(analytics(&client, &path, &owner).await, before, "a redelivered event changes nothing");

    let applied = stack
        .with_origin(|app| async move { drops_origin::analytics::ledger::rebuild(&app.core.db).await })
        .await
        .expect("rebuilt");
    assert!(applied >= seqs.len() as u64 - 2, "{applied}");
    assert_eq!(analytics(&client, &path, &owner).await, before, "the rebuild gives the same figures");
}

/// Waits until the analytics have applied every event about the drop and its orders.
async fn wait_applied(db: &sqlx::PgPool, drop_id: Uuid) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let unapplied: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM outbox o
             WHERE (o.aggregate_id = $1 OR o.payload->'data'->>'drop_id' = $1::text)
               AND o.event_type IN ('DropCreated', 'DropUpdated', 'OrderReserved', 'OrderConfirmed', 'OrderFailed',
                                    'OrderCancelled', 'OrderExpired')
               AND NOT EXISTS (SELECT 1 FROM analytics_applied a WHERE a.event_id = o.id)",
        )
        .bind(drop_id)
        .fetch_one(db)
        .await
        .unwrap();
        if unapplied == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "{unapplied} event(s) of {drop_id} not applied");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
