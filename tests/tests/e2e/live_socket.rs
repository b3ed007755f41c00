//! The notification socket's door, through the edge as an app meets it: credentials
//! are checked before anything else, a browser opens it with a single-use ticket
//! (never a token in the URL), the server closes it when its credentials expire, and
//! a user holds only so many at once.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use drops_shared::auth::{mint, Identity, Role};
use drops_tests::{Buyer, Stack, JWT_SECRET};
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::Value;
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::protocol::Role as WsRole;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

type Ws = WebSocketStream<reqwest::Upgraded>;

/// The close code of a socket whose credentials expired.
const TOKEN_EXPIRED: u16 = 4001;

/// An HTTP answer that refused a WebSocket upgrade.
#[derive(Debug)]
struct Refusal {
    status: u16,
    content_type: String,
    retry_after: Option<String>,
    body: Value,
}

impl Refusal {
    fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or_default()
    }
}

/// Opens the stream through the edge with `query` (`ticket=…`) and, if given, an
/// `Authorization: Bearer` header: the socket once the server said hello, or the
/// answer that refused the upgrade. (The handshake is made with reqwest, which reads
/// a refusal's body whole; a WebSocket client keeps only what came with the headers.)
async fn open(stack: &Stack, query: &str, bearer: Option<&str>) -> Result<Ws, Refusal> {
    let mut request = reqwest::Client::new()
        .get(format!("{}/v1/notifications/stream?{query}", stack.edge_url))
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", generate_key());
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    let resp = request.send().await.expect("the upgrade request reaches the edge");
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let upgraded = resp.upgrade().await.expect("the connection is upgraded");
        let mut socket = WebSocketStream::from_raw_socket(upgraded, WsRole::Client, None).await;
        let hello = next_text(&mut socket).await;
        assert_eq!(hello["kind"], "hello", "the server greets an open socket: {hello}");
        return Ok(socket);
    }
    let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let (content_type, retry_after) = (header("content-type").unwrap_or_default(), header("retry-after"));
    let status = resp.status().as_u16();
    let body = resp.bytes().await.expect("the refusal's body");
    Err(Refusal { status, content_type, retry_after, body: serde_json::from_slice(&body).unwrap_or(Value::Null) })
}

async fn next_text(socket: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("a message within 10 s")
            .expect("the socket is open")
            .expect("a frame");
        if let Message::Text(t) = msg {
            return serde_json::from_str(&t).expect("JSON on the socket");
        }
    }
}

/// A fresh ticket for `token`, through the edge: (ticket, expires_at).
async fn ticket(stack: &Stack, token: &str) -> (String, DateTime<Utc>) {
    let answer = stack.client().stream_ticket(token).await;
    assert_eq!(answer.status, StatusCode::CREATED, "stream ticket: {:?}", answer.json());
    let body = answer.json();
    let ticket = body["ticket"].as_str().expect("a ticket").to_owned();
    let expires_at = DateTime::parse_from_rfc3339(body["expires_at"].as_str().expect("expires_at"))
        .expect("expires_at is RFC 3339")
        .with_timezone(&Utc);
    (ticket, expires_at)
}

async fn open_with_ticket(stack: &Stack, token: &str) -> Result<Ws, Refusal> {
    let (ticket, _) = ticket(stack, token).await;
    open(stack, &format!("ticket={ticket}"), None).await
}

fn assert_problem(refusal: &Refusal, status: u16, code: &str) {
    assert_eq!((refusal.status, refusal.code()), (status, code), "{refusal:?}");
    assert!(refusal.content_type.starts_with("application/problem+json"), "{refusal:?}");
}

/// A buyer's token that expires `secs` seconds from now (`exp` has whole seconds).
fn short_token(user: uuid::Uuid, secs: i64) -> (String, DateTime<Utc>) {
    let exp = DateTime::from_timestamp(Utc::now().timestamp() + secs, 0).expect("a time");
    (mint(Identity { user_id: user, role: Role::Buyer }, JWT_SECRET.as_bytes(), exp), exp)
}

