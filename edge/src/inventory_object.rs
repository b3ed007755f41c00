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
//! - `outbound`: messages the origin has not acknowledged yet (handed-over
//!   reservations, expiry notices); the alarm retries them with backoff until it does
//!   (see [`crate::outbound`]).
//!
//! The alarm also expires holds that ran out unpaid and sweeps idempotency records
//! older than 24 h.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};

use drops_shared::api::{CreateOrderRequest, DropStatus, OrderCreated, OrderStatus, StockResponse};
use drops_shared::internal::{
    HoldAction, HoldExpiry, HoldOutcome, HoldSnapshot, HoldState, InventorySnapshot, InventoryTerms, ReservationHandoff,
};
use drops_shared::inventory::{Hold, HoldError, Inventory, Transition};
use drops_shared::problem::{ErrorCode, Problem};
use futures_util::future::{join_all, select, Either};
use serde::{Deserialize, Serialize};
use uuid::Uuid;
use worker::wasm_bindgen::JsValue;
use worker::{durable_object, Delay, Env, Method, Request, RequestInit, Response, SqlStorage, State};

use crate::config::EdgeConfig;
use crate::http::{json, json_bytes, new_id, now_ms, problem_response, EdgeError, EdgeResult};
use crate::outbound::{self, Delivery, Kind};
use crate::sqlite::{int, text, MinRow};

