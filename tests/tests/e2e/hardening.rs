//! What an outside review found (issue 10), each held to its fix through the real
//! stack: bad input is a 400 naming the field, the sandbox checkout acts for the
//! order's owner alone, what browsers send is accepted, invented methods do not
//! become metric labels or reads, refusals that pass the page cache stay problems,
//! terms pushed late do not roll the edge back (and reconciliation repairs terms the
//! edge missed), and a notice the origin refuses for good is not sent again.

use std::time::Duration;

use drops_shared::auth::Role;
use drops_shared::internal::HoldState;
use drops_tests::client::token;
use drops_tests::{Buyer, DropSpec, Stack};
use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

#[tokio::test]
async fn text_holding_u0000_is_a_400_naming_the_field_and_changes_nothing() {
    let stack = Stack::shared().await;
    let client = stack.client();
    let admin = token(Uuid::now_v7(), Role::Admin);
    let user = Uuid::now_v7();
    let creator =
        client.post_json("/v1/creators", Some(&admin), json!({"name": "Nul\u{0}Studio", "user_id": user})).await;
    assert_eq!((creator.status, creator.code().as_str()), (StatusCode::BAD_REQUEST, "invalid_request"));
    assert_eq!(creator.header("content-type"), Some("application/problem+json"));
    assert!(creator.json()["detail"].as_str().unwrap().contains("`name`"), "{:?}", creator.json());

    let (creator_token, _) = client.creator_with_product().await;
    let product = client
        .post_json("/v1/products", Some(&creator_token), json!({"title": "Tee", "description": "soft\u{0}cotton"}))
        .await;
    assert_eq!(product.status, StatusCode::BAD_REQUEST);
    assert!(product.json()["detail"].as_str().unwrap().contains("`description`"), "{:?}", product.json());

    let buyer = Buyer::new();
    let subscription = json!({"endpoint": "https://push.example.net/\u{0}", "keys": {"p256dh": "k", "auth": "a"}});
    let put = client.subscribe_push(&buyer, &subscription).await;
    assert_eq!(put.status, StatusCode::BAD_REQUEST);
    assert!(put.json()["detail"].as_str().unwrap().contains("`endpoint`"), "{:?}", put.json());
    let db = stack.db().await;
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM creators WHERE user_id = $1").bind(user).fetch_one(&db).await.unwrap();
    assert_eq!(stored, 0);
}

#[tokio::test]
async fn the_sandbox_checkout_acts_for_the_orders_owner_alone() {
    let stack = Stack::shared().await;
    let client = stack.client();
    let drop_id = client.create_drop(DropSpec::live(3, 1)).await;
    let purchase = client.purchase(drop_id).await;
    let pay = json!({"outcome": "succeed"});
    let anonymous = client.send(client.http.post(&purchase.checkout_url).json(&pay)).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    let stranger = Buyer::new();
    let theirs = client.send(client.http.post(&purchase.checkout_url).bearer_auth(&stranger.token).json(&pay)).await;
    assert_eq!(theirs.status, StatusCode::NOT_FOUND, "someone else's checkout does not exist for them");
    let look = client.send(client.http.get(&purchase.checkout_url).bearer_auth(&stranger.token)).await;
    assert_eq!(look.status, StatusCode::NOT_FOUND);
    assert_eq!(client.order(&purchase.buyer, purchase.order_id).await.json()["status"], "reserved");
    let paid = client.checkout(&purchase, "succeed").await;
    assert_eq!(paid.status, StatusCode::ACCEPTED);
    client.wait_status(&purchase.buyer, purchase.order_id, "confirmed").await;
}

#[tokio::test]
async fn a_browsers_push_subscription_with_expiration_time_is_accepted() {
    let stack = Stack::shared().await;
    let client = stack.client();
    let buyer = Buyer::new();
    // As `PushSubscription.toJSON()` gives it.
    let subscription = json!({
        "endpoint": "https://push.example.net/send/abc", "expirationTime": null,
        "keys": {"p256dh": "BPlaceholderKey", "auth": "placeholder"},
    });
    let put = client.subscribe_push(&buyer, &subscription).await;
    assert_eq!(put.status, StatusCode::NO_CONTENT, "{:?}", put.json());
}

