//! Health of a partition's ingestion: is it keeping up, stalled, or stopped for good.
//!
//! A follower that silently stops making progress is the worst failure a node can have: it
//! keeps serving data that grows older by the minute. `Tracker` turns what catch-up sees
//! (records applied, watermark probes, broker errors) into a state, a lag and a time of last
//! progress, shared with metrics through [`IngestStats`], and logs each stall once at WARN
//! with its cause.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::{LogError, Watermarks};

/// Where a partition's ingestion stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IngestState {
    /// Applying records as they come, or caught up.
    Following,
    /// No progress for the stall time while records wait, or the broker unreachable that
    /// long. Retried: it recovers on its own when the broker does.
    Stalled,
    /// Stopped until something changes (a storage error, a bad record under policy `fail`,
    /// a retention gap). A serving node stops offering the partition to peers.
    Stopped,
}

impl IngestState {
    /// Every state, for metrics that export one series per state.
    pub const ALL: [IngestState; 3] = [Self::Following, Self::Stalled, Self::Stopped];

    /// Stable lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Following => "following",
            Self::Stalled => "stalled",
            Self::Stopped => "stopped",
        }
    }
}

/// Ingestion counters of one partition, read by metrics and by the server (a stopped
/// partition is refused as `stale`).
#[derive(Debug)]
pub struct IngestStats {
    state: AtomicU8,
    /// Offset applied last, `u64::MAX` for none.
    offset: AtomicU64,
    /// Records behind the high watermark at the last probe.
    lag: AtomicU64,
    /// Unix time of the last progress (or of the start), milliseconds.
    last_progress_ms: AtomicU64,
    bad_records: AtomicU64,
}

