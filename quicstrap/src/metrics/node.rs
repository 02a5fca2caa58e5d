//! The metrics of the node rather than of a transfer: the process's memory, and the
//! ingestion health of each partition it follows.

use std::sync::Arc;

use super::{Kind, Registry};
use crate::ingest::{IngestState, IngestStats};

/// The process's resident memory and its peak, read at every scrape (Linux `/proc`); register
/// once per registry.
pub fn register_process(r: &Registry) {
    r.register(
        "quicstrap_process_resident_memory_bytes",
        "Resident memory of this process (VmRSS), sampled at scrape time.",
        Kind::Gauge,
        &[],
        || crate::control::budget::process_rss(None).map_or(f64::NAN, |(rss, _)| rss as f64),
    );
    r.register(
        "quicstrap_process_peak_resident_memory_bytes",
        "Peak resident memory of this process since it started (VmHWM).",
        Kind::Gauge,
        &[],
        || crate::control::budget::process_rss(None).map_or(f64::NAN, |(_, peak)| peak as f64),
    );
}

/// Ingestion health of each followed partition, labelled with it: a follower that stops
/// making progress must show on a dashboard, not only in a log line.
pub fn register_ingest(r: &Registry, partitions: &[(String, Arc<IngestStats>)]) {
    for (id, stats) in partitions {
        let l = [("partition", id.as_str())];
        let s = stats.clone();
        r.register(
            "quicstrap_ingest_lag_records",
            "Records between the applied offset and the high watermark at the last probe.",
            Kind::Gauge,
            &l,
            move || s.lag() as f64,
        );
        let s = stats.clone();
        r.register(
            "quicstrap_ingest_offset",
            "Last offset applied to the partition (NaN: none yet).",
            Kind::Gauge,
            &l,
            move || s.offset().map_or(f64::NAN, |o| o as f64),
        );
        let s = stats.clone();
        r.register(
            "quicstrap_ingest_last_progress_timestamp_seconds",
            "Unix time ingestion last applied records or was found caught up.",
            Kind::Gauge,
            &l,
            move || s.last_progress_secs(),
        );
        let s = stats.clone();
        r.register(
            "quicstrap_ingest_bad_records_total",
            "Records skipped because they cannot become a RocksDB entry (no key).",
            Kind::Counter,
            &l,
            move || s.bad_records() as f64,
        );
        for state in IngestState::ALL {
            let s = stats.clone();
            r.register(
                "quicstrap_ingest_state",
                "1 for the state ingestion is in: following, stalled, or stopped (not offered to peers).",
                Kind::Gauge,
                &[("partition", id.as_str()), ("state", state.name())],
                move || f64::from(u8::from(s.state() == state)),
            );
        }
    }
}
