//! Recovering a node: every partition it is assigned, bootstrapped concurrently — peers found
//! by discovery, then Kafka catch-up, or Kafka alone — with one live progress view, a
//! cancel switch and one report per partition.
//!
//! Each partition runs [`bootstrap`] as a fetch of its own would, so
//! every rule holds per partition: nothing half-written, the offset inside the data, catch-up
//! after a transfer. What this adds is the node's view: which partitions are valid, how many
//! bytes came in, and when it will be done. The limits are the fetcher's: at most
//! `max_partitions` partitions receiving at once, one connection per peer shared by every
//! partition fetched from it, one read pacing for all. [`RecoverConfig::parallel`] only bounds
//! how many bootstraps (and so Kafka consumers) are open at once.
//!
//! A rerun is the recovery of an interrupted recovery: a partition already on disk is valid
//! (it appears by one rename, or is built in place with its offset in every batch) and only
//! catches up from its own offset; one whose transfer was interrupted resumes from the peer it
//! kept files from.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt};
use serde::Serialize;

use crate::client::{CancelSwitch, Fetcher, Progress};
use crate::ingest::{Backoff, LogError, LogSource};
use crate::jobs::bootstrap::{bootstrap, BootstrapConfig, BootstrapError, BootstrapReport};
use crate::peers::{Discovery, DiscoveryError, Peer};
use crate::store::lock::unpoisoned as lock;
use crate::store::partition::PartitionId;

/// Knobs of a recovery.
#[derive(Clone, Debug)]
pub struct RecoverConfig {
    /// How each partition is bootstrapped.
    pub bootstrap: BootstrapConfig,
    /// Bootstraps open at once. Receiving is bounded separately by the fetcher's
    /// `max_partitions` (20); more bootstraps than that keep the Kafka-only and catch-up work
    /// of some partitions going while others wait for a receive slot.
    pub parallel: usize,
    /// After a cancel, how long a partition may take to end on its own: a transfer in flight
    /// keeps what it received (journaled, for a rerun to resume) within it; Kafka work (a build or a catch-up) goes on until
    /// then and is dropped where it stands — every batch it applied carries its offset, so the
    /// partition is valid at that offset, and a rerun goes on from there.
    pub cancel_grace: Duration,
}

impl Default for RecoverConfig {
    fn default() -> Self {
        Self {
            bootstrap: BootstrapConfig::default(),
            parallel: 20,
            cancel_grace: Duration::from_secs(5),
        }
    }
}

/// Live progress of a recovery, and its cancel switch. Share it (it is `Sync`) with whatever
/// draws progress or decides to stop.
#[derive(Debug, Default)]
pub struct RecoverProgress {
    total: AtomicUsize,
    valid: AtomicUsize,
    failed: AtomicUsize,
    finished_bytes: AtomicU64,
    records: AtomicU64,
    /// Transfers in flight, by partition: their live byte counts and cancel switches.
    active: Mutex<BTreeMap<String, Arc<Progress>>>,
    switch: CancelSwitch,
}

/// What [`RecoverProgress::snapshot`] reads: the numbers a progress view shows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RecoverCounts {
    /// Partitions to recover.
    pub total: usize,
    /// Partitions valid and caught up.
    pub valid: usize,
    /// Partitions that ended otherwise (failed or cancelled).
    pub failed: usize,
    /// Partitions with a transfer in flight (manifest known, not every byte in).
    pub receiving: usize,
    /// Bytes of partitions received from peers, finished or in flight, what a resume kept
    /// included; a failed partition's count stays as it was when it ended.
    pub bytes: u64,
    /// Change-log records applied by finished catch-ups.
    pub records: u64,
}

impl RecoverProgress {
    /// Stops the recovery: partitions not started end cancelled at once, transfers in flight
    /// keep what they received for a rerun to resume, no fallback to Kafka starts, and Kafka work in progress ends
    /// within [`RecoverConfig::cancel_grace`] (see there).
    pub fn cancel(&self) {
        self.switch.cancel();
        for p in lock(&self.active).values() {
            p.cancel();
        }
    }

