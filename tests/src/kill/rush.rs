//! The traffic of a kill run: buyers rushing one drop, each with an idempotency key,
//! paying through the Stripe double (whose webhooks the harness delivers, retrying
//! as Stripe does), and fans following the creator and reading their inbox, all
//! through the edge. Every answer is logged with when its request started, so a
//! scenario can count what clients were told while a component was down.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::future::join_all;
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::client::{client_address, webhook_body, Answer};
use crate::stripe_double::StripeDouble;
use crate::{Buyer, WEBHOOK_SECRET};

/// What a client got: an answer's status class, or no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Class {
    Success,
    Conflict,
    Limited,
    Unavailable,
    ServerError,
    OtherClientError,
    /// No answer within the client's timeout.
    Timeout,
    /// The connection was refused or broken: the request may or may not have run.
    Transport,
}

impl Class {
    pub const ALL: [Class; 8] = [
        Class::Success,
        Class::Conflict,
        Class::Limited,
        Class::Unavailable,
        Class::ServerError,
        Class::OtherClientError,
        Class::Timeout,
        Class::Transport,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Class::Success => "2xx",
            Class::Conflict => "409",
            Class::Limited => "429",
            Class::Unavailable => "503",
            Class::ServerError => "5xx other",
            Class::OtherClientError => "4xx other",
            Class::Timeout => "timeout",
            Class::Transport => "conn error",
        }
    }

    fn of(status: StatusCode) -> Class {
        match status.as_u16() {
            200..=299 => Class::Success,
            409 => Class::Conflict,
            429 => Class::Limited,
            503 => Class::Unavailable,
            500..=599 => Class::ServerError,
            _ => Class::OtherClientError,
        }
    }
}

/// One request a client made.
#[derive(Debug, Clone)]
pub struct Record {
    pub family: &'static str,
    pub started: Instant,
    pub took: Duration,
    pub class: Class,
    /// For an answer of an unexpected kind (a 5xx other than ours 503, a 4xx other
    /// than 409 or 429): the body, to say what it was.
    pub detail: Option<String>,
}

/// Counts per family and class of the requests started in a window.
pub type Tally = BTreeMap<&'static str, BTreeMap<Class, usize>>;

#[derive(Clone)]
pub struct Http {
    client: reqwest::Client,
    pub edge: String,
    pub origin: String,
    log: Arc<Mutex<Vec<Record>>>,
}

impl Http {
    /// `timeout`: how long a client waits for an answer before giving up on it.
    pub fn new(edge: String, origin: String, timeout: Duration) -> Http {
        let client = reqwest::Client::builder().timeout(timeout).build().expect("an http client");
        Http { client, edge, origin, log: Arc::default() }
    }

    pub fn records(&self) -> Vec<Record> {
        self.log.lock().expect("log").clone()
    }

    /// Requests started in `[from, to)`, counted.
    pub fn tally(&self, from: Instant, to: Instant) -> (Tally, BTreeMap<&'static str, Duration>, Vec<String>) {
        let mut tally = Tally::new();
        let (mut slowest, mut errors) = (BTreeMap::new(), Vec::new());
        for r in self.records().into_iter().filter(|r| r.started >= from && r.started < to) {
            *tally.entry(r.family).or_default().entry(r.class).or_default() += 1;
            let s = slowest.entry(r.family).or_insert(Duration::ZERO);
            *s = (*s).max(r.took);
            if let Some(d) = r.detail {
                errors.push(format!("{}: {d}", r.family));
            }
        }
        (tally, slowest, errors)
    }

    /// Sends `req` and logs what came of it under `family`.
    pub async fn call(&self, family: &'static str, req: reqwest::RequestBuilder) -> Result<Answer, Class> {
        let started = Instant::now();
        let result = match req.send().await {
            Ok(resp) => {
                let (status, headers) = (resp.status(), resp.headers().clone());
                match resp.bytes().await {
                    Ok(body) => Ok(Answer { status, headers, body: body.to_vec() }),
                    Err(e) if e.is_timeout() => Err(Class::Timeout),
                    Err(_) => Err(Class::Transport),
                }
            }
            Err(e) if e.is_timeout() => Err(Class::Timeout),
            Err(_) => Err(Class::Transport),
        };
        let (class, detail) = match &result {
            Ok(a) => {
                let class = Class::of(a.status);
                let odd = matches!(class, Class::ServerError | Class::OtherClientError);
                let detail = (odd || (a.status == 503 && a.json().is_null()))
                    .then(|| format!("{} {}", a.status, String::from_utf8_lossy(&a.body)));
                (class, detail)
            }
            Err(c) => (*c, None),
        };
        self.log.lock().expect("log").push(Record { family, started, took: started.elapsed(), class, detail });
        result
    }

