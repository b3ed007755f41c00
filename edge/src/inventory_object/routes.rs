//! The inventory object's answer to each [`Command`]. The buy decision
//! ([`DropInventory::decide`]) is synchronous: stock, limit, window, idempotency
//! and every write it implies, in one turn; the buyer has the answer as soon as
//! those writes commit, and the reservation reaches the origin with the next
//! batch the alarm sends.

use drops_shared::api::{CreateOrderRequest, DropStatus, OrderCreated, OrderStatus, StockResponse};
use drops_shared::bloom::UserFilter;
use drops_shared::internal::{
    HoldAction, HoldOutcome, HoldSnapshot, HoldState, HoldsPage, InventorySnapshot, InventoryTerms, ReservationHandoff,
    HOLDS_PAGE,
};
use drops_shared::inventory::{Hold, HoldError, TermsChange, Transition};
use drops_shared::problem::{ErrorCode, Problem};
use uuid::Uuid;

use super::outbound;
use super::storage::{self, Purchase, IDEMPOTENCY_TTL_MS};
use super::{answer_key, Command, DropInventory, ReserveCommand, SoldOutMemo};
use crate::http::{json, json_bytes, new_id, now_ms, EdgeError, EdgeResult};

/// How long the first reservation of a batch waits for others before the alarm
/// hands them to the origin together.
const BATCH_WINDOW_MS: i64 = 100;

enum Decision {
    /// The first answer (a 201: refusals are not kept), byte for byte.
    Replay { body: String },
    /// The 201, as stored for replays: sent as these very bytes.
    Fresh { order_id: Uuid, answer: String },
}

fn key_reused() -> Problem {
    Problem::new(ErrorCode::IdempotencyKeyReused, Some("this Idempotency-Key was used with a different request".into()))
}

fn internal(msg: impl ToString) -> EdgeError {
    EdgeError::Worker(worker::Error::RustError(msg.to_string()))
}

/// What identifies a buy request behind its key: the same key with another body is refused.
pub(super) fn fingerprint(cmd: &ReserveCommand) -> String {
    serde_json::to_string(&CreateOrderRequest { quantity: cmd.quantity }).unwrap_or_default()
}

/// The buyer's answer and the origin's handoff for a hold just granted.
pub(super) fn receipt(
    drop_id: Uuid,
    reservation_id: Uuid,
    cmd: &ReserveCommand,
    hold: &Hold,
    terms: &InventoryTerms,
    now_ms: i64,
) -> Option<(OrderCreated, ReservationHandoff)> {
    let amount = terms.price.times(cmd.quantity)?;
    let reserved_at = chrono::DateTime::from_timestamp_millis(now_ms)?;
    let expires_at = chrono::DateTime::from_timestamp_millis(hold.expires_at_ms)?;
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
    Some((body, handoff))
}

