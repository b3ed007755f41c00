//! `DropInventory`: one Durable Object per drop, the single authority on its stock.
//! **This is where stock is decided**, with the rules in `drops_shared::inventory`.
//!
//! State lives in the object's SQLite database ([`storage`]) and, for speed, in
//! memory as a [`drops_shared::inventory::Inventory`]. A decision and the write it
//! implies (one row: the hold, the answer kept for replays, the handoff owed to the
//! origin) happen in one synchronous turn with no `await` in between: the runtime
//! runs nothing else in the object meanwhile, and commits the write before any
//! response leaves.
//!
//! - [`command`]: what the Worker asks of the object, one typed command per
//!   request, and the type each command is answered with.
//! - [`routes`]: the answer to each command (the buy decision among them).
//! - [`alarm`]: expiring holds, delivering what the origin has not acknowledged
//!   (see [`outbound`]), sweeping old idempotency records.
//! - [`outbound`]: the reservations and expiry notices owed to the origin, kept
//!   until it acknowledges them, and their delivery.
//! - [`storage`]: the SQLite schema and every read and write of it; [`sqlite`]
//!   its small value helpers.
//! - [`fixture`]: development only, a version 1 database to run the migration on.

mod alarm;
pub mod command;
mod fixture;
mod outbound;
mod routes;
mod sqlite;
mod storage;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use drops_shared::inventory::Inventory;
use drops_shared::problem::ErrorCode;
use uuid::Uuid;
use worker::wasm_bindgen::JsValue;
use worker::{durable_object, Env, Method, Request, RequestInit, Response, SqlStorage, State};

pub use command::{Command, ReserveCommand, SoldOutMemo};

use crate::config::INVENTORY_BINDING;
use crate::http::{problem_response, EdgeError};

/// Sends `command` to the inventory object of `drop_id`.
pub async fn call(env: &Env, drop_id: Uuid, command: &Command) -> worker::Result<Response> {
    let body = serde_json::to_vec(command).map_err(|e| worker::Error::RustError(e.to_string()))?;
    let stub = env.durable_object(INVENTORY_BINDING)?.id_from_name(&drop_id.to_string())?.get_stub()?;
    let headers = worker::Headers::new();
    headers.set(SENT_AT_HEADER, &crate::http::now_ms().to_string())?;
    let mut init = RequestInit::new();
    init.with_method(Method::Post)
        .with_headers(headers)
        .with_body(Some(JsValue::from(worker::js_sys::Uint8Array::from(body.as_slice()))));
    stub.fetch_with_request(Request::new_with_init(&format!("https://inventory/{drop_id}"), &init)?).await
}

/// When the Worker sent a command (unix ms): the object measures its backlog by
/// how long a command waited to be handled.
const SENT_AT_HEADER: &str = "x-drops-sent-at";

/// Whether a command that waited `waited_ms` for the object is refused rather than
/// decided: buys and stock reads, past `max_wait_ms`. A buyer would rather hear
/// "retry in a second" than wait in a queue that only grows; the origin's commands
/// (terms, holds, snapshots) and the sold-out memo always go through.
fn sheds(command: &Command, waited_ms: i64, max_wait_ms: i64) -> bool {
    matches!(command, Command::Reserve(_) | Command::Stock) && waited_ms > max_wait_ms
}

/// [`call`] for a public request: when the object cannot be reached (overloaded,
/// too many requests queued, reset while it restarted), the answer is 503
/// `overloaded` with `Retry-After`, at once, as when it sheds a command that waited
/// too long ([`sheds`]). A buy retried with the same key after one is decided once:
/// either the object never decided it, or it replays its answer.
pub async fn call_for_client(env: &Env, drop_id: Uuid, command: &Command) -> Result<Response, EdgeError> {
    call(env, drop_id, command).await.map_err(|err| {
        worker::console_warn!("inventory object {drop_id} unreachable: {err}");
        EdgeError::Problem(drops_shared::problem::Problem::new(
            ErrorCode::Overloaded,
            Some("this drop is busy; retry in a moment".into()),
        ))
    })
}

/// The in-memory key of a (user, idempotency key): a hash, so a collision only
/// costs a storage read, which tells the truth.
fn answer_key(user_id: Uuid, key: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    (user_id, key).hash(&mut hasher);
    hasher.finish()
}

/// When each (user, key) with a kept answer was answered, counted in [`crate::census`].
#[derive(Default)]
pub(super) struct AnsweredKeys(HashMap<u64, i64>);

impl AnsweredKeys {
    pub(super) fn contains(&self, key: u64) -> bool {
        self.0.contains_key(&key)
    }

    pub(super) fn insert(&mut self, key: u64, at_ms: i64) {
        if self.0.insert(key, at_ms).is_none() {
            crate::census::answers_held(1);
        }
    }

    /// Forgets the answers given at or before `cutoff_ms`.
    pub(super) fn forget_until(&mut self, cutoff_ms: i64) {
        let before = self.0.len();
        self.0.retain(|_, at| *at > cutoff_ms);
        crate::census::answers_held(self.0.len() as i64 - before as i64);
    }

    fn replace(&mut self, answers: impl IntoIterator<Item = (u64, i64)>) {
        let before = self.0.len();
        self.0 = answers.into_iter().collect();
        crate::census::answers_held(self.0.len() as i64 - before as i64);
    }
}

