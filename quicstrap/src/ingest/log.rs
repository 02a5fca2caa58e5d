//! The change log as catch-up sees it: its records, its watermarks, the outcome of one read
//! and the errors of reading, classified by what the reader does next. The log is a trait so
//! the demo's embedded log and Kafka run through the same catch-up code.

use std::time::Duration;

use serde::Serialize;

/// One record of a partition's log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRecord {
    /// Its offset in the partition's log.
    pub offset: u64,
    /// RocksDB key; `None` for a record without one, which cannot be applied (a bad record).
    pub key: Option<Vec<u8>>,
    /// RocksDB value; `None` is a tombstone (delete).
    pub value: Option<Vec<u8>>,
}

/// Why reading the log failed, classified by what the reader does next.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LogError {
    /// The broker cannot be reached or answered with a transient error: retry the same
    /// client with backoff.
    #[error("log unavailable: {0}")]
    Unavailable(String),
    /// The client hit a fatal error and was replaced by a fresh one: retry with backoff.
    #[error("log client failed and was recreated: {0}")]
    Fatal(String),
    /// The log no longer holds offset `from` (retention removed it): waiting cannot bring it
    /// back, so it is never retried. The partition needs a newer base (a peer transfer).
    #[error("offset {from} is no longer in the log; the earliest offset is {earliest}")]
    OffsetOutOfRange {
        /// The offset asked for.
        from: u64,
        /// The first offset the log still holds.
        earliest: u64,
    },
    /// The client cannot be made as configured (a bad property, a bad topic): fix the
    /// configuration; retrying changes nothing.
    #[error("log configuration: {0}")]
    Config(String),
}

impl LogError {
    /// Whether retrying may help.
    pub fn retriable(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::Fatal(_))
    }
}

/// The offsets a log holds: `low` is the first one still there, `high` one past the last.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Watermarks {
    /// First offset still in the log (retention deletes below it).
    pub low: u64,
    /// One past the last offset written (the high watermark).
    pub high: u64,
}

/// The outcome of one read: the records that arrived, and the error that ended the read
/// early, if one did. Both can be set: records that came before a failure are still good, but
/// the failure counts against the catch-up deadline.
#[derive(Debug, Default)]
pub struct Fetched {
    /// Records in offset order.
    pub records: Vec<LogRecord>,
    /// The failure that ended the read, if any.
    pub error: Option<LogError>,
}

impl From<Result<Vec<LogRecord>, LogError>> for Fetched {
    fn from(r: Result<Vec<LogRecord>, LogError>) -> Self {
        match r {
            Ok(records) => Self {
                records,
                error: None,
            },
            Err(e) => Self {
                records: Vec::new(),
                error: Some(e),
            },
        }
    }
}

/// A partition's change log, positioned by offset.
pub trait LogSource: Send {
    /// The offsets the log holds now.
    fn watermarks(
        &mut self,
    ) -> impl std::future::Future<Output = Result<Watermarks, LogError>> + Send;

    /// Where the reader stands: the offset after the last one it has consumed or skipped.
    /// A log whose offsets can have holes (Kafka: transaction markers, aborted batches) reports
    /// it so a catch-up can tell "caught up" from "nothing arrives"; `None` when unknown.
    fn position(&mut self) -> Option<u64> {
        None
    }

    /// Names the log in messages (Kafka: `topic/partition`).
    fn describe(&self) -> String {
        "log".into()
    }

    /// Up to `max` records starting at `from`, waiting at most `wait` for the first one; no
    /// records and no error means nothing is there yet.
    fn read(
        &mut self,
        from: u64,
        max: usize,
        wait: Duration,
    ) -> impl std::future::Future<Output = Fetched> + Send;
}
