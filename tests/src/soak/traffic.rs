//! The soak's mixed traffic, as a crowd of apps would send it through the edge:
//! browsing (cards, lists, stock, creators), follows, buys on a long drop and rushes
//! on small ones that sell out, paying at the sandbox's checkout (whose webhook
//! confirms or fails the order), cancels, holds left to expire, inboxes and media.
//!
//! Requests are sent open-loop at a set rate (a request that answers slowly does
//! not slow the next), each from the address of the user sending it, as
//! Cloudflare's edge would see a crowd; the per-address and per-user limits are not
//! what is being soaked.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use drops_shared::auth::Role;
use rand::Rng;
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use uuid::Uuid;

use super::stats::{Family, Stats, NO_ANSWER};
use crate::client::{client_address, token};
use crate::{Buyer, Client, DropSpec};

/// What one tick of the traffic does, and how often (weights out of 100).
#[derive(Debug, Clone, Copy)]
enum Action {
    Card,
    List,
    Stock,
    Creator,
    Follow,
    Buy,
    Rush,
    Pay,
    Cancel,
    Inbox,
    Orders,
    Upload,
    Media,
}

const MIX: &[(Action, u32)] = &[
    (Action::Card, 18),
    (Action::List, 10),
    (Action::Stock, 8),
    (Action::Creator, 4),
    (Action::Follow, 8),
    (Action::Buy, 8),
    (Action::Rush, 6),
    (Action::Pay, 11),
    (Action::Cancel, 3),
    (Action::Inbox, 9),
    (Action::Orders, 4),
    (Action::Upload, 2),
    (Action::Media, 9),
];

/// Buyers that walk away from their order: its hold expires.
const ABANDON_PERCENT: u32 = 15;
/// Payments that fail at the checkout.
const FAIL_PERCENT: u32 = 15;
/// How many recent buyers, uploads and rush drops the traffic draws from.
const RECENT: usize = 500;

struct Creator {
    id: Uuid,
    token: String,
    product_id: Uuid,
    user_id: Uuid,
}

/// A 201 whose buyer means to pay or cancel.
struct Pending {
    buyer: Buyer,
    order_id: Uuid,
    at: Instant,
}

/// What the traffic did to orders, for the report.
#[derive(Default)]
pub struct Outcomes {
    pub reserved: AtomicU64,
    pub paid: AtomicU64,
    pub payment_failed: AtomicU64,
    pub cancelled: AtomicU64,
    pub abandoned: AtomicU64,
    pub sold_out: AtomicU64,
    pub drops_created: AtomicU64,
    pub uploads: AtomicU64,
    /// Ticks the generator could not send because too many requests were in flight.
    pub shed: AtomicU64,
}

/// Everything the traffic needs: the users, the drops, the orders in flight.
pub struct World {
    http: reqwest::Client,
    edge: String,
    ceiling: Option<String>,
    creators: Vec<Creator>,
    followers: Vec<Buyer>,
    long_drop: Uuid,
    /// The long drop and every rush drop, for browsing.
    drops: Mutex<Vec<Uuid>>,
    rushes: Mutex<VecDeque<Uuid>>,
    pending: Mutex<VecDeque<Pending>>,
    buyers: Mutex<VecDeque<Buyer>>,
    media: Mutex<VecDeque<String>>,
    pub hold_seconds: u32,
    pub stats: Stats,
    pub outcomes: Outcomes,
}

fn id_of(v: &Value, field: &str) -> Option<Uuid> {
    v[field].as_str().and_then(|s| s.parse().ok())
}

fn push_recent<T>(ring: &Mutex<VecDeque<T>>, item: T) {
    let mut ring = ring.lock().expect("ring");
    if ring.len() >= RECENT {
        ring.pop_front();
    }
    ring.push_back(item);
}

fn pick<T: Clone>(ring: &Mutex<VecDeque<T>>) -> Option<T> {
    let ring = ring.lock().expect("ring");
    if ring.is_empty() {
        return None;
    }
    ring.get(rand::rng().random_range(0..ring.len())).cloned()
}

