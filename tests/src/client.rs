//! A small client for the public API, as an app would call it through the edge.

use chrono::{Duration, Utc};
use drops_shared::auth::{mint, Identity, Role};
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::{Stack, JWT_SECRET};

pub fn token(user_id: Uuid, role: Role) -> String {
    mint(Identity { user_id, role }, JWT_SECRET.as_bytes(), Utc::now() + Duration::hours(2))
}

/// A private (10/8) address derived from `seed`, for `CF-Connecting-IP`.
pub fn client_address(seed: Uuid) -> String {
    let b = seed.as_bytes();
    format!("10.{}.{}.{}", b[13], b[14], b[15])
}

/// A buyer with a fresh id and a valid token.
#[derive(Debug, Clone)]
pub struct Buyer {
    pub id: Uuid,
    pub token: String,
}

impl Buyer {
    pub fn new() -> Self {
        let id = Uuid::now_v7();
        Self { id, token: token(id, Role::Buyer) }
    }
}

impl Default for Buyer {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Debug, Clone)]
pub struct DropSpec {
    pub stock: u32,
    pub max_per_user: u32,
    /// Start relative to now (negative: already live).
    pub starts_in: Duration,
    pub lasts: Duration,
    pub price: i64,
    pub hold_seconds: Option<u32>,
}

impl DropSpec {
    pub fn live(stock: u32, max_per_user: u32) -> Self {
        Self {
            stock,
            max_per_user,
            starts_in: Duration::seconds(-60),
            lasts: Duration::hours(2),
            price: 2500,
            hold_seconds: None,
        }
    }
}

