//! Catch-up: applying a partition's change log (Kafka) to its RocksDB, from its own offset.
//!
//! Records are applied in batches, each batch together with its last offset in **one**
//! `WriteBatch` ([`crate::partition::apply_batch`]), so the data and the offset can never
//! disagree, not even across a crash: a restart resumes right after the stored offset, and no
//! record is lost or applied twice in effect. Every RocksDB call runs on the blocking pool: a
//! write stall holds up ingestion, never the QUIC tasks of the same process.
//!
//! Broker faults are classified, because each calls for something different: a transient one
//! is retried with backoff until the deadline, a retention gap is reported at once (waiting
//! cannot bring deleted records back), an impossible offset is reported at once, and a record
//! that cannot become a RocksDB entry is skipped and counted, or stops ingestion, by policy.
//! The log is a trait so the demo can run the same code over an embedded log;
//! [`kafka::KafkaLog`] is the real one.

pub mod follow;
pub mod health;
pub mod kafka;
pub mod local;

use std::sync::Arc;
use std::time::{Duration, Instant};

use rocksdb::DB;
use serde::Serialize;

use crate::partition::{self, PartitionId, StorageError};
pub use health::{IngestState, IngestStats};

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

/// What to do with a record that cannot become a RocksDB entry (no key).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BadRecordPolicy {
    /// Skip it, count it (`quicstrap_ingest_bad_records_total`) and log where it is: one bad
    /// producer must not stop a partition for good.
    #[default]
    Skip,
    /// Stop ingestion at the record before it, with [`CatchUpError::BadRecord`].
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
    /// A record without a key, under [`BadRecordPolicy::Fail`]: the partition stops right
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

/// Retry state for log reads: exponential backoff, bounded by a deadline since the last
/// clean read. Pure: time is passed in.
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

    /// A read succeeded without error. A read that brought records and then failed is not a
    /// success: a flapping broker must still reach the deadline.
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

/// Kafka offsets are signed 64-bit: anything above this is no log's offset.
const MAX_OFFSET: u64 = i64::MAX as u64;

/// The offset after `have`, or the typed error when `have` is no possible offset.
pub fn next_offset(have: Option<u64>) -> Result<u64, CatchUpError> {
    match have {
        None => Ok(0),
        Some(o) if o < MAX_OFFSET => Ok(o + 1),
        Some(o) => Err(CatchUpError::ImpossibleOffset {
            have: o,
            high_watermark: None,
        }),
    }
}

/// Checks that a partition holding `have` can be caught up from a log holding `wm`: no
/// retention gap before it, not ahead of the log.
pub fn check_position(have: Option<u64>, wm: Watermarks) -> Result<(), CatchUpError> {
    let next = next_offset(have)?;
    if next < wm.low {
        return Err(CatchUpError::OffsetOutOfRange {
            have,
            earliest: wm.low,
        });
    }
    if next > wm.high {
        return Err(CatchUpError::ImpossibleOffset {
            have: next - 1,
            high_watermark: Some(wm.high),
        });
    }
    Ok(())
}

/// Reads the stored offset off the async workers.
pub async fn stored_offset(db: &Arc<DB>) -> Result<Option<u64>, StorageError> {
    let db = db.clone();
    blocking(move || partition::read_meta(&db).map(|m| m.offset)).await
}

/// Runs a RocksDB call on the blocking pool: a stalled write must not hold an async worker.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StorageError::Io(std::io::Error::other(e)))?
}

/// Applies the log to `db` from the offset stored in it (exclusive) onward.
pub async fn catch_up<S: LogSource>(
    db: &Arc<DB>,
    log: &mut S,
    until: Until,
    cfg: &CatchUpConfig,
) -> Result<CatchUpReport, CatchUpError> {
    let mut report = CatchUpReport::default();
    catch_up_into(db, log, until, cfg, &mut report).await?;
    Ok(report)
}