impl World {
    /// Creators with a product each, followers, and the long drop; `hold_seconds`
    /// short enough that abandoned holds expire during the run.
    pub async fn new(client: &Client, ceiling: Option<String>, hold_seconds: u32) -> Arc<World> {
        let mut creators = Vec::new();
        for _ in 0..4 {
            let admin = token(Uuid::now_v7(), Role::Admin);
            let user_id = Uuid::now_v7();
            let created = client
                .post_json("/v1/creators", Some(&admin), json!({"name": "Soak Studio", "user_id": user_id}))
                .await;
            let id = id_of(&created.json(), "id").expect("a creator");
            let token = token(user_id, Role::Creator);
            let product = client
                .post_json("/v1/products", Some(&token), json!({"title": "Soak Tee", "description": "Worn for hours."}))
                .await;
            let product_id = id_of(&product.json(), "id").expect("a product");
            creators.push(Creator { id, token, product_id, user_id });
        }
        let long = DropSpec { hold_seconds: Some(hold_seconds), ..DropSpec::live(1_000_000, 2) };
        let long = client.create_drop_as(&creators[0].token, creators[0].product_id, long).await;
        let long_drop = id_of(&long, "id").expect("the long drop");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(64)
            .build()
            .expect("http client");
        Arc::new(World {
            http,
            edge: client.edge.clone(),
            ceiling,
            creators,
            followers: (0..200).map(|_| Buyer::new()).collect(),
            long_drop,
            drops: Mutex::new(vec![long_drop]),
            rushes: Mutex::default(),
            pending: Mutex::default(),
            buyers: Mutex::default(),
            media: Mutex::default(),
            hold_seconds,
            stats: Stats::default(),
            outcomes: Outcomes::default(),
        })
    }

    /// Every drop the traffic made, for reconciliation.
    pub fn drop_ids(&self) -> Vec<Uuid> {
        self.drops.lock().expect("drops").clone()
    }

