//! What the traffic saw, per route family: latencies (one histogram per sampling
//! window, for p99 over time, and one for the whole run) and answers by status.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;

/// The families the soak reports on, in the order its tables list them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    Card,
    List,
    Stock,
    Creator,
    Follow,
    Buy,
    Order,
    Pay,
    Cancel,
    Inbox,
    CreateDrop,
    Upload,
    Media,
    /// The ceiling Worker's trivial request, at the same rate: the runtime's baseline.
    Ceiling,
}

impl Family {
    pub const ALL: [Family; 14] = [
        Family::Card,
        Family::List,
        Family::Stock,
        Family::Creator,
        Family::Follow,
        Family::Buy,
        Family::Order,
        Family::Pay,
        Family::Cancel,
        Family::Inbox,
        Family::CreateDrop,
        Family::Upload,
        Family::Media,
        Family::Ceiling,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Family::Card => "card",
            Family::List => "list",
            Family::Stock => "stock",
            Family::Creator => "creator",
            Family::Follow => "follow",
            Family::Buy => "buy",
            Family::Order => "order",
            Family::Pay => "pay",
            Family::Cancel => "cancel",
            Family::Inbox => "inbox",
            Family::CreateDrop => "create-drop",
            Family::Upload => "upload",
            Family::Media => "media",
            Family::Ceiling => "ceiling",
        }
    }
}

/// Status 0 stands for "no answer" (a connection error or the client's timeout).
pub const NO_ANSWER: u16 = 0;

struct PerFamily {
    window: Histogram<u64>,
    total: Histogram<u64>,
    statuses: BTreeMap<u16, u64>,
}

impl PerFamily {
    fn new() -> Self {
        let histogram = || Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds");
        Self { window: histogram(), total: histogram(), statuses: BTreeMap::new() }
    }
}

/// Shared by every request of the run.
pub struct Stats {
    families: Mutex<BTreeMap<Family, PerFamily>>,
}

impl Default for Stats {
    fn default() -> Self {
        Self { families: Mutex::new(Family::ALL.iter().map(|f| (*f, PerFamily::new())).collect()) }
    }
}

/// One family's figures at the end of a window or of the run.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    pub count: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

fn figures(h: &Histogram<u64>) -> Figures {
    if h.is_empty() {
        return Figures::default();
    }
    let ms = |us: u64| us as f64 / 1000.0;
    Figures {
        count: h.len(),
        p50_ms: ms(h.value_at_quantile(0.5)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        max_ms: ms(h.max()),
    }
}

impl Stats {
    pub fn record(&self, family: Family, status: u16, took: Duration) {
        let us = (took.as_micros() as u64).clamp(1, 600_000_000);
        let mut families = self.families.lock().expect("stats");
        let f = families.get_mut(&family).expect("every family is known");
        f.window.saturating_record(us);
        f.total.saturating_record(us);
        *f.statuses.entry(status).or_insert(0) += 1;
    }

    /// Forgets everything recorded so far (after the capacity probe).
    pub fn reset(&self) {
        *self.families.lock().expect("stats") = Family::ALL.iter().map(|f| (*f, PerFamily::new())).collect();
    }

    /// Each family's figures since the last call, and a new window.
    pub fn take_window(&self) -> BTreeMap<Family, Figures> {
        let mut families = self.families.lock().expect("stats");
        families
            .iter_mut()
            .map(|(family, f)| {
                let out = figures(&f.window);
                f.window.reset();
                (*family, out)
            })
            .collect()
    }

    /// Each family's figures over the whole run.
    pub fn totals(&self) -> BTreeMap<Family, Figures> {
        let families = self.families.lock().expect("stats");
        families.iter().map(|(family, f)| (*family, figures(&f.total))).collect()
    }

    /// Answers by status, per family, over the whole run.
    pub fn statuses(&self) -> BTreeMap<Family, BTreeMap<u16, u64>> {
        let families = self.families.lock().expect("stats");
        families.iter().map(|(family, f)| (*family, f.statuses.clone())).collect()
    }

    /// Answers by status over every family of ours (the ceiling's apart).
    pub fn our_statuses(&self) -> BTreeMap<u16, u64> {
        let mut all = BTreeMap::new();
        for (family, statuses) in self.statuses() {
            if family == Family::Ceiling {
                continue;
            }
            for (status, n) in statuses {
                *all.entry(status).or_insert(0) += n;
            }
        }
        all
    }

    pub fn requests(&self) -> u64 {
        self.statuses().values().flat_map(|s| s.values()).sum()
    }
}

/// Whether an answer is an error of the platform's (a refusal the traffic invites,
/// such as "sold out" or a cancel racing an expiry, is not).
pub fn is_error(status: u16) -> bool {
    status == NO_ANSWER || status >= 500
}
