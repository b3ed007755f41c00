//! The inventory object's alarm: returns the units of holds that ran out unpaid
//! (queueing a notice for the origin), delivers what the origin has not
//! acknowledged, sweeps idempotency records older than 24 h, and sets itself for
//! the next moment there is work.

use drops_shared::internal::{HoldExpiry, HoldState};
use drops_shared::inventory::Inventory;
use futures_util::future::join_all;
use worker::wasm_bindgen::JsValue;

use super::outbound::{self, Delivery, Kind};
use super::{storage, DropInventory};
use crate::config::EdgeConfig;
use crate::http::now_ms;

/// The earliest of the moments something is due, if any is.
fn earliest(moments: impl IntoIterator<Item = Option<i64>>) -> Option<i64> {
    moments.into_iter().flatten().min()
}

impl DropInventory {
    pub(super) async fn run_alarm(&self) -> worker::Result<()> {
        self.alarm_at.set(None);
        let now = now_ms();
        storage::sweep_answers(&self.sql(), now)?;
        self.answered.borrow_mut().forget_until(now - storage::IDEMPOTENCY_TTL_MS);
        self.expire_holds(now)?;
        match EdgeConfig::get(&self.env) {
            Ok(cfg) => self.deliver_outbound(&cfg, now).await?,
            Err(_) => worker::console_error!("edge settings missing; deliveries wait"),
        }
        if let Some(next) = self.next_alarm()? {
            self.alarm_by(next).await?;
        }
        Ok(())
    }

    /// Sets the alarm no later than `at_ms`.
    pub(super) async fn alarm_by(&self, at_ms: i64) -> worker::Result<()> {
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
        let sql = self.sql();
        let written = due.iter().try_for_each(|id| {
            storage::set_hold_state(&sql, *id, HoldState::Released)?;
            outbound::enqueue_expiry(&sql, *id, &HoldExpiry { drop_id, expired_at }, now)
        });
        if written.is_err() {
            self.resync();
        }
        written
    }

    /// Delivers what the origin has not acknowledged yet: reservations in batches,
    /// then expiry notices. If a batch fails (the origin is down or failing), every
    /// due message backs off without a request of its own.
    async fn deliver_outbound(&self, cfg: &EdgeConfig, now: i64) -> worker::Result<()> {
        let due = outbound::due(&self.sql(), now)?;
        let (reservations, expiries): (Vec<_>, Vec<_>) = due.iter().partition(|m| m.kind == Kind::Reservation);
        let batches: Vec<Vec<&outbound::Message>> =
            reservations.chunks(outbound::BATCH).map(<[&outbound::Message]>::to_vec).collect();
        let mut origin_up = true;
        for wave in batches.chunks(outbound::CONCURRENCY) {
            let sent = join_all(wave.iter().map(|batch| self.deliver_batch(cfg, batch))).await;
            origin_up = sent.into_iter().collect::<worker::Result<Vec<bool>>>()?.into_iter().all(|ok| ok);
            if !origin_up {
                break;
            }
        }
        if !origin_up {
            let all: Vec<&outbound::Message> = due.iter().collect();
            return outbound::back_off(&self.sql(), &all, now, cfg.forward_retry_max_ms);
        }
        for wave in expiries.chunks(outbound::CONCURRENCY) {
            join_all(wave.iter().map(|m| self.deliver_expiry(cfg, m, now))).await;
        }
        Ok(())
    }

    /// Hands a batch of reservations over; true when the origin took it.
    async fn deliver_batch(&self, cfg: &EdgeConfig, batch: &[&outbound::Message]) -> worker::Result<bool> {
        match outbound::send_reservations(cfg, batch).await {
            Delivery::Acknowledged(ids) => {
                outbound::acknowledged(&self.sql(), Kind::Reservation, &ids)?;
                Ok(true)
            }
            Delivery::Failed(why) | Delivery::Refused(why) => {
                worker::console_warn!("a batch of {} reservations was not taken: {why}", batch.len());
                Ok(false)
            }
        }
    }

    /// Tells the origin one hold ran out; backs it off if that fails, and lets it go
    /// if the origin refuses it for good.
    async fn deliver_expiry(&self, cfg: &EdgeConfig, message: &outbound::Message, now: i64) -> worker::Result<()> {
        match outbound::send_expiry(cfg, message).await {
            Delivery::Acknowledged(_) => outbound::acknowledged(&self.sql(), Kind::Expiry, &[message.reservation_id]),
            Delivery::Refused(why) => {
                worker::console_error!("expiry notice of {} dropped: {why}", message.reservation_id);
                outbound::acknowledged(&self.sql(), Kind::Expiry, &[message.reservation_id])
            }
            Delivery::Failed(why) => {
                worker::console_warn!(
                    "expiry notice of {} failed (attempt {}): {why}",
                    message.reservation_id,
                    message.attempts + 1
                );
                outbound::back_off(&self.sql(), &[message], now, cfg.forward_retry_max_ms)
            }
        }
    }

    /// The next moment the alarm has work: a delivery, a hold running out, or an
    /// idempotency record to drop.
    fn next_alarm(&self) -> worker::Result<Option<i64>> {
        let sql = self.sql();
        let expiry = self.inventory.borrow().as_ref().and_then(Inventory::next_expiry_ms);
        Ok(earliest([outbound::next_attempt(&sql)?, storage::next_sweep(&sql)?, expiry]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_alarm_is_set_for_the_first_thing_due() {
        assert_eq!(earliest([Some(30), None, Some(10)]), Some(10));
        assert_eq!(earliest([None, None, None]), None, "nothing due: no alarm");
    }
}
