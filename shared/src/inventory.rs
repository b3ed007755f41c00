//! Where stock is decided: the rules of one drop's inventory, as a pure state machine.
//!
//! The edge's `DropInventory` Durable Object owns one [`Inventory`] per drop, keeps it in
//! memory, and persists every change this module makes in the same synchronous turn, so
//! no other request can observe or interleave with a half-made decision. Keeping the
//! rules here, free of any runtime, lets them be tested natively and property-tested.
//!
//! Invariant (DESIGN.md #1): `sold + held + remaining == total`, and `remaining` never
//! goes below zero. Invariant #3: a hold leaves `Held` exactly once, to `Sold` or
//! `Released`; a hold never comes back.

use std::collections::{BTreeMap, HashMap};

use uuid::Uuid;

use crate::internal::{HoldState, InventoryTerms};
use crate::problem::{ErrorCode, Problem};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hold {
    pub user_id: Uuid,
    pub quantity: u32,
    pub state: HoldState,
    pub expires_at_ms: i64,
}

/// Why a reservation was refused. Nothing changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    InvalidQuantity {
        max_per_user: u32,
    },
    NotStarted,
    Ended,
    LimitReached,
    /// Fewer units remain than were asked for.
    SoldOut {
        remaining: u32,
    },
    DuplicateReservation,
}