    /// True once [`Self::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.switch.is_cancelled()
    }

    async fn cancelled(&self) {
        self.switch.cancelled().await;
    }

    /// The counters now.
    pub fn snapshot(&self) -> RecoverCounts {
        // Under the lock: a partition moves from `active` to the totals under it too.
        let active = lock(&self.active);
        let live: u64 = active.values().map(|p| on_disk(p)).sum();
        RecoverCounts {
            total: self.total.load(Ordering::Relaxed),
            valid: self.valid.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            receiving: active
                .values()
                .filter(|p| on_disk(p) < p.total.load(Ordering::Relaxed))
                .count(),
            bytes: self.finished_bytes.load(Ordering::Relaxed) + live,
            records: self.records.load(Ordering::Relaxed),
        }
    }

    /// Registers a partition's transfer; a cancel already asked for reaches it at once.
    fn start(&self, partition: &str) -> Arc<Progress> {
        let p = Arc::new(Progress::default());
        lock(&self.active).insert(partition.to_owned(), p.clone());
        if self.is_cancelled() {
            p.cancel();
        }
        p
    }

    fn finish(&self, outcome: &PartitionRecovery) {
        let mut active = lock(&self.active);
        if let Some(p) = active.remove(&outcome.partition) {
            self.finished_bytes
                .fetch_add(on_disk(&p), Ordering::Relaxed);
        }
        let counter = match &outcome.outcome {
            Ok(r) => {
                self.records
                    .fetch_add(r.catch_up.records, Ordering::Relaxed);
                &self.valid
            }
            Err(_) => &self.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Bytes of the current attempt's files on disk: received, and kept from an earlier one.
fn on_disk(p: &Progress) -> u64 {
    p.received.load(Ordering::Relaxed) + p.resumed.load(Ordering::Relaxed)
}

/// Why one partition did not end valid and caught up; the label says what to do next.
#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    /// The partition's change log cannot be opened (a configuration problem): fix it and
    /// rerun; nothing was written.
    #[error("change log: {0}")]
    Log(#[source] LogError),
    /// The bootstrap failed; its error says whether the partition is valid at an older offset
    /// (catch-up stopped: a rerun resumes) or absent.
    #[error(transparent)]
    Bootstrap(BootstrapError),
    /// The recovery was cancelled before this partition finished: it is absent, or valid at
    /// the offset a Kafka build or catch-up had reached; a rerun picks it up.
    #[error("cancelled")]
    Cancelled,
}

impl RecoverError {
    /// Short stable label for reports.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Log(_) => "log_config",
            Self::Bootstrap(e) => e.label(),
            Self::Cancelled => "cancelled",
        }
    }
}

/// How one partition's recovery ended.
#[derive(Debug)]
pub struct PartitionRecovery {
    /// The partition, `store_vN/P`.
    pub partition: String,
    /// Its directory.
    pub dir: PathBuf,
    /// The peers discovery named (the fetcher puts them in order).
    pub peers: Vec<String>,
    /// Why discovery named nobody, when it did not: the partition was then built or caught up
    /// from Kafka alone.
    pub discovery: Option<DiscoveryError>,
    /// The bootstrap's report, or why the partition is not valid and caught up.
    pub outcome: Result<BootstrapReport, RecoverError>,
    /// Wall time of this partition, from its turn to its end.
    pub seconds: f64,
    /// Seconds from the start of the recovery to this partition's end.
    pub finished_at: f64,
}

impl PartitionRecovery {
    /// True when the partition ended valid and caught up to the high watermark.
    pub fn is_ok(&self) -> bool {
        self.outcome.is_ok()
    }
}

/// What a recovery did, partition by partition (in the order they finished).
#[derive(Debug, Default)]
pub struct RecoverReport {
    /// One entry per partition asked for.
    pub partitions: Vec<PartitionRecovery>,
    /// Wall time.
    pub seconds: f64,
}

impl RecoverReport {
    /// The partitions that did not end valid and caught up.
    pub fn failed(&self) -> impl Iterator<Item = &PartitionRecovery> {
        self.partitions.iter().filter(|p| !p.is_ok())
    }
}

/// Where a recovery gets its partitions from.
pub struct Sources<'a, F> {
    /// Receives the transfers; its limits (partitions receiving at once, buffers, pacing)
    /// bound the whole recovery.
    pub fetcher: &'a Fetcher,
    /// Names each partition's peers.
    pub discovery: &'a dyn Discovery,
    /// Opens each partition's change log (e.g. [`crate::ingest::kafka::KafkaConfig::log`]).
    pub open_log: F,
}