    /// Sends `req` from `address`, records its latency and status as `family`, and
    /// answers the status (0: no answer) and the body as JSON (null if it is not).
    async fn call(&self, family: Family, req: reqwest::RequestBuilder, address: &str) -> (u16, Value) {
        let started = Instant::now();
        let sent = req.header("cf-connecting-ip", address).send().await;
        let (status, body) = match sent {
            Ok(resp) => {
                let status = resp.status().as_u16();
                match resp.bytes().await {
                    Ok(bytes) => (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null)),
                    Err(_) => (NO_ANSWER, Value::Null),
                }
            }
            Err(_) => (NO_ANSWER, Value::Null),
        };
        self.stats.record(family, status, started.elapsed());
        (status, body)
    }

    fn edge(&self, path: &str) -> String {
        format!("{}{path}", self.edge)
    }

    fn anyone() -> String {
        client_address(Uuid::new_v4())
    }

    fn some_drop(&self) -> Uuid {
        let drops = self.drops.lock().expect("drops");
        drops[rand::rng().random_range(0..drops.len())]
    }

    fn creator(&self) -> &Creator {
        &self.creators[rand::rng().random_range(0..self.creators.len())]
    }

    async fn act(&self, action: Action) {
        match action {
            Action::Card => {
                let path = format!("/v1/drops/{}", self.some_drop());
                self.call(Family::Card, self.http.get(self.edge(&path)), &Self::anyone()).await;
            }
            Action::List => {
                let status = if rand::rng().random_bool(0.7) { "live" } else { "upcoming" };
                let path = format!("/v1/drops?status={status}");
                self.call(Family::List, self.http.get(self.edge(&path)), &Self::anyone()).await;
            }
            Action::Stock => {
                let path = format!("/v1/drops/{}/stock", self.some_drop());
                self.call(Family::Stock, self.http.get(self.edge(&path)), &Self::anyone()).await;
            }
            Action::Creator => {
                let path = format!("/v1/creators/{}", self.creator().id);
                self.call(Family::Creator, self.http.get(self.edge(&path)), &Self::anyone()).await;
            }
            Action::Follow => self.follow().await,
            Action::Buy => self.buy(self.long_drop).await,
            Action::Rush => match pick(&self.rushes) {
                Some(drop_id) => self.buy(drop_id).await,
                None => self.buy(self.long_drop).await,
            },
            Action::Pay => self.pay().await,
            Action::Cancel => self.cancel().await,
            Action::Inbox => self.inbox().await,
            Action::Orders => {
                if let Some(buyer) = pick(&self.buyers) {
                    let req = self.http.get(self.edge("/v1/orders")).bearer_auth(&buyer.token);
                    self.call(Family::Order, req, &client_address(buyer.id)).await;
                }
            }
            Action::Upload => self.upload().await,
            Action::Media => match pick(&self.media) {
                Some(url) => {
                    self.call(Family::Media, self.http.get(self.edge(&url)), &Self::anyone()).await;
                }
                None => self.upload().await,
            },
        }
    }

    async fn follow(&self) {
        let who = &self.followers[rand::rng().random_range(0..self.followers.len())];
        let url = self.edge(&format!("/v1/creators/{}/follow", self.creator().id));
        let req = if rand::rng().random_bool(0.6) { self.http.put(url) } else { self.http.delete(url) };
        self.call(Family::Follow, req.bearer_auth(&who.token), &client_address(who.id)).await;
    }

    async fn buy(&self, drop_id: Uuid) {
        let buyer = Buyer::new();
        let req = self
            .http
            .post(self.edge(&format!("/v1/drops/{drop_id}/orders")))
            .bearer_auth(&buyer.token)
            .header("idempotency-key", format!("soak-{}", buyer.id))
            .header("content-type", "application/json")
            .body(json!({"quantity": 1}).to_string());
        let (status, body) = self.call(Family::Buy, req, &client_address(buyer.id)).await;
        match (status, id_of(&body, "order_id")) {
            (201, Some(order_id)) => {
                self.outcomes.reserved.fetch_add(1, Ordering::Relaxed);
                push_recent(&self.buyers, buyer.clone());
                if rand::rng().random_ratio(ABANDON_PERCENT, 100) {
                    self.outcomes.abandoned.fetch_add(1, Ordering::Relaxed);
                } else {
                    self.pending.lock().expect("pending").push_back(Pending { buyer, order_id, at: Instant::now() });
                }
            }
            (409, _) if body["code"] == "sold_out" => {
                self.outcomes.sold_out.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }

    /// The oldest order waiting to be paid: its payment, once the origin has it,
    /// paid (or failed) at the sandbox's checkout. One that waited past half its
    /// hold is left to expire instead, so a payment never races its expiry.
    async fn pay(&self) {
        let next = {
            let mut pending = self.pending.lock().expect("pending");
            let half_hold = Duration::from_secs(u64::from(self.hold_seconds) / 2);
            while pending.front().is_some_and(|p| p.at.elapsed() > half_hold) {
                pending.pop_front();
                self.outcomes.abandoned.fetch_add(1, Ordering::Relaxed);
            }
            pending.pop_front()
        };
        let Some(p) = next else { return };
        let address = client_address(p.buyer.id);
        let req = self.http.get(self.edge(&format!("/v1/orders/{}", p.order_id))).bearer_auth(&p.buyer.token);
        let (status, order) = self.call(Family::Order, req, &address).await;
        let Some(checkout) = order["payment"]["checkout_url"].as_str().filter(|_| status == 200) else {
            // Not handed to the origin or not prepared yet: back in the queue.
            self.pending.lock().expect("pending").push_back(p);
            return;
        };
        let fail = rand::rng().random_ratio(FAIL_PERCENT, 100);
        let outcome = if fail { "fail" } else { "succeed" };
        let req = self.http.post(checkout).bearer_auth(&p.buyer.token).json(&json!({"outcome": outcome}));
        let (status, _) = self.call(Family::Pay, req, &address).await;
        if (200..300).contains(&status) {
            let counter = if fail { &self.outcomes.payment_failed } else { &self.outcomes.paid };
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The newest order waiting to be paid, cancelled by its buyer instead.
    async fn cancel(&self) {
        let Some(p) = self.pending.lock().expect("pending").pop_back() else { return };
        let path = format!("/v1/orders/{}/cancel", p.order_id);
        let req = self.http.post(self.edge(&path)).bearer_auth(&p.buyer.token).json(&json!({}));
        let (status, _) = self.call(Family::Cancel, req, &client_address(p.buyer.id)).await;
        if status == 200 {
            self.outcomes.cancelled.fetch_add(1, Ordering::Relaxed);
        }
    }

    async fn inbox(&self) {
        let Some(buyer) = pick(&self.buyers) else { return };
        let address = client_address(buyer.id);
        let req = if rand::rng().random_ratio(1, 5) {
            self.http.post(self.edge("/v1/notifications/read-all"))
        } else {
            self.http.get(self.edge("/v1/notifications"))
        };
        self.call(Family::Inbox, req.bearer_auth(&buyer.token), &address).await;
    }

    /// A picture of its own (new bytes: a new file in R2), 16 to 64 KiB.
    async fn upload(&self) {
        let creator = self.creator();
        let size = rand::rng().random_range(16 * 1024..64 * 1024);
        let bytes = crate::files::png_headed(size);
        let req = self
            .http
            .post(self.edge("/v1/media"))
            .bearer_auth(&creator.token)
            .header("content-type", "image/png")
            .body(bytes);
        let (status, body) = self.call(Family::Upload, req, &client_address(creator.user_id)).await;
        if let (201, Some(url)) = (status, body["url"].as_str()) {
            self.outcomes.uploads.fetch_add(1, Ordering::Relaxed);
            push_recent(&self.media, url.to_owned());
        }
    }

    /// A small drop that the rush buys out within seconds: then its buyers are
    /// told "sold out" (by the Worker itself, from its memo, once the object said so).
    pub async fn create_rush(&self) {
        let creator = self.creator();
        let starts_at = chrono::Utc::now() - chrono::Duration::seconds(5);
        let body = json!({
            "product_id": creator.product_id,
            "price": {"amount": 1500, "currency": "EUR"},
            "stock": 20,
            "max_per_user": 1,
            "starts_at": starts_at,
            "ends_at": starts_at + chrono::Duration::minutes(15),
            "hold_seconds": self.hold_seconds,
        });
        let req = self.http.post(self.edge("/v1/drops")).bearer_auth(&creator.token).json(&body);
        let (status, card) = self.call(Family::CreateDrop, req, &client_address(creator.user_id)).await;
        if let (201, Some(id)) = (status, id_of(&card, "id")) {
            self.outcomes.drops_created.fetch_add(1, Ordering::Relaxed);
            self.drops.lock().expect("drops").push(id);
            push_recent(&self.rushes, id);
        }
    }

    /// The ceiling Worker's trivial request.
    async fn ceiling(&self) {
        if let Some(url) = &self.ceiling {
            self.call(Family::Ceiling, self.http.get(format!("{url}/fixed")), &Self::anyone()).await;
        }
    }
}

fn choose() -> Action {
    let total: u32 = MIX.iter().map(|(_, w)| w).sum();
    let mut at = rand::rng().random_range(0..total);
    for (action, weight) in MIX {
        if at < *weight {
            return *action;
        }
        at -= weight;
    }
    MIX[0].0
}

/// Sends the mix at `rate` requests a second until `until`, with as many requests
/// of the ceiling Worker beside it; at most `in_flight` of each at once (a tick
/// beyond that is counted as shed, not queued). Returns once every request sent
/// has its answer.
pub async fn drive(world: Arc<World>, rate: f64, until: Instant, in_flight: usize, rush_every: Duration) {
    let ours = Arc::new(Semaphore::new(in_flight));
    let baseline = Arc::new(Semaphore::new(in_flight));
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut next_rush = Instant::now();
    while Instant::now() < until {
        tick.tick().await;
        if Instant::now() >= next_rush {
            next_rush += rush_every;
            let world = world.clone();
            tokio::spawn(async move { world.create_rush().await });
        }
        for (gate, ceiling) in [(&ours, false), (&baseline, true)] {
            if ceiling && world.ceiling.is_none() {
                continue;
            }
            let Ok(permit) = gate.clone().try_acquire_owned() else {
                world.outcomes.shed.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let world = world.clone();
            tokio::spawn(async move {
                if ceiling {
                    world.ceiling().await;
                } else {
                    world.act(choose()).await;
                }
                drop(permit);
            });
        }
    }
    for gate in [ours, baseline] {
        let _ = gate.acquire_many(in_flight as u32).await;
    }
}

/// What the mix sustains: `workers` clients sending it back to back for `probe`;
/// completed requests a second (the ceiling Worker is left alone meanwhile).
pub async fn capacity(world: Arc<World>, workers: usize, probe: Duration) -> f64 {
    let started = Instant::now();
    let done = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let (world, done) = (world.clone(), done.clone());
            tokio::spawn(async move {
                while started.elapsed() < probe {
                    world.act(choose()).await;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    futures::future::join_all(tasks).await;
    let rate = done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    world.stats.reset();
    rate
}
