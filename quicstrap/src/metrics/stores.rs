//! Metrics per store: which store pays for what. Transfers by outcome (serving) or by the
//! path a bootstrap took (fetching), bytes, and how long transfers take — labelled with the
//! store, its cardinality bounded by [`StoreTable::label`] (configured stores by name, the
//! rest as `other`), so no client can grow the series by asking for names.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::registry::Histogram;
use super::{Kind, Registry};
use crate::control::stores::{StoreTable, OTHER_STORE};

/// Upper bounds of the transfer-duration histogram, seconds: a small partition on a fast link
/// to a 10 GB one over a slow cross-datacenter path.
pub const DURATION_BUCKETS: [f64; 10] = [
    0.5, 1.0, 2.5, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 14400.0,
];

/// Outcomes of serving a transfer.
pub const SERVE_OUTCOMES: [&str; 3] = ["completed", "failed", "refused"];

/// Paths a bootstrap takes ([`crate::jobs::bootstrap::BootstrapPath::label`]), and `failed`.
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
struct One {
    outcomes: HashMap<&'static str, AtomicU64>,
    bytes: AtomicU64,
    duration: Arc<Histogram>,
}

/// The per-store metrics of one role (serving or fetching), for the stores of a table fixed
/// when created: a store configured later counts as `other` until the process restarts.
#[derive(Debug)]
pub struct StoreMetrics {
    role: &'static str,
    table: StoreTable,
    stores: HashMap<String, One>,
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

    /// Registers every series: `quicstrap_store_transfers_total{store,role,outcome}`,
    /// `quicstrap_store_bytes_total{store,role}` and the histogram
    /// `quicstrap_store_transfer_duration_seconds{store,role}`.
    pub fn register(self: &Arc<Self>, r: &Registry) {
        let mut labels: Vec<&String> = self.stores.keys().collect();
        labels.sort();
        for store in &labels {
            let mut outcomes: Vec<&&str> = self.stores[*store].outcomes.keys().collect();
            outcomes.sort();
            for outcome in outcomes {
                let me = self.clone();
                let (s, o) = ((*store).clone(), *outcome);
                r.register(
                    "quicstrap_store_transfers_total",
                    "Transfers per store (configured stores by name, the rest as `other`): \
                     serving ones by outcome, fetching ones (bootstraps) by the path taken.",
                    Kind::Counter,
                    &[("store", store), ("role", self.role), ("outcome", outcome)],
                    move || me.stores[&s].outcomes[o].load(Ordering::Relaxed) as f64,
                );
            }
        }
        for store in &labels {
            let me = self.clone();
            let s = (*store).clone();
            r.register(
                "quicstrap_store_bytes_total",
                "File payload bytes per store, sent (serve) or received (fetch).",
                Kind::Counter,
                &[("store", store), ("role", self.role)],
                move || me.stores[&s].bytes.load(Ordering::Relaxed) as f64,
            );
        }
        for store in &labels {
            r.register_histogram(
                "quicstrap_store_transfer_duration_seconds",
                "How long transfers of each store took, from request to end.",
                &[("store", store), ("role", self.role)],
                &self.stores[*store].duration,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::stores::StorePolicy;

    #[test]
    fn unconfigured_stores_count_as_other_and_series_stay_bounded() {
        let mut t = StoreTable::default();
        t.0.insert("orders".into(), StorePolicy::default());
        let m = StoreMetrics::serving(&t);
        let r = Registry::new();
        m.register(&r);
        let before = r.render().lines().count();
        m.record("orders", "completed", 100, Some(Duration::from_secs(2)));
        for i in 0..50 {
            m.record(&format!("made-up-{i}"), "refused", 0, None);
        }
        m.record("orders", "no-such-outcome", 1, None);
        let text = r.render();
        assert_eq!(text.lines().count(), before, "no series added by names");
        assert!(text.contains(
            "quicstrap_store_transfers_total{store=\"orders\",role=\"serve\",outcome=\"completed\"} 1"
        ));
        assert!(text.contains(
            "quicstrap_store_transfers_total{store=\"other\",role=\"serve\",outcome=\"refused\"} 50"
        ));
        assert!(text.contains("quicstrap_store_bytes_total{store=\"orders\",role=\"serve\"} 101"));
        assert!(text.contains(
            "quicstrap_store_transfer_duration_seconds_bucket{store=\"orders\",role=\"serve\",le=\"2.5\"} 1"
        ));
        assert!(text.contains(
            "quicstrap_store_transfer_duration_seconds_bucket{store=\"orders\",role=\"serve\",le=\"1\"} 0"
        ));
        assert!(text.contains(
            "quicstrap_store_transfer_duration_seconds_count{store=\"orders\",role=\"serve\"} 1"
        ));
        assert!(text.contains("# TYPE quicstrap_store_transfer_duration_seconds histogram"));
    }
}
