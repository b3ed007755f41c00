//! The audit log (issue 13), through the edge: privileged actions recorded with
//! their actor and the request id the client sent, a buy's events recorded in order
//! and paged by cursor, the database refusing to change an entry, verification
//! finding an entry edited by hand, a replayed event adding nothing, a crowd of
//! writers keeping one contiguous chain, and the routes for admins only.

use std::time::{Duration, Instant};

use chrono::Utc;
use drops_shared::auth::Role;
use drops_tests::client::{token, Answer, Client, Purchase};
use drops_tests::files::png_of_size;
use drops_tests::{Buyer, DropSpec, Stack};
use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

fn admin() -> (Uuid, String) {
    let id = Uuid::now_v7();
    (id, token(id, Role::Admin))
}

/// Sends `req` with `x-request-id: request_id`, as `bearer`.
async fn send_as(client: &Client, req: reqwest::RequestBuilder, bearer: &str, request_id: &str) -> Answer {
    client.send(req.bearer_auth(bearer).header("x-request-id", request_id)).await
}

/// Every entry about `subject_id`, oldest first, page by page (`limit` a page).
async fn entries_about(client: &Client, admin: &str, subject_id: &str, limit: u32) -> Vec<Value> {
    let mut entries = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/v1/admin/audit?subject_id={subject_id}&limit={limit}");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let page = client.get(&path, Some(admin)).await;
        assert_eq!(page.status, StatusCode::OK, "{:?}", page.json());
        let page = page.json();
        entries.extend(page["items"].as_array().expect("items").iter().cloned());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return entries,
        }
    }
}

fn actions(entries: &[Value]) -> Vec<&str> {
    entries.iter().map(|e| e["action"].as_str().unwrap_or_default()).collect()
}

/// Polls until the entries about `subject_id` include every one of `wanted`.
async fn wait_for(client: &Client, admin: &str, subject_id: &str, wanted: &[&str]) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let entries = entries_about(client, admin, subject_id, 100).await;
        if wanted.iter().all(|w| actions(&entries).contains(w)) {
            return entries;
        }
        assert!(Instant::now() < deadline, "{subject_id}: wanted {wanted:?}, have {:?}", actions(&entries));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The one entry `action` among `entries`, with an actor or without.
fn one<'a>(entries: &'a [Value], action: &str, with_actor: bool) -> &'a Value {
    let found: Vec<&Value> =
        entries.iter().filter(|e| e["action"] == action && e["actor"].is_null() != with_actor).collect();
    assert_eq!(found.len(), 1, "one {action} (with an actor: {with_actor}) in {entries:#?}");
    found[0]
}