#[tokio::test]
async fn invented_methods_do_not_become_metric_labels() {
    let stack = Stack::shared().await;
    let client = stack.client();
    let method = reqwest::Method::from_bytes(b"FROBNICATE").unwrap();
    let answer = client.send(client.http.request(method, format!("{}/v1/drops", stack.origin_url))).await;
    assert!(answer.status.is_client_error(), "{}", answer.status);
    let metrics = client.get_raw_metrics().await;
    assert!(!metrics.contains("FROBNICATE"), "an invented method became a label");
    assert!(metrics.contains("method=\"other\""));
}

#[tokio::test]
async fn refusals_that_pass_the_page_cache_stay_problems() {
    let stack = Stack::shared().await;
    let client = stack.client();
    let unknown = format!("/v1/drops/{}", Uuid::now_v7());
    for _ in 0..2 {
        // The second is answered from the edge's memory of the first.
        let card = client.get(&unknown, None).await;
        assert_eq!((card.status, card.code().as_str()), (StatusCode::NOT_FOUND, "not_found"));
        assert_eq!(card.header("content-type"), Some("application/problem+json"));
    }
    let bad_list = client.get("/v1/drops?status=sideways", None).await;
    assert_eq!(bad_list.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad_list.header("content-type"), Some("application/problem+json"));
}

#[tokio::test]
async fn a_creators_public_profile_does_not_name_its_account_and_bad_cursors_are_refused() {
    let stack = Stack::shared().await;
    let client = stack.client();
    let admin = token(Uuid::now_v7(), Role::Admin);
    let user = Uuid::now_v7();
    let made = client.post_json("/v1/creators", Some(&admin), json!({"name": "Quiet Studio", "user_id": user})).await;
    assert_eq!(made.status, StatusCode::CREATED);
    assert_eq!(made.json()["user_id"], user.to_string(), "the admin who made it sees the account");
    let id = made.json()["id"].as_str().unwrap().to_owned();
    let profile = client.get(&format!("/v1/creators/{id}"), None).await;
    assert_eq!(profile.status, StatusCode::OK);
    assert!(profile.json().get("user_id").is_none(), "{:?}", profile.json());
    assert_eq!(profile.json()["follower_count"], 0);
    let buyer = Buyer::new();
    let bad = client.get("/v1/me/following?cursor=not-a-cursor", Some(&buyer.token)).await;
    assert_eq!((bad.status, bad.code().as_str()), (StatusCode::BAD_REQUEST, "invalid_request"));
}

/// Creates an upcoming drop (its terms may still change) as a new creator.
async fn upcoming_drop(client: &drops_tests::client::Client, stock: u32) -> (Uuid, String) {
    let (creator, product_id) = client.creator_with_product().await;
    let starts_at = chrono::Utc::now() + chrono::Duration::hours(1);
    let body = json!({
        "product_id": product_id, "price": {"amount": 2500, "currency": "EUR"}, "stock": stock,
        "max_per_user": 2, "starts_at": starts_at, "ends_at": starts_at + chrono::Duration::hours(1),
    });
    let created = client.post_json("/v1/drops", Some(&creator), body).await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.json());
    (Uuid::parse_str(created.json()["id"].as_str().unwrap()).unwrap(), creator)
}

