//! Lists, hardened (security review, issue 21): every list's cursor is one the
//! platform signed for that list (and that user), so a made-up, tampered or
//! foreign cursor is a 400; the drop lists, cached at the edge, are cached only as
//! canonical pages, and whatever is not one (a forged cursor, a bad `limit` or
//! `status`, another parameter) is refused by the edge before its cache or the
//! origin see it; a creator's followers are the creator's and admins' to read.

use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use drops_shared::auth::Role;
use drops_tests::client::{token, Answer, Client};
use drops_tests::{Buyer, DropSpec, Stack};
use reqwest::StatusCode;
use serde_json::Value;
use uuid::Uuid;

/// The origin's route of the drop lists, as its request counter names it.
const LIST_ROUTE: &str = "/v1/drops";

const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// A string with the shape of a cursor (60 characters of base64url) that nobody signed.
fn made_up_cursor() -> String {
    let bytes: Vec<u8> = (0..4).flat_map(|_| *Uuid::new_v4().as_bytes()).collect();
    bytes[..60].iter().map(|b| ALPHABET[usize::from(b % 64)] as char).collect()
}

/// A cursor as the platform used to write them, unsigned (`<list>:<...>` in base64url):
/// anyone could make one up.
fn unsigned_cursor(body: &str) -> String {
    URL_SAFE_NO_PAD.encode(body)
}

/// `cursor` with its character at `at` changed.
fn tampered(cursor: &str, at: usize) -> String {
    let mut bytes = cursor.as_bytes().to_vec();
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).unwrap()
}

/// The start of an answer's body, for a failure message.
fn excerpt(a: &Answer) -> String {
    String::from_utf8_lossy(&a.body).chars().take(160).collect()
}

fn is_invalid_request(a: &Answer) -> bool {
    a.status == StatusCode::BAD_REQUEST
        && a.code() == "invalid_request"
        && a.header("content-type") == Some(drops_shared::problem::PROBLEM_CONTENT_TYPE)
}

