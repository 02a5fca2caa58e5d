//! What a catch-up is told and what it tells back: its knobs (batch size, deadline, backoff,
//! the bad-record policy, the stall threshold) and its report.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::IngestStats;

/// What to do with a record that cannot become a RocksDB entry (no key).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BadRecordPolicy {
    /// Skip it, count it (`quicstrap_ingest_bad_records_total`) and log where it is: one bad
    /// producer must not stop a partition for good.
    #[default]
    Skip,
    /// Stop ingestion at the record before it, with
    /// [`CatchUpError::BadRecord`](super::CatchUpError::BadRecord).
    Fail,
}

impl std::str::FromStr for BadRecordPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "skip" => Ok(Self::Skip),
            "fail" => Ok(Self::Fail),
            _ => Err(format!("{s:?}: expected skip or fail")),
        }
    }
}

/// Knobs of catch-up.
#[derive(Clone, Debug)]
pub struct CatchUpConfig {
    /// Records per WriteBatch.
    pub batch: usize,
    /// Catching up to the high watermark: give up (with the partition valid at its last
    /// offset) after this long without being able to read the log. Following never gives up
    /// on an unreachable broker; it reports the partition stalled instead.
    pub deadline: Duration,
    /// First retry delay; doubled up to `max_backoff`.
    pub backoff: Duration,
    /// Longest retry delay.
    pub max_backoff: Duration,
    /// What a record without a key does.
    pub on_bad_record: BadRecordPolicy,
    /// No progress for this long while records are waiting, or the broker unreachable this
    /// long, makes the partition `stalled`, logged once at WARN.
    pub stall_after: Duration,
    /// Health and progress of this partition's ingestion, shared with metrics.
    pub stats: Arc<IngestStats>,
}

impl Default for CatchUpConfig {
    fn default() -> Self {
        Self {
            batch: 5_000,
            deadline: Duration::from_secs(120),
            backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
            on_bad_record: BadRecordPolicy::Skip,
            stall_after: Duration::from_secs(30),
            stats: Arc::default(),
        }
    }
}

/// What a catch-up did.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct CatchUpReport {
    /// Stored offset before (`None`: the partition had none, so it started at 0).
    pub from_offset: Option<u64>,
    /// Stored offset after.
    pub to_offset: Option<u64>,
    /// Records applied.
    pub records: u64,
    /// Records skipped as bad (no key).
    pub bad_records: u64,
    /// Batches written.
    pub batches: u64,
}
