//! Catch-up: applying a partition's change log (Kafka) to its RocksDB, from its own offset.
//!
//! Records are applied in batches, each batch together with its last offset in **one**
//! `WriteBatch` ([`crate::partition::apply_batch`]), so the data and the offset can never
//! disagree, not even across a crash: a restart resumes right after the stored offset, and no
//! record is lost or applied twice in effect. The log is a trait so the demo can run the same
//! code over an embedded log; [`kafka::KafkaLog`] is the real one.

pub mod kafka;
pub mod local;

use std::time::{Duration, Instant};

use rocksdb::DB;
use serde::Serialize;

use crate::partition::{self, PartitionId, StorageError};

/// One record of a partition's log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRecord {
    /// Its offset in the partition's log.
    pub offset: u64,
    /// RocksDB key.
    pub key: Vec<u8>,
    /// RocksDB value; `None` is a tombstone (delete).
    pub value: Option<Vec<u8>>,
}

/// Why reading the log failed. Every variant is retried with backoff until the catch-up
/// deadline; the partition stays valid at its last applied offset meanwhile.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LogError {
    /// The broker cannot be reached or answered with an error.
    #[error("log unavailable: {0}")]
    Unavailable(String),
    /// A record has no key (it cannot become a RocksDB entry).
    #[error("record at offset {0} has no key")]
    NoKey(u64),
}

/// A partition's change log, positioned by offset.
pub trait LogSource: Send {
    /// One past the last offset in the log (the high watermark).
    fn high_watermark(&mut self)
        -> impl std::future::Future<Output = Result<u64, LogError>> + Send;

    /// Where the reader stands: the offset after the last one it has consumed or skipped.
    /// A log whose offsets can have holes (Kafka: transaction markers, aborted batches) reports
    /// it so a catch-up can tell "caught up" from "nothing arrives"; `None` when unknown.
    fn position(&mut self) -> Option<u64> {
        None
    }

    /// Up to `max` records starting at `from`, waiting at most `wait` for the first one; an
    /// empty answer means nothing is there yet.
    fn read(
        &mut self,
        from: u64,
        max: usize,
        wait: Duration,
    ) -> impl std::future::Future<Output = Result<Vec<LogRecord>, LogError>> + Send;
}

/// Knobs of catch-up.
#[derive(Clone, Debug)]
pub struct CatchUpConfig {
    /// Records per WriteBatch.
    pub batch: usize,
    /// Give up (with the partition valid at its last offset) after this long without being
    /// able to read the log.
    pub deadline: Duration,
    /// First retry delay; doubled up to `max_backoff`.
    pub backoff: Duration,
    /// Longest retry delay.
    pub max_backoff: Duration,
}