    pub fn get(&self, path: &str, token: &str) -> reqwest::RequestBuilder {
        self.client.get(format!("{}{path}", self.edge)).bearer_auth(token)
    }

    pub fn buy_request(&self, buyer: &Buyer, drop_id: Uuid, key: &str, quantity: u32) -> reqwest::RequestBuilder {
        self.client
            .post(format!("{}/v1/drops/{drop_id}/orders", self.edge))
            .header("cf-connecting-ip", client_address(buyer.id))
            .header("idempotency-key", key)
            .bearer_auth(&buyer.token)
            .json(&json!({"quantity": quantity}))
    }

    fn follow(&self, fan: &Buyer, creator_id: Uuid, on: bool) -> reqwest::RequestBuilder {
        let url = format!("{}/v1/creators/{creator_id}/follow", self.edge);
        let req = if on { self.client.put(url) } else { self.client.delete(url) };
        req.header("cf-connecting-ip", client_address(fan.id)).bearer_auth(&fan.token)
    }

    fn webhook(&self, body: Vec<u8>) -> reqwest::RequestBuilder {
        let signature =
            drops_shared::signing::stripe_signature(WEBHOOK_SECRET.as_bytes(), Utc::now().timestamp(), &body);
        self.client
            .post(format!("{}/v1/webhooks/payments", self.origin))
            .header("content-type", "application/json")
            .header("stripe-signature", signature)
            .body(body)
    }
}

/// What a buyer was last told about their purchase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Told {
    Created {
        order_id: Uuid,
        quantity: u32,
        replayed: bool,
    },
    /// A definite no: the problem code.
    Refused(String),
    /// No definite answer (no answer at all, or only "try again").
    Unknown(Class),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Paid {
    Succeeded(String),
    Failed(String),
    Abandoned,
    /// The order never showed a payment to its owner within the wait.
    NeverReady,
}

#[derive(Debug, Clone)]
pub struct BuyerRun {
    pub buyer: Buyer,
    pub key: String,
    pub quantity: u32,
    pub told: Told,
    pub paid: Option<Paid>,
}

pub struct RushSpec {
    pub buyers: usize,
    /// Buyers arrive evenly over this long.
    pub arrival: Duration,
    pub fans: usize,
    /// How long a buyer keeps asking for their order's payment.
    pub pay_within: Duration,
}

/// The outcome of a buy answer; None for "ask again".
pub fn told(answer: &Result<Answer, Class>) -> Option<Told> {
    match answer {
        Ok(a) if a.status == StatusCode::CREATED => {
            let v = a.json();
            let order_id = v["order_id"].as_str().and_then(|s| s.parse().ok())?;
            Some(Told::Created {
                order_id,
                quantity: v["quantity"].as_u64().unwrap_or_default() as u32,
                replayed: a.header("idempotent-replayed") == Some("true"),
            })
        }
        Ok(a) if a.status == 429 || a.status.is_server_error() => None,
        Ok(a) if a.code() == "idempotency_key_in_progress" => None,
        Ok(a) => Some(Told::Refused(if a.code().is_empty() { a.status.to_string() } else { a.code() })),
        Err(_) => None,
    }
}

fn retry_after(answer: &Result<Answer, Class>) -> Duration {
    let secs = answer.as_ref().ok().and_then(|a| a.header("retry-after")?.parse::<f64>().ok()).unwrap_or(1.0);
    Duration::from_secs_f64(secs.clamp(0.2, 2.0))
}

