//! The buy path end to end: edge (wrangler dev) -> DropInventory -> origin -> Postgres.

use std::collections::HashSet;

use chrono::Duration;
use drops_shared::auth::Role;
use drops_tests::client::token;
use drops_tests::{Buyer, DropSpec, Stack};
use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

async fn orders_in_db(db: &sqlx::PgPool, drop_id: Uuid) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM orders WHERE drop_id = $1").bind(drop_id).fetch_one(db).await.unwrap()
}

/// Waits until Postgres holds `n` orders for the drop (the forward may finish after the 201).
async fn wait_for_orders(db: &sqlx::PgPool, drop_id: Uuid, n: i64) -> i64 {
    for _ in 0..100 {
        let got = orders_in_db(db, drop_id).await;
        if got >= n {
            return got;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    orders_in_db(db, drop_id).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rush_of_500_buyers_on_50_units_sells_exactly_50() {
    let stack = Stack::shared().await;
    let client = stack.client();
    let drop_id = client.create_drop(DropSpec::live(50, 1)).await;
    let buyers: Vec<Buyer> = (0..500).map(|_| Buyer::new()).collect();
    let answers = join_all(buyers.iter().map(|b| {
        let client = client.clone();
        async move { client.buy(b, drop_id, &format!("rush-{}", b.id), 1).await }
    }))
    .await;
    let created: Vec<_> = answers.iter().filter(|a| a.status == StatusCode::CREATED).collect();
    let sold_out = answers.iter().filter(|a| a.status == StatusCode::CONFLICT && a.code() == "sold_out").count();
    assert_eq!(created.len(), 50, "statuses: {:?}", answers.iter().map(|a| a.status).collect::<Vec<_>>());
    assert_eq!(sold_out, 450);
    let ids: HashSet<_> = created.iter().map(|a| a.json()["order_id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(ids.len(), 50, "every winner got their own order");
    assert_eq!(client.remaining(drop_id).await, 0);
    let db = stack.db().await;
    assert_eq!(wait_for_orders(&db, drop_id, 50).await, 50);
    let units: i64 = sqlx::query_scalar("SELECT COALESCE(SUM(quantity), 0)::bigint FROM orders WHERE drop_id = $1")
        .bind(drop_id)
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(units, 50, "no unit sold twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_with_one_key_make_one_order() {
    let stack = Stack::shared().await;
    let client = stack.client();
    let drop_id = client.create_drop(DropSpec::live(10, 2)).await;
    let buyer = Buyer::new();
    let answers = join_all((0..20).map(|_| client.buy(&buyer, drop_id, "same-key-0001", 1))).await;
    let mut order_ids = HashSet::new();
    for a in &answers {
        match a.status {
            StatusCode::CREATED => {
                order_ids.insert(a.json()["order_id"].as_str().unwrap().to_owned());
            }
            StatusCode::CONFLICT => assert_eq!(a.code(), "idempotency_key_in_progress"),
            other => panic!("unexpected {other}: {:?}", a.json()),
        }
    }
    assert_eq!(order_ids.len(), 1, "one order for one key");
    assert_eq!(client.remaining(drop_id).await, 9);

    // A later replay is the first answer, byte for byte, marked as a replay.
    let first = answers.iter().find(|a| a.status == StatusCode::CREATED).unwrap();
    let replay = client.buy(&buyer, drop_id, "same-key-0001", 1).await;
    assert_eq!(replay.status, StatusCode::CREATED);
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!(replay.body, first.body, "byte for byte");
    let db = stack.db().await;
    assert_eq!(wait_for_orders(&db, drop_id, 1).await, 1);
    // Still the first answer once the origin has the order and its payment.
    client
        .wait_order(&buyer, replay.json()["order_id"].as_str().unwrap().parse().unwrap(), 20, |v| {
            v["payment"].is_object()
        })
        .await;
    let again = client.buy(&buyer, drop_id, "same-key-0001", 1).await;
    assert_eq!(again.body, first.body);

    // Same key, another body: refused, nothing changes.
    let other_body = client.buy(&buyer, drop_id, "same-key-0001", 2).await;
    assert_eq!(other_body.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(other_body.code(), "idempotency_key_reused");
    assert_eq!(client.remaining(drop_id).await, 9);

    // Another user's identical key is theirs alone.
    let stranger = Buyer::new();
    let theirs = client.buy(&stranger, drop_id, "same-key-0001", 1).await;
    assert_eq!(theirs.status, StatusCode::CREATED);
    assert_ne!(theirs.json()["order_id"], first.json()["order_id"]);
    assert_eq!(client.remaining(drop_id).await, 8);
    assert_eq!(wait_for_orders(&db, drop_id, 2).await, 2);
}

/// A key is scoped to its drop (API.md): the same key on another drop is another
/// request, decided by that drop alone, and both orders reach the origin.
#[tokio::test]
async fn the_same_key_on_another_drop_is_another_purchase() {
    let stack = Stack::shared().await;
    let client = stack.client();
    let first_drop = client.create_drop(DropSpec::live(5, 1)).await;
    let second_drop = client.create_drop(DropSpec::live(5, 1)).await;
    let buyer = Buyer::new();
    let first = client.buy(&buyer, first_drop, "cross-drop-key", 1).await;
    assert_eq!(first.status, StatusCode::CREATED);
    let second = client.buy(&buyer, second_drop, "cross-drop-key", 1).await;
    assert_eq!(second.status, StatusCode::CREATED, "{:?}", second.json());
    assert_eq!(second.header("idempotent-replayed"), None);
    assert_ne!(second.json()["order_id"], first.json()["order_id"]);
    assert_eq!((client.remaining(first_drop).await, client.remaining(second_drop).await), (4, 4));
    let db = stack.db().await;
    assert_eq!(wait_for_orders(&db, first_drop, 1).await, 1);
    assert_eq!(wait_for_orders(&db, second_drop, 1).await, 1);
}

#[tokio::test]
async fn per_user_limit_counts_every_unit_held() {
    let stack = Stack::shared().await;
    let client = stack.client();
    let drop_id = client.create_drop(DropSpec::live(10, 2)).await;
    let buyer = Buyer::new();
    assert_eq!(client.buy(&buyer, drop_id, "limit-key-1", 1).await.status, StatusCode::CREATED);
    let over = client.buy(&buyer, drop_id, "limit-key-2", 2).await;
    assert_eq!((over.status, over.code().as_str()), (StatusCode::CONFLICT, "purchase_limit_reached"));
    assert_eq!(client.buy(&buyer, drop_id, "limit-key-3", 1).await.status, StatusCode::CREATED);
    let at_limit = client.buy(&buyer, drop_id, "limit-key-4", 1).await;
    assert_eq!(at_limit.code(), "purchase_limit_reached");
    let above_max = client.buy(&Buyer::new(), drop_id, "limit-key-5", 3).await;
    assert_eq!((above_max.status, above_max.code().as_str()), (StatusCode::BAD_REQUEST, "invalid_request"));
    assert_eq!(client.remaining(drop_id).await, 8);
}

#[tokio::test]
async fn drop_window_is_enforced() {
    let stack = Stack::shared().await;
    let client = stack.client();
    let upcoming = client.create_drop(DropSpec { starts_in: Duration::hours(1), ..DropSpec::live(5, 1) }).await;
    let ended = client
        .create_drop(DropSpec { starts_in: Duration::hours(-3), lasts: Duration::hours(1), ..DropSpec::live(5, 1) })
        .await;
    let buyer = Buyer::new();
    let early = client.buy(&buyer, upcoming, "window-key-1", 1).await;
    assert_eq!((early.status, early.code().as_str()), (StatusCode::CONFLICT, "drop_not_started"));
    let late = client.buy(&buyer, ended, "window-key-1", 1).await;
    assert_eq!((late.status, late.code().as_str()), (StatusCode::CONFLICT, "drop_ended"));
    assert_eq!(client.stock(upcoming).await["status"], "upcoming");
    assert_eq!(client.stock(ended).await["status"], "ended");
    assert_eq!(client.remaining(upcoming).await, 5);
    assert_eq!(client.remaining(ended).await, 5);
}

#[tokio::test]
async fn bad_input_gets_its_code_and_changes_nothing() {
    let stack = Stack::shared().await;
    let client = stack.client();
    let drop_id = client.create_drop(DropSpec::live(5, 2)).await;
    let buyer = Buyer::new();
    let t = Some(buyer.token.as_str());
    /// (case, Idempotency-Key, body, expected status, expected code)
    type Case<'a> = (&'a str, Option<&'a str>, Vec<u8>, StatusCode, &'a str);
    let cases: Vec<Case> = vec![
        ("missing key", None, br#"{"quantity":1}"#.to_vec(), StatusCode::BAD_REQUEST, "idempotency_key_missing"),
        ("short key", Some("short"), br#"{"quantity":1}"#.to_vec(), StatusCode::BAD_REQUEST, "invalid_request"),
        ("quantity 0", Some("bad-input-01"), br#"{"quantity":0}"#.to_vec(), StatusCode::BAD_REQUEST, "invalid_request"),
        (
            "quantity string",
            Some("bad-input-02"),
            br#"{"quantity":"1"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        ("quantity missing", Some("bad-input-03"), b"{}".to_vec(), StatusCode::BAD_REQUEST, "invalid_request"),
        (
            "unknown field",
            Some("bad-input-04"),
            br#"{"quantity":1,"price":1}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        ("bad json", Some("bad-input-05"), br#"{"quantity":"#.to_vec(), StatusCode::BAD_REQUEST, "invalid_request"),
        (
            "70 KiB body",
            Some("bad-input-06"),
            vec![b' '; 70 * 1024],
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
    ];
    for (name, key, body, status, code) in cases {
        let a = client.buy_raw(t, drop_id, key, body).await;
        assert_eq!(a.status, status, "{name}: {:?}", a.json());
        assert_eq!(a.code(), code, "{name}");
        assert_eq!(a.header("content-type"), Some("application/problem+json"), "{name}");
        if code == "invalid_request" && name.starts_with("quantity string") {
            assert!(a.json()["detail"].as_str().unwrap().contains("quantity"), "the field is named");
        }
    }
    let wrong_drop = client.buy(&buyer, Uuid::now_v7(), "bad-input-07", 1).await;
    assert_eq!((wrong_drop.status, wrong_drop.code().as_str()), (StatusCode::NOT_FOUND, "not_found"));
    assert_eq!(client.remaining(drop_id).await, 5, "no bad request moved stock");
}

#[tokio::test]
async fn auth_is_checked_first_and_strictly() {
    let stack = Stack::shared().await;
    let client = stack.client();
    let drop_id = client.create_drop(DropSpec::live(5, 1)).await;
    let user = Uuid::now_v7();
    let forged = drops_shared::auth::mint(
        drops_shared::auth::Identity { user_id: user, role: Role::Buyer },
        b"not-the-secret",
        chrono::Utc::now() + Duration::hours(1),
    );
    let expired = drops_shared::auth::mint(
        drops_shared::auth::Identity { user_id: user, role: Role::Buyer },
        drops_tests::JWT_SECRET.as_bytes(),
        chrono::Utc::now() - Duration::hours(1),
    );
    use base64::Engine;
    let b64 = |v: serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let none = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "typ": "JWT"})),
        b64(json!({"sub": user, "role": "buyer", "exp": chrono::Utc::now().timestamp() + 3600}))
    );
    for (name, tok) in [("none", None), ("forged", Some(forged)), ("expired", Some(expired)), ("alg none", Some(none))]
    {
        // A bad token fails before the key or body are looked at.
        let a = client.buy_raw(tok.as_deref(), drop_id, None, "garbage").await;
        assert_eq!((a.status, a.code().as_str()), (StatusCode::UNAUTHORIZED, "unauthorized"), "{name}");
    }
    // Wrong role: a creator cannot buy, a buyer cannot create drops.
    let creator = token(Uuid::now_v7(), Role::Creator);
    let a = client.buy_raw(Some(&creator), drop_id, None, "garbage").await;
    assert_eq!((a.status, a.code().as_str()), (StatusCode::FORBIDDEN, "forbidden"));
    let buyer = Buyer::new();
    let a = client.post_json("/v1/drops", Some(&buyer.token), json!({})).await;
    assert_eq!((a.status, a.code().as_str()), (StatusCode::FORBIDDEN, "forbidden"));
    let a = client.post_json("/v1/creators", Some(&buyer.token), json!({"name": "x", "user_id": buyer.id})).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);

    // Someone else's order does not exist for you.
    let bought = client.buy(&buyer, drop_id, "auth-key-0001", 1).await;
    assert_eq!(bought.status, StatusCode::CREATED);
    let order_id = bought.json()["order_id"].as_str().unwrap().to_owned();
    let db = stack.db().await;
    wait_for_orders(&db, drop_id, 1).await;
    let mine = client.get(&format!("/v1/orders/{order_id}"), Some(&buyer.token)).await;
    assert_eq!(mine.status, StatusCode::OK);
    let theirs = client.get(&format!("/v1/orders/{order_id}"), Some(&Buyer::new().token)).await;
    assert_eq!((theirs.status, theirs.code().as_str()), (StatusCode::NOT_FOUND, "not_found"));
    assert_eq!(client.get(&format!("/v1/orders/{order_id}"), None).await.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn internal_routes_refuse_unsigned_calls() {
    let stack = Stack::shared().await;
    let client = stack.client();
    let drop_id = client.create_drop(DropSpec::live(5, 1)).await;
    let http = reqwest::Client::new();
    // At the edge: releasing someone's hold, or rewriting a drop's stock, without a signature.
    for (method, path) in [
        (reqwest::Method::POST, format!("/internal/v1/drops/{drop_id}/holds/{}/release", Uuid::now_v7())),
        (reqwest::Method::POST, format!("/internal/v1/drops/{drop_id}/inventory")),
        (reqwest::Method::GET, format!("/internal/v1/drops/{drop_id}/inventory")),
    ] {
        let resp = http
            .request(method, format!("{}{path}", stack.edge_url))
            .header("x-drops-timestamp", chrono::Utc::now().timestamp().to_string())
            .header("x-drops-signature", "00".repeat(32))
            .body(r#"{"total":1000000,"max_per_user":1}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{path}");
    }
    // At the origin: a forged reservation.
    let resp = http
        .post(format!("{}/internal/v1/reservations", stack.origin_url))
        .body(json!({"reservation_id": Uuid::now_v7()}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(client.remaining(drop_id).await, 5);
}

#[tokio::test]
async fn buyer_reads_their_orders_newest_first() {
    let stack = Stack::shared().await;
    let client = stack.client();
    let drop_id = client.create_drop(DropSpec::live(10, 3)).await;
    let buyer = Buyer::new();
    let mut ids = Vec::new();
    for n in 0..3 {
        let a = client.buy(&buyer, drop_id, &format!("list-key-{n:04}"), 1).await;
        assert_eq!(a.status, StatusCode::CREATED);
        ids.push(a.json()["order_id"].as_str().unwrap().to_owned());
    }
    wait_for_orders(&stack.db().await, drop_id, 3).await;
    client.wait_order(&buyer, ids[2].parse().unwrap(), 20, |v| v["payment"].is_object()).await;
    let page = client.get("/v1/orders?limit=2", Some(&buyer.token)).await.json();
    let got: Vec<_> =
        page["items"].as_array().unwrap().iter().map(|o| o["order_id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(got, vec![ids[2].clone(), ids[1].clone()]);
    assert_eq!(page["items"][0]["status"], "reserved");
    assert!(page["items"][0]["payment"]["checkout_url"].is_string());
    let cursor = page["next_cursor"].as_str().unwrap();
    let rest = client.get(&format!("/v1/orders?limit=2&cursor={cursor}"), Some(&buyer.token)).await.json();
    assert_eq!(rest["items"][0]["order_id"], ids[0].as_str());
    assert!(rest["next_cursor"].is_null());
    let bad = client.get("/v1/orders?cursor=not-a-cursor", Some(&buyer.token)).await;
    assert_eq!((bad.status, bad.code().as_str()), (StatusCode::BAD_REQUEST, "invalid_request"));
    let others = client.get("/v1/orders", Some(&Buyer::new().token)).await.json();
    assert_eq!(others["items"].as_array().unwrap().len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_buyer_hammering_the_buy_path_is_rate_limited_alone() {
    let stack = Stack::shared().await;
    let client = stack.client();
    let drop_id = client.create_drop(DropSpec { starts_in: Duration::hours(1), ..DropSpec::live(5, 1) }).await;
    let hammer = Buyer::new();
    // 60 a 10-second window: 150 exceed what two windows allow, wherever the burst
    // falls across a window's edge.
    let keys: Vec<String> = (0..150).map(|n| format!("hammer-key-{n:04}")).collect();
    let answers = join_all(keys.iter().map(|k| client.buy(&hammer, drop_id, k, 1))).await;
    let limited: Vec<_> = answers.iter().filter(|a| a.status == StatusCode::TOO_MANY_REQUESTS).collect();
    assert!(!limited.is_empty(), "150 attempts in a burst were all let through");
    assert!(limited.iter().all(|a| a.code() == "rate_limited" && a.header("retry-after").is_some()));
    let other_answers: Vec<_> = answers
        .iter()
        .filter(|a| a.status != StatusCode::TOO_MANY_REQUESTS && a.code() != "drop_not_started")
        .map(|a| (a.status, a.json()))
        .collect();
    assert!(other_answers.is_empty(), "{other_answers:?}");
    // Someone else is not held back by it.
    let other = client.buy(&Buyer::new(), drop_id, "someone-else-1", 1).await;
    assert_eq!(other.code(), "drop_not_started");
}