#[tokio::test]
async fn terms_pushed_late_do_not_roll_the_edge_back() {
    let stack = Stack::shared().await;
    let client = stack.client();
    let (drop_id, creator) = upcoming_drop(&client, 5).await;
    let first = stack.snapshot(drop_id).await.terms;
    let patch = |stock: u32| {
        client.send(
            client
                .http
                .patch(format!("{}/v1/drops/{drop_id}", client.edge))
                .bearer_auth(&creator)
                .json(&json!({"stock": stock})),
        )
    };
    assert_eq!(patch(9).await.status, StatusCode::OK);
    assert_eq!(patch(7).await.status, StatusCode::OK);
    assert_eq!(client.stock(drop_id).await["total"], 7);
    // The first push arrives last (a slow request, a sync round that read early).
    let late = stack.with_origin(move |s| async move { s.core.edge.put_terms(drop_id, &first).await }).await;
    let in_force = late.expect("the edge answers a stale push with the terms in force").terms;
    assert_eq!((in_force.total, in_force.version), (7, 3));
    assert_eq!(client.stock(drop_id).await["total"], 7, "the edge still sells on the newest terms");
}

#[tokio::test]
async fn reconciliation_pushes_terms_the_edge_missed() {
    let stack = Stack::shared().await;
    let client = stack.client();
    let drop_id = client.create_drop(DropSpec::live(4, 1)).await;
    // A change the edge never heard of, though the origin believes it did (a push
    // lost after its acknowledgement was written, or an edge that lost its state).
    let db = stack.db().await;
    sqlx::query("UPDATE drops SET stock = 6, terms_version = terms_version + 1 WHERE id = $1")
        .bind(drop_id)
        .execute(&db)
        .await
        .unwrap();
    assert_eq!(client.stock(drop_id).await["total"], 4);
    let reconcile =
        || stack.with_origin(move |s| async move { s.reconcile_drops(&[drop_id], Duration::ZERO).await.unwrap() });
    let repairs = reconcile().await;
    let kinds: Vec<&str> = repairs.iter().map(|r| r.repair).collect();
    assert_eq!(kinds, ["terms_resynced"], "{repairs:?}");
    assert_eq!(client.stock(drop_id).await["total"], 6, "the edge sells on the catalogue's terms again");
    assert!(reconcile().await.is_empty(), "nothing left to repair");
}