/// An answer: status, selected headers and the raw body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// The problem `code`, for error answers.
    pub fn code(&self) -> String {
        self.json()["code"].as_str().unwrap_or_default().to_owned()
    }

    /// A 503 that is not one of ours (ours are problems) but `wrangler dev`'s.
    fn is_dev_proxy_hiccup(&self) -> bool {
        self.status.as_u16() == 503 && serde_json::from_slice::<Value>(&self.body).is_err()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

#[derive(Clone)]
pub struct Client {
    pub http: reqwest::Client,
    pub edge: String,
    pub origin: String,
    /// The origin's operators' listener (`/metrics`).
    pub metrics: String,
}

impl Client {
    /// A client with an address of its own (`CF-Connecting-IP`, which `wrangler dev`
    /// takes from the caller as Cloudflare's edge would set it): each test's
    /// traffic counts against its own per-address limit, as separate apps' would.
    pub fn new(stack: &Stack) -> Self {
        let mut headers = reqwest::header::HeaderMap::new();
        let address = client_address(Uuid::new_v4());
        headers.insert("cf-connecting-ip", address.parse().expect("an address is a header value"));
        Self {
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(60))
                .default_headers(headers)
                .build()
                .expect("http client"),
            edge: stack.edge_url.clone(),
            origin: stack.origin_url.clone(),
            metrics: stack.metrics_url.clone(),
        }
    }

    pub async fn send(&self, req: reqwest::RequestBuilder) -> Answer {
        // `wrangler dev`'s local proxy, under the suite's load, sometimes loses its
        // link to the Worker and answers a plain-text 503 ("Your worker restarted
        // mid-request … try sending the request again"), which Cloudflare's edge does
        // not do. A request that may be repeated (a read, a PUT or DELETE, a buy with
        // its idempotency key) is sent once more, as the message asks; others are not.
        let again = req.try_clone().filter(|r| {
            r.try_clone().and_then(|r| r.build().ok()).is_some_and(|r| {
                matches!(r.method().as_str(), "GET" | "HEAD" | "PUT" | "DELETE")
                    || r.headers().contains_key("idempotency-key")
            })
        });
        // The same proxy sometimes resets a kept-alive connection instead: a request
        // that may be repeated is sent once more on a fresh one.
        let mut answer = match (req.send().await, again.as_ref().and_then(|r| r.try_clone())) {
            (Ok(resp), _) => Self::answer(resp).await,
            (Err(e), Some(retry)) if e.is_request() || e.is_connect() => {
                eprintln!("wrangler dev's proxy dropped a request ({e}); sending it again");
                Self::send_once(retry).await
            }
            (Err(e), _) => panic!("request reaches the edge: {e:?}"),
        };
        if answer.is_dev_proxy_hiccup() {
            eprintln!("a 503 from wrangler dev's proxy: {:?}", String::from_utf8_lossy(&answer.body));
            if let Some(again) = again {
                answer = Self::send_once(again).await;
            }
        }
        answer
    }

    async fn send_once(req: reqwest::RequestBuilder) -> Answer {
        Self::answer(req.send().await.expect("request reaches the edge")).await
    }

    async fn answer(resp: reqwest::Response) -> Answer {
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.bytes().await.expect("response body").to_vec();
        Answer { status, headers, body }
    }

    pub async fn post_json(&self, path: &str, token: Option<&str>, body: Value) -> Answer {
        let mut req = self.http.post(format!("{}{path}", self.edge)).json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        self.send(req).await
    }

    /// `POST /v1/notifications/stream-ticket` with `token` (no body), through the edge.
    pub async fn stream_ticket(&self, token: &str) -> Answer {
        self.send(self.http.post(format!("{}/v1/notifications/stream-ticket", self.edge)).bearer_auth(token)).await
    }

    /// `PUT /v1/me/push-subscription` as `buyer`, through the edge.
    pub async fn subscribe_push(&self, buyer: &Buyer, subscription: &Value) -> Answer {
        let put = self.http.put(format!("{}/v1/me/push-subscription", self.edge)).bearer_auth(&buyer.token);
        self.send(put.json(subscription)).await
    }

    /// `GET path` through the edge from `address` (a crowd of visitors is many addresses).
    pub async fn get_from(&self, path: &str, address: &str) -> Answer {
        self.send(self.http.get(format!("{}{path}", self.edge)).header("cf-connecting-ip", address)).await
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Answer {
        let mut req = self.http.get(format!("{}{path}", self.edge));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        self.send(req).await
    }

    /// A creator (with its own account) and a product of theirs; returns (creator token, product id).
    pub async fn creator_with_product(&self) -> (String, Uuid) {
        let (_, creator_token, product_id) = self.creator().await;
        (creator_token, product_id)
    }

    /// A creator (with its own account) and a product of theirs; returns (creator id,
    /// creator token, product id).
    pub async fn creator(&self) -> (Uuid, String, Uuid) {
        let admin = token(Uuid::now_v7(), Role::Admin);
        let creator_user = Uuid::now_v7();
        let created = self
            .post_json("/v1/creators", Some(&admin), json!({"name": "Test Creator", "user_id": creator_user}))
            .await;
        assert_eq!(created.status, StatusCode::CREATED, "creator: {:?}", created.json());
        let creator_id = created.json()["id"].as_str().and_then(|s| Uuid::parse_str(s).ok()).expect("creator id");
        let creator_token = token(creator_user, Role::Creator);
        let product = self
            .post_json("/v1/products", Some(&creator_token), json!({"title": "Test Tee", "description": "A tee."}))
            .await;
        assert_eq!(product.status, StatusCode::CREATED, "product: {:?}", product.json());
        let product_id = product.json()["id"].as_str().and_then(|s| Uuid::parse_str(s).ok()).expect("product id");
        (creator_id, creator_token, product_id)
    }

    /// `who` follows the creator; the answer's status.
    pub async fn follow(&self, who: &Buyer, creator_id: Uuid) -> StatusCode {
        let put = self.http.put(format!("{}/v1/creators/{creator_id}/follow", self.edge)).bearer_auth(&who.token);
        self.send(put).await.status
    }

    /// A drop of the creator's (5 units, 1 per buyer) that starts in `secs` seconds.
    pub async fn drop_starting_in(&self, creator_token: &str, product_id: Uuid, secs: i64) -> Uuid {
        let spec = DropSpec { starts_in: Duration::seconds(secs), lasts: Duration::hours(1), ..DropSpec::live(5, 1) };
        let card = self.create_drop_as(creator_token, product_id, spec).await;
        card["id"].as_str().and_then(|s| Uuid::parse_str(s).ok()).expect("drop id")
    }

    /// Creates a drop through the edge as its creator; returns its id once its stock is readable.
    pub async fn create_drop(&self, spec: DropSpec) -> Uuid {
        let (creator_token, product_id) = self.creator_with_product().await;
        let card = self.create_drop_as(&creator_token, product_id, spec).await;
        card["id"].as_str().and_then(|s| Uuid::parse_str(s).ok()).expect("drop id")
    }

    /// Creates a drop of `product_id` as `creator_token`; returns its card once its
    /// stock is readable at the edge.
    pub async fn create_drop_as(&self, creator_token: &str, product_id: Uuid, spec: DropSpec) -> Value {
        let now = Utc::now();
        let starts_at = now + spec.starts_in;
        let body = json!({
            "product_id": product_id,
            "price": {"amount": spec.price, "currency": "EUR"},
            "stock": spec.stock,
            "max_per_user": spec.max_per_user,
            "starts_at": starts_at,
            "ends_at": starts_at + spec.lasts,
            "hold_seconds": spec.hold_seconds,
        });
        let created = self.post_json("/v1/drops", Some(creator_token), body).await;
        assert_eq!(created.status, StatusCode::CREATED, "drop: {:?}", created.json());
        let card = created.json();
        let id = card["id"].as_str().and_then(|s| Uuid::parse_str(s).ok()).expect("drop id");
        let stock = self.stock(id).await;
        assert_eq!(stock["total"], spec.stock, "the edge knows the drop: {stock}");
        card
    }

    pub async fn stock(&self, drop_id: Uuid) -> Value {
        self.get(&format!("/v1/drops/{drop_id}/stock"), None).await.json()
    }

    pub async fn remaining(&self, drop_id: Uuid) -> u64 {
        self.stock(drop_id).await["remaining"].as_u64().expect("remaining")
    }

    /// `POST /v1/drops/{id}/orders` with a raw body and an optional key.
    pub async fn buy_raw(
        &self,
        token: Option<&str>,
        drop_id: Uuid,
        key: Option<&str>,
        body: impl Into<reqwest::Body>,
    ) -> Answer {
        let mut req = self
            .http
            .post(format!("{}/v1/drops/{drop_id}/orders", self.edge))
            .header("content-type", "application/json")
            .body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(k) = key {
            req = req.header("idempotency-key", k);
        }
        self.send(req).await
    }

    /// Buys as `buyer`, from the buyer's own address (a crowd is many addresses).
    pub async fn buy(&self, buyer: &Buyer, drop_id: Uuid, key: &str, quantity: u32) -> Answer {
        let req = self
            .http
            .post(format!("{}/v1/drops/{drop_id}/orders", self.edge))
            .header("content-type", "application/json")
            .header("cf-connecting-ip", client_address(buyer.id))
            .header("idempotency-key", key)
            .bearer_auth(&buyer.token)
            .body(json!({"quantity": quantity}).to_string());
        self.send(req).await
    }
}

/// A `payment_intent.*` webhook as the provider would send it.
pub fn webhook_body(event_id: &str, succeeded: bool, reference: &str, order_id: Uuid, amount: i64) -> Vec<u8> {
    use drops_origin::payments::sandbox::{event_body, Outcome};
    let outcome = if succeeded { Outcome::Succeed } else { Outcome::Fail };
    let money = drops_shared::api::Money { amount, currency: "EUR".into() };
    event_body(event_id, outcome, reference, order_id, &money, Utc::now().timestamp())
}

/// A bought unit: who bought it, the order id and its payment reference.
#[derive(Debug, Clone)]
pub struct Purchase {
    pub buyer: Buyer,
    pub order_id: Uuid,
    pub reference: String,
    pub checkout_url: String,
    pub amount: i64,
}

impl Client {
    pub async fn order(&self, buyer: &Buyer, order_id: Uuid) -> Answer {
        self.get(&format!("/v1/orders/{order_id}"), Some(&buyer.token)).await
    }

    /// Polls the order until `pred` holds for its JSON (or panics after `secs`).
    pub async fn wait_order(&self, buyer: &Buyer, order_id: Uuid, secs: u64, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            let a = self.order(buyer, order_id).await;
            let v = a.json();
            if a.status == StatusCode::OK && pred(&v) {
                return v;
            }
            assert!(std::time::Instant::now() < deadline, "order {order_id} never got there; last: {v}");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    pub async fn wait_status(&self, buyer: &Buyer, order_id: Uuid, status: &str) -> Value {
        self.wait_order(buyer, order_id, 20, |v| v["status"] == status).await
    }

    /// Buys one unit for a new buyer and waits until the origin has the order.
    pub async fn purchase(&self, drop_id: Uuid) -> Purchase {
        let buyer = Buyer::new();
        let a = self.buy(&buyer, drop_id, &format!("purchase-{}", buyer.id), 1).await;
        assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.json());
        let order_id = a.json()["order_id"].as_str().and_then(|s| Uuid::parse_str(s).ok()).expect("order id");
        let order = self.wait_order(&buyer, order_id, 20, |v| v["payment"].is_object()).await;
        Purchase {
            order_id,
            reference: order["payment"]["reference"].as_str().expect("reference").to_owned(),
            checkout_url: order["payment"]["checkout_url"].as_str().expect("checkout").to_owned(),
            amount: order["amount"]["amount"].as_i64().expect("amount"),
            buyer,
        }
    }

    /// Pays (or fails to pay) at the sandbox checkout, as the buyer would.
    pub async fn checkout(&self, purchase: &Purchase, outcome: &str) -> Answer {
        let pay = self.http.post(&purchase.checkout_url).bearer_auth(&purchase.buyer.token);
        self.send(pay.json(&json!({"outcome": outcome}))).await
    }

    /// Sends a signed webhook straight to the origin.
    pub async fn webhook(&self, body: &[u8], secret: &str, timestamp: i64) -> Answer {
        let signature = drops_shared::signing::stripe_signature(secret.as_bytes(), timestamp, body);
        self.webhook_with_header(body, Some(&signature)).await
    }

    pub async fn webhook_with_header(&self, body: &[u8], signature: Option<&str>) -> Answer {
        let mut req = self
            .http
            .post(format!("{}/v1/webhooks/payments", self.origin))
            .header("content-type", "application/json")
            .body(body.to_vec());
        if let Some(s) = signature {
            req = req.header("stripe-signature", s);
        }
        self.send(req).await
    }

    /// A provider event for a purchase, signed with the current secret.
    pub async fn pay_event(&self, p: &Purchase, event_id: &str, succeeded: bool) -> Answer {
        let body = webhook_body(event_id, succeeded, &p.reference, p.order_id, p.amount);
        self.webhook(&body, crate::WEBHOOK_SECRET, Utc::now().timestamp()).await
    }

    pub async fn cancel(&self, buyer: &Buyer, order_id: Uuid) -> Answer {
        self.post_json(&format!("/v1/orders/{order_id}/cancel"), Some(&buyer.token), json!({})).await
    }
}

impl Client {
    /// The origin's `/metrics` text (from its operators' listener).
    pub async fn get_raw_metrics(&self) -> String {
        self.http.get(format!("{}/metrics", self.metrics)).send().await.unwrap().text().await.unwrap()
    }

    /// How many requests the origin has served, all routes together.
    pub async fn origin_requests_total(&self) -> u64 {
        let text = self.get_raw_metrics().await;
        text.lines()
            .filter(|l| l.starts_with("drops_http_requests_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }

    /// How many `method route` requests the origin has served (its own counter).
    pub async fn origin_requests(&self, method: &str, route: &str) -> u64 {
        self.counter("drops_http_requests_total", &[("method", method), ("route", route)]).await
    }

    /// The origin's counter `name` on `/metrics`, summed over the series carrying `labels`.
    pub async fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let text = self.get_raw_metrics().await;
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")) && labels.iter().all(|label| l.contains(label)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }
}

impl Client {
    /// `POST /v1/media{query}` (`""` or `"?visibility=private"`) with `bytes` as the
    /// raw body, claimed to be `content_type`, as `token`.
    pub async fn upload(&self, token: Option<&str>, query: &str, content_type: &str, bytes: &[u8]) -> Answer {
        let mut req = self
            .http
            .post(format!("{}/v1/media{query}", self.edge))
            .header("content-type", content_type)
            .body(bytes.to_vec());
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        self.send_upload(req).await
    }

    /// Sends an upload, once more after a `wrangler dev` hiccup (see [`Client::send`]):
    /// a file is named by its bytes, so sending it again changes nothing.
    pub async fn send_upload(&self, req: reqwest::RequestBuilder) -> Answer {
        let again = req.try_clone();
        let answer = Self::send_once(req).await;
        match again {
            Some(again) if answer.is_dev_proxy_hiccup() => {
                eprintln!("a 503 from wrangler dev's proxy: {:?}", String::from_utf8_lossy(&answer.body));
                Self::send_once(again).await
            }
            _ => answer,
        }
    }
}
