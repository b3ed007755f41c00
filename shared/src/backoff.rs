//! The one backoff policy every retry uses: exponential from `first`, capped at
//! `max`. It only computes delays, so it serves both an async retry loop on the
//! origin and the queues whose next attempt is a stored time (the inventory
//! object's alarm, the push queue), where nothing sleeps.

use core::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
}

impl Backoff {
    pub const fn new(first: Duration, max: Duration) -> Self {
        Self { first, max }
    }

    /// The pause before retry number `attempt + 1` (attempt 0 failed: `first`).
    pub fn delay(&self, attempt: u32) -> Duration {
        self.first.saturating_mul(1u32 << attempt.min(20)).min(self.max)
    }

    /// [`Self::delay`] in whole milliseconds.
    pub fn delay_ms(&self, attempt: u32) -> i64 {
        i64::try_from(self.delay(attempt).as_millis()).unwrap_or(i64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_first_and_stops_at_max() {
        let b = Backoff::new(Duration::from_millis(500), Duration::from_secs(5));
        let delays: Vec<i64> = (0..6).map(|a| b.delay_ms(a)).collect();
        assert_eq!(delays, [500, 1000, 2000, 4000, 5000, 5000]);
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(5), "no overflow on huge attempt counts");
    }
}
