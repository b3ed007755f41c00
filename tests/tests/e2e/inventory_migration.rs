//! The inventory object's schema migration, version 1 to 2 (issue 22), run on a
//! version 1 database as the objects made before version 2 still hold one.
//!
//! A development-only signed route (`/internal/dev/`, served only when the edge's
//! `ENVIRONMENT` is `development`) makes a drop's object rebuild its database as
//! version 1 wrote it, from purchases this test describes, then open it as a fresh
//! instance does: migrated. What version 1 held must all be there: stock, holds,
//! each buyer's count against the limit, the answers kept for idempotency keys
//! (replayed byte for byte), what the origin was still owed (delivered after); and
//! the object sells on.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use drops_shared::api::{Money, OrderCreated, OrderStatus};
use drops_shared::signing::{sign_internal, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use drops_tests::client::Answer;
use drops_tests::{Buyer, Client, DropSpec, Stack, ORIGIN_TO_EDGE_SECRET};
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

const PRICE: i64 = 2500;

/// A purchase as version 1 stored it.
struct V1Purchase {
    buyer: Buyer,
    reservation_id: Uuid,
    key: String,
    quantity: u32,
    state: &'static str,
    reserved_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    answer_kept: bool,
    unforwarded: bool,
    unreported_expiry: bool,
}

impl V1Purchase {
    fn to_json(&self) -> Value {
        json!({
            "reservation_id": self.reservation_id, "user_id": self.buyer.id, "idempotency_key": self.key,
            "quantity": self.quantity, "state": self.state, "reserved_at": self.reserved_at,
            "expires_at": self.expires_at, "answer_kept": self.answer_kept, "unforwarded": self.unforwarded,
            "unreported_expiry": self.unreported_expiry,
        })
    }

    /// The 201 version 1 answered, as it kept it for replays.
    fn answer(&self, drop_id: Uuid) -> Vec<u8> {
        serde_json::to_vec(&OrderCreated {
            order_id: self.reservation_id,
            drop_id,
            status: OrderStatus::Reserved,
            quantity: self.quantity,
            amount: Money { amount: PRICE * i64::from(self.quantity), currency: "EUR".into() },
            expires_at: self.expires_at,
            payment: None,
        })
        .expect("an answer")
    }
}

/// A moment `secs` from now, to the millisecond (what the object stores).
fn at(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(Utc::now().timestamp_millis() + secs * 1000).expect("a moment")
}

/// `POST path` to the edge, signed as the origin signs its calls.
async fn signed_to_edge(client: &Client, path: &str, body: &Value) -> Answer {
    let body = serde_json::to_vec(body).expect("a body");
    let now = Utc::now().timestamp();
    let signature = sign_internal(ORIGIN_TO_EDGE_SECRET.as_bytes(), "POST", path, now, &body);
    let req = client
        .http
        .post(format!("{}{path}", client.edge))
        .header("content-type", "application/json")
        .header(TIMESTAMP_HEADER, now.to_string())
        .header(SIGNATURE_HEADER, signature)
        .body(body);
    client.send(req).await
}

fn assert_code(a: &Answer, status: StatusCode, code: &str, what: &str) {
    assert_eq!((a.status, a.code().as_str()), (status, code), "{what}: {}", String::from_utf8_lossy(&a.body));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_inventory_migrates_whole_and_keeps_selling() {
    let stack = Stack::shared().await;
    let client = stack.client();
    let drop_id = client.create_drop(DropSpec::live(10, 2)).await;
    let purchase = |quantity, state, reserved, expires| V1Purchase {
        buyer: Buyer::new(),
        reservation_id: Uuid::now_v7(),
        key: format!("v1-key-{}", Uuid::new_v4().simple()),
        quantity,
        state,
        reserved_at: at(reserved),
        expires_at: at(expires),
        answer_kept: true,
        unforwarded: false,
        unreported_expiry: false,
    };
    // Held, its handoff still owed to the origin.
    let held = V1Purchase { unforwarded: true, ..purchase(2, "held", -60, 540) };
    // Paid and sold, handed over long ago.
    let sold = purchase(1, "sold", -120, 480);
    // Ran out unpaid: its units are back, and the origin is owed both the
    // reservation and the notice that it ran out.
    let lapsed = V1Purchase { unforwarded: true, unreported_expiry: true, ..purchase(1, "released", -700, -100) };
    // Sold more than a day ago: its answer is no longer kept.
    let old = V1Purchase { answer_kept: false, ..purchase(1, "sold", -90_000, -89_400) };
    let v1 = [&held, &sold, &lapsed, &old];

    let path = format!("/internal/dev/drops/{drop_id}/inventory/v1-fixture");
    let fixture = json!({"holds": v1.iter().map(|p| p.to_json()).collect::<Vec<_>>()});
    let rebuilt = signed_to_edge(&client, &path, &fixture).await;
    assert_eq!(rebuilt.status, StatusCode::OK, "{}", String::from_utf8_lossy(&rebuilt.body));
    let migrated = rebuilt.json();
    println!("{migrated:#}");
    assert_eq!(migrated["tables_before"], json!(["holds", "idempotency", "outbound", "terms"]), "a version 1 database");
    assert_eq!(migrated["tables_after"], json!(["holds", "meta", "outbound", "terms"]));
    assert_eq!(migrated["schema_version"], 2);
    let snapshot = &migrated["snapshot"];
    assert_eq!((&snapshot["remaining"], &snapshot["held"], &snapshot["sold"]), (&json!(6), &json!(2), &json!(2)));
    assert_eq!(snapshot["terms"]["total"], 10);
    let holds = snapshot["holds"].as_array().expect("holds");
    assert_eq!(holds.len(), v1.len());
    for p in v1 {
        let hold = holds.iter().find(|h| h["reservation_id"] == json!(p.reservation_id)).expect("the hold survives");
        assert_eq!(
            (&hold["user_id"], &hold["quantity"], &hold["state"]),
            (&json!(p.buyer.id), &json!(p.quantity), &json!(p.state))
        );
        assert_eq!(hold["expires_at"].as_str().and_then(|t| t.parse::<DateTime<Utc>>().ok()), Some(p.expires_at));
        let key = if p.answer_kept { json!(p.key) } else { Value::Null };
        assert_eq!(hold["idempotency_key"], key, "the key of {}", p.state);
    }
    let ids = |v: &Value| {
        let mut ids: Vec<Uuid> = serde_json::from_value(v.clone()).expect("ids");
        ids.sort();
        ids
    };
    let mut owed = vec![held.reservation_id, lapsed.reservation_id];
    owed.sort();
    assert_eq!(ids(&snapshot["unforwarded"]), owed, "the handoffs still owed");
    assert_eq!(ids(&snapshot["unreported_expiries"]), vec![lapsed.reservation_id]);

    // Kept answers replay byte for byte; a key with another body is refused.
    for p in [&held, &sold] {
        let replay = client.buy(&p.buyer, drop_id, &p.key, p.quantity).await;
        assert_eq!(replay.status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&replay.body));
        assert_eq!(replay.header("idempotent-replayed"), Some("true"));
        assert_eq!(String::from_utf8_lossy(&replay.body), String::from_utf8_lossy(&p.answer(drop_id)));
    }
    assert_code(
        &client.buy(&held.buyer, drop_id, &held.key, 1).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
        "another body",
    );
    // Each buyer's count against the limit of 2: held and sold units count, released ones do not.
    assert_code(
        &client.buy(&held.buyer, drop_id, "v2-key-0001", 1).await,
        StatusCode::CONFLICT,
        "purchase_limit_reached",
        "2 held",
    );
    assert_code(
        &client.buy(&old.buyer, drop_id, "v2-key-0002", 2).await,
        StatusCode::CONFLICT,
        "purchase_limit_reached",
        "1 sold + 2",
    );
    let bought = [(&old.buyer, 1), (&lapsed.buyer, 2), (&Buyer::new(), 1)];
    for (buyer, quantity) in bought {
        let a = client.buy(buyer, drop_id, &format!("v2-key-{}", Uuid::new_v4().simple()), quantity).await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&a.body));
        assert!(a.header("idempotent-replayed").is_none());
    }
    assert_eq!(client.remaining(drop_id).await, 2);

    // What version 1 owed the origin reaches it: the held reservation is an order,
    // the lapsed one an order that expired.
    let db = stack.db().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let states: Vec<(Uuid, String)> = sqlx::query_as("SELECT id, status FROM orders WHERE id = ANY($1)")
            .bind([held.reservation_id, lapsed.reservation_id])
            .fetch_all(&db)
            .await
            .expect("orders");
        let of = |id| states.iter().find(|(i, _)| *i == id).map(|(_, s)| s.as_str());
        if of(held.reservation_id) == Some("reserved") && of(lapsed.reservation_id) == Some("expired") {
            break;
        }
        assert!(Instant::now() < deadline, "the origin never got what version 1 owed it: {states:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let after = stack.snapshot(drop_id).await;
    assert!(after.unreported_expiries.is_empty(), "{:?}", after.unreported_expiries);
    assert!(!after.unforwarded.contains(&held.reservation_id) && !after.unforwarded.contains(&lapsed.reservation_id));
    assert_eq!(after.remaining + after.held + after.sold, after.terms.total, "{after:?}");
}
