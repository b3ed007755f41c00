//! Background work: [`Workers`] tracks every task the origin runs beside its
//! routes (a `TaskTracker` with one stop signal), [`Workers::every`] is the one
//! shape of "do this every N until stopped", and [`retry`] is the one retry loop,
//! on the shared [`Backoff`] policy. [`Rounds`] lets others hand a task work and
//! wait until it is done.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use drops_shared::backoff::Backoff;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What a periodic task wants after a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// There is more to do: go again at once.
    Now,
    /// Caught up: wait for the period.
    Later,
}

#[derive(Clone, Default)]
pub struct Workers {
    tracker: TaskTracker,
    stop: CancellationToken,
}

impl Workers {
    pub fn new() -> Self {
        Self::default()
    }

    /// Cancelled when the workers are told to stop.
    pub fn stop_signal(&self) -> CancellationToken {
        self.stop.clone()
    }

    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.tracker.spawn(task);
    }

    /// Runs `round` every `period` until stopped. A failed round is logged under
    /// `name` and the next one runs a period later; a round that says [`Next::Now`]
    /// is followed at once.
    pub fn every<F, Fut>(&self, name: &'static str, period: Duration, round: F)
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<Next>> + Send + 'static,
    {
        self.every_or_woken(name, period, std::future::pending::<()>, round)
    }

    /// Like [`Self::every`], and also as soon as `woken()` resolves.
    pub fn every_or_woken<F, Fut, W, WFut>(&self, name: &'static str, period: Duration, mut woken: W, mut round: F)
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<Next>> + Send + 'static,
        W: FnMut() -> WFut + Send + 'static,
        WFut: Future<Output = ()> + Send + 'static,
    {
        let stop = self.stop.clone();
        self.tracker.spawn(async move {
            loop {
                let next = tokio::select! {
                    _ = stop.cancelled() => return,
                    next = round() => next.unwrap_or_else(|e| {
                        tracing::warn!(task = name, error = %format!("{e:#}"), "background round failed");
                        Next::Later
                    }),
                };
                if next == Next::Now && !stop.is_cancelled() {
                    continue;
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(period) => {}
                    _ = woken() => {}
                }
            }
        });
    }

    /// Tells every task to stop and waits until all have.
    pub async fn shutdown(&self) {
        self.stop.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

/// The rounds of a background task that others hand work to (through the database):
/// they wake it, and may wait for a round that began after their work was committed,
/// which is then done. The task calls [`Rounds::begin`] as a round starts and
/// [`Rounds::done`] once it has done everything there was.
#[derive(Clone)]
pub struct Rounds(Arc<RoundsInner>);

struct RoundsInner {
    wake: tokio::sync::Notify,
    begun: AtomicU64,
    done: tokio::sync::watch::Sender<u64>,
}

impl Default for Rounds {
    fn default() -> Self {
        Self(Arc::new(RoundsInner {
            wake: tokio::sync::Notify::new(),
            begun: AtomicU64::new(0),
            done: tokio::sync::watch::Sender::new(0),
        }))
    }
}

impl Rounds {
    /// Asks for a round now (or right after the one running).
    pub fn wake(&self) {
        self.0.wake.notify_one();
    }

    /// Resolves when [`Self::wake`] was called (or at once if it was since the last time).
    pub async fn woken(&self) {
        self.0.wake.notified().await
    }

    /// A round begins: its number.
    pub fn begin(&self) -> u64 {
        self.0.begun.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Round `round` has done everything that was there when it began.
    pub fn done(&self, round: u64) {
        self.0.done.send_if_modified(|last| {
            let later = round > *last;
            if later {
                *last = round;
            }
            later
        });
    }

    /// Wakes the task and waits, at most `within`, until a round that begins after
    /// this call is done. Whether one was.
    pub async fn wait_for_next(&self, within: Duration) -> bool {
        let mut done = self.0.done.subscribe();
        // A round numbered above this one begins after now: it sees what the caller
        // committed before calling.
        let begun = self.0.begun.load(Ordering::SeqCst);
        self.wake();
        let finished = tokio::time::timeout(within, done.wait_for(|n| *n > begun)).await;
        matches!(finished, Ok(Ok(_)))
    }
}

/// Runs `attempt` until it succeeds or `times` attempts failed, pausing between
/// them as `backoff` says; returns the last error.
pub async fn retry<T, E, F, Fut>(backoff: Backoff, times: u32, mut attempt: F) -> Result<T, E>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut n = 0;
    loop {
        match attempt(n).await {
            Ok(value) => return Ok(value),
            Err(e) if n + 1 >= times => return Err(e),
            Err(_) => {
                tokio::time::sleep(backoff.delay(n)).await;
                n += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn retry_backs_off_and_gives_up_after_the_last_attempt() {
        let policy = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let started = tokio::time::Instant::now();
        let result: Result<(), u32> = retry(policy, 4, |n| async move { Err(n) }).await;
        assert_eq!(result, Err(3));
        assert_eq!(started.elapsed(), Duration::from_millis(100 + 200 + 400));
        let ok: Result<u32, ()> = retry(policy, 4, |n| async move {
            if n == 2 {
                Ok(n)
            } else {
                Err(())
            }
        })
        .await;
        assert_eq!(ok, Ok(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_is_answered_by_a_round_that_began_after_it_not_by_one_already_running() {
        let rounds = Rounds::default();
        let running = rounds.begin();
        let waiter = tokio::spawn({
            let rounds = rounds.clone();
            async move { rounds.wait_for_next(Duration::from_secs(1)).await }
        });
        tokio::task::yield_now().await;
        rounds.done(running);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "the round running when it came may have missed its work");
        let next = rounds.begin();
        rounds.done(next);
        assert!(waiter.await.unwrap());
        // Nobody runs a round: the wait gives up.
        assert!(!rounds.wait_for_next(Duration::from_secs(1)).await);
    }

    #[tokio::test(start_paused = true)]
    async fn every_runs_on_its_period_goes_again_when_asked_and_stops() {
        let workers = Workers::new();
        let rounds = Arc::new(AtomicU32::new(0));
        let counted = rounds.clone();
        workers.every("test", Duration::from_secs(1), move || {
            let counted = counted.clone();
            async move {
                let n = counted.fetch_add(1, Ordering::SeqCst);
                if n == 0 {
                    anyhow::bail!("the first round fails; the next still runs")
                }
                Ok(if n < 3 { Next::Now } else { Next::Later })
            }
        });
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(rounds.load(Ordering::SeqCst), 4, "fail, wait 1 s, then three rounds back to back");
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(rounds.load(Ordering::SeqCst), 5);
        workers.shutdown().await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(rounds.load(Ordering::SeqCst), 5, "nothing runs after shutdown");
    }
}