impl Rejection {
    pub fn to_problem(self) -> Problem {
        match self {
            Self::InvalidQuantity { max_per_user } => Problem::new(
                ErrorCode::InvalidRequest,
                Some(format!("field `quantity`: must be 1 to {max_per_user} for this drop")),
            ),
            Self::NotStarted => ErrorCode::DropNotStarted.into(),
            Self::Ended => ErrorCode::DropEnded.into(),
            Self::LimitReached => Problem::new(
                ErrorCode::PurchaseLimitReached,
                Some("you already hold the most units this drop allows per buyer".into()),
            ),
            Self::SoldOut { remaining } => Problem::sold_out(remaining),
            Self::DuplicateReservation => ErrorCode::Conflict.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldError {
    NotFound,
    /// `sell` on a hold whose units already went back to stock.
    AlreadyReleased,
    /// `release` on a hold that was sold.
    AlreadySold,
    /// `reinstate` of a released hold when its units are gone.
    SoldOut,
    /// `reinstate` that would give the buyer more than the per-user limit.
    LimitReached,
}

/// The result of moving a hold: its state now, and whether this call moved it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub state: HoldState,
    pub changed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TermsConflict {
    pub committed: u32,
}

/// What [`Inventory::set_terms`] did with terms that did not conflict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TermsChange {
    /// They are the terms now (a repeat of the current version is applied again).
    Applied,
    /// Older than the terms in force (`current`): ignored.
    Stale { current: u64 },
}

#[derive(Debug, Clone)]
pub struct Inventory {
    terms: InventoryTerms,
    holds: BTreeMap<Uuid, Hold>,
    /// Units each buyer holds or bought; an index over `holds` so that the per-user
    /// check does not scan every hold of a large drop.
    user_units: HashMap<Uuid, u32>,
    held: u32,
    sold: u32,
}

impl Inventory {
    pub fn new(terms: InventoryTerms) -> Self {
        Self { terms, holds: BTreeMap::new(), user_units: HashMap::new(), held: 0, sold: 0 }
    }

    /// Rebuilds an inventory from persisted holds.
    pub fn restore(terms: InventoryTerms, holds: impl IntoIterator<Item = (Uuid, Hold)>) -> Self {
        let mut inv = Self::new(terms);
        for (id, hold) in holds {
            inv.count(&hold, 1);
            inv.holds.insert(id, hold);
        }
        inv
    }

    fn count(&mut self, hold: &Hold, sign: i8) {
        let q = hold.quantity;
        let apply = |v: &mut u32| if sign > 0 { *v += q } else { *v -= q };
        match hold.state {
            HoldState::Held => apply(&mut self.held),
            HoldState::Sold => apply(&mut self.sold),
            HoldState::Released => return,
        }
        let units = self.user_units.entry(hold.user_id).or_insert(0);
        apply(units);
        if *units == 0 {
            self.user_units.remove(&hold.user_id);
        }
    }

    pub fn terms(&self) -> &InventoryTerms {
        &self.terms
    }

    pub fn total(&self) -> u32 {
        self.terms.total
    }

    pub fn held(&self) -> u32 {
        self.held
    }

    pub fn sold(&self) -> u32 {
        self.sold
    }

    pub fn remaining(&self) -> u32 {
        self.terms.total.saturating_sub(self.held + self.sold)
    }

    pub fn user_units(&self, user_id: Uuid) -> u32 {
        self.user_units.get(&user_id).copied().unwrap_or(0)
    }

    /// Buyers who hold or bought units of this drop.
    pub fn holders(&self) -> impl Iterator<Item = &Uuid> {
        self.user_units.keys()
    }

    pub fn hold(&self, reservation_id: Uuid) -> Option<&Hold> {
        self.holds.get(&reservation_id)
    }

    pub fn holds(&self) -> impl Iterator<Item = (&Uuid, &Hold)> {
        self.holds.iter()
    }

    /// The holds after `after` (all of them without), in reservation id order: a
    /// page at a time, so that nobody builds the whole list of a large drop at once.
    pub fn holds_after(&self, after: Option<Uuid>) -> impl Iterator<Item = (&Uuid, &Hold)> {
        use std::ops::Bound::{Excluded, Unbounded};
        let from = after.map_or(Unbounded, Excluded);
        self.holds.range((from, Unbounded))
    }

    /// Replaces the terms, unless they are older than the ones in force. The total
    /// may not drop below the units already committed.
    pub fn set_terms(&mut self, terms: InventoryTerms) -> Result<TermsChange, TermsConflict> {
        if terms.version < self.terms.version {
            return Ok(TermsChange::Stale { current: self.terms.version });
        }
        let committed = self.held + self.sold;
        if terms.total < committed {
            return Err(TermsConflict { committed });
        }
        self.terms = terms;
        Ok(TermsChange::Applied)
    }

    /// The decision: grants `quantity` units to `user_id` as a hold, or says why not.
    pub fn reserve(
        &mut self,
        reservation_id: Uuid,
        user_id: Uuid,
        quantity: u32,
        now_ms: i64,
    ) -> Result<Hold, Rejection> {
        let t = &self.terms;
        if quantity == 0 || quantity > t.max_per_user {
            return Err(Rejection::InvalidQuantity { max_per_user: t.max_per_user });
        }
        if now_ms < t.starts_at.timestamp_millis() {
            return Err(Rejection::NotStarted);
        }
        if now_ms >= t.ends_at.timestamp_millis() {
            return Err(Rejection::Ended);
        }
        if self.user_units(user_id) + quantity > t.max_per_user {
            return Err(Rejection::LimitReached);
        }
        if self.remaining() < quantity {
            return Err(Rejection::SoldOut { remaining: self.remaining() });
        }
        if self.holds.contains_key(&reservation_id) {
            return Err(Rejection::DuplicateReservation);
        }
        let hold = Hold {
            user_id,
            quantity,
            state: HoldState::Held,
            expires_at_ms: now_ms + i64::from(t.hold_seconds) * 1000,
        };
        self.count(&hold, 1);
        self.holds.insert(reservation_id, hold);
        Ok(hold)
    }

    fn transition(&mut self, reservation_id: Uuid, to: HoldState) -> Result<Transition, HoldError> {
        let hold = *self.holds.get(&reservation_id).ok_or(HoldError::NotFound)?;
        match (hold.state, to) {
            (from, to) if from == to => Ok(Transition { state: to, changed: false }),
            (HoldState::Held, _) => {
                self.count(&hold, -1);
                let moved = Hold { state: to, ..hold };
                self.count(&moved, 1);
                self.holds.insert(reservation_id, moved);
                Ok(Transition { state: to, changed: true })
            }
            (HoldState::Released, _) => Err(HoldError::AlreadyReleased),
            (HoldState::Sold, _) => Err(HoldError::AlreadySold),
        }
    }

    /// The hold was paid for: its units are sold for good.
    pub fn sell(&mut self, reservation_id: Uuid) -> Result<Transition, HoldError> {
        self.transition(reservation_id, HoldState::Sold)
    }

    /// The hold ended unpaid: its units return to stock, once.
    pub fn release(&mut self, reservation_id: Uuid) -> Result<Transition, HoldError> {
        self.transition(reservation_id, HoldState::Released)
    }

    /// A payment arrived for a hold whose units went back: sell them again if stock
    /// and the buyer's limit allow.
    pub fn reinstate(&mut self, reservation_id: Uuid) -> Result<Transition, HoldError> {
        let hold = *self.holds.get(&reservation_id).ok_or(HoldError::NotFound)?;
        match hold.state {
            HoldState::Held => self.sell(reservation_id),
            HoldState::Sold => Ok(Transition { state: HoldState::Sold, changed: false }),
            HoldState::Released if self.remaining() < hold.quantity => Err(HoldError::SoldOut),
            HoldState::Released if self.user_units(hold.user_id) + hold.quantity > self.terms.max_per_user => {
                Err(HoldError::LimitReached)
            }
            HoldState::Released => {
                let sold = Hold { state: HoldState::Sold, ..hold };
                self.count(&sold, 1);
                self.holds.insert(reservation_id, sold);
                Ok(Transition { state: HoldState::Sold, changed: true })
            }
        }
    }

    /// Holds still `Held` whose time ran out at `now_ms`.
    pub fn expired_holds(&self, now_ms: i64) -> Vec<Uuid> {
        self.holds
            .iter()
            .filter(|(_, h)| h.state == HoldState::Held && h.expires_at_ms <= now_ms)
            .map(|(id, _)| *id)
            .collect()
    }

    /// The soonest expiry among the holds still `Held`.
    pub fn next_expiry_ms(&self) -> Option<i64> {
        self.holds.values().filter(|h| h.state == HoldState::Held).map(|h| h.expires_at_ms).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Money;
    use chrono::DateTime;
    use proptest::prelude::*;

    fn terms(total: u32, max_per_user: u32) -> InventoryTerms {
        InventoryTerms {
            total,
            max_per_user,
            starts_at: DateTime::from_timestamp_millis(1_000).unwrap(),
            ends_at: DateTime::from_timestamp_millis(1_000_000).unwrap(),
            price: Money { amount: 100, currency: "EUR".into() },
            hold_seconds: 60,
            version: 1,
        }
    }

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    #[test]
    fn window_limit_and_stock_rules() {
        let mut inv = Inventory::new(terms(3, 2));
        assert_eq!(inv.reserve(id(1), id(100), 1, 999), Err(Rejection::NotStarted));
        assert_eq!(inv.reserve(id(1), id(100), 1, 1_000_000), Err(Rejection::Ended));
        assert_eq!(inv.reserve(id(1), id(100), 3, 5_000), Err(Rejection::InvalidQuantity { max_per_user: 2 }));
        assert_eq!(inv.reserve(id(1), id(100), 0, 5_000), Err(Rejection::InvalidQuantity { max_per_user: 2 }));
        let hold = inv.reserve(id(1), id(100), 2, 5_000).unwrap();
        assert_eq!(hold.expires_at_ms, 65_000);
        assert_eq!(inv.reserve(id(2), id(100), 1, 5_000), Err(Rejection::LimitReached));
        assert_eq!(
            inv.reserve(id(3), id(101), 2, 5_000),
            Err(Rejection::SoldOut { remaining: 1 }),
            "one left, two asked for"
        );
        assert!(inv.reserve(id(3), id(101), 1, 5_000).is_ok());
        assert_eq!(inv.remaining(), 0);
        assert_eq!(inv.reserve(id(1), id(102), 1, 5_000), Err(Rejection::SoldOut { remaining: 0 }));
    }

    #[test]
    fn holds_after_an_id_are_the_later_ones_in_order() {
        let mut inv = Inventory::new(terms(10, 10));
        for n in [5, 1, 3, 9] {
            inv.reserve(id(n), id(100 + n), 1, 5_000).unwrap();
        }
        let ids = |after| inv.holds_after(after).map(|(r, _)| *r).collect::<Vec<_>>();
        assert_eq!(ids(None), [id(1), id(3), id(5), id(9)]);
        assert_eq!(ids(Some(id(3))), [id(5), id(9)], "after, not from");
        assert_eq!(ids(Some(id(4))), [id(5), id(9)], "an id that is no hold is a place in the order");
        assert!(ids(Some(id(9))).is_empty());
    }

    #[test]
    fn holds_leave_once() {
        let mut inv = Inventory::new(terms(5, 5));
        inv.reserve(id(1), id(100), 2, 5_000).unwrap();
        inv.reserve(id(2), id(100), 1, 5_000).unwrap();
        assert_eq!(inv.release(id(1)), Ok(Transition { state: HoldState::Released, changed: true }));
        assert_eq!(inv.release(id(1)), Ok(Transition { state: HoldState::Released, changed: false }));
        assert_eq!(inv.remaining(), 4);
        assert_eq!(inv.sell(id(1)), Err(HoldError::AlreadyReleased));
        assert_eq!(inv.sell(id(2)), Ok(Transition { state: HoldState::Sold, changed: true }));
        assert_eq!(inv.release(id(2)), Err(HoldError::AlreadySold));
        assert_eq!(inv.sell(id(9)), Err(HoldError::NotFound));
        assert_eq!((inv.sold(), inv.held(), inv.remaining()), (1, 0, 4));
        assert_eq!(inv.user_units(id(100)), 1);
    }

    #[test]
    fn reinstate_takes_units_back_only_if_they_are_there() {
        let mut inv = Inventory::new(terms(2, 2));
        inv.reserve(id(1), id(100), 1, 5_000).unwrap();
        inv.release(id(1)).unwrap();
        assert_eq!(inv.reinstate(id(1)), Ok(Transition { state: HoldState::Sold, changed: true }));
        assert_eq!(inv.reinstate(id(1)), Ok(Transition { state: HoldState::Sold, changed: false }));
        assert_eq!((inv.sold(), inv.remaining()), (1, 1));
        inv.reserve(id(2), id(101), 1, 5_000).unwrap();
        inv.release(id(2)).unwrap();
        inv.reserve(id(3), id(102), 1, 5_000).unwrap();
        assert_eq!(inv.reinstate(id(2)), Err(HoldError::SoldOut));
        assert_eq!(inv.remaining(), 0);
    }

    #[test]
    fn expiry_lists_only_live_holds_past_due() {
        let mut inv = Inventory::new(terms(5, 5));
        inv.reserve(id(1), id(100), 1, 5_000).unwrap();
        inv.reserve(id(2), id(100), 1, 6_000).unwrap();
        inv.sell(id(1)).unwrap();
        assert_eq!(inv.expired_holds(65_000), Vec::<Uuid>::new());
        assert_eq!(inv.expired_holds(66_000), vec![id(2)]);
        assert_eq!(inv.next_expiry_ms(), Some(66_000));
    }

    #[test]
    fn terms_cannot_cut_below_committed_units() {
        let mut inv = Inventory::new(terms(5, 5));
        inv.reserve(id(1), id(100), 3, 5_000).unwrap();
        assert_eq!(inv.set_terms(terms(2, 2)), Err(TermsConflict { committed: 3 }));
        assert!(inv.set_terms(terms(3, 2)).is_ok());
        assert_eq!(inv.remaining(), 0);
    }

    #[test]
    fn older_terms_landing_late_change_nothing() {
        let mut inv = Inventory::new(terms(5, 5));
        let newer = InventoryTerms { version: 3, ..terms(8, 2) };
        assert_eq!(inv.set_terms(newer.clone()), Ok(TermsChange::Applied));
        let older = InventoryTerms { version: 2, ..terms(20, 5) };
        assert_eq!(inv.set_terms(older), Ok(TermsChange::Stale { current: 3 }));
        assert_eq!(inv.terms(), &newer);
        assert_eq!(inv.remaining(), 8);
        // The same version again (a retried push) is applied.
        assert_eq!(inv.set_terms(newer), Ok(TermsChange::Applied));
    }

    #[test]
    fn restore_rebuilds_counters() {
        let mut inv = Inventory::new(terms(10, 3));
        inv.reserve(id(1), id(100), 2, 5_000).unwrap();
        inv.reserve(id(2), id(101), 3, 5_000).unwrap();
        inv.sell(id(2)).unwrap();
        inv.reserve(id(3), id(102), 1, 5_000).unwrap();
        inv.release(id(3)).unwrap();
        let copy = Inventory::restore(inv.terms().clone(), inv.holds().map(|(k, v)| (*k, *v)));
        assert_eq!((copy.held(), copy.sold(), copy.remaining()), (2, 3, 5));
        assert_eq!(copy.user_units(id(101)), 3);
        assert_eq!(copy.user_units(id(102)), 0);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Reserve { user: u8, quantity: u32 },
        Sell(usize),
        Release(usize),
        Reinstate(usize),
        Expire,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u8..6, 0u32..4).prop_map(|(user, quantity)| Op::Reserve { user, quantity }),
            2 => any::<usize>().prop_map(Op::Sell),
            2 => any::<usize>().prop_map(Op::Release),
            1 => any::<usize>().prop_map(Op::Reinstate),
            1 => Just(Op::Expire),
        ]
    }

    proptest! {
        #[test]
        fn stock_is_conserved_and_never_negative(
            total in 1u32..40,
            max_per_user in 1u32..5,
            ops in proptest::collection::vec(op(), 1..200),
        ) {
            let mut inv = Inventory::new(terms(total, max_per_user));
            let mut ids: Vec<Uuid> = Vec::new();
            let mut now = 5_000;
            for (n, op) in ops.into_iter().enumerate() {
                now += 1_000;
                match op {
                    Op::Reserve { user, quantity } => {
                        let before = inv.remaining();
                        let rid = id(n as u128 + 1);
                        match inv.reserve(rid, id(1_000 + u128::from(user)), quantity, now) {
                            Ok(h) => {
                                prop_assert_eq!(inv.remaining(), before - h.quantity);
                                ids.push(rid);
                            }
                            Err(_) => prop_assert_eq!(inv.remaining(), before),
                        }
                    }
                    Op::Sell(i) | Op::Release(i) | Op::Reinstate(i) if ids.is_empty() => { let _ = i; }
                    Op::Reinstate(i) => {
                        let rid = ids[i % ids.len()];
                        let before = inv.hold(rid).unwrap().state;
                        let q = inv.hold(rid).unwrap().quantity;
                        let before_remaining = inv.remaining();
                        match inv.reinstate(rid) {
                            Ok(t) if t.changed && before == HoldState::Released => {
                                prop_assert_eq!(inv.remaining(), before_remaining - q)
                            }
                            Ok(_) => prop_assert_eq!(inv.remaining(), before_remaining),
                            Err(HoldError::SoldOut) => prop_assert!(before_remaining < q),
                            Err(e) => prop_assert_eq!(e, HoldError::LimitReached),
                        }
                    }
                    Op::Sell(i) => {
                        let rid = ids[i % ids.len()];
                        let before = inv.hold(rid).unwrap().state;
                        let r = inv.sell(rid);
                        prop_assert_eq!(r.is_err(), before == HoldState::Released);
                    }
                    Op::Release(i) => {
                        let rid = ids[i % ids.len()];
                        let before_state = inv.hold(rid).unwrap().state;
                        let before_remaining = inv.remaining();
                        let r = inv.release(rid);
                        let q = inv.hold(rid).unwrap().quantity;
                        match before_state {
                            HoldState::Held => prop_assert_eq!(inv.remaining(), before_remaining + q),
                            HoldState::Sold => prop_assert!(r.is_err()),
                            HoldState::Released => prop_assert_eq!(inv.remaining(), before_remaining),
                        }
                    }
                    Op::Expire => {
                        for rid in inv.expired_holds(now) {
                            inv.release(rid).unwrap();
                        }
                    }
                }
                // Invariant 1: conservation, and no negative stock.
                prop_assert_eq!(inv.sold() + inv.held() + inv.remaining(), total);
                prop_assert!(inv.remaining() <= total);
                // The per-user index agrees with the holds, and no one exceeds the limit.
                let mut derived: HashMap<Uuid, u32> = HashMap::new();
                for (_, h) in inv.holds() {
                    if h.state != HoldState::Released {
                        *derived.entry(h.user_id).or_default() += h.quantity;
                    }
                }
                for (user, units) in &derived {
                    prop_assert_eq!(inv.user_units(*user), *units);
                    prop_assert!(*units <= max_per_user);
                }
            }
        }
    }
}