/// Recovers `ids` under `root` from `sources`. `on_done` hears about every partition as it
/// ends (a report line, a metric); `progress` shows the whole recovery live and cancels it.
/// Never fails as a whole: every partition's outcome is in the report.
pub async fn recover<L, F>(
    sources: &Sources<'_, F>,
    root: &Path,
    ids: &[PartitionId],
    cfg: &RecoverConfig,
    progress: &RecoverProgress,
    mut on_done: impl FnMut(&PartitionRecovery),
) -> RecoverReport
where
    L: LogSource,
    F: Fn(&PartitionId) -> Result<L, LogError>,
{
    let started = Instant::now();
    // Each partition once: two bootstraps of one directory would race each other.
    let mut seen = std::collections::HashSet::new();
    let ids: Vec<&PartitionId> = ids.iter().filter(|id| seen.insert(*id)).collect();
    progress.total.fetch_add(ids.len(), Ordering::Relaxed);
    let mut runs = stream::iter(ids)
        .map(|id| recover_one(sources, root, id, cfg, progress, started))
        .buffer_unordered(cfg.parallel.max(1));
    let mut report = RecoverReport::default();
    while let Some(one) = runs.next().await {
        progress.finish(&one);
        on_done(&one);
        report.partitions.push(one);
    }
    report.seconds = started.elapsed().as_secs_f64();
    report
}

/// One partition: discovery, then its bootstrap, raced against a cancel.
async fn recover_one<L, F>(
    sources: &Sources<'_, F>,
    root: &Path,
    id: &PartitionId,
    cfg: &RecoverConfig,
    progress: &RecoverProgress,
    recovery_started: Instant,
) -> PartitionRecovery
where
    L: LogSource,
    F: Fn(&PartitionId) -> Result<L, LogError>,
{
    let t0 = Instant::now();
    let mut one = PartitionRecovery {
        partition: id.to_string(),
        dir: id.dir(root),
        peers: Vec::new(),
        discovery: None,
        outcome: Err(RecoverError::Cancelled),
        seconds: 0.0,
        finished_at: 0.0,
    };
    let end = |mut one: PartitionRecovery| {
        one.seconds = t0.elapsed().as_secs_f64();
        one.finished_at = recovery_started.elapsed().as_secs_f64();
        one
    };
    if progress.is_cancelled() {
        return end(one);
    }
    // Asked also for a partition already here: a retention gap needs a peer to replace it.
    let peers = tokio::select! {
        found = discover(sources.discovery, id) => match found {
            Ok(peers) => peers,
            Err(e) => {
                tracing::info!(partition = %id, error = %e, "no peers discovered; Kafka alone");
                one.discovery = Some(e);
                Vec::new()
            }
        },
        _ = progress.cancelled() => return end(one),
    };
    one.peers = peers.iter().map(ToString::to_string).collect();
    let mut log = match (sources.open_log)(id) {
        Ok(log) => log,
        Err(e) => {
            one.outcome = Err(RecoverError::Log(e));
            return end(one);
        }
    };
    let transfer = progress.start(&one.partition);
    if progress.is_cancelled() {
        return end(one);
    }
    let run = bootstrap(
        sources.fetcher,
        &peers,
        root,
        id,
        &mut log,
        &cfg.bootstrap,
        &transfer,
    );
    tokio::pin!(run);
    let result = tokio::select! {
        r = &mut run => Some(r),
        _ = progress.cancelled() => {
            // The transfer's own cancel keeps what arrived; a catch-up is dropped between batches
            // (each carries its offset), so a rerun goes on from there.
            tokio::time::timeout(cfg.cancel_grace, &mut run).await.ok()
        }
    };
    one.outcome = match result {
        Some(Ok(report)) => Ok(report),
        // A fetch that ended under a cancel is suspended, whatever it says; other errors (a
        // catch-up that stopped, local storage) keep what they say about the partition.
        Some(Err(BootstrapError::Fetch(_))) if progress.is_cancelled() => {
            Err(RecoverError::Cancelled)
        }
        Some(Err(e)) => Err(RecoverError::Bootstrap(e)),
        None => Err(RecoverError::Cancelled),
    };
    end(one)
}

/// How long a failing lookup is asked again before the partition goes to Kafka alone:
/// rebuilding from the log costs far more than the wait.
const DISCOVERY_RETRIES_FOR: Duration = Duration::from_secs(10);

/// The peers discovery names for `id`. A failed lookup (a DNS server timing out) is asked
/// again, 1 s then 2 s apart (the catch-up's backoff), for up to `DISCOVERY_RETRIES_FOR`.
async fn discover(
    discovery: &dyn Discovery,
    id: &PartitionId,
) -> Result<Vec<Peer>, DiscoveryError> {
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(2));
    loop {
        match discovery.peers(id).await {
            Err(e @ DiscoveryError::Lookup { .. }) => {
                match backoff.failure(Instant::now(), DISCOVERY_RETRIES_FOR) {
                    Some(wait) => {
                        tracing::info!(partition = %id, error = %e, "discovery failed; asking again");
                        tokio::time::sleep(wait).await;
                    }
                    None => return Err(e),
                }
            }
            answer => return answer,
        }
    }
}