impl Drop for AnsweredKeys {
    fn drop(&mut self) {
        crate::census::answers_held(-(self.0.len() as i64));
    }
}

#[durable_object(alarm)]
pub struct DropInventory {
    state: State,
    env: Env,
    /// `None` until the origin has created this drop's inventory.
    inventory: RefCell<Option<Inventory>>,
    drop_id: Cell<Option<Uuid>>,
    /// When each (user, key) with a kept answer was answered, by [`answer_key`]: a
    /// fresh purchase is known to be fresh without reading storage.
    answered: RefCell<AnsweredKeys>,
    /// The alarm this instance has set, to avoid re-setting it on every request.
    alarm_at: Cell<Option<i64>>,
    /// Buy attempts decided since this instance loaded.
    decisions: Cell<u64>,
}

impl DropInventory {
    fn sql(&self) -> SqlStorage {
        self.state.storage().sql()
    }

    /// Loads the inventory from storage (the source of truth for memory).
    fn load(&self) -> worker::Result<()> {
        let sql = self.sql();
        let loaded = storage::load(&sql)?;
        self.drop_id.set(loaded.as_ref().map(|(id, _)| *id));
        self.inventory.replace(loaded.map(|(_, inv)| inv));
        let answered = storage::recent_answers(&sql, crate::http::now_ms())?;
        self.answered.borrow_mut().replace(answered.into_iter().map(|(user, key, at)| (answer_key(user, &key), at)));
        Ok(())
    }

    /// Opens the object's database as the instance starts: brings it to the
    /// current schema and loads it into memory. An object the origin never gave
    /// terms (a drop that does not exist, asked for by id) writes nothing: its
    /// schema comes with its first terms.
    fn open(&self) -> worker::Result<()> {
        self.alarm_at.set(None);
        self.decisions.set(0);
        let sql = self.sql();
        if storage::exists(&sql)? {
            storage::migrate(&sql)?;
            self.load()?;
        }
        Ok(())
    }

    /// After a failed write, memory may be ahead of storage: reload from storage.
    fn resync(&self) {
        if let Err(e) = self.load() {
            worker::console_error!("inventory reload failed: {e}");
            self.inventory.replace(None);
        }
    }

    async fn handle(&self, mut req: Request) -> Result<Response, EdgeError> {
        let drop_id = req.path().trim_start_matches('/').parse::<Uuid>().map_err(|_| ErrorCode::NotFound)?;
        let sent_at = req.headers().get(SENT_AT_HEADER)?.and_then(|v| v.parse::<i64>().ok());
        let command: Command = drops_shared::json::from_slice(&req.bytes().await?)?;
        if let Some(sent_at) = sent_at {
            let max_wait_ms = crate::config::EdgeConfig::get(&self.env)?.inventory_max_wait_ms;
            let waited_ms = crate::http::now_ms() - sent_at;
            if sheds(&command, waited_ms, max_wait_ms) {
                worker::console_warn!("drop {drop_id}: a command waited {waited_ms} ms; shed");
                return Err(drops_shared::problem::Problem::new(
                    ErrorCode::Overloaded,
                    Some("this drop is busy; retry in a moment".into()),
                )
                .into());
            }
        }
        self.dispatch(drop_id, command).await
    }
}

impl Drop for DropInventory {
    fn drop(&mut self) {
        crate::census::object_freed();
    }
}

impl worker::DurableObject for DropInventory {
    fn new(state: State, env: Env) -> Self {
        let object = Self {
            state,
            env,
            inventory: RefCell::new(None),
            drop_id: Cell::new(None),
            answered: RefCell::new(AnsweredKeys::default()),
            alarm_at: Cell::new(None),
            decisions: Cell::new(0),
        };
        crate::census::object_started();
        if let Err(e) = object.open() {
            worker::console_error!("inventory object could not load: {e}");
        }
        object
    }

    async fn fetch(&self, req: Request) -> worker::Result<Response> {
        match self.handle(req).await {
            Ok(resp) => Ok(resp),
            Err(EdgeError::Problem(p)) => problem_response(&p),
            Err(EdgeError::Worker(e)) => {
                worker::console_error!("inventory object error: {e}");
                problem_response(&ErrorCode::Internal.into())
            }
        }
    }

    async fn alarm(&self) -> worker::Result<Response> {
        self.run_alarm().await?;
        Response::empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_buys_and_stock_reads_that_waited_too_long_are_shed() {
        let buy = Command::Reserve(ReserveCommand {
            user_id: Uuid::from_u128(1),
            idempotency_key: "key-00000001".into(),
            quantity: 1,
        });
        assert!(!sheds(&buy, 1_000, 1_000), "at the limit: decided");
        assert!(sheds(&buy, 1_001, 1_000));
        assert!(sheds(&Command::Stock, 5_000, 1_000));
        assert!(!sheds(&Command::Stock, -20, 1_000), "a clock behind the Worker's is no wait");
        for origins in [Command::Snapshot, Command::SoldOutMemo] {
            assert!(!sheds(&origins, 60_000, 1_000), "{origins:?} always goes through");
        }
    }
}
