//! `DropInventory`: one Durable Object per drop, the single authority on its stock.
//!
//! State lives in the object's SQLite database and, for speed, in memory as a
//! [`drops_shared::inventory::Inventory`]. A decision and all the writes it implies
//! (the hold, the idempotency record, the forward-queue entry) happen in one
//! synchronous turn with no `await` in between: the runtime runs nothing else in the
//! object meanwhile, and commits those writes together before any response leaves.
//!
//! Tables:
//! - `terms`: the drop's sale terms (one row).
//! - `holds`: every reservation and its state (`held`, `sold`, `released`); remaining
//!   stock is derived from it, never stored twice.
//! - `idempotency`: per (user, key) the request fingerprint and the answer given,
//!   replayed byte for byte for 24 h.
//! - `unforwarded`: reservations the origin has not acknowledged yet; the alarm
//!   retries them with backoff until it does.

use std::cell::{Cell, RefCell};
use std::collections::HashSet;

use drops_shared::api::{CreateOrderRequest, DropStatus, OrderCreated, OrderStatus, StockResponse};
use drops_shared::internal::{
    HoldOutcome, HoldSnapshot, HoldState, InternalRoute, InventorySnapshot, InventoryTerms,
    ReservationAck, ReservationHandoff,
};
use drops_shared::inventory::{Hold, HoldError, Inventory};
use drops_shared::problem::{ErrorCode, Problem};
use futures_util::future::{join_all, select, Either};
use serde::{Deserialize, Serialize};
use uuid::Uuid;
use worker::wasm_bindgen::JsValue;
use worker::{
    durable_object, Delay, Env, Method, Request, RequestInit, Response, SqlStorage,
    SqlStorageValue, State,
};

use crate::config::EdgeConfig;
use crate::http::{json, json_bytes, new_id, now_ms, problem_response, EdgeError, EdgeResult};
use crate::origin;

