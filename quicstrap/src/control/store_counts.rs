//! Transfers counted per store: which store pays for what. Serving transfers by outcome,
//! fetching ones (bootstraps) by the path taken, bytes, and how long they take — keyed by
//! [`StoreTable::label`] (configured stores by name, the rest as `other`), so no client can
//! grow the set by asking for names. The metrics module exports them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::stores::{StoreTable, OTHER_STORE};

/// Upper bounds of the transfer-duration histogram, seconds: a small partition on a fast link
/// to a 10 GB one over a slow cross-datacenter path.
pub const DURATION_BUCKETS: [f64; 10] = [
    0.5, 1.0, 2.5, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 14400.0,
];

/// Outcomes of serving a transfer.
pub const SERVE_OUTCOMES: [&str; 3] = ["completed", "failed", "refused"];

/// Paths a bootstrap takes (`BootstrapPath::label` of the bootstrap job), and `failed`.
pub const FETCH_OUTCOMES: [&str; 8] = [
    "peer_transfer",
    "local_resume",
    "kafka_lag_below_threshold",
    "kafka_no_peers",
    "kafka_all_peers_failed",
    "peer_transfer_after_gap",
    "kafka_from_earliest",
    "failed",
];

/// One store's counters.
#[derive(Debug)]
pub(crate) struct One {
    pub(crate) outcomes: HashMap<&'static str, AtomicU64>,
    pub(crate) bytes: AtomicU64,
    pub(crate) duration: Arc<Histogram>,
}

/// The per-store metrics of one role (serving or fetching), for the stores of a table fixed
/// when created: a store configured later counts as `other` until the process restarts.
#[derive(Debug)]
pub struct StoreMetrics {
    pub(crate) role: &'static str,
    table: StoreTable,
    pub(crate) stores: HashMap<String, One>,
}

impl StoreMetrics {
    /// Serving-side metrics for the stores of `table`.
    pub fn serving(table: &StoreTable) -> Arc<Self> {
        Self::new("serve", &SERVE_OUTCOMES, table)
    }

    /// Fetching-side metrics for the stores of `table`.
    pub fn fetching(table: &StoreTable) -> Arc<Self> {
        Self::new("fetch", &FETCH_OUTCOMES, table)
    }

    fn new(role: &'static str, outcomes: &[&'static str], table: &StoreTable) -> Arc<Self> {
        let stores = table
            .labels()
            .into_iter()
            .map(|label| {
                let one = One {
                    outcomes: outcomes.iter().map(|o| (*o, AtomicU64::new(0))).collect(),
                    bytes: AtomicU64::new(0),
                    duration: Histogram::new(&DURATION_BUCKETS),
                };
                (label, one)
            })
            .collect();
        Arc::new(Self {
            role,
            table: table.clone(),
            stores,
        })
    }

    fn one(&self, store: &str) -> &One {
        let label = self.table.label(store);
        self.stores
            .get(label)
            .or_else(|| self.stores.get(OTHER_STORE))
            .expect("`other` is always present")
    }

    /// Counts a transfer of `store` that ended with `outcome` (one of the role's outcomes;
    /// another is not counted), having moved `bytes`, over `took` (`None`: no duration, as
    /// for a refusal).
    pub fn record(&self, store: &str, outcome: &str, bytes: u64, took: Option<Duration>) {
        let one = self.one(store);
        if let Some(c) = one.outcomes.get(outcome) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        one.bytes.fetch_add(bytes, Ordering::Relaxed);
        if let Some(t) = took {
            one.duration.observe(t.as_secs_f64());
        }
    }
}

/// Observations counted into fixed buckets, Prometheus-style: cheap to record from any
/// thread, read at scrape time.
#[derive(Debug)]
pub struct Histogram {
    pub(crate) bounds: Vec<f64>,
    /// One per bound, not cumulative; the last counts what exceeds every bound.
    counts: Vec<std::sync::atomic::AtomicU64>,
    /// Sum of observations, in millionths.
    pub(crate) sum_micros: std::sync::atomic::AtomicU64,
}

impl Histogram {
    /// A histogram with these upper bounds (ascending).
    pub fn new(bounds: &[f64]) -> Arc<Self> {
        Arc::new(Self {
            bounds: bounds.to_vec(),
            counts: (0..=bounds.len()).map(|_| Default::default()).collect(),
            sum_micros: Default::default(),
        })
    }

    /// Counts one observation.
    pub fn observe(&self, v: f64) {
        use std::sync::atomic::Ordering::Relaxed;
        let i = self
            .bounds
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Relaxed);
        self.sum_micros
            .fetch_add((v.max(0.0) * 1e6) as u64, Relaxed);
    }

    /// Observations at or below `bounds[i]` (every one for `i == bounds.len()`).
    pub(crate) fn cumulative(&self, i: usize) -> f64 {
        use std::sync::atomic::Ordering::Relaxed;
        self.counts[..=i]
            .iter()
            .map(|c| c.load(Relaxed))
            .sum::<u64>() as f64
    }
}
