//! The catch-up loop: reads the log from the partition's next offset and applies every batch
//! together with its last offset in one WriteBatch, so data and offset never disagree. Broker
//! faults are retried with backoff: up to the deadline when catching up to the high watermark,
//! without end (reported as a stall) when following. Every RocksDB call runs on the blocking
//! pool, so a write stall holds up ingestion, never the QUIC tasks of the same process.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rocksdb::DB;

use super::health;
use super::{
    check_position, next_offset, Backoff, BadRecordPolicy, CatchUpConfig, CatchUpError,
    CatchUpReport, LogError, LogRecord, LogSource, Watermarks,
};
use crate::store::partition::{self, StorageError};

/// Where catch-up stops.
#[derive(Clone, Copy, Debug)]
pub enum Until {
    /// At the high watermark read when catch-up starts.
    HighWatermark,
    /// Never on its own: keep following until the returned future is dropped.
    Follow,
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