/// [`catch_up`], keeping what was done in `report` even when it fails: a bootstrap reports
/// the records it applied before the broker went away.
pub async fn catch_up_into<S: LogSource>(
    db: &Arc<DB>,
    log: &mut S,
    until: Until,
    cfg: &CatchUpConfig,
    report: &mut CatchUpReport,
) -> Result<(), CatchUpError> {
    let from_offset = stored_offset(db).await?;
    *report = CatchUpReport {
        from_offset,
        to_offset: from_offset,
        ..Default::default()
    };
    let mut run = Run {
        cfg,
        health: health::Tracker::new(cfg.stats.clone(), cfg.stall_after, log.describe()),
        backoff: Backoff::new(cfg.backoff, cfg.max_backoff),
        next: next_offset(from_offset)?,
        until,
    };
    run.health.start(from_offset);
    let result = run.run(db, log, report).await;
    match &result {
        // Catching up to the high watermark gave up on an outage: nothing is wrong with the
        // partition, a rerun resumes.
        Err(CatchUpError::Unavailable { .. }) => {}
        Err(e) => run.health.stopped(e),
        Ok(()) => {}
    }
    result
}

/// One catch-up in progress.
struct Run<'a> {
    cfg: &'a CatchUpConfig,
    health: health::Tracker,
    backoff: Backoff,
    /// The next offset to apply.
    next: u64,
    until: Until,
}