impl DropInventory {
    pub(super) async fn dispatch(&self, drop_id: Uuid, command: Command) -> EdgeResult {
        match command {
            Command::Reserve(cmd) => self.reserve(cmd).await,
            Command::Stock => self.stock(),
            Command::PutTerms { terms } => self.put_terms(drop_id, terms),
            Command::Snapshot => self.snapshot(),
            Command::Holds { after, limit } => self.holds(after, limit),
            Command::SoldOutMemo => self.sold_out_memo(),
            Command::MoveHold { reservation_id, action } => self.move_hold(reservation_id, action),
            Command::RebuildAsV1 { fixture } => self.rebuild_as_v1(drop_id, fixture).await,
        }
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
    fn decide(&self, cmd: &ReserveCommand, now: i64) -> EdgeResult<Decision> {
        self.decisions.set(self.decisions.get() + 1);
        let mut guard = self.inventory.borrow_mut();
        let inv = guard.as_mut().ok_or(ErrorCode::NotFound)?;
        let drop_id = self.drop_id.get().ok_or(ErrorCode::NotFound)?;
        let fingerprint = fingerprint(cmd);
        let sql = self.sql();
        let answer_key = answer_key(cmd.user_id, &cmd.idempotency_key);
        if self.answered.borrow().contains(answer_key) {
            let since = now - IDEMPOTENCY_TTL_MS;
            if let Some(row) = storage::earlier_answer(&sql, cmd.user_id, &cmd.idempotency_key, since)? {
                return if row.fingerprint == fingerprint {
                    Ok(Decision::Replay { body: row.body })
                } else {
                    Err(key_reused().into())
                };
            }
        }

        let reservation_id = new_id();
        let hold = inv.reserve(reservation_id, cmd.user_id, cmd.quantity, now).map_err(|r| r.to_problem())?;
        let (body, handoff) = receipt(drop_id, reservation_id, cmd, &hold, inv.terms(), now)
            .ok_or_else(|| internal("the order's amount or times do not fit"))?;
        let (answer, handoff) = (serde_json::to_string(&body), serde_json::to_string(&handoff));
        let (answer, handoff) = (answer.map_err(internal)?, handoff.map_err(internal)?);
        let written = storage::insert_purchase(
            &sql,
            &Purchase {
                reservation_id,
                hold: &hold,
                key: &cmd.idempotency_key,
                fingerprint: &fingerprint,
                answer: &answer,
                handoff: &handoff,
                at_ms: now,
            },
        );
        drop(guard);
        if let Err(e) = written {
            self.resync();
            return Err(e.into());
        }
        self.answered.borrow_mut().insert(answer_key, now);
        Ok(Decision::Fresh { order_id: reservation_id, answer })
    }

    async fn reserve(&self, cmd: ReserveCommand) -> EdgeResult {
        let now = now_ms();
        match self.decide(&cmd, now)? {
            Decision::Replay { body } => {
                let resp = json_bytes(201, body.into_bytes())?;
                resp.headers().set("idempotent-replayed", "true")?;
                Ok(resp)
            }
            Decision::Fresh { order_id, answer } => {
                if let Err(e) = self.alarm_by(now + BATCH_WINDOW_MS).await {
                    // The reservation stands; the next request or alarm sets it.
                    worker::console_warn!("alarm not set after reserving {order_id}: {e}");
                }
                Ok(json_bytes(201, answer.into_bytes())?)
            }
        }
    }

    fn put_terms(&self, drop_id: Uuid, terms: InventoryTerms) -> EdgeResult {
        if terms.total == 0 || terms.max_per_user == 0 || terms.ends_at <= terms.starts_at {
            return Err(Problem::new(ErrorCode::InvalidRequest, Some("inconsistent inventory terms".into())).into());
        }
        if self.drop_id.get().is_some_and(|d| d != drop_id) {
            return Err(ErrorCode::Conflict.into());
        }
        let mut guard = self.inventory.borrow_mut();
        match guard.as_mut() {
            Some(inv) => match inv.set_terms(terms.clone()).map_err(|c| {
                Problem::new(
                    ErrorCode::Conflict,
                    Some(format!("stock cannot go below the {} units already held or sold", c.committed)),
                )
            })? {
                TermsChange::Applied => {}
                // A push that lost a race with a newer one: the snapshot shows the
                // terms in force, and nothing is written.
                TermsChange::Stale { .. } => {
                    drop(guard);
                    return self.snapshot();
                }
            },
            None => *guard = Some(drops_shared::inventory::Inventory::new(terms.clone())),
        }
        drop(guard);
        let sql = self.sql();
        if let Err(e) = storage::migrate(&sql).and_then(|_| storage::save_terms(&sql, drop_id, &terms)) {
            self.resync();
            return Err(e.into());
        }
        self.drop_id.set(Some(drop_id));
        self.snapshot()
    }

    /// What the Worker needs to answer "sold out" itself: the units that remain,
    /// and a compact set of every buyer who may replay a purchase (anyone with an
    /// answer recorded in the last 24 h), whom only this object may answer.
    fn sold_out_memo(&self) -> EdgeResult {
        let remaining = self.inventory.borrow().as_ref().ok_or(ErrorCode::NotFound)?.remaining();
        let replayers = storage::recent_buyers(&self.sql(), now_ms())?;
        json(200, &SoldOutMemo { remaining, replayers: UserFilter::of(&replayers) })
    }

    pub(super) fn snapshot(&self) -> EdgeResult {
        json(200, &self.inventory_snapshot()?)
    }

    pub(super) fn inventory_snapshot(&self) -> EdgeResult<InventorySnapshot> {
        let (holds, holds_after) = self.holds_page(None, HOLDS_PAGE)?;
        let inv = self.inventory.borrow();
        let inv = inv.as_ref().ok_or(ErrorCode::NotFound)?;
        let sql = self.sql();
        let snapshot = InventorySnapshot {
            drop_id: self.drop_id.get().ok_or(ErrorCode::NotFound)?,
            terms: inv.terms().clone(),
            remaining: inv.remaining(),
            held: inv.held(),
            sold: inv.sold(),
            holds,
            holds_after,
            unforwarded: outbound::pending_reservations(&sql)?,
            unreported_expiries: outbound::pending_expiries(&sql)?,
            decisions: self.decisions.get(),
        };
        Ok(snapshot)
    }

    /// At most `limit` holds after `after`, and where the next page starts.
    fn holds_page(&self, after: Option<Uuid>, limit: u32) -> EdgeResult<(Vec<HoldSnapshot>, Option<Uuid>)> {
        let inv = self.inventory.borrow();
        let inv = inv.as_ref().ok_or(ErrorCode::NotFound)?;
        let limit = limit.clamp(1, HOLDS_PAGE) as usize;
        let page: Vec<_> = inv.holds_after(after).take(limit + 1).collect();
        let more = page.len() > limit;
        let page = &page[..page.len().min(limit)];
        let (Some((first, _)), Some((last, _))) = (page.first(), page.last()) else { return Ok((Vec::new(), None)) };
        let keys = storage::keys_by_reservation(&self.sql(), **first, **last)?;
        let holds = page
            .iter()
            .map(|(id, h)| HoldSnapshot {
                reservation_id: **id,
                user_id: h.user_id,
                quantity: h.quantity,
                state: h.state,
                expires_at: chrono::DateTime::from_timestamp_millis(h.expires_at_ms).unwrap_or_default(),
                idempotency_key: keys.get(&id.to_string()).cloned(),
            })
            .collect();
        Ok((holds, more.then_some(**last)))
    }

    fn holds(&self, after: Uuid, limit: u32) -> EdgeResult {
        let (holds, next_after) = self.holds_page(Some(after), limit)?;
        json(200, &HoldsPage { holds, next_after })
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
            if let Err(e) = storage::set_hold_state(&self.sql(), reservation_id, transition.state) {
                self.resync();
                return Err(e.into());
            }
        }
        json(200, &HoldOutcome { reservation_id, state: transition.state, changed: transition.changed, remaining })
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use drops_shared::api::Money;

    use super::*;

    fn terms() -> InventoryTerms {
        InventoryTerms {
            total: 10,
            max_per_user: 2,
            starts_at: chrono::Utc.timestamp_opt(1_700_000_000, 0).unwrap(),
            ends_at: chrono::Utc.timestamp_opt(1_800_000_000, 0).unwrap(),
            price: Money { amount: 2_500, currency: "EUR".into() },
            hold_seconds: 600,
            version: 1,
        }
    }

    #[test]
    fn a_receipt_prices_the_hold_and_hands_over_what_the_buyer_was_told() {
        let cmd = ReserveCommand { user_id: Uuid::from_u128(1), idempotency_key: "key-12345".into(), quantity: 2 };
        let hold = Hold { user_id: cmd.user_id, quantity: 2, state: HoldState::Held, expires_at_ms: 1_750_000_600_000 };
        let (body, handoff) = receipt(Uuid::from_u128(9), Uuid::from_u128(5), &cmd, &hold, &terms(), 1_750_000_000_000)
            .expect("a receipt");
        assert_eq!(body.amount, Money { amount: 5_000, currency: "EUR".into() });
        assert_eq!((body.order_id, handoff.reservation_id), (Uuid::from_u128(5), Uuid::from_u128(5)));
        assert_eq!(body.expires_at, handoff.expires_at);
        assert_eq!(handoff.reserved_at.timestamp_millis(), 1_750_000_000_000);
        assert_eq!(handoff.idempotency_key, "key-12345");
        assert!(body.payment.is_none(), "the payment comes from the origin later");
        let pricey = InventoryTerms { price: Money { amount: i64::MAX / 2, currency: "EUR".into() }, ..terms() };
        let three = ReserveCommand { quantity: 3, ..cmd };
        assert!(receipt(Uuid::nil(), Uuid::nil(), &three, &hold, &pricey, 0).is_none(), "an overflowing amount");
    }

    #[test]
    fn the_fingerprint_names_the_quantity() {
        let a = ReserveCommand { user_id: Uuid::nil(), idempotency_key: "k".repeat(8), quantity: 1 };
        let b = ReserveCommand { quantity: 2, ..a.clone() };
        assert_ne!(fingerprint(&a), fingerprint(&b));
        assert_eq!(fingerprint(&a), fingerprint(&ReserveCommand { user_id: Uuid::from_u128(3), ..a.clone() }));
    }
}
