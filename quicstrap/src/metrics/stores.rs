//! The per-store series: [`StoreMetrics`] (counted in `crate::control::store_counts`)
//! registered as `quicstrap_store_*`, labelled with the store (configured stores by name,
//! the rest as `other`).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{Kind, Registry};
pub use crate::control::store_counts::{
    StoreMetrics, DURATION_BUCKETS, FETCH_OUTCOMES, SERVE_OUTCOMES,
};

impl StoreMetrics {
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
    use crate::control::stores::{StorePolicy, StoreTable};
    use std::time::Duration;

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