impl Run<'_> {
    /// Checks the position against the log, then applies up to the target.
    async fn run<S: LogSource>(
        &mut self,
        db: &Arc<DB>,
        log: &mut S,
        report: &mut CatchUpReport,
    ) -> Result<(), CatchUpError> {
        let target = match self.until {
            Until::HighWatermark => {
                let wm = self
                    .watermarks_until_deadline(log, report.to_offset)
                    .await?;
                check_position(report.to_offset, wm)?;
                Some(wm.high)
            }
            Until::Follow => {
                // Check for a gap before the first read when the broker answers; a broker
                // that is down now is reported as a stall and waited out.
                if let Ok(wm) = log.watermarks().await {
                    check_position(report.to_offset, wm)?;
                    self.health.probed(self.next, wm);
                }
                None
            }
        };
        self.apply_until(db, log, target, report).await
    }

    async fn apply_until<S: LogSource>(
        &mut self,
        db: &Arc<DB>,
        log: &mut S,
        target: Option<u64>,
        report: &mut CatchUpReport,
    ) -> Result<(), CatchUpError> {
        loop {
            if target.is_some_and(|t| self.next >= t) {
                return Ok(());
            }
            if self.health.probe_due() {
                match log.watermarks().await {
                    Ok(wm) => {
                        check_position(report.to_offset, wm)?;
                        self.health.probed(self.next, wm);
                    }
                    Err(e) => self.health.unreachable(&e),
                }
            }
            let fetched = log
                .read(self.next, self.cfg.batch, Duration::from_millis(500))
                .await;
            if let Some(LogError::OffsetOutOfRange { earliest, .. }) = &fetched.error {
                return Err(CatchUpError::OffsetOutOfRange {
                    have: report.to_offset,
                    earliest: *earliest,
                });
            }
            let got_records = !fetched.records.is_empty();
            if got_records {
                self.apply(db, log, fetched.records, report).await?;
            }
            match fetched.error {
                Some(e) => {
                    self.health.unreachable(&e);
                    self.retry_or_fail(report.to_offset, e).await?;
                }
                None if got_records => self.backoff.success(),
                None => {
                    if target.is_some_and(|t| log.position().is_some_and(|p| p >= t)) {
                        // Nothing but offsets without records (e.g. a transaction's commit
                        // marker) up to the target: caught up.
                        return Ok(());
                    }
                    if target.is_some() {
                        // Behind a known high watermark yet nothing arrives: the broker is
                        // not answering. Count it against the deadline like any other
                        // failure.
                        let e = LogError::Unavailable(
                            "no records while behind the high watermark".into(),
                        );
                        self.retry_or_fail(report.to_offset, e).await?;
                    } else {
                        self.backoff.success();
                    }
                }
            }
        }
    }

    /// Applies the records at or after `next`: bad ones skipped (and counted) or fatal by
    /// policy, the rest with the offset of the last one, in one WriteBatch on the blocking
    /// pool.
    async fn apply<S: LogSource>(
        &mut self,
        db: &Arc<DB>,
        log: &S,
        records: Vec<LogRecord>,
        report: &mut CatchUpReport,
    ) -> Result<(), CatchUpError> {
        let mut good = Vec::with_capacity(records.len());
        let mut last = None;
        let mut stop_at = None;
        let mut bad = 0;
        for r in records.into_iter().filter(|r| r.offset >= self.next) {
            if r.key.is_none() {
                if self.cfg.on_bad_record == BadRecordPolicy::Fail {
                    stop_at = Some(r.offset);
                    break;
                }
                tracing::warn!(log = %log.describe(), offset = r.offset, "skipping a record without a key");
                bad += 1;
            }
            last = Some(r.offset);
            good.push(r);
        }
        if let Some(last) = last {
            let db = db.clone();
            blocking(move || {
                partition::apply_batch(
                    &db,
                    good.iter()
                        .filter_map(|r| r.key.as_deref().map(|k| (k, r.value.as_deref()))),
                    last,
                )
                .map(|()| good.len() as u64)
            })
            .await
            .map(|n| {
                report.records += n - bad;
                report.bad_records += bad;
                report.batches += 1;
                report.to_offset = Some(last);
                self.next = last.saturating_add(1);
                self.health.applied(last, bad);
            })?;
        }
        match stop_at {
            Some(offset) => Err(CatchUpError::BadRecord {
                log: log.describe(),
                offset,
            }),
            None => Ok(()),
        }
    }

    /// The log's watermarks, retried with backoff until the deadline.
    async fn watermarks_until_deadline<S: LogSource>(
        &mut self,
        log: &mut S,
        applied: Option<u64>,
    ) -> Result<Watermarks, CatchUpError> {
        loop {
            match log.watermarks().await {
                Ok(wm) => {
                    self.health.probed(self.next, wm);
                    return Ok(wm);
                }
                Err(e) => {
                    self.health.unreachable(&e);
                    self.retry_or_fail(applied, e).await?;
                }
            }
        }
    }

    /// Sleeps before the next try, or gives up once reads have failed for the whole deadline
    /// (never while following: an outage there is reported as a stall and waited out).
    async fn retry_or_fail(
        &mut self,
        applied: Option<u64>,
        e: LogError,
    ) -> Result<(), CatchUpError> {
        if !e.retriable() {
            return Err(CatchUpError::Config(e));
        }
        let now = Instant::now();
        let deadline = match self.until {
            Until::HighWatermark => self.cfg.deadline,
            Until::Follow => Duration::MAX,
        };
        match self.backoff.failure(now, deadline) {
            Some(wait) => {
                tracing::debug!(error = %e, retry_in = ?wait, "log read failed");
                tokio::time::sleep(wait).await;
                Ok(())
            }
            None => Err(CatchUpError::Unavailable {
                last: e,
                waited: self.backoff.failing_for(now),
                applied,
            }),
        }
    }
}

/// How change-log topics are named: a template over `{store}` and `{version}`; the Kafka
/// partition is the partition number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicTemplate(String);

impl Default for TopicTemplate {
    fn default() -> Self {
        Self("{store}_v{version}".into())
    }
}

impl std::str::FromStr for TopicTemplate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s.replace("{store}", "").replace("{version}", "");
        if rest.contains('{') || rest.contains('}') {
            return Err(format!(
                "{s:?}: only {{store}} and {{version}} may be substituted"
            ));
        }
        if !s.contains("{store}") {
            return Err(format!(
                "{s:?}: must contain {{store}}, or every store would share one topic"
            ));
        }
        Ok(Self(s.to_owned()))
    }
}