impl Default for CatchUpConfig {
    fn default() -> Self {
        Self {
            batch: 5_000,
            deadline: Duration::from_secs(120),
            backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// What a catch-up did.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct CatchUpReport {
    /// Stored offset before (`None`: the partition had none, so it started at 0).
    pub from_offset: Option<u64>,
    /// Stored offset after.
    pub to_offset: Option<u64>,
    /// Records applied.
    pub records: u64,
    /// Batches written.
    pub batches: u64,
}

/// Why catch-up stopped short.
#[derive(Debug, thiserror::Error)]
pub enum CatchUpError {
    /// The log stayed unreadable past the deadline; run again to resume from `applied`.
    #[error("log unavailable for {waited:?} (last error: {last}); partition valid at offset {applied:?}")]
    Unavailable {
        /// Last error seen.
        last: LogError,
        /// How long it was retried.
        waited: Duration,
        /// Offset the partition holds now.
        applied: Option<u64>,
    },
    /// A record cannot be applied.
    #[error(transparent)]
    BadRecord(LogError),
    /// Writing the partition failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Retry state for log reads: exponential backoff, bounded by a deadline since the last
/// success. Pure: time is passed in.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    first: Duration,
    max: Duration,
    failing_since: Option<Instant>,
}

impl Backoff {
    /// A fresh backoff.
    pub fn new(first: Duration, max: Duration) -> Self {
        Self {
            next: first,
            first,
            max,
            failing_since: None,
        }
    }

    /// A read succeeded.
    pub fn success(&mut self) {
        self.next = self.first;
        self.failing_since = None;
    }

    /// A read failed at `now`: how long to wait, or `None` when failing for longer than
    /// `deadline` (give up).
    pub fn failure(&mut self, now: Instant, deadline: Duration) -> Option<Duration> {
        let since = *self.failing_since.get_or_insert(now);
        if now.saturating_duration_since(since) >= deadline {
            return None;
        }
        let wait = self.next;
        self.next = (self.next * 2).min(self.max);
        Some(wait)
    }

    /// How long reads have been failing, as of `now`.
    pub fn failing_for(&self, now: Instant) -> Duration {
        self.failing_since
            .map(|s| now.saturating_duration_since(s))
            .unwrap_or_default()
    }
}

/// Where catch-up stops.
#[derive(Clone, Copy, Debug)]
pub enum Until {
    /// At the high watermark read when catch-up starts.
    HighWatermark,
    /// Never on its own: keep following until the returned future is dropped.
    Follow,
}

/// Applies the log to `db` from the offset stored in it (exclusive) onward.
pub async fn catch_up<S: LogSource>(
    db: &DB,
    log: &mut S,
    until: Until,
    cfg: &CatchUpConfig,
) -> Result<CatchUpReport, CatchUpError> {
    let from_offset = partition::read_meta(db)?.offset;
    let mut report = CatchUpReport {
        from_offset,
        to_offset: from_offset,
        records: 0,
        batches: 0,
    };
    let mut next = from_offset.map(|o| o + 1).unwrap_or(0);
    let mut backoff = Backoff::new(cfg.backoff, cfg.max_backoff);
    let target = match until {
        Until::Follow => None,
        Until::HighWatermark => Some(high_watermark(log, cfg, from_offset).await?),
    };
    loop {
        if target.is_some_and(|t| next >= t) {
            return Ok(report);
        }
        let records = match log.read(next, cfg.batch, Duration::from_millis(500)).await {
            Ok(r)
                if r.is_empty()
                    && target.is_some_and(|t| log.position().is_some_and(|p| p >= t)) =>
            {
                // Nothing but offsets without records (e.g. a transaction's commit marker) up
                // to the target: caught up.
                return Ok(report);
            }
            Ok(r) if r.is_empty() && target.is_some() => {
                // Behind a known high watermark yet nothing arrives: the broker is not
                // answering. Count it against the deadline like any other failure.
                let e = LogError::Unavailable("no records while behind the high watermark".into());
                retry_or_fail(&mut backoff, report.to_offset, cfg, e).await?;
                continue;
            }
            Ok(r) => {
                backoff.success();
                r
            }
            Err(e) => {
                retry_or_fail(&mut backoff, report.to_offset, cfg, e).await?;
                continue;
            }
        };
        let fresh: Vec<&LogRecord> = records.iter().filter(|r| r.offset >= next).collect();
        let Some(last) = fresh.last().map(|r| r.offset) else {
            continue;
        };
        partition::apply_batch(
            db,
            fresh.iter().map(|r| (r.key.as_slice(), r.value.as_deref())),
            last,
        )?;
        report.records += fresh.len() as u64;
        report.batches += 1;
        report.to_offset = Some(last);
        next = last + 1;
    }
}

/// Sleeps before the next try, or gives up once reads have failed for the whole deadline.
/// The log's high watermark, retried with backoff until `cfg.deadline`; the error names
/// `applied`, the offset the partition is valid at.
pub async fn high_watermark<S: LogSource>(
    log: &mut S,
    cfg: &CatchUpConfig,
    applied: Option<u64>,
) -> Result<u64, CatchUpError> {
    let mut backoff = Backoff::new(cfg.backoff, cfg.max_backoff);
    loop {
        match log.high_watermark().await {
            Ok(hw) => return Ok(hw),
            Err(e) => retry_or_fail(&mut backoff, applied, cfg, e).await?,
        }
    }
}

async fn retry_or_fail(
    backoff: &mut Backoff,
    applied: Option<u64>,
    cfg: &CatchUpConfig,
    e: LogError,
) -> Result<(), CatchUpError> {
    if matches!(e, LogError::NoKey(_)) {
        return Err(CatchUpError::BadRecord(e));
    }
    let now = Instant::now();
    match backoff.failure(now, cfg.deadline) {
        Some(wait) => {
            tracing::warn!(error = %e, retry_in = ?wait, "log read failed");
            tokio::time::sleep(wait).await;
            Ok(())
        }
        None => Err(CatchUpError::Unavailable {
            last: e,
            waited: backoff.failing_for(now),
            applied,
        }),
    }
}

/// The Kafka topic of a store version: `<store>_v<version>`; the Kafka partition is the
/// partition number.
pub fn topic(id: &PartitionId) -> String {
    id.store_version_dir()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_gives_up_after_the_deadline() {
        let t0 = Instant::now();
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let deadline = Duration::from_secs(2);
        assert_eq!(b.failure(t0, deadline), Some(Duration::from_millis(100)));
        assert_eq!(b.failure(t0, deadline), Some(Duration::from_millis(200)));
        assert_eq!(b.failure(t0, deadline), Some(Duration::from_millis(350)));
        assert_eq!(
            b.failure(t0 + Duration::from_secs(1), deadline),
            Some(Duration::from_millis(350))
        );
        assert_eq!(b.failure(t0 + Duration::from_secs(2), deadline), None);
        b.success();
        assert_eq!(
            b.failure(t0 + Duration::from_secs(3), deadline),
            Some(Duration::from_millis(100))
        );
    }
}
