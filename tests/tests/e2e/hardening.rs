//! What an outside review found (issue 10), each held to its fix through the real
//! stack: bad input is a 400 naming the field, the sandbox checkout acts for the
//! order's owner alone, what browsers send is accepted, invented methods do not
//! become metric labels, and refusals that pass the page cache stay problems.

use drops_shared::auth::Role;
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