impl TopicTemplate {
    /// The topic of `id`'s store version.
    pub fn topic(&self, id: &PartitionId) -> String {
        self.0
            .replace("{store}", &id.store)
            .replace("{version}", &id.version.to_string())
    }
}

/// The Kafka topic of a store version under the default template, `<store>_v<version>`.
pub fn topic(id: &PartitionId) -> String {
    TopicTemplate::default().topic(id)
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

    /// A broker that hands out one record and then fails, on every read, forever.
    struct Flapping {
        next: u64,
    }

    impl LogSource for Flapping {
        async fn watermarks(&mut self) -> Result<Watermarks, LogError> {
            Ok(Watermarks {
                low: 0,
                high: u64::from(u32::MAX),
            })
        }

        async fn read(&mut self, from: u64, _max: usize, _wait: Duration) -> Fetched {
            self.next = from + 1;
            Fetched {
                records: vec![LogRecord {
                    offset: from,
                    key: Some(from.to_be_bytes().to_vec()),
                    value: Some(b"v".to_vec()),
                }],
                error: Some(LogError::Unavailable("connection reset".into())),
            }
        }
    }

    #[tokio::test]
    async fn a_flapping_broker_reaches_the_deadline_though_some_records_arrive() {
        let tmp = tempfile::tempdir().unwrap();
        let db =
            Arc::new(partition::open(tmp.path(), crate::partition::TableFormat::Block).unwrap());
        let cfg = CatchUpConfig {
            deadline: Duration::from_millis(300),
            backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(20),
            ..Default::default()
        };
        let mut log = Flapping { next: 0 };
        let err = tokio::time::timeout(
            Duration::from_secs(60),
            catch_up(&db, &mut log, Until::HighWatermark, &cfg),
        )
        .await
        .expect("the deadline ends it")
        .unwrap_err();
        let CatchUpError::Unavailable {
            applied, waited, ..
        } = err
        else {
            panic!("unexpected {err}");
        };
        // The records that came before each failure were kept.
        assert!(applied.is_some_and(|a| a + 1 == log.next), "{applied:?}");
        assert!(waited >= cfg.deadline);
    }

    #[test]
    fn positions_outside_the_log_are_typed_errors() {
        let wm = Watermarks { low: 10, high: 20 };
        assert!(check_position(Some(9), wm).is_ok());
        assert!(check_position(Some(19), wm).is_ok());
        assert!(matches!(
            check_position(Some(5), wm),
            Err(CatchUpError::OffsetOutOfRange {
                have: Some(5),
                earliest: 10
            })
        ));
        assert!(matches!(
            check_position(None, wm),
            Err(CatchUpError::OffsetOutOfRange {
                have: None,
                earliest: 10
            })
        ));
        assert!(matches!(
            check_position(Some(20), wm),
            Err(CatchUpError::ImpossibleOffset {
                have: 20,
                high_watermark: Some(20)
            })
        ));
        assert!(matches!(
            next_offset(Some(u64::MAX)),
            Err(CatchUpError::ImpossibleOffset { have: u64::MAX, .. })
        ));
        assert_eq!(next_offset(None).unwrap(), 0);
    }

    #[test]
    fn topic_templates_substitute_store_and_version_only() {
        let id = PartitionId::new("users", 3, 1).unwrap();
        assert_eq!(topic(&id), "users_v3");
        let t: TopicTemplate = "prod.{store}.v{version}.changelog".parse().unwrap();
        assert_eq!(t.topic(&id), "prod.users.v3.changelog");
        assert!("{store}_{partition}".parse::<TopicTemplate>().is_err());
        assert!("fixed".parse::<TopicTemplate>().is_err());
    }
}