const BINDING: &str = "DROP_INVENTORY";
const IDEMPOTENCY_TTL_MS: i64 = 24 * 60 * 60 * 1000;
/// Unforwarded reservations retried per alarm run.
const RETRY_BATCH: usize = 100;
const RETRY_CONCURRENCY: usize = 10;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS terms (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  drop_id TEXT NOT NULL,
  body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS holds (
  reservation_id TEXT PRIMARY KEY,
  user_id TEXT NOT NULL,
  quantity INTEGER NOT NULL CHECK (quantity > 0),
  state TEXT NOT NULL CHECK (state IN ('held', 'sold', 'released')),
  expires_at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS idempotency (
  user_id TEXT NOT NULL,
  key TEXT NOT NULL,
  fingerprint TEXT NOT NULL,
  reservation_id TEXT NOT NULL,
  status INTEGER NOT NULL,
  body TEXT NOT NULL,
  created_at_ms INTEGER NOT NULL,
  PRIMARY KEY (user_id, key)
);
CREATE INDEX IF NOT EXISTS idempotency_by_age ON idempotency (created_at_ms);
CREATE TABLE IF NOT EXISTS unforwarded (
  reservation_id TEXT PRIMARY KEY,
  handoff TEXT NOT NULL,
  attempts INTEGER NOT NULL,
  next_attempt_ms INTEGER NOT NULL
);
";

/// What the Worker asks of the object on the buy path (after auth and validation).
#[derive(Debug, Serialize, Deserialize)]
pub struct ReserveCommand {
    pub user_id: Uuid,
    pub idempotency_key: String,
    pub quantity: u32,
}

/// Calls the inventory object of `drop_id` with a JSON body.
pub async fn call<T: Serialize>(
    env: &Env,
    drop_id: Uuid,
    method: Method,
    action: &str,
    body: Option<&T>,
) -> worker::Result<Response> {
    let bytes = match body {
        Some(b) => serde_json::to_vec(b).map_err(|e| worker::Error::RustError(e.to_string()))?,
        None => Vec::new(),
    };
    call_raw(env, method, format!("{drop_id}/{action}"), bytes).await
}

/// Calls an inventory object at `{drop_id}/{action}` with raw body bytes.
pub async fn call_raw(
    env: &Env,
    method: Method,
    path: String,
    body: Vec<u8>,
) -> worker::Result<Response> {
    let drop_id = path.split('/').next().unwrap_or_default().to_owned();
    let stub = env
        .durable_object(BINDING)?
        .id_from_name(&drop_id)?
        .get_stub()?;
    let mut init = RequestInit::new();
    init.with_method(method);
    if !body.is_empty() {
        init.with_body(Some(JsValue::from(worker::js_sys::Uint8Array::from(
            body.as_slice(),
        ))));
    }
    stub.fetch_with_request(Request::new_with_init(
        &format!("https://inventory/{path}"),
        &init,
    )?)
    .await
}

#[durable_object(alarm)]
pub struct DropInventory {
    state: State,
    env: Env,
    /// `None` until the origin has created this drop's inventory.
    inventory: RefCell<Option<Inventory>>,
    drop_id: Cell<Option<Uuid>>,
    /// (user, key) of reservations whose first answer is still being prepared.
    in_flight: RefCell<HashSet<(Uuid, String)>>,
    /// The alarm this instance has set, to avoid re-setting it on every request.
    alarm_at: Cell<Option<i64>>,
}

enum Decision {
    Replay {
        status: u16,
        body: String,
    },
    Fresh {
        body: OrderCreated,
        handoff: ReservationHandoff,
    },
}

#[derive(Deserialize)]
struct HoldRow {
    reservation_id: String,
    user_id: String,
    quantity: f64,
    state: String,
    expires_at_ms: f64,
}

#[derive(Deserialize)]
struct TermsRow {
    drop_id: String,
    body: String,
}

#[derive(Deserialize)]
struct IdempotencyRow {
    fingerprint: String,
    status: f64,
    body: String,
}

#[derive(Deserialize)]
struct UnforwardedRow {
    handoff: String,
    attempts: f64,
}

#[derive(Deserialize)]
struct MinRow {
    t: Option<f64>,
}

fn state_name(s: HoldState) -> &'static str {
    match s {
        HoldState::Held => "held",
        HoldState::Sold => "sold",
        HoldState::Released => "released",
    }
}

fn parse_state(s: &str) -> HoldState {
    match s {
        "sold" => HoldState::Sold,
        "released" => HoldState::Released,
        _ => HoldState::Held,
    }
}

fn text(v: impl ToString) -> SqlStorageValue {
    SqlStorageValue::String(v.to_string())
}

fn int(v: i64) -> SqlStorageValue {
    SqlStorageValue::Integer(v)
}

fn key_reused() -> Problem {
    Problem::new(
        ErrorCode::IdempotencyKeyReused,
        Some("this Idempotency-Key was used with a different request".into()),
    )
}

fn internal(msg: impl ToString) -> EdgeError {
    EdgeError::Worker(worker::Error::RustError(msg.to_string()))
}

impl DropInventory {
    fn sql(&self) -> SqlStorage {
        self.state.storage().sql()
    }

    /// Loads the inventory from SQLite (the source of truth for memory).
    fn load(&self) -> worker::Result<()> {
        let sql = self.sql();
        let terms: Vec<TermsRow> = sql
            .exec("SELECT drop_id, body FROM terms WHERE id = 1", None)?
            .to_array()?;
        let Some(row) = terms.into_iter().next() else {
            self.inventory.replace(None);
            return Ok(());
        };
        let terms: InventoryTerms =
            serde_json::from_str(&row.body).map_err(|e| worker::Error::RustError(e.to_string()))?;
        let holds: Vec<HoldRow> = sql
            .exec(
                "SELECT reservation_id, user_id, quantity, state, expires_at_ms FROM holds",
                None,
            )?
            .to_array()?;
        let holds = holds.into_iter().filter_map(|h| {
            Some((
                Uuid::parse_str(&h.reservation_id).ok()?,
                Hold {
                    user_id: Uuid::parse_str(&h.user_id).ok()?,
                    quantity: h.quantity as u32,
                    state: parse_state(&h.state),
                    expires_at_ms: h.expires_at_ms as i64,
                },
            ))
        });
        self.drop_id.set(Uuid::parse_str(&row.drop_id).ok());
        self.inventory
            .replace(Some(Inventory::restore(terms, holds)));
        Ok(())
    }

    /// After a failed write, memory may be ahead of storage: reload from storage.
    fn resync(&self) {
        if let Err(e) = self.load() {
            worker::console_error!("inventory reload failed: {e}");
            self.inventory.replace(None);
        }
    }

    /// Sets the alarm no later than `at_ms`.
    async fn alarm_by(&self, at_ms: i64) -> worker::Result<()> {
        if self.alarm_at.get().is_some_and(|t| t <= at_ms) {
            return Ok(());
        }
        let at = at_ms.max(now_ms() + 10);
        // An i64 would be read as an offset from now: pass the moment itself.
        let moment = worker::js_sys::Date::new(&JsValue::from_f64(at as f64));
        self.state
            .storage()
            .set_alarm(worker::ScheduledTime::new(moment))
            .await?;
        self.alarm_at.set(Some(at_ms));
        Ok(())
    }

    fn stock(&self) -> EdgeResult {
        let inv = self.inventory.borrow();
        let inv = inv.as_ref().ok_or(ErrorCode::NotFound)?;
        let t = inv.terms();
        let now = crate::http::now_utc();
        json(
            200,
            &StockResponse {
                total: inv.total(),
                remaining: inv.remaining(),
                status: DropStatus::at(now, t.starts_at, t.ends_at, inv.remaining()),
            },
        )
    }

    /// The decision, in one synchronous turn.
    fn decide(&self, cmd: &ReserveCommand, now: i64, retry_after_ms: i64) -> EdgeResult<Decision> {
        let mut guard = self.inventory.borrow_mut();
        let inv = guard.as_mut().ok_or(ErrorCode::NotFound)?;
        let drop_id = self.drop_id.get().ok_or(ErrorCode::NotFound)?;
        let flight = (cmd.user_id, cmd.idempotency_key.clone());
        if self.in_flight.borrow().contains(&flight) {
            return Err(ErrorCode::IdempotencyKeyInProgress.into());
        }
        let fingerprint = serde_json::to_string(&CreateOrderRequest {
            quantity: cmd.quantity,
        })
        .map_err(internal)?;
        let sql = self.sql();
        let earlier: Vec<IdempotencyRow> = sql
            .exec(
                "SELECT fingerprint, status, body FROM idempotency WHERE user_id = ? AND key = ? AND created_at_ms > ?",
                vec![text(cmd.user_id), text(&cmd.idempotency_key), int(now - IDEMPOTENCY_TTL_MS)],
            )?
            .to_array()?;
        if let Some(row) = earlier.into_iter().next() {
            return if row.fingerprint == fingerprint {
                Ok(Decision::Replay {
                    status: row.status as u16,
                    body: row.body,
                })
            } else {
                Err(key_reused().into())
            };
        }

        let reservation_id = new_id();
        let hold = inv
            .reserve(reservation_id, cmd.user_id, cmd.quantity, now)
            .map_err(|r| r.to_problem())?;
        let terms = inv.terms();
        let amount = terms
            .price
            .times(cmd.quantity)
            .ok_or_else(|| internal("amount overflow"))?;
        let reserved_at = chrono::DateTime::from_timestamp_millis(now).unwrap_or_default();
        let expires_at =
            chrono::DateTime::from_timestamp_millis(hold.expires_at_ms).unwrap_or_default();
        let body = OrderCreated {
            order_id: reservation_id,
            drop_id,
            status: OrderStatus::Reserved,
            quantity: cmd.quantity,
            amount: amount.clone(),
            expires_at,
            payment: None,
        };
        let handoff = ReservationHandoff {
            reservation_id,
            drop_id,
            user_id: cmd.user_id,
            idempotency_key: cmd.idempotency_key.clone(),
            quantity: cmd.quantity,
            amount,
            reserved_at,
            expires_at,
        };
        let written = (|| -> worker::Result<()> {
            let body_json = serde_json::to_string(&body)
                .map_err(|e| worker::Error::RustError(e.to_string()))?;
            let handoff_json = serde_json::to_string(&handoff)
                .map_err(|e| worker::Error::RustError(e.to_string()))?;
            sql.exec(
                "INSERT INTO holds (reservation_id, user_id, quantity, state, expires_at_ms) VALUES (?, ?, ?, 'held', ?)",
                vec![text(reservation_id), text(cmd.user_id), int(cmd.quantity.into()), int(hold.expires_at_ms)],
            )?;
            sql.exec(
                "INSERT INTO idempotency (user_id, key, fingerprint, reservation_id, status, body, created_at_ms)
                 VALUES (?, ?, ?, ?, 201, ?, ?)",
                vec![
                    text(cmd.user_id),
                    text(&cmd.idempotency_key),
                    text(&fingerprint),
                    text(reservation_id),
                    text(body_json),
                    int(now),
                ],
            )?;
            sql.exec(
                "INSERT INTO unforwarded (reservation_id, handoff, attempts, next_attempt_ms) VALUES (?, ?, 0, ?)",
                vec![text(reservation_id), text(handoff_json), int(now + retry_after_ms)],
            )?;
            Ok(())
        })();
        drop(guard);
        if let Err(e) = written {
            self.resync();
            return Err(e.into());
        }
        self.in_flight.borrow_mut().insert(flight);
        Ok(Decision::Fresh { body, handoff })
    }

    async fn reserve(&self, mut req: Request) -> EdgeResult {
        let cmd: ReserveCommand = req.json().await?;
        let cfg = EdgeConfig::from_env(&self.env)?;
        let now = now_ms();
        let timeout = cfg.forward_timeout_ms as i64;
        let (mut body, handoff) = match self.decide(&cmd, now, timeout + 1_000)? {
            Decision::Replay { status, body } => {
                let resp = json_bytes(status, body.into_bytes())?;
                resp.headers().set("idempotent-replayed", "true")?;
                return Ok(resp);
            }
            Decision::Fresh { body, handoff } => (body, handoff),
        };
        let flight = (cmd.user_id, cmd.idempotency_key.clone());
        let outcome = async {
            self.alarm_by(now + timeout + 1_000).await?;
            let forwarded = select(
                Box::pin(forward(&cfg, &handoff)),
                Box::pin(Delay::from(std::time::Duration::from_millis(
                    cfg.forward_timeout_ms,
                ))),
            )
            .await;
            match forwarded {
                Either::Left((Forwarded::Acknowledged(ack), _)) => {
                    body.payment = ack.payment;
                    let body_json = serde_json::to_string(&body).map_err(internal)?;
                    let sql = self.sql();
                    sql.exec(
                        "UPDATE idempotency SET body = ? WHERE user_id = ? AND key = ?",
                        vec![
                            text(&body_json),
                            text(cmd.user_id),
                            text(&cmd.idempotency_key),
                        ],
                    )?;
                    sql.exec(
                        "DELETE FROM unforwarded WHERE reservation_id = ?",
                        vec![text(handoff.reservation_id)],
                    )?;
                }
                Either::Left((Forwarded::KeyReused, _)) => {
                    self.void(handoff.reservation_id)?;
                    return Err(key_reused().into());
                }
                Either::Left((Forwarded::Failed(why), _)) => {
                    worker::console_warn!("forward of {} failed: {why}", handoff.reservation_id)
                }
                Either::Right(_) => {}
            }
            EdgeResult::<()>::Ok(())
        }
        .await;
        self.in_flight.borrow_mut().remove(&flight);
        match outcome {
            Err(EdgeError::Problem(p)) => Err(p.into()),
            Err(EdgeError::Worker(e)) => {
                // The reservation stands: the alarm forwards it later.
                worker::console_warn!("after reserving {}: {e}", handoff.reservation_id);
                json(201, &body)
            }
            Ok(()) => json(201, &body),
        }
    }

    fn upsert_terms(&self, drop_id: Uuid, terms: InventoryTerms) -> EdgeResult {
        if terms.total == 0 || terms.max_per_user == 0 || terms.ends_at <= terms.starts_at {
            return Err(Problem::new(
                ErrorCode::InvalidRequest,
                Some("inconsistent inventory terms".into()),
            )
            .into());
        }
        if self.drop_id.get().is_some_and(|d| d != drop_id) {
            return Err(ErrorCode::Conflict.into());
        }
        let mut guard = self.inventory.borrow_mut();
        match guard.as_mut() {
            Some(inv) => inv.set_terms(terms.clone()).map_err(|c| {
                Problem::new(
                    ErrorCode::Conflict,
                    Some(format!(
                        "stock cannot go below the {} units already held or sold",
                        c.committed
                    )),
                )
            })?,
            None => *guard = Some(Inventory::new(terms.clone())),
        }
        drop(guard);
        let body = serde_json::to_string(&terms).map_err(internal)?;
        let written = self.sql().exec(
            "INSERT OR REPLACE INTO terms (id, drop_id, body) VALUES (1, ?, ?)",
            vec![text(drop_id), text(body)],
        );
        if let Err(e) = written {
            self.resync();
            return Err(e.into());
        }
        self.drop_id.set(Some(drop_id));
        self.snapshot()
    }

    fn snapshot(&self) -> EdgeResult {
        let inv = self.inventory.borrow();
        let inv = inv.as_ref().ok_or(ErrorCode::NotFound)?;
        #[derive(Deserialize)]
        struct IdRow {
            reservation_id: String,
        }
        let unforwarded: Vec<IdRow> = self
            .sql()
            .exec("SELECT reservation_id FROM unforwarded", None)?
            .to_array()?;
        let snapshot = InventorySnapshot {
            drop_id: self.drop_id.get().ok_or(ErrorCode::NotFound)?,
            terms: inv.terms().clone(),
            remaining: inv.remaining(),
            held: inv.held(),
            sold: inv.sold(),
            holds: inv
                .holds()
                .map(|(id, h)| HoldSnapshot {
                    reservation_id: *id,
                    user_id: h.user_id,
                    quantity: h.quantity,
                    state: h.state,
                    expires_at: chrono::DateTime::from_timestamp_millis(h.expires_at_ms)
                        .unwrap_or_default(),
                })
                .collect(),
            unforwarded: unforwarded
                .iter()
                .filter_map(|r| Uuid::parse_str(&r.reservation_id).ok())
                .collect(),
        };
        json(200, &snapshot)
    }

    /// Sells or releases a hold; repeated calls answer the same without changing anything.
    fn move_hold(&self, reservation_id: Uuid, sell: bool) -> EdgeResult {
        let mut guard = self.inventory.borrow_mut();
        let inv = guard.as_mut().ok_or(ErrorCode::NotFound)?;
        let moved = if sell {
            inv.sell(reservation_id)
        } else {
            inv.release(reservation_id)
        };
        let remaining = inv.remaining();
        drop(guard);
        let transition = moved.map_err(|e| match e {
            HoldError::NotFound => Problem::new(ErrorCode::NotFound, Some("no such hold".into())),
            HoldError::AlreadyReleased => Problem::new(
                ErrorCode::Conflict,
                Some("the hold was already released".into()),
            ),
            HoldError::AlreadySold => Problem::new(
                ErrorCode::Conflict,
                Some("the hold was already sold".into()),
            ),
        })?;
        if transition.changed {
            let written = self.sql().exec(
                "UPDATE holds SET state = ? WHERE reservation_id = ?",
                vec![text(state_name(transition.state)), text(reservation_id)],
            );
            if let Err(e) = written {
                self.resync();
                return Err(e.into());
            }
        }
        json(
            200,
            &HoldOutcome {
                reservation_id,
                state: transition.state,
                changed: transition.changed,
                remaining,
            },
        )
    }

    async fn route(&self, mut req: Request) -> EdgeResult {
        let path = req.path();
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let Some(drop_id) = segments.first().and_then(|s| Uuid::parse_str(s).ok()) else {
            return Err(ErrorCode::NotFound.into());
        };
        match (req.method(), &segments[1..]) {
            (Method::Post, ["reserve"]) => self.reserve(req).await,
            (Method::Get, ["stock"]) => self.stock(),
            (Method::Put, ["terms"]) => {
                let bytes = req.bytes().await?;
                let terms: InventoryTerms = drops_shared::json::from_slice(&bytes)?;
                self.upsert_terms(drop_id, terms)
            }
            (Method::Get, ["snapshot"]) => self.snapshot(),
            (Method::Post, ["holds", id, action]) => {
                let id = Uuid::parse_str(id).map_err(|_| ErrorCode::NotFound)?;
                self.move_hold(id, *action == "sell")
            }
            _ => Err(ErrorCode::NotFound.into()),
        }
    }

    /// Retries due reservations the origin has not acknowledged. One probe first:
    /// if the origin is still down, every due entry backs off without a request each.
    async fn retry_forwards(&self, cfg: &EdgeConfig, now: i64) -> worker::Result<()> {
        let due: Vec<UnforwardedRow> = self
            .sql()
            .exec(
                "SELECT handoff, attempts FROM unforwarded WHERE next_attempt_ms <= ? ORDER BY next_attempt_ms LIMIT ?",
                vec![int(now), int(RETRY_BATCH as i64)],
            )?
            .to_array()?;
        let due: Vec<(ReservationHandoff, u32)> = due
            .into_iter()
            .filter_map(|r| Some((serde_json::from_str(&r.handoff).ok()?, r.attempts as u32)))
            .collect();
        let Some((probe, rest)) = due.split_first() else {
            return Ok(());
        };
        if !self.settle_forward(cfg, probe, now).await? {
            for (handoff, attempts) in rest {
                self.back_off(cfg, handoff.reservation_id, *attempts, now)?;
            }
            return Ok(());
        }
        for chunk in rest.chunks(RETRY_CONCURRENCY) {
            join_all(
                chunk
                    .iter()
                    .map(|entry| self.settle_forward(cfg, entry, now)),
            )
            .await;
        }
        Ok(())
    }

    /// Forwards one queued reservation; true when the origin acknowledged it.
    async fn settle_forward(
        &self,
        cfg: &EdgeConfig,
        entry: &(ReservationHandoff, u32),
        now: i64,
    ) -> worker::Result<bool> {
        let (handoff, attempts) = entry;
        match forward(cfg, handoff).await {
            Forwarded::Acknowledged(_) => {
                self.sql().exec(
                    "DELETE FROM unforwarded WHERE reservation_id = ?",
                    vec![text(handoff.reservation_id)],
                )?;
                Ok(true)
            }
            Forwarded::KeyReused => {
                worker::console_warn!(
                    "reservation {} reused another order's key; voided",
                    handoff.reservation_id
                );
                self.void(handoff.reservation_id)?;
                Ok(true)
            }
            Forwarded::Failed(why) => {
                worker::console_warn!(
                    "forward of {} failed (attempt {}): {why}",
                    handoff.reservation_id,
                    attempts + 1
                );
                self.back_off(cfg, handoff.reservation_id, *attempts, now)?;
                Ok(false)
            }
        }
    }

    /// Undoes a reservation the origin refused: its units return, its records go.
    fn void(&self, reservation_id: Uuid) -> worker::Result<()> {
        let released = self
            .inventory
            .borrow_mut()
            .as_mut()
            .map(|inv| inv.release(reservation_id));
        let sql = self.sql();
        if let Some(Ok(t)) = released {
            if t.changed {
                sql.exec(
                    "UPDATE holds SET state = 'released' WHERE reservation_id = ?",
                    vec![text(reservation_id)],
                )?;
            }
        }
        sql.exec(
            "DELETE FROM unforwarded WHERE reservation_id = ?",
            vec![text(reservation_id)],
        )?;
        sql.exec(
            "DELETE FROM idempotency WHERE reservation_id = ?",
            vec![text(reservation_id)],
        )?;
        Ok(())
    }

    fn back_off(
        &self,
        cfg: &EdgeConfig,
        reservation_id: Uuid,
        attempts: u32,
        now: i64,
    ) -> worker::Result<()> {
        let delay = (500i64 << attempts.min(16)).min(cfg.forward_retry_max_ms as i64);
        self.sql().exec(
            "UPDATE unforwarded SET attempts = ?, next_attempt_ms = ? WHERE reservation_id = ?",
            vec![
                int(i64::from(attempts) + 1),
                int(now + delay),
                text(reservation_id),
            ],
        )?;
        Ok(())
    }

    /// The next moment the alarm has work: a retry, or an idempotency record to drop.
    fn next_alarm(&self) -> worker::Result<Option<i64>> {
        let sql = self.sql();
        let retry: Vec<MinRow> = sql
            .exec("SELECT MIN(next_attempt_ms) AS t FROM unforwarded", None)?
            .to_array()?;
        let sweep: Vec<MinRow> = sql
            .exec("SELECT MIN(created_at_ms) AS t FROM idempotency", None)?
            .to_array()?;
        let retry = retry.first().and_then(|r| r.t).map(|t| t as i64);
        let sweep = sweep
            .first()
            .and_then(|r| r.t)
            .map(|t| t as i64 + IDEMPOTENCY_TTL_MS);
        Ok(retry.into_iter().chain(sweep).min())
    }
}

/// What became of handing a reservation to the origin.
enum Forwarded {
    /// The origin has the order; the answer carries the payment handle.
    Acknowledged(ReservationAck),
    /// The buyer had used this idempotency key for an order of another drop.
    KeyReused,
    /// Not now (origin down, slow or failing): retry later.
    Failed(String),
}

async fn forward(cfg: &EdgeConfig, handoff: &ReservationHandoff) -> Forwarded {
    let attempt = async {
        let body =
            serde_json::to_vec(handoff).map_err(|e| worker::Error::RustError(e.to_string()))?;
        let mut resp = origin::signed(cfg, InternalRoute::Reservations, &body).await?;
        let status = resp.status_code();
        if (200..300).contains(&status) {
            return Ok(Forwarded::Acknowledged(resp.json().await?));
        }
        let problem: Option<Problem> = resp.json().await.ok();
        if problem.is_some_and(|p| p.code == ErrorCode::IdempotencyKeyReused.as_str()) {
            return Ok(Forwarded::KeyReused);
        }
        Ok(Forwarded::Failed(format!("origin answered {status}")))
    };
    attempt
        .await
        .unwrap_or_else(|e: worker::Error| Forwarded::Failed(e.to_string()))
}

impl worker::DurableObject for DropInventory {
    fn new(state: State, env: Env) -> Self {
        let object = Self {
            state,
            env,
            inventory: RefCell::new(None),
            drop_id: Cell::new(None),
            in_flight: RefCell::new(HashSet::new()),
            alarm_at: Cell::new(None),
        };
        let ready = object
            .sql()
            .exec(SCHEMA, None)
            .map(|_| ())
            .and_then(|_| object.load());
        if let Err(e) = ready {
            worker::console_error!("inventory object could not load: {e}");
        }
        object
    }

    async fn fetch(&self, req: Request) -> worker::Result<Response> {
        match self.route(req).await {
            Ok(resp) => Ok(resp),
            Err(EdgeError::Problem(p)) => problem_response(&p),
            Err(EdgeError::Worker(e)) => {
                worker::console_error!("inventory object error: {e}");
                problem_response(&ErrorCode::Internal.into())
            }
        }
    }

    async fn alarm(&self) -> worker::Result<Response> {
        self.alarm_at.set(None);
        let now = now_ms();
        self.sql().exec(
            "DELETE FROM idempotency WHERE created_at_ms <= ?",
            vec![int(now - IDEMPOTENCY_TTL_MS)],
        )?;
        match EdgeConfig::from_env(&self.env) {
            Ok(cfg) => self.retry_forwards(&cfg, now).await?,
            Err(_) => worker::console_error!("edge settings missing; forwards wait"),
        }
        if let Some(next) = self.next_alarm()? {
            self.alarm_by(next).await?;
        }
        Response::empty()
    }
}