/// Buyers' pseudo-random choices, from their ids: the run is the same whatever the timing.
fn pick(buyer: &Buyer, salt: u8, n: u128) -> u128 {
    (buyer.id.as_u128().rotate_left(salt as u32 * 7) ^ 0x9e37_79b9_7f4a_7c15) % n
}

/// One buyer: buys (again on "try again", up to four times; not after a lost
/// answer, which is settled later with the same key), then pays or not.
async fn buyer(http: Http, double: StripeDouble, drop_id: Uuid, buyer: Buyer, spec_pay: Duration) -> BuyerRun {
    let quantity = 1 + pick(&buyer, 1, 2) as u32;
    let key = format!("kill-{}", buyer.id.simple());
    let mut last = Told::Unknown(Class::Transport);
    for attempt in 0..4 {
        let answer = http.call("buy", http.buy_request(&buyer, drop_id, &key, quantity)).await;
        match told(&answer) {
            Some(t) => {
                last = t;
                break;
            }
            None => {
                last = Told::Unknown(answer.as_ref().map(|a| Class::of(a.status)).unwrap_or_else(|c| *c));
                if answer.is_err() || attempt == 3 {
                    break;
                }
                tokio::time::sleep(retry_after(&answer)).await;
            }
        }
    }
    let paid = match &last {
        Told::Created { order_id, .. } => Some(pay(&http, &double, &buyer, *order_id, spec_pay).await),
        _ => None,
    };
    BuyerRun { buyer, key, quantity, told: last, paid }
}

/// Waits for the order's payment, then pays (85%), fails (10%) or walks away (5%).
async fn pay(http: &Http, double: &StripeDouble, buyer: &Buyer, order_id: Uuid, within: Duration) -> Paid {
    let deadline = Instant::now() + within;
    let order = loop {
        let answer = http.call("order", http.get(&format!("/v1/orders/{order_id}"), &buyer.token)).await;
        if let Ok(a) = &answer {
            if a.status == StatusCode::OK && a.json()["payment"].is_object() {
                break a.json();
            }
        }
        if Instant::now() > deadline {
            return Paid::NeverReady;
        }
        // As an app does: when the answer says (`Retry-After`), at least a second
        // apart, spread out so that hundreds of buyers do not ask in step.
        let jitter = Duration::from_millis(pick(buyer, 5, 500) as u64);
        tokio::time::sleep(retry_after(&answer).max(Duration::from_secs(1)) + jitter).await;
    };
    let reference = order["payment"]["reference"].as_str().unwrap_or_default().to_owned();
    let amount = order["amount"]["amount"].as_i64().unwrap_or_default();
    let succeed = match pick(buyer, 2, 20) {
        0..=16 => true,
        17..=18 => false,
        _ => return Paid::Abandoned,
    };
    if succeed {
        double.confirm(&reference);
    }
    let event = format!("evt_kill_{}", Uuid::now_v7().simple());
    let body = webhook_body(&event, succeed, &reference, order_id, amount);
    deliver(http, body.clone()).await;
    // Providers deliver at least once: a tenth of the events come twice.
    if pick(buyer, 3, 10) == 0 {
        deliver(http, body).await;
    }
    if succeed {
        Paid::Succeeded(reference)
    } else {
        Paid::Failed(reference)
    }
}

/// Delivers a webhook as Stripe does: again, with backoff, until it is taken.
async fn deliver(http: &Http, body: Vec<u8>) {
    let mut pause = Duration::from_millis(250);
    let deadline = Instant::now() + Duration::from_secs(300);
    while Instant::now() < deadline {
        if http.call("webhook", http.webhook(body.clone())).await.is_ok_and(|a| a.status.is_success()) {
            return;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(4));
    }
}