/// Reads `socket` until the server closes it; returns the close code and reason, and when.
async fn closed_by_server(mut socket: Ws, within: Duration) -> (u16, String, DateTime<Utc>) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, socket.next()).await.expect("the server closes the socket in time") {
            Some(Ok(Message::Close(Some(frame)))) => return (frame.code.into(), frame.reason.to_string(), Utc::now()),
            Some(Ok(Message::Close(None))) => panic!("closed without a code"),
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("the socket failed instead of being closed: {e}"),
            None => panic!("the connection ended without a Close frame"),
        }
    }
}

#[tokio::test]
async fn without_credentials_the_stream_is_401_before_any_upgrade() {
    let stack = Stack::shared().await;
    let client = stack.client();
    let plain = client.get("/v1/notifications/stream", None).await;
    assert_eq!((plain.status, plain.code().as_str()), (StatusCode::UNAUTHORIZED, "unauthorized"), "{:?}", plain.json());
    assert!(plain.header("content-type").unwrap_or_default().starts_with("application/problem+json"));
    let forged = client.get("/v1/notifications/stream", Some("not.a.token")).await;
    assert_eq!(forged.status, StatusCode::UNAUTHORIZED);
    let upgrade = open(&stack, "", None).await.expect_err("no socket without credentials");
    assert_problem(&upgrade, 401, "unauthorized");
    let forged = open(&stack, "", Some("not.a.token")).await.expect_err("no socket with a forged token");
    assert_problem(&forged, 401, "unauthorized");
    // Valid credentials on a request that is not an upgrade: a clear 400, not a socket.
    let buyer = Buyer::new();
    let not_upgrade = client.get("/v1/notifications/stream", Some(&buyer.token)).await;
    assert_eq!(
        (not_upgrade.status, not_upgrade.code().as_str()),
        (StatusCode::BAD_REQUEST, "invalid_request"),
        "{:?}",
        not_upgrade.json()
    );
    assert!(not_upgrade.header("content-type").unwrap_or_default().starts_with("application/problem+json"));
}

#[tokio::test]
async fn a_token_in_the_url_is_refused_and_the_header_still_works() {
    let stack = Stack::shared().await;
    let buyer = Buyer::new();
    let refused = open(&stack, &format!("access_token={}", buyer.token), None).await.expect_err("no token in URLs");
    assert_problem(&refused, 401, "unauthorized");
    assert!(refused.body["detail"].as_str().unwrap_or_default().contains("ticket"), "says what to do: {refused:?}");
    let native = open(&stack, "", Some(&buyer.token)).await.expect("a bearer header opens the socket");
    drop(native);
}

#[tokio::test]
async fn a_ticket_opens_one_socket_once() {
    let stack = Stack::shared().await;
    let client = stack.client();
    let buyer = Buyer::new();
    let asked = Utc::now();
    let answer = client.stream_ticket(&buyer.token).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{:?}", answer.json());
    assert_eq!(answer.header("cache-control"), Some("no-store"));
    let (ticket, expires_at) = ticket(&stack, &buyer.token).await;
    assert!(ticket.len() >= 22, "at least 128 bits: {ticket}");
    let lifetime = expires_at - asked;
    assert!(
        lifetime > chrono::Duration::seconds(10) && lifetime <= chrono::Duration::seconds(40),
        "a ticket lives about 30 s: {lifetime}"
    );
    let socket = open(&stack, &format!("ticket={ticket}"), None).await.expect("the ticket opens the socket");
    let again = open(&stack, &format!("ticket={ticket}"), None).await.expect_err("a ticket is used once");
    assert_problem(&again, 401, "unauthorized");
    drop(socket);
    let unknown = "A".repeat(43);
    for query in [format!("ticket={unknown}"), "ticket=".into(), "ticket=%00%01".into()] {
        let refused = open(&stack, &query, None).await.expect_err("an unknown ticket opens nothing");
        assert_problem(&refused, 401, "unauthorized");
    }
    // A ticket is for a caller with a token.
    let anonymous = client.send(client.http.post(format!("{}/v1/notifications/stream-ticket", client.edge))).await;
    assert_eq!((anonymous.status, anonymous.code().as_str()), (StatusCode::UNAUTHORIZED, "unauthorized"));
}