/// The `next_cursor` of `path`'s page, read with `token`.
async fn next_cursor(client: &Client, path: &str, token: Option<&str>) -> String {
    let page = client.get(path, token).await;
    assert_eq!(page.status, StatusCode::OK, "{path}: {:?}", page.json());
    page.json()["next_cursor"].as_str().unwrap_or_else(|| panic!("{path} has a second page")).to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_cursors_bad_limits_and_junk_queries_on_the_drop_lists_never_reach_the_origin() {
    // Alone: it counts the origin's list queries.
    let stack = Stack::exclusive().await;
    let client = stack.client();
    // Three drops far in the future and three live ones: each list has a second page
    // of two (a page size no other test reads, so no page cached by another is stale).
    for days in [500, 501, 502] {
        let spec = DropSpec { starts_in: chrono::Duration::days(days), ..DropSpec::live(3, 1) };
        client.create_drop(spec).await;
        client.create_drop(DropSpec::live(3, 1)).await;
    }
    let upcoming = next_cursor(&client, "/v1/drops?status=upcoming&limit=2", None).await;
    let live = next_cursor(&client, "/v1/drops?status=live&limit=2", None).await;

    let mut queries = Vec::new();
    for _ in 0..20 {
        queries.push(format!("status=live&cursor={}", made_up_cursor()));
    }
    for n in 0..20i64 {
        let at = 1_900_000_000_000_000 + n;
        queries.push(format!("status=live&cursor={}", unsigned_cursor(&format!("live:{at}:{}", Uuid::now_v7()))));
    }
    for at in 0..10 {
        queries.push(format!("status=upcoming&cursor={}", tampered(&upcoming, at * 5)));
    }
    queries.push(format!("status=live&cursor={upcoming}"));
    queries.push(format!("status=upcoming&cursor={live}"));
    queries.push("status=live&cursor=".to_owned());
    for limit in ["0", "101", "-1", "+5", "abc", "1.5", "", "99999999999"]
        .into_iter()
        .map(str::to_owned)
        .chain((0..12).map(|n| (102 + n * 37).to_string()))
    {
        queries.push(format!("status=live&limit={limit}"));
    }
    for n in 0..20 {
        queries.push(format!("status=live&utm_source=campaign-{n}"));
    }
    for n in 0..10 {
        queries.push(format!("status=soon-{n}"));
    }
    queries.push("status=live&status=upcoming".to_owned());
    queries.push("limit=5&limit=6".to_owned());
    queries.push(format!("status=live&cursor={live}&cursor={live}"));

    let before = client.origin_requests("GET", LIST_ROUTE).await;
    let mut accepted = Vec::new();
    for query in &queries {
        let a = client.get(&format!("/v1/drops?{query}"), None).await;
        if !is_invalid_request(&a) {
            accepted.push(format!("{query} -> {} {}", a.status, excerpt(&a)));
        }
    }
    let reached = client.origin_requests("GET", LIST_ROUTE).await - before;
    println!("{} junk list requests: {} not refused with 400, {reached} origin queries", queries.len(), accepted.len());
    assert!(accepted.is_empty(), "not refused with 400 invalid_request:\n{}", accepted.join("\n"));
    assert_eq!(reached, 0, "{} junk list requests cost the origin {reached} queries", queries.len());

    // One page, one cache entry, however it is asked for: the second asking of each
    // pair is served from the entry the first one made.
    for (first, again) in [
        (format!("status=upcoming&limit=2&cursor={upcoming}"), format!("cursor={upcoming}&limit=02&status=upcoming")),
        (format!("status=live&cursor={live}"), format!("limit=20&cursor={live}")),
        (format!("status=live&cursor={live}&limit=7"), format!("status=live&limit=007&cursor={live}")),
    ] {
        let a = client.get(&format!("/v1/drops?{first}"), None).await;
        assert_eq!(a.status, StatusCode::OK, "{first}: {:?}", a.json());
        let b = client.get(&format!("/v1/drops?{again}"), None).await;
        assert_eq!(b.status, StatusCode::OK, "{again}: {:?}", b.json());
        assert!(
            matches!(b.header("x-cache"), Some("HIT") | Some("STALE")),
            "{again} is the page {first} cached, yet was {:?}",
            b.header("x-cache")
        );
        assert_eq!(a.json()["items"], b.json()["items"]);
    }
}

/// Polls `path` (read with `token`) until its page has at least `n` items.
async fn wait_items(client: &Client, path: &str, token: &str, n: usize) {
    let started = Instant::now();
    loop {
        let page = client.get(path, Some(token)).await;
        if page.status == StatusCode::OK && page.json()["items"].as_array().is_some_and(|i| i.len() >= n) {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "{path} never had {n} items: {:?}", page.json());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_list_refuses_a_cursor_it_did_not_issue_to_this_caller() {
    let stack = Stack::shared().await;
    let client = stack.client();
    let admin = token(Uuid::now_v7(), Role::Admin);
    let (ann, bob) = (Buyer::new(), Buyer::new());
    // Ann: two orders, two creators followed. Each of her lists has a second page.
    let drop_id = client.create_drop(DropSpec::live(10, 2)).await;
    for key in ["lists-hardening-1", "lists-hardening-2"] {
        assert_eq!(client.buy(&ann, drop_id, key, 1).await.status, StatusCode::CREATED);
    }
    wait_items(&client, "/v1/orders", &ann.token, 2).await;
    let (creator_id, creator_token, _) = client.creator().await;
    let (other_creator_id, other_creator_token, _) = client.creator().await;
    for c in [creator_id, other_creator_id] {
        assert_eq!(client.follow(&ann, c).await, StatusCode::NO_CONTENT);
    }
    for fan in [&bob, &Buyer::new()] {
        assert_eq!(client.follow(fan, other_creator_id).await, StatusCode::NO_CONTENT);
    }
    let anns_orders = next_cursor(&client, "/v1/orders?limit=1", Some(&ann.token)).await;
    let anns_following = next_cursor(&client, "/v1/me/following?limit=1", Some(&ann.token)).await;
    let followers = format!("/v1/creators/{other_creator_id}/followers");
    let mut others_followers = String::new();
    let started = Instant::now();
    while others_followers.is_empty() {
        // The follower set may trail the follows by a moment.
        let page = client.get(&format!("{followers}?limit=1"), Some(&other_creator_token)).await;
        assert_eq!(page.status, StatusCode::OK, "{:?}", page.json());
        if let Some(c) = page.json()["next_cursor"].as_str() {
            others_followers = c.to_owned();
        }
        assert!(started.elapsed() < Duration::from_secs(10), "no second page of followers");
    }

    // (list path, token, cursor that must be refused, why)
    let mut cases: Vec<(String, String, String, &str)> = Vec::new();
    let lists = [
        ("/v1/orders".to_owned(), bob.token.clone(), format!("orders:{}", Uuid::now_v7())),
        ("/v1/notifications".to_owned(), bob.token.clone(), format!("notifications:{}", Uuid::now_v7())),
        ("/v1/me/following".to_owned(), bob.token.clone(), format!("following:1900000000000000:{}", Uuid::now_v7())),
        (
            format!("/v1/creators/{creator_id}/followers"),
            creator_token.clone(),
            format!("followers-{creator_id}:1900000000000000:{}", Uuid::now_v7()),
        ),
        ("/v1/admin/audit".to_owned(), admin.clone(), "audit:1".to_owned()),
        ("/v1/drops".to_owned(), bob.token.clone(), format!("live:1900000000000000:{}", Uuid::now_v7())),
    ];
    for (path, tok, old) in &lists {
        cases.push((path.clone(), tok.clone(), unsigned_cursor(old), "made up, as cursors were once written"));
        cases.push((path.clone(), tok.clone(), made_up_cursor(), "made up, with a cursor's shape"));
        cases.push((path.clone(), tok.clone(), String::new(), "empty"));
    }
    cases.push(("/v1/orders".into(), bob.token.clone(), anns_orders.clone(), "another buyer's"));
    cases.push(("/v1/orders".into(), ann.token.clone(), tampered(&anns_orders, 7), "tampered with"));
    cases.push(("/v1/orders".into(), ann.token.clone(), anns_following.clone(), "another list's"));
    cases.push(("/v1/me/following".into(), bob.token.clone(), anns_following.clone(), "another user's"));
    cases.push(("/v1/notifications".into(), ann.token.clone(), anns_orders.clone(), "another list's"));
    cases.push((format!("/v1/creators/{creator_id}/followers"), admin.clone(), others_followers, "another creator's"));
    cases.push(("/v1/admin/audit".into(), admin.clone(), anns_orders.clone(), "another list's"));

    let mut accepted = Vec::new();
    for (path, tok, cursor, why) in &cases {
        let a = client.get(&format!("{path}?cursor={cursor}"), Some(tok)).await;
        if !is_invalid_request(&a) {
            accepted.push(format!("{path} with a cursor {why} -> {} {}", a.status, excerpt(&a)));
        }
    }
    assert!(accepted.is_empty(), "cursors not refused with 400 invalid_request:\n{}", accepted.join("\n"));

    // Her own cursors take her on.
    let rest = client.get(&format!("/v1/orders?limit=1&cursor={anns_orders}"), Some(&ann.token)).await;
    assert_eq!((rest.status, rest.json()["items"].as_array().map(Vec::len)), (StatusCode::OK, Some(1)));
    let rest = client.get(&format!("/v1/me/following?limit=1&cursor={anns_following}"), Some(&ann.token)).await;
    assert_eq!((rest.status, rest.json()["items"].as_array().map(Vec::len)), (StatusCode::OK, Some(1)));
}

#[tokio::test]
async fn who_follows_a_creator_is_for_the_creator_and_admins_and_the_count_for_everyone() {
    let stack = Stack::shared().await;
    let client = stack.client();
    let (creator_id, creator_token, _) = client.creator().await;
    let (_, other_creator_token, _) = client.creator().await;
    let fan = Buyer::new();
    assert_eq!(client.follow(&fan, creator_id).await, StatusCode::NO_CONTENT);
    let path = format!("/v1/creators/{creator_id}/followers");

    let anonymous = client.get(&path, None).await;
    assert_eq!((anonymous.status, anonymous.code().as_str()), (StatusCode::UNAUTHORIZED, "unauthorized"));
    for (who, tok) in [
        ("a follower", fan.token.clone()),
        ("another buyer", Buyer::new().token),
        ("another creator", other_creator_token),
        ("a creator-role account with no profile", token(Uuid::now_v7(), Role::Creator)),
    ] {
        let a = client.get(&path, Some(&tok)).await;
        assert_eq!((a.status, a.code().as_str()), (StatusCode::NOT_FOUND, "not_found"), "{who}: {:?}", a.json());
    }
    let admin = token(Uuid::now_v7(), Role::Admin);
    for (who, tok) in [("the creator", &creator_token), ("an admin", &admin)] {
        let started = Instant::now();
        loop {
            let a = client.get(&path, Some(tok)).await;
            assert_eq!(a.status, StatusCode::OK, "{who}: {:?}", a.json());
            let items: Vec<Value> = a.json()["items"].as_array().cloned().unwrap_or_default();
            if items.iter().any(|f| f["user_id"] == fan.id.to_string()) {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(10), "{who} never saw the follower: {items:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let unknown = client.get(&format!("/v1/creators/{}/followers", Uuid::now_v7()), Some(&admin)).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    // The count stays public.
    let profile = client.get(&format!("/v1/creators/{creator_id}"), None).await;
    assert_eq!(profile.status, StatusCode::OK);
    assert!(profile.json()["follower_count"].is_u64());
}