/// A fan: follows, reads the inbox, unfollows, over and over until `stop`; then
/// follows for good (again until it is taken). Ends following.
async fn fan(http: Http, fan: Buyer, creator_id: Uuid, stop: Arc<AtomicBool>) {
    let pause = Duration::from_millis(1_000 + pick(&fan, 4, 2_000) as u64);
    while !stop.load(Ordering::Relaxed) {
        let _ = http.call("follow", http.follow(&fan, creator_id, true)).await;
        tokio::time::sleep(pause).await;
        let _ = http.call("inbox", http.get("/v1/notifications?limit=5", &fan.token)).await;
        tokio::time::sleep(pause).await;
        let _ = http.call("follow", http.follow(&fan, creator_id, false)).await;
        tokio::time::sleep(pause).await;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        let answer = http.call("follow", http.follow(&fan, creator_id, true)).await;
        if answer.is_ok_and(|a| a.status == StatusCode::NO_CONTENT) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The rush: every buyer's story, and the fans (who all end following).
pub async fn run(
    http: &Http,
    double: &StripeDouble,
    drop_id: Uuid,
    creator_id: Uuid,
    spec: &RushSpec,
) -> (Vec<BuyerRun>, Vec<Buyer>) {
    let fans: Vec<Buyer> = (0..spec.fans).map(|_| Buyer::new()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let fan_tasks: Vec<_> =
        fans.iter().map(|f| tokio::spawn(fan(http.clone(), f.clone(), creator_id, stop.clone()))).collect();
    let started = Instant::now();
    let step = spec.arrival.as_secs_f64() / spec.buyers.max(1) as f64;
    let buyer_tasks: Vec<_> = (0..spec.buyers)
        .map(|i| {
            let (http, double, pay_within) = (http.clone(), double.clone(), spec.pay_within);
            tokio::spawn(async move {
                tokio::time::sleep_until((started + Duration::from_secs_f64(step * i as f64)).into()).await;
                buyer(http, double, drop_id, Buyer::new(), pay_within).await
            })
        })
        .collect();
    tokio::time::sleep_until((started + spec.arrival).into()).await;
    stop.store(true, Ordering::Relaxed);
    let runs = join_all(buyer_tasks).await.into_iter().map(|r| r.expect("a buyer task")).collect();
    for t in join_all(fan_tasks).await {
        t.expect("a fan task");
    }
    (runs, fans)
}

/// Asks again, with the same key and body, for every buyer who was never told
/// for sure, until the edge answers for sure: the truth about their purchase.
pub async fn settle(http: &Http, drop_id: Uuid, runs: &mut [BuyerRun]) {
    let unsettled: Vec<usize> = (0..runs.len()).filter(|i| matches!(runs[*i].told, Told::Unknown(_))).collect();
    // A few dozen at a time, as many apps coming back would, not one burst.
    let answers: Vec<Told> = futures::stream::iter(unsettled.iter().map(|i| {
        let run = &runs[*i];
        async move {
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                let answer = http.call("settle", http.buy_request(&run.buyer, drop_id, &run.key, run.quantity)).await;
                match told(&answer) {
                    Some(t) => return t,
                    None if Instant::now() > deadline => {
                        return Told::Unknown(answer.map(|a| Class::of(a.status)).unwrap_or_else(|c| c))
                    }
                    None => tokio::time::sleep(retry_after(&answer)).await,
                }
            }
        }
    }))
    .buffered(32)
    .collect()
    .await;
    for (i, t) in unsettled.into_iter().zip(answers) {
        runs[i].told = t;
    }
}

/// A summary line of the buyers' stories.
pub fn summary(runs: &[BuyerRun]) -> Value {
    let count = |f: &dyn Fn(&BuyerRun) -> bool| runs.iter().filter(|r| f(r)).count();
    json!({
        "created": count(&|r| matches!(r.told, Told::Created { .. })),
        "refused": count(&|r| matches!(r.told, Told::Refused(_))),
        "unknown": count(&|r| matches!(r.told, Told::Unknown(_))),
        "unknown_by": Class::ALL
            .iter()
            .map(|c| (c.label(), count(&|r| r.told == Told::Unknown(*c))))
            .filter(|(_, n)| *n > 0)
            .collect::<BTreeMap<_, _>>(),
        "paid": count(&|r| matches!(r.paid, Some(Paid::Succeeded(_)))),
        "failed": count(&|r| matches!(r.paid, Some(Paid::Failed(_)))),
        "abandoned": count(&|r| matches!(r.paid, Some(Paid::Abandoned))),
        "never_ready": count(&|r| matches!(r.paid, Some(Paid::NeverReady))),
    })
}