impl Default for IngestStats {
    fn default() -> Self {
        Self {
            state: AtomicU8::new(0),
            offset: AtomicU64::new(u64::MAX),
            lag: AtomicU64::new(0),
            last_progress_ms: AtomicU64::new(unix_ms()),
            bad_records: AtomicU64::new(0),
        }
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl IngestStats {
    /// The current state.
    pub fn state(&self) -> IngestState {
        match self.state.load(Ordering::Relaxed) {
            1 => IngestState::Stalled,
            2 => IngestState::Stopped,
            _ => IngestState::Following,
        }
    }

    /// Sets the state (the follow loop marks a partition stopped when it cannot open it).
    pub fn set_state(&self, s: IngestState) {
        let v = match s {
            IngestState::Following => 0,
            IngestState::Stalled => 1,
            IngestState::Stopped => 2,
        };
        self.state.store(v, Ordering::Relaxed);
    }

    /// The offset applied last.
    pub fn offset(&self) -> Option<u64> {
        Some(self.offset.load(Ordering::Relaxed)).filter(|&o| o != u64::MAX)
    }

    /// Records behind the high watermark at the last probe.
    pub fn lag(&self) -> u64 {
        self.lag.load(Ordering::Relaxed)
    }

    /// Unix time of the last progress, seconds.
    pub fn last_progress_secs(&self) -> f64 {
        self.last_progress_ms.load(Ordering::Relaxed) as f64 / 1e3
    }

    /// Records skipped as bad since the process started.
    pub fn bad_records(&self) -> u64 {
        self.bad_records.load(Ordering::Relaxed)
    }
}

/// How often a follower asks the broker for its watermarks, at most.
const PROBE_EVERY: Duration = Duration::from_secs(5);

/// Turns catch-up events into [`IngestStats`] and WARN lines.
pub(super) struct Tracker {
    stats: Arc<IngestStats>,
    stall_after: Duration,
    log: String,
    /// When the broker started failing, and why.
    failing: Option<(Instant, String)>,
    /// Lag at the last good probe.
    lag: u64,
    /// Since when records are known to wait (a probe saw them after the last progress).
    waiting_since: Option<Instant>,
    last_probe: Option<Instant>,
    warned: bool,
    /// Stopped when this run began: stays so until it applies records or is caught up, so a
    /// partition retried after a stop is not offered again before it moves.
    was_stopped: bool,
}

impl Tracker {
    pub(super) fn new(stats: Arc<IngestStats>, stall_after: Duration, log: String) -> Self {
        let was_stopped = stats.state() == IngestState::Stopped;
        Self {
            stats,
            stall_after,
            log,
            failing: None,
            lag: 0,
            waiting_since: None,
            last_probe: None,
            warned: false,
            was_stopped,
        }
    }

    /// Whether the watermarks should be asked for again.
    pub(super) fn probe_due(&self) -> bool {
        let every = PROBE_EVERY.min(self.stall_after / 2);
        self.last_probe.map_or(true, |t| t.elapsed() >= every)
    }

    /// The partition starts at `offset`.
    pub(super) fn start(&mut self, offset: Option<u64>) {
        if let Some(o) = offset {
            self.stats.offset.store(o, Ordering::Relaxed);
        }
    }

    /// Records were applied up to `offset` (`bad` of them skipped).
    pub(super) fn applied(&mut self, offset: u64, bad: u64) {
        self.stats.offset.store(offset, Ordering::Relaxed);
        self.was_stopped = false;
        self.stats.bad_records.fetch_add(bad, Ordering::Relaxed);
        self.stats
            .last_progress_ms
            .store(unix_ms(), Ordering::Relaxed);
        self.failing = None;
        self.lag = self.lag.saturating_sub(1);
        self.waiting_since = None;
        self.update();
    }

    /// The broker answered a watermark probe; `next` is the offset to apply next.
    pub(super) fn probed(&mut self, next: u64, wm: Watermarks) {
        self.last_probe = Some(Instant::now());
        self.failing = None;
        self.lag = wm.high.saturating_sub(next);
        self.stats.lag.store(self.lag, Ordering::Relaxed);
        if self.lag > 0 {
            self.waiting_since.get_or_insert_with(Instant::now);
        } else {
            self.waiting_since = None;
            self.was_stopped = false;
            // Caught up: waiting for records is not a stall.
            self.stats
                .last_progress_ms
                .store(unix_ms(), Ordering::Relaxed);
        }
        self.update();
    }

    /// Reading or probing failed.
    pub(super) fn unreachable(&mut self, e: &LogError) {
        self.last_probe = Some(Instant::now());
        if self.failing.is_none() {
            self.failing = Some((Instant::now(), e.to_string()));
        }
        self.update();
    }

    /// Catch-up ended with an error that no retry fixes.
    pub(super) fn stopped(&mut self, e: &dyn std::fmt::Display) {
        self.stats.set_state(IngestState::Stopped);
        if self.was_stopped {
            // A retry that stopped where the last one did: already reported.
            tracing::debug!(log = %self.log, error = %e, "ingestion still stopped");
        } else {
            tracing::error!(log = %self.log, error = %e, "ingestion stopped");
        }
    }

    fn update(&mut self) {
        if self.was_stopped {
            return;
        }
        let cause = match &self.failing {
            Some((since, why)) if since.elapsed() >= self.stall_after => Some(format!(
                "broker unreachable for {:?}: {why}",
                since.elapsed()
            )),
            // Measured from when records were seen waiting, not from the last progress: a
            // follower idle at the end of its log is not stalled the moment records arrive.
            _ => match self.waiting_since {
                Some(since) if self.lag > 0 && since.elapsed() >= self.stall_after => {
                    Some(format!(
                        "no progress for {:?} while {} records are waiting",
                        since.elapsed(),
                        self.lag
                    ))
                }
                _ => None,
            },
        };
        match cause {
            Some(cause) => {
                self.stats.set_state(IngestState::Stalled);
                if !self.warned {
                    self.warned = true;
                    tracing::warn!(log = %self.log, %cause, "ingestion stalled");
                }
            }
            None => {
                self.stats.set_state(IngestState::Following);
                if std::mem::take(&mut self.warned) {
                    tracing::warn!(log = %self.log, "ingestion recovered from a stall");
                }
            }
        }
    }
}

/// A partition whose following stopped is not offered to peers: what they would get is old.
impl crate::snapshot::Freshness for IngestStats {
    fn stale(&self, id: &crate::store::partition::PartitionId) -> Option<String> {
        (self.state() == IngestState::Stopped).then(|| match self.offset() {
            Some(o) => format!("{id} stopped following its change log at offset {o}"),
            None => format!("{id} stopped following its change log"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stall_is_entered_once_and_left_on_progress() {
        let stats = Arc::new(IngestStats::default());
        let mut t = Tracker::new(stats.clone(), Duration::ZERO, "t/0".into());
        t.probed(0, Watermarks { low: 0, high: 0 });
        assert_eq!(
            stats.state(),
            IngestState::Following,
            "caught up is not a stall"
        );
        t.probed(0, Watermarks { low: 0, high: 10 });
        assert_eq!(stats.state(), IngestState::Stalled);
        assert_eq!(stats.lag(), 10);
        t.applied(9, 0);
        // Zero stall time: a record waiting is a stall at once, but progress clears it.
        t.probed(10, Watermarks { low: 0, high: 10 });
        assert_eq!(stats.state(), IngestState::Following);
        assert_eq!(stats.offset(), Some(9));
        t.unreachable(&LogError::Unavailable("down".into()));
        assert_eq!(stats.state(), IngestState::Stalled);
    }
}