async fn verify(client: &Client, admin: &str) -> Value {
    let v = client.get("/v1/admin/audit/verify", Some(admin)).await;
    assert_eq!(v.status, StatusCode::OK, "{:?}", v.json());
    v.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privileged_actions_are_recorded_with_their_actor_and_request_id() {
    let stack = Stack::shared().await;
    let client = stack.client();
    let (admin_id, admin) = admin();
    let tag = Uuid::new_v4().simple().to_string();

    // An admin makes a creator.
    let creator_user = Uuid::now_v7();
    let req = client
        .http
        .post(format!("{}/v1/creators", client.edge))
        .json(&json!({"name": "Audited", "user_id": creator_user}));
    let created = send_as(&client, req, &admin, &format!("creator-{tag}")).await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.json());
    let creator_id = created.json()["id"].as_str().unwrap().to_owned();
    let entries = entries_about(&client, &admin, &creator_id, 20).await;
    let entry = one(&entries, "creator.created", true);
    assert_eq!(entry["actor"], json!({"user_id": admin_id, "role": "admin"}));
    assert_eq!(entry["request_id"], format!("creator-{tag}"));
    // The client's id is whatever it sent; beside it, the origin's own, which it chose.
    let own = entry["server_request_id"].as_str().expect("the origin's own request id");
    assert!(Uuid::parse_str(own).is_ok_and(|id| id.get_version_num() == 7), "{own}");
    assert_eq!(entry["subject"], json!({"kind": "creator", "id": creator_id}));
    assert_eq!(entry["data"]["user_id"], json!(creator_user));
    assert_eq!(entry["data"]["name"], "Audited");
    assert_eq!(entry["hash"].as_str().unwrap().len(), 64);

    // The creator uploads a picture, makes a product and an upcoming drop, then changes its terms.
    let creator = token(creator_user, Role::Creator);
    let upload = client.upload(Some(&creator), "", "image/png", &png_of_size(100)).await;
    assert_eq!(upload.status, StatusCode::CREATED, "{:?}", upload.json());
    let image_url = upload.json()["url"].as_str().unwrap().to_owned();
    let key = image_url.trim_start_matches("/v1/media/").to_owned();
    let entries = entries_about(&client, &admin, &key, 20).await;
    let entry = one(&entries, "media.uploaded", true);
    assert_eq!(entry["actor"], json!({"user_id": creator_user, "role": "creator"}));
    assert_eq!(
        (entry["subject"]["kind"].as_str(), entry["data"]["first_upload"].as_bool()),
        (Some("media"), Some(true))
    );

    let product = client
        .post_json("/v1/products", Some(&creator), json!({"title": "Tee", "description": "", "image_url": image_url}))
        .await;
    assert_eq!(product.status, StatusCode::CREATED, "{:?}", product.json());
    let starts_at = Utc::now() + chrono::Duration::hours(1);
    let body = json!({"product_id": product.json()["id"], "price": {"amount": 1500, "currency": "EUR"}, "stock": 10,
                      "max_per_user": 2, "starts_at": starts_at, "ends_at": starts_at + chrono::Duration::hours(1)});
    let req = client.http.post(format!("{}/v1/drops", client.edge)).json(&body);
    let drop = send_as(&client, req, &creator, &format!("drop-{tag}")).await;
    assert_eq!(drop.status, StatusCode::CREATED, "{:?}", drop.json());
    let drop_id = drop.json()["id"].as_str().unwrap().to_owned();
    let req = client.http.patch(format!("{}/v1/drops/{drop_id}", client.edge)).json(&json!({"stock": 12}));
    let changed = send_as(&client, req, &creator, &format!("terms-{tag}")).await;
    assert_eq!(changed.status, StatusCode::OK, "{:?}", changed.json());

    // Each action once with its actor and request id; the events (no actor) after them.
    let entries = wait_for(&client, &admin, &drop_id, &["drop.created", "drop.terms_changed", "drop.updated"]).await;
    let created = one(&entries, "drop.created", true);
    assert_eq!(created["actor"], json!({"user_id": creator_user, "role": "creator"}));
    assert_eq!(created["request_id"], format!("drop-{tag}"));
    assert_eq!(created["data"]["stock"], 10);
    assert_eq!(created["data"]["price"], json!({"amount": 1500, "currency": "EUR"}));
    let terms = one(&entries, "drop.terms_changed", true);
    assert_eq!(terms["request_id"], format!("terms-{tag}"));
    assert_ne!(terms["server_request_id"], created["server_request_id"], "one id per request");
    assert_eq!(terms["data"], json!({"before": {"stock": 10}, "after": {"stock": 12}}));
    let observed = one(&entries, "drop.created", false);
    assert!(observed["request_id"].is_null());
    assert_eq!(observed["data"]["drop_id"], json!(drop_id));
    let seqs: Vec<i64> = entries.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "oldest first: {seqs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buy_and_its_payment_are_recorded_in_order_and_page_by_cursor() {
    let stack = Stack::shared().await;
    let client = stack.client();
    let (_, admin) = admin();
    let drop_id = client.create_drop(DropSpec::live(5, 1)).await;
    let purchase = client.purchase(drop_id).await;
    assert!(client.checkout(&purchase, "succeed").await.status.is_success());
    client.wait_status(&purchase.buyer, purchase.order_id, "confirmed").await;

    let order_id = purchase.order_id.to_string();
    let wanted = ["order.reserved", "payment.ready", "payment.succeeded", "order.confirmed"];
    let entries = wait_for(&client, &admin, &order_id, &wanted).await;
    for e in &entries {
        assert_eq!(e["subject"], json!({"kind": "order", "id": order_id}), "{e}");
        assert!(e["actor"].is_null(), "events have no actor: {e}");
    }
    let position = |action: &str| actions(&entries).iter().position(|a| *a == action).unwrap();
    assert!(position("order.reserved") < position("order.confirmed"), "{:?}", actions(&entries));
    assert_eq!(one(&entries, "order.reserved", false)["data"]["user_id"], json!(purchase.buyer.id));

    // A page at a time, every entry once, in the same order.
    let paged = entries_about(&client, &admin, &order_id, 1).await;
    let seqs = |list: &[Value]| list.iter().map(|e| e["seq"].as_i64().unwrap()).collect::<Vec<_>>();
    assert_eq!(seqs(&paged), seqs(&entries));
    assert!(seqs(&paged).windows(2).all(|w| w[0] < w[1]));
    // The unfiltered list pages too.
    let first = client.get("/v1/admin/audit?limit=2", Some(&admin)).await.json();
    let cursor = first["next_cursor"].as_str().expect("more than two entries").to_owned();
    let second = client.get(&format!("/v1/admin/audit?limit=2&cursor={cursor}"), Some(&admin)).await.json();
    assert!(second["items"][0]["seq"].as_i64().unwrap() > first["items"][1]["seq"].as_i64().unwrap());
    assert_eq!(second["items"][0]["prev_hash"], first["items"][1]["hash"], "{first} {second}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciliation_repairs_and_refunds_are_recorded() {
    let stack = Stack::shared().await;
    let client = stack.client();
    let db = stack.db().await;
    let (_, admin) = admin();

    // A release that never reached the edge: the order failed, its hold still holds.
    let drop_id = client.create_drop(DropSpec::live(5, 1)).await;
    let unreleased = client.purchase(drop_id).await;
    sqlx::query("UPDATE orders SET status = 'failed' WHERE id = $1")
        .bind(unreleased.order_id)
        .execute(&db)
        .await
        .unwrap();
    let repairs =
        stack.with_origin(move |s| async move { s.reconcile_drops(&[drop_id], Duration::ZERO).await }).await.unwrap();
    assert!(repairs.iter().any(|r| r.repair == "hold_released"), "{repairs:?}");
    let entries = entries_about(&client, &admin, &unreleased.order_id.to_string(), 100).await;
    let repair = one(&entries, "reconciliation.hold_released", false);
    assert_eq!(repair["data"]["drop_id"], json!(drop_id));
    assert!(repair["data"]["reason"].as_str().unwrap().contains("hold"), "{repair}");

    // A payment too late for the only unit: refunded by the platform.
    let scarce = client.create_drop(DropSpec { hold_seconds: Some(1), ..DropSpec::live(1, 1) }).await;
    let slow: Purchase = client.purchase(scarce).await;
    client.wait_status(&slow.buyer, slow.order_id, "expired").await;
    let quick = client.purchase(scarce).await;
    client.pay_event(&quick, &format!("evt_{}", Uuid::new_v4().simple()), true).await;
    client.pay_event(&slow, &format!("evt_{}", Uuid::new_v4().simple()), true).await;
    client.wait_status(&slow.buyer, slow.order_id, "failed").await;
    let entries =
        wait_for(&client, &admin, &slow.order_id.to_string(), &["payment.refund_issued", "payment.refunded"]).await;
    let refund = one(&entries, "payment.refund_issued", false);
    assert_eq!(refund["data"]["amount"], slow.amount);
    assert_eq!(refund["data"]["reference"], json!(slow.reference));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_refuses_to_change_or_remove_an_entry() {
    let stack = Stack::shared().await;
    let client = stack.client();
    let db = stack.db().await;
    let (_, admin) = admin();
    let created =
        client.post_json("/v1/creators", Some(&admin), json!({"name": "Kept", "user_id": Uuid::now_v7()})).await;
    let creator_id = created.json()["id"].as_str().unwrap().to_owned();
    let before = entries_about(&client, &admin, &creator_id, 20).await;
    let seq = one(&before, "creator.created", true)["seq"].as_i64().unwrap();
    for refused in [
        format!("UPDATE audit_log SET data = '{{}}' WHERE seq = {seq}"),
        format!("DELETE FROM audit_log WHERE seq = {seq}"),
        "TRUNCATE audit_log".to_owned(),
    ] {
        let err = sqlx::query(&refused).execute(&db).await.expect_err(&refused);
        assert!(err.to_string().contains("append-only"), "{refused}: {err}");
    }
    assert_eq!(entries_about(&client, &admin, &creator_id, 20).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_finds_the_first_entry_edited_by_hand() {
    // Alone: while the chain is broken, no other test may verify it.
    let stack = Stack::exclusive().await;
    let client = stack.client();
    let db = stack.db().await;
    let (_, admin) = admin();
    let created =
        client.post_json("/v1/creators", Some(&admin), json!({"name": "Honest", "user_id": Uuid::now_v7()})).await;
    let creator_id = created.json()["id"].as_str().unwrap().to_owned();
    let entry = one(&entries_about(&client, &admin, &creator_id, 20).await, "creator.created", true).clone();
    let seq = entry["seq"].as_i64().unwrap();
    // Sealed within a second or so: a seal (keyed, outside the database's reach) vouches for it.
    let mut whole = verify(&client, &admin).await;
    for _ in 0..50 {
        if whole["sealed_through_seq"].as_i64().is_some_and(|n| n >= seq) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        whole = verify(&client, &admin).await;
    }
    assert!(whole["sealed_through_seq"].as_i64().is_some_and(|n| n >= seq), "{whole}");
    assert_eq!((whole["valid"].as_bool(), &whole["first_invalid_seq"]), (Some(true), &Value::Null), "{whole}");
    assert!(whole["entries"].as_u64().unwrap() >= seq as u64);

    // As a superuser, with triggers off for this session: the one way past them.
    let mut conn = db.acquire().await.unwrap();
    sqlx::query("SET session_replication_role = replica").execute(&mut *conn).await.unwrap();
    sqlx::query("UPDATE audit_log SET data = jsonb_set(data, '{name}', '\"Forged\"') WHERE seq = $1")
        .bind(seq)
        .execute(&mut *conn)
        .await
        .unwrap();
    let broken = client.get("/v1/admin/audit/verify", Some(&admin)).await;
    // Put back before judging, so a failed assertion leaves no broken chain to the next test.
    sqlx::query("UPDATE audit_log SET data = $2 WHERE seq = $1")
        .bind(seq)
        .bind(&entry["data"])
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query("SET session_replication_role = origin").execute(&mut *conn).await.unwrap();
    drop(conn);
    assert_eq!(broken.status, StatusCode::OK);
    let broken = broken.json();
    assert_eq!((broken["valid"].as_bool(), broken["first_invalid_seq"].as_i64()), (Some(false), Some(seq)), "{broken}");
    assert!(broken["entries"].as_u64().unwrap() >= whole["entries"].as_u64().unwrap());
    let restored = verify(&client, &admin).await;
    assert_eq!(restored["valid"], true, "{restored}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_event_adds_nothing() {
    let stack = Stack::shared().await;
    let db = stack.db().await;
    let drop_id = stack.client().create_drop(DropSpec::live(3, 1)).await;
    // The drop's events (created, started) are in the log once the audit group has them.
    stack.wait_consumed(drop_id, "audit").await;
    let (event_id, seq): (Uuid, i64) =
        sqlx::query_as("SELECT id, seq FROM outbox WHERE aggregate_id = $1 AND event_type = 'DropCreated'")
            .bind(drop_id)
            .fetch_one(&db)
            .await
            .unwrap();
    let recorded = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM audit_log WHERE event_id = $1")
            .bind(event_id)
            .fetch_one(&db)
            .await
            .unwrap()
    };
    assert_eq!(recorded().await, 1);
    // The consumer's own mark of the event lost too, so the replay reaches the log itself.
    sqlx::query("DELETE FROM processed_events WHERE consumer = 'audit' AND event_id = $1")
        .bind(event_id)
        .execute(&db)
        .await
        .unwrap();
    let replayed =
        stack.with_origin(move |s| async move { drops_origin::events::relay::replay(&s.core, seq, seq).await });
    assert_eq!(replayed.await.unwrap(), 1);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let handled: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM processed_events WHERE consumer = 'audit' AND event_id = $1)",
        )
        .bind(event_id)
        .fetch_one(&db)
        .await
        .unwrap();
        if handled {
            break;
        }
        assert!(Instant::now() < deadline, "the audit consumer never took the replayed event");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(recorded().await, 1, "the replay added nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crowd_of_writers_keeps_one_contiguous_valid_chain() {
    let stack = Stack::shared().await;
    let client = stack.client();
    let db = stack.db().await;
    let (_, admin) = admin();
    let drop_id = client.create_drop(DropSpec::live(20, 1)).await;
    // A write the platform sheds (503, `Retry-After: 1`: on two busy cores the crowd
    // can exhaust the origin's pool) changed nothing; the client sends it again.
    let creators = (0..30).map(|i| {
        let (client, admin) = (client.clone(), admin.clone());
        async move {
            let body = json!({"name": format!("Crowd {i}"), "user_id": Uuid::now_v7()});
            for _ in 0..20 {
                let req = client.http.post(format!("{}/v1/creators", client.edge)).json(&body);
                let status = send_as(&client, req, &admin, &format!("crowd-{i}")).await.status;
                if status != StatusCode::SERVICE_UNAVAILABLE {
                    return status;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            StatusCode::SERVICE_UNAVAILABLE
        }
    });
    let buys = (0..10).map(|i| {
        let client = client.clone();
        async move {
            let (buyer, key) = (Buyer::new(), format!("crowd-buy-{i}-{}", Uuid::new_v4()));
            for _ in 0..20 {
                let status = client.buy(&buyer, drop_id, &key, 1).await.status;
                if status != StatusCode::SERVICE_UNAVAILABLE {
                    return status;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            StatusCode::SERVICE_UNAVAILABLE
        }
    });
    let (made, bought) = tokio::join!(join_all(creators), join_all(buys));
    assert!(made.iter().all(|s| *s == StatusCode::CREATED), "{made:?}");
    assert!(bought.iter().all(|s| *s == StatusCode::CREATED), "{bought:?}");

    let v = verify(&client, &admin).await;
    assert_eq!((v["valid"].as_bool(), &v["first_invalid_seq"]), (Some(true), &Value::Null), "{v}");
    let (count, max): (i64, Option<i64>) =
        sqlx::query_as("SELECT count(*), max(seq) FROM audit_log").fetch_one(&db).await.unwrap();
    assert_eq!(Some(count), max, "seqs are contiguous from 1");
    let crowd: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE request_id LIKE 'crowd-%'")
        .fetch_one(&db)
        .await
        .unwrap();
    assert!(crowd >= 30, "{crowd}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_admins_read_the_audit_log_and_bad_queries_are_400() {
    let stack = Stack::shared().await;
    let client = stack.client();
    let (_, admin) = admin();
    for path in ["/v1/admin/audit", "/v1/admin/audit/verify"] {
        assert_eq!(client.get(path, None).await.status, StatusCode::UNAUTHORIZED, "{path}");
        for role in [Role::Buyer, Role::Creator] {
            let a = client.get(path, Some(&token(Uuid::now_v7(), role))).await;
            assert_eq!((a.status, a.code()), (StatusCode::FORBIDDEN, "forbidden".to_owned()), "{path} as {role:?}");
        }
    }
    let long = "x".repeat(201);
    // A genuine cursor, signed with the platform's key, of another list.
    let foreign = drops_shared::cursor::CursorKey::derive(drops_tests::ORIGIN_TO_EDGE_SECRET.as_bytes())
        .sign(&format!("orders-{}", Uuid::now_v7()), drops_shared::cursor::Position { key: 0, id: Uuid::now_v7() });
    for query in [
        "cursor=garbage".to_owned(),
        format!("cursor={foreign}"),
        "limit=0".to_owned(),
        "limit=101".to_owned(),
        format!("subject_id={long}"),
        "colour=blue".to_owned(),
    ] {
        let a = client.get(&format!("/v1/admin/audit?{query}"), Some(&admin)).await;
        assert_eq!((a.status, a.code()), (StatusCode::BAD_REQUEST, "invalid_request".to_owned()), "{query}");
    }
    let fine = client.get(&format!("/v1/admin/audit?subject_id={}&limit=100", "y".repeat(200)), Some(&admin)).await;
    assert_eq!(fine.status, StatusCode::OK);
    assert_eq!(fine.json(), json!({"items": [], "next_cursor": null}));
}