#[tokio::test]
async fn a_ticket_expires_and_never_outlives_its_token() {
    let stack = Stack::shared().await;
    let (token, exp) = short_token(uuid::Uuid::now_v7(), 3);
    let (ticket, expires_at) = ticket(&stack, &token).await;
    assert!(expires_at <= exp, "the ticket ({expires_at}) ends by its token's exp ({exp})");
    tokio::time::sleep((exp - Utc::now()).to_std().unwrap_or_default() + Duration::from_millis(1500)).await;
    let refused = open(&stack, &format!("ticket={ticket}"), None).await.expect_err("an expired ticket opens nothing");
    assert_problem(&refused, 401, "unauthorized");
}

#[tokio::test]
async fn the_server_closes_a_socket_when_its_credentials_expire() {
    let stack = Stack::shared().await;
    let user = uuid::Uuid::now_v7();
    let (token, exp) = short_token(user, 4);
    let by_header = open(&stack, "", Some(&token)).await.expect("opens with a short-lived token");
    let by_ticket = open_with_ticket(&stack, &token).await.expect("opens with a ticket of a short-lived token");
    let (header_close, ticket_close) = tokio::join!(
        closed_by_server(by_header, Duration::from_secs(30)),
        closed_by_server(by_ticket, Duration::from_secs(30))
    );
    for (how, (code, reason, closed_at)) in [("bearer", header_close), ("ticket", ticket_close)] {
        assert_eq!((code, reason.as_str()), (TOKEN_EXPIRED, "token expired"), "{how}");
        println!("{how}: closed by the server {} ms after its token's exp", (closed_at - exp).num_milliseconds());
        // At `exp`, not before (a second's margin for the clocks); the upper bound is
        // the generous wait above.
        assert!(
            closed_at >= exp - chrono::Duration::seconds(1),
            "{how}: closed at {closed_at}, before its token's exp {exp}"
        );
    }
}

#[tokio::test]
async fn a_user_holds_at_most_the_cap_of_sockets_and_closing_one_frees_a_slot() {
    let stack = Stack::shared().await;
    let cap = drops_origin::config::Settings::development().notifications.max_sockets_per_user as usize;
    let buyer = Buyer::new();
    let mut sockets = Vec::new();
    for i in 0..cap {
        // Tickets and bearer headers count alike.
        let opened = if i % 2 == 0 {
            open_with_ticket(&stack, &buyer.token).await
        } else {
            open(&stack, "", Some(&buyer.token)).await
        };
        sockets.push(opened.unwrap_or_else(|r| panic!("socket {} of {cap}: {r:?}", i + 1)));
    }
    let over = open_with_ticket(&stack, &buyer.token).await.expect_err("one socket more than the cap is refused");
    assert_problem(&over, 429, "rate_limited");
    assert!(over.retry_after.as_deref().is_some_and(|s| s.parse::<u64>().is_ok()), "Retry-After: {over:?}");
    let over = open(&stack, "", Some(&buyer.token)).await.expect_err("by header too");
    assert_problem(&over, 429, "rate_limited");
    // Another user is not affected.
    let other = open_with_ticket(&stack, &Buyer::new().token).await.expect("another user's socket");
    drop(other);

    let mut first = sockets.remove(0);
    first.close(None).await.expect("the client closes a socket");
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(15);
    let reopened = loop {
        match open_with_ticket(&stack, &buyer.token).await {
            Ok(socket) => break socket,
            Err(r) => {
                assert_problem(&r, 429, "rate_limited");
                assert!(Instant::now() < deadline, "closing a socket never freed its slot");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    sockets.push(reopened);
    let full = open(&stack, "", Some(&buyer.token)).await.expect_err("full again");
    assert_problem(&full, 429, "rate_limited");
}
