//! Why a catch-up stopped short, one variant per thing the caller does next: rerun later,
//! fetch a newer base, discard the partition, or fix the configuration or the producer.

use std::time::Duration;

use super::LogError;
use crate::store::partition::StorageError;

/// Why catch-up stopped short. The partition is valid at its stored offset in every case.
#[derive(Debug, thiserror::Error)]
pub enum CatchUpError {
    /// The log stayed unreadable past the deadline: run again later to resume from `applied`.
    #[error("log unavailable for {waited:?} (last error: {last}); partition valid at offset {applied:?}")]
    Unavailable {
        /// Last error seen.
        last: LogError,
        /// How long it was retried.
        waited: Duration,
        /// Offset the partition holds now.
        applied: Option<u64>,
    },
    /// Retention removed records the partition has not applied: it can never be caught up
    /// from the log. Get a newer base from a peer, or rebuild from `earliest`.
    #[error("retention gap: the partition holds offset {have:?}, the log starts at {earliest}")]
    OffsetOutOfRange {
        /// Offset the partition holds (`None`: none, it needs offset 0).
        have: Option<u64>,
        /// The first offset the log still holds.
        earliest: u64,
    },
    /// The partition claims an offset the log has never reached (a snapshot of another
    /// topic's history, a recreated topic) or that no log can hold: it does not belong to this
    /// log. Discard it or fix the topic; retrying changes nothing.
    #[error("impossible offset: the partition holds offset {have}, the log ends before {high_watermark:?}")]
    ImpossibleOffset {
        /// Offset the partition holds.
        have: u64,
        /// The log's high watermark, when it was read.
        high_watermark: Option<u64>,
    },
    /// A record without a key, under
    /// [`BadRecordPolicy::Fail`](super::BadRecordPolicy::Fail): the partition stops right
    /// before it.
    #[error("{log}: record at offset {offset} has no key; ingestion stopped before it (--on-bad-record fail)")]
    BadRecord {
        /// The log (topic/partition).
        log: String,
        /// Its offset.
        offset: u64,
    },
    /// The log client cannot be made as configured.
    #[error(transparent)]
    Config(LogError),
    /// Writing the partition failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl CatchUpError {
    /// Short stable label for reports.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Unavailable { .. } => "log_unavailable",
            Self::OffsetOutOfRange { .. } => "offset_out_of_range",
            Self::ImpossibleOffset { .. } => "impossible_offset",
            Self::BadRecord { .. } => "bad_record",
            Self::Config(_) => "log_config",
            Self::Storage(_) => "storage",
        }
    }
}