#[tokio::test]
async fn an_expiry_notice_the_origin_refuses_for_good_is_not_sent_again() {
    let stack = Stack::shared().await;
    let client = stack.client();
    let drop_id = client.create_drop(DropSpec { hold_seconds: Some(5), ..DropSpec::live(3, 1) }).await;
    let voided = client.purchase(drop_id).await;
    // The origin forgets the order (a voided reservation): the notice that its hold
    // ran out names an order that does not exist, however often it is sent.
    let db = stack.db().await;
    for table in ["payment_requests", "payments"] {
        sqlx::query(&format!("DELETE FROM {table} WHERE order_id = $1"))
            .bind(voided.order_id)
            .execute(&db)
            .await
            .unwrap();
    }
    sqlx::query("DELETE FROM orders WHERE id = $1").bind(voided.order_id).execute(&db).await.unwrap();
    let mut reported = false;
    for _ in 0..150 {
        let snapshot = stack.snapshot(drop_id).await;
        let released =
            snapshot.holds.iter().any(|h| h.reservation_id == voided.order_id && h.state == HoldState::Released);
        if released && !snapshot.unreported_expiries.contains(&voided.order_id) {
            reported = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(reported, "the origin's 404 ends the notice: the edge still owes it after 15 s");
    assert_eq!(client.remaining(drop_id).await, 3, "the units came back all the same");
}

#[tokio::test]
async fn unknown_methods_are_refused_not_read() {
    let stack = Stack::shared().await;
    let client = stack.client();
    let drop_id = client.create_drop(DropSpec::live(2, 1)).await;
    // Methods the runtime parses (WebDAV's and the like) but the `worker` crate reads
    // as GET. A name the runtime does not know at all it refuses itself (501).
    for name in ["PROPFIND", "MKCOL", "PURGE"] {
        let method = reqwest::Method::from_bytes(name.as_bytes()).unwrap();
        for path in ["/v1/drops".to_owned(), format!("/v1/drops/{drop_id}"), format!("/v1/drops/{drop_id}/stock")] {
            let answer = client.send(client.http.request(method.clone(), format!("{}{path}", client.edge))).await;
            assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED, "{name} {path} was served: {:?}", answer.json());
            assert_eq!(answer.code(), "method_not_allowed");
            assert_eq!(answer.header("content-type"), Some("application/problem+json"));
        }
    }
    let invented = reqwest::Method::from_bytes(b"FROBNICATE").unwrap();
    let answer = client.send(client.http.request(invented, format!("{}/v1/drops", client.edge))).await;
    assert!(matches!(answer.status.as_u16(), 405 | 501), "FROBNICATE /v1/drops: {}", answer.status);
    // Known methods on routes that do not take them: 405 naming what works.
    let stock = client.send(client.http.delete(format!("{}/v1/drops/{drop_id}/stock", client.edge))).await;
    assert_eq!((stock.status, stock.code().as_str()), (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"));
    assert_eq!(stock.header("allow"), Some("GET, HEAD, OPTIONS"));
    let buy = client.send(client.http.get(format!("{}/v1/drops/{drop_id}/orders", client.edge))).await;
    assert_eq!((buy.status, buy.code().as_str()), (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"));
    assert_eq!(buy.header("allow"), Some("POST, OPTIONS"));
    let orders = client.send(client.http.delete(format!("{}/v1/orders", client.edge))).await;
    assert_eq!((orders.status, orders.code().as_str()), (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"));
    assert_eq!(orders.header("content-type"), Some("application/problem+json"));
    // OPTIONS says what a route takes.
    let options = client.send(client.http.request(reqwest::Method::OPTIONS, format!("{}/v1/drops", client.edge))).await;
    assert_eq!(options.status, StatusCode::NO_CONTENT);
    assert_eq!(options.header("allow"), Some("GET, POST, HEAD, OPTIONS"));
}

/// Reconciliation reads a drop's holds a page at a time (a large drop's whole list,
/// built at once, was the Worker's largest allocation, and wasm memory keeps its
/// high-water mark): walked in small pages, every hold comes once, in order, with
/// its buyer's key, and the pages end.
#[tokio::test]
async fn a_drops_holds_read_in_pages_are_every_hold_once_in_order() {
    let stack = Stack::shared().await;
    let client = stack.client();
    let drop_id = client.create_drop(DropSpec::live(20, 1)).await;
    let mut bought = Vec::new();
    for _ in 0..7 {
        bought.push(client.purchase(drop_id).await.order_id);
    }
    let whole = stack.snapshot(drop_id).await;
    assert_eq!(whole.holds.len(), 7, "seven holds fit the first page");
    assert_eq!(whole.holds_after, None, "the client fetched whatever followed");

    let mut paged = Vec::new();
    let mut after = Uuid::nil();
    let mut pages = 0;
    loop {
        let page = stack.with_origin(move |s| async move { s.core.edge.holds_after(drop_id, after, 2).await }).await;
        let page = page.expect("a page of holds");
        assert!(page.holds.len() <= 2, "a page holds at most its limit: {}", page.holds.len());
        pages += 1;
        paged.extend(page.holds);
        match page.next_after {
            Some(next) => after = next,
            None => break,
        }
    }
    assert_eq!(pages, 4, "7 holds in pages of 2");
    assert_eq!(paged, whole.holds, "the pages are the snapshot's holds, in the same order");
    let mut ids: Vec<Uuid> = paged.iter().map(|h| h.reservation_id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "in reservation id order, none twice");
    ids.sort();
    bought.sort();
    assert_eq!(ids, bought, "every purchase's hold, and nothing else");
    assert!(paged.iter().all(|h| h.idempotency_key.is_some()), "each with its buyer's key");

    let last = *ids.last().expect("holds");
    let past_the_end = stack.with_origin(move |s| async move { s.core.edge.holds_after(drop_id, last, 2).await }).await;
    let past_the_end = past_the_end.expect("an empty page");
    assert!(past_the_end.holds.is_empty() && past_the_end.next_after.is_none());
}