const BINDING: &str = "DROP_INVENTORY";
const IDEMPOTENCY_TTL_MS: i64 = 24 * 60 * 60 * 1000;
/// Above this many buyers the sold-out shortcut at the Worker is not used.
const MAX_HOLDERS_SHARED: usize = 10_000;

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
-- Messages for the origin not yet acknowledged: handed-over reservations and
-- expiry notices. The alarm delivers them, reservations before expiries.
CREATE TABLE IF NOT EXISTS outbound (
  reservation_id TEXT NOT NULL,
  kind TEXT NOT NULL CHECK (kind IN ('reservation', 'expiry')),
  body TEXT NOT NULL,
  attempts INTEGER NOT NULL,
  next_attempt_ms INTEGER NOT NULL,
  PRIMARY KEY (reservation_id, kind)
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
pub async fn call_raw(env: &Env, method: Method, path: String, body: Vec<u8>) -> worker::Result<Response> {
    let drop_id = path.split('/').next().unwrap_or_default().to_owned();
    let stub = env.durable_object(BINDING)?.id_from_name(&drop_id)?.get_stub()?;
    let mut init = RequestInit::new();
    init.with_method(method);
    if !body.is_empty() {
        init.with_body(Some(JsValue::from(worker::js_sys::Uint8Array::from(body.as_slice()))));
    }
    stub.fetch_with_request(Request::new_with_init(&format!("https://inventory/{path}"), &init)?).await
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
    /// Buy attempts decided since this instance loaded.
    decisions: Cell<u64>,
}

enum Decision {
    Replay { status: u16, body: String },
    Fresh { body: OrderCreated, handoff: ReservationHandoff },
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
struct KeyRow {
    reservation_id: String,
    key: String,
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

fn key_reused() -> Problem {
    Problem::new(ErrorCode::IdempotencyKeyReused, Some("this Idempotency-Key was used with a different request".into()))
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
        let terms: Vec<TermsRow> = sql.exec("SELECT drop_id, body FROM terms WHERE id = 1", None)?.to_array()?;
        let Some(row) = terms.into_iter().next() else {
            self.inventory.replace(None);
            return Ok(());
        };
        let terms: InventoryTerms =
            serde_json::from_str(&row.body).map_err(|e| worker::Error::RustError(e.to_string()))?;
        let holds: Vec<HoldRow> =
            sql.exec("SELECT reservation_id, user_id, quantity, state, expires_at_ms FROM holds", None)?.to_array()?;
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
        self.inventory.replace(Some(Inventory::restore(terms, holds)));
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
        self.state.storage().set_alarm(worker::ScheduledTime::new(moment)).await?;
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
        self.decisions.set(self.decisions.get() + 1);
        let mut guard = self.inventory.borrow_mut();
        let inv = guard.as_mut().ok_or(ErrorCode::NotFound)?;
        let drop_id = self.drop_id.get().ok_or(ErrorCode::NotFound)?;
        let flight = (cmd.user_id, cmd.idempotency_key.clone());
        if self.in_flight.borrow().contains(&flight) {
            return Err(ErrorCode::IdempotencyKeyInProgress.into());
        }
        let fingerprint = serde_json::to_string(&CreateOrderRequest { quantity: cmd.quantity }).map_err(internal)?;
        let sql = self.sql();
        let earlier: Vec<IdempotencyRow> = sql
            .exec(
                "SELECT fingerprint, status, body FROM idempotency WHERE user_id = ? AND key = ? AND created_at_ms > ?",
                vec![text(cmd.user_id), text(&cmd.idempotency_key), int(now - IDEMPOTENCY_TTL_MS)],
            )?
            .to_array()?;
        if let Some(row) = earlier.into_iter().next() {
            return if row.fingerprint == fingerprint {
                Ok(Decision::Replay { status: row.status as u16, body: row.body })
            } else {
                Err(key_reused().into())
            };
        }

        let reservation_id = new_id();
        let hold = inv.reserve(reservation_id, cmd.user_id, cmd.quantity, now).map_err(|r| r.to_problem())?;
        let terms = inv.terms();
        let amount = terms.price.times(cmd.quantity).ok_or_else(|| internal("amount overflow"))?;
        let reserved_at = chrono::DateTime::from_timestamp_millis(now).unwrap_or_default();
        let expires_at = chrono::DateTime::from_timestamp_millis(hold.expires_at_ms).unwrap_or_default();
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
            let body_json = serde_json::to_string(&body).map_err(|e| worker::Error::RustError(e.to_string()))?;
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
            outbound::enqueue(&sql, reservation_id, Kind::Reservation, &handoff, now + retry_after_ms)?;
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
                Box::pin(outbound::forward(&cfg, &handoff)),
                Box::pin(Delay::from(std::time::Duration::from_millis(cfg.forward_timeout_ms))),
            )
            .await;
            match forwarded {
                Either::Left((Delivery::Acknowledged(Some(ack)), _)) => {
                    body.payment = ack.payment;
                    let body_json = serde_json::to_string(&body).map_err(internal)?;
                    let sql = self.sql();
                    sql.exec(
                        "UPDATE idempotency SET body = ? WHERE user_id = ? AND key = ?",
                        vec![text(&body_json), text(cmd.user_id), text(&cmd.idempotency_key)],
                    )?;
                    outbound::settled(&sql, handoff.reservation_id, Kind::Reservation)?;
                }
                Either::Left((Delivery::KeyReused, _)) => {
                    self.void(handoff.reservation_id)?;
                    return Err(key_reused().into());
                }
                Either::Left((Delivery::Acknowledged(None) | Delivery::Failed(_), _)) => {
                    worker::console_warn!("forward of {} failed; the alarm retries it", handoff.reservation_id)
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
            return Err(Problem::new(ErrorCode::InvalidRequest, Some("inconsistent inventory terms".into())).into());
        }
        if self.drop_id.get().is_some_and(|d| d != drop_id) {
            return Err(ErrorCode::Conflict.into());
        }
        let mut guard = self.inventory.borrow_mut();
        match guard.as_mut() {
            Some(inv) => inv.set_terms(terms.clone()).map_err(|c| {
                Problem::new(
                    ErrorCode::Conflict,
                    Some(format!("stock cannot go below the {} units already held or sold", c.committed)),
                )
            })?,
            None => *guard = Some(Inventory::new(terms.clone())),
        }
        drop(guard);
        let body = serde_json::to_string(&terms).map_err(internal)?;
        let written = self
            .sql()
            .exec("INSERT OR REPLACE INTO terms (id, drop_id, body) VALUES (1, ?, ?)", vec![text(drop_id), text(body)]);
        if let Err(e) = written {
            self.resync();
            return Err(e.into());
        }
        self.drop_id.set(Some(drop_id));
        self.snapshot()
    }

    /// Who holds units, so the Worker can answer everyone else "sold out" by itself
    /// (and still send a holder's replay here). `null` when too many to be worth it.
    fn holders(&self) -> EdgeResult {
        let inv = self.inventory.borrow();
        let inv = inv.as_ref().ok_or(ErrorCode::NotFound)?;
        let holders: Vec<&Uuid> = inv.holders().take(MAX_HOLDERS_SHARED + 1).collect();
        if holders.len() > MAX_HOLDERS_SHARED {
            return json(200, &serde_json::Value::Null);
        }
        json(200, &holders)
    }

    fn snapshot(&self) -> EdgeResult {
        let inv = self.inventory.borrow();
        let inv = inv.as_ref().ok_or(ErrorCode::NotFound)?;
        let sql = self.sql();
        let keys: HashMap<String, String> = sql
            .exec("SELECT reservation_id, key FROM idempotency", None)?
            .to_array::<KeyRow>()?
            .into_iter()
            .map(|r| (r.reservation_id, r.key))
            .collect();
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
                    expires_at: chrono::DateTime::from_timestamp_millis(h.expires_at_ms).unwrap_or_default(),
                    idempotency_key: keys.get(&id.to_string()).cloned(),
                })
                .collect(),
            unforwarded: outbound::pending(&sql, Kind::Reservation)?,
            decisions: self.decisions.get(),
        };
        json(200, &snapshot)
    }

    /// Moves a hold on the origin's word. Repeated calls change nothing; a sell of a
    /// released hold (or a release of a sold one) answers the state the hold is in.
    fn move_hold(&self, reservation_id: Uuid, action: HoldAction) -> EdgeResult {
        let mut guard = self.inventory.borrow_mut();
        let inv = guard.as_mut().ok_or(ErrorCode::NotFound)?;
        let moved = match action {
            HoldAction::Sell => inv.sell(reservation_id),
            HoldAction::Release => inv.release(reservation_id),
            HoldAction::Reinstate => inv.reinstate(reservation_id),
        };
        let remaining = inv.remaining();
        drop(guard);
        let transition = match moved {
            Ok(t) => t,
            Err(HoldError::AlreadyReleased) => Transition { state: HoldState::Released, changed: false },
            Err(HoldError::AlreadySold) => Transition { state: HoldState::Sold, changed: false },
            Err(HoldError::NotFound) => {
                return Err(Problem::new(ErrorCode::NotFound, Some("no such hold".into())).into())
            }
            Err(HoldError::SoldOut) => return Err(ErrorCode::SoldOut.into()),
            Err(HoldError::LimitReached) => return Err(ErrorCode::PurchaseLimitReached.into()),
        };
        if transition.changed {
            if let Err(e) = self.persist_state(reservation_id, transition.state) {
                self.resync();
                return Err(e.into());
            }
        }
        json(200, &HoldOutcome { reservation_id, state: transition.state, changed: transition.changed, remaining })
    }

    fn persist_state(&self, reservation_id: Uuid, state: HoldState) -> worker::Result<()> {
        self.sql().exec(
            "UPDATE holds SET state = ? WHERE reservation_id = ?",
            vec![text(state_name(state)), text(reservation_id)],
        )?;
        Ok(())
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
            (Method::Get, ["holders"]) => self.holders(),
            (Method::Post, ["holds", id, action]) => {
                let id = Uuid::parse_str(id).map_err(|_| ErrorCode::NotFound)?;
                let action = match *action {
                    "sell" => HoldAction::Sell,
                    "release" => HoldAction::Release,
                    "reinstate" => HoldAction::Reinstate,
                    _ => return Err(ErrorCode::NotFound.into()),
                };
                self.move_hold(id, action)
            }
            _ => Err(ErrorCode::NotFound.into()),
        }
    }

    /// Returns the units of holds that ran out unpaid, and queues a notice for the
    /// origin for each, in one synchronous turn.
    fn expire_holds(&self, now: i64) -> worker::Result<()> {
        let Some(drop_id) = self.drop_id.get() else { return Ok(()) };
        let mut guard = self.inventory.borrow_mut();
        let Some(inv) = guard.as_mut() else { return Ok(()) };
        let due = inv.expired_holds(now);
        for id in &due {
            inv.release(*id).map_err(|e| worker::Error::RustError(format!("expiring {id}: {e:?}")))?;
        }
        drop(guard);
        let expired_at = chrono::DateTime::from_timestamp_millis(now).unwrap_or_default();
        let written = due.iter().try_for_each(|id| {
            self.persist_state(*id, HoldState::Released)?;
            outbound::enqueue(&self.sql(), *id, Kind::Expiry, &HoldExpiry { drop_id, expired_at }, now)
        });
        if written.is_err() {
            self.resync();
        }
        written
    }

    /// Undoes a reservation the origin refused: its units return, its records go.
    fn void(&self, reservation_id: Uuid) -> worker::Result<()> {
        let released = self.inventory.borrow_mut().as_mut().map(|inv| inv.release(reservation_id));
        if let Some(Ok(t)) = released {
            if t.changed {
                self.persist_state(reservation_id, HoldState::Released)?;
            }
        }
        let sql = self.sql();
        outbound::settled(&sql, reservation_id, Kind::Reservation)?;
        sql.exec("DELETE FROM idempotency WHERE reservation_id = ?", vec![text(reservation_id)])?;
        Ok(())
    }

    /// Delivers what the origin has not acknowledged yet. One probe first: if the
    /// origin is still down, every due message backs off without a request each.
    async fn deliver_outbound(&self, cfg: &EdgeConfig, now: i64) -> worker::Result<()> {
        let due = outbound::due(&self.sql(), now)?;
        let Some((probe, rest)) = due.split_first() else { return Ok(()) };
        if !self.deliver(cfg, probe, now).await? {
            for message in rest {
                outbound::back_off(&self.sql(), message, now, cfg.forward_retry_max_ms)?;
            }
            return Ok(());
        }
        for chunk in rest.chunks(outbound::CONCURRENCY) {
            join_all(chunk.iter().map(|m| self.deliver(cfg, m, now))).await;
        }
        Ok(())
    }

    /// Delivers one message; true when the origin took it.
    async fn deliver(&self, cfg: &EdgeConfig, message: &outbound::Message, now: i64) -> worker::Result<bool> {
        match outbound::send(cfg, message).await {
            Delivery::Acknowledged(_) => {
                outbound::settled(&self.sql(), message.reservation_id, message.kind)?;
                Ok(true)
            }
            Delivery::KeyReused => {
                worker::console_warn!("reservation {} reused another order's key; voided", message.reservation_id);
                self.void(message.reservation_id)?;
                Ok(true)
            }
            Delivery::Failed(why) => {
                worker::console_warn!(
                    "delivery of {} failed (attempt {}): {why}",
                    message.reservation_id,
                    message.attempts + 1
                );
                outbound::back_off(&self.sql(), message, now, cfg.forward_retry_max_ms)?;
                Ok(false)
            }
        }
    }

    /// The next moment the alarm has work: a delivery, a hold running out, or an
    /// idempotency record to drop.
    fn next_alarm(&self) -> worker::Result<Option<i64>> {
        let sql = self.sql();
        let sweep: Vec<MinRow> = sql.exec("SELECT MIN(created_at_ms) AS t FROM idempotency", None)?.to_array()?;
        let sweep = sweep.first().and_then(|r| r.t).map(|t| t as i64 + IDEMPOTENCY_TTL_MS);
        let expiry = self.inventory.borrow().as_ref().and_then(Inventory::next_expiry_ms);
        Ok([outbound::next_attempt(&sql)?, sweep, expiry].into_iter().flatten().min())
    }
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
            decisions: Cell::new(0),
        };
        let ready = object.sql().exec(SCHEMA, None).map(|_| ()).and_then(|_| object.load());
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
        self.sql().exec("DELETE FROM idempotency WHERE created_at_ms <= ?", vec![int(now - IDEMPOTENCY_TTL_MS)])?;
        self.expire_holds(now)?;
        match EdgeConfig::from_env(&self.env) {
            Ok(cfg) => self.deliver_outbound(&cfg, now).await?,
            Err(_) => worker::console_error!("edge settings missing; deliveries wait"),
        }
        if let Some(next) = self.next_alarm()? {
            self.alarm_by(next).await?;
        }
        Response::empty()
    }
}
