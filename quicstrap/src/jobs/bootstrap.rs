//! Bootstrap = peer transfer + Kafka catch-up, or Kafka alone — the node always ends complete.
//!
//! The path is chosen, and reported with its reason: a partition already on disk resumes from
//! its own offset; a lag below the threshold is cheaper to replay than to transfer; otherwise
//! peers are tried and the result caught up from the snapshot's offset to the high watermark;
//! with no peers, or when every peer fails, the partition is built from Kafka.
//!
//! Kafka is asked once, without retries, before choosing: a broker that is down must not keep
//! a node from its peers. Without an answer the lag shortcut is skipped (it needs the
//! watermark) and peers are tried first; catch-up then retries until its deadline. Records
//! that retention has removed (a partition here, or an empty start, behind the log's first
//! offset) cannot be replayed: a peer's newer snapshot replaces the partition, or with no
//! peer the log is replayed from the earliest offset it still holds, onto the partition's own
//! data (never deleted for want of a peer), and the path names the offsets lost. A peer's
//! snapshot the log cannot continue (behind its first offset, or past its end) is refused
//! before it is committed, and the next peer asked.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use crate::client::workdir;
use crate::client::{Attempt, Fallback, FetchError, FetchReport, Fetcher, Progress};
use crate::ingest::{
    self, CatchUpConfig, CatchUpError, CatchUpReport, LogSource, Until, Watermarks,
};
use crate::peers::Peer;
use crate::store::partition::{self, PartitionId, StorageError, TableFormat, VersionState};

/// Knobs of a bootstrap.
#[derive(Clone, Debug)]
pub struct BootstrapConfig {
    /// Replay from Kafka instead of transferring when the lag is below this many offsets
    /// (Venice's 100 000).
    pub lag_threshold: u64,
    /// Catch-up knobs.
    pub catch_up: CatchUpConfig,
    /// Table format of the partition.
    pub table_format: TableFormat,
}

impl Default for BootstrapConfig {
    fn default() -> Self {
        Self {
            lag_threshold: 100_000,
            catch_up: CatchUpConfig::default(),
            table_format: TableFormat::Block,
        }
    }
}

/// Which way the partition was built, and why.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(tag = "path", rename_all = "snake_case")]
pub enum BootstrapPath {
    /// Transferred from a peer, then caught up from the snapshot's offset.
    PeerTransfer,
    /// The partition was already here: caught up from its own offset.
    LocalResume,
    /// The lag was below the threshold: built from Kafka, no transfer.
    KafkaLagBelowThreshold {
        /// Offsets to replay.
        lag: u64,
    },
    /// No peers were known: built from Kafka from the beginning.
    KafkaNoPeers,
    /// Every peer failed: built from Kafka from the beginning.
    KafkaAllPeersFailed,
    /// The partition here was behind the log's first offset (retention removed records it
    /// never applied): replaced by a peer's snapshot.
    PeerTransferAfterGap {
        /// Offset the old partition held.
        have: Option<u64>,
        /// First offset the log still held.
        earliest: u64,
    },
    /// Records before `earliest` are gone from the log and no peer could serve: replayed from
    /// `earliest`, onto the partition's own data when it was here (kept, never deleted), else
    /// onto an empty one. The partition lacks whatever only the records of `lost` wrote.
    KafkaFromEarliest {
        /// Offset the partition held before (`None`: it was not here).
        have: Option<u64>,
        /// First offset the log held, where the replay started.
        earliest: u64,
        /// The offsets neither the partition nor the log holds.
        lost: LostRange,
    },
}

impl BootstrapPath {
    /// The path's stable name, as in the JSON report and the per-store metrics
    /// ([`crate::metrics::FETCH_OUTCOMES`]).
    pub fn label(&self) -> &'static str {
        match self {
            Self::PeerTransfer => "peer_transfer",
            Self::LocalResume => "local_resume",
            Self::KafkaLagBelowThreshold { .. } => "kafka_lag_below_threshold",
            Self::KafkaNoPeers => "kafka_no_peers",
            Self::KafkaAllPeersFailed => "kafka_all_peers_failed",
            Self::PeerTransferAfterGap { .. } => "peer_transfer_after_gap",
            Self::KafkaFromEarliest { .. } => "kafka_from_earliest",
        }
    }
}

/// Offsets a partition never applied and the log no longer holds, first and last included.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
pub struct LostRange {
    /// First lost offset.
    pub first: u64,
    /// Last lost offset.
    pub last: u64,
}

impl LostRange {
    /// What a partition at `have` misses of a log starting at `earliest`.
    pub fn between(have: Option<u64>, earliest: u64) -> Self {
        Self {
            first: have.map_or(0, |h| h.saturating_add(1)),
            last: earliest.saturating_sub(1),
        }
    }
}

/// What a bootstrap did.
#[derive(Clone, Debug, Serialize)]
pub struct BootstrapReport {
    /// The partition.
    pub partition: String,
    /// The path taken and its reason.
    pub path: BootstrapPath,
    /// The peer transfer, when one succeeded (its attempts are the report's `attempts`, not
    /// repeated under it).
    #[serde(serialize_with = "transfer_without_attempts")]
    pub transfer: Option<FetchReport>,
    /// Every peer attempt (also the failed ones that led to a Kafka bootstrap).
    pub attempts: Vec<Attempt>,
    /// The Kafka catch-up (what it did before failing, when it failed).
    pub catch_up: CatchUpReport,
    /// High watermark seen when the bootstrap decided its path; `None` when Kafka did not
    /// answer then (peers were tried first).
    pub high_watermark: Option<u64>,
    /// Wall time.
    pub seconds: f64,
}

/// A transfer's report without its attempts: a bootstrap lists them once, at its top.
fn transfer_without_attempts<S: serde::Serializer>(
    t: &Option<FetchReport>,
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::Error;
    match t {
        None => s.serialize_none(),
        Some(t) => {
            let mut v = serde_json::to_value(t).map_err(S::Error::custom)?;
            if let Some(o) = v.as_object_mut() {
                o.remove("attempts");
            }
            v.serialize(s)
        }
    }
}

/// Why a bootstrap did not complete.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// The fetch failed in a way that calls for no fallback (cancelled, partition exists).
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// Catch-up stopped short; the partition is valid at its last offset, `report` says how
    /// it got there, and a rerun resumes (after a broker outage) or needs a fix (the error
    /// says which).
    #[error("catch-up: {error}")]
    CatchUp {
        /// What stopped it.
        error: CatchUpError,
        /// The bootstrap so far: the path, the transfer, the records applied.
        report: Box<BootstrapReport>,
    },
    /// Local storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl BootstrapError {
    /// Short stable label for reports.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Fetch(e) => e.label(),
            Self::CatchUp { error, .. } => error.label(),
            Self::Storage(_) => "storage",
        }
    }

    /// The bootstrap so far, when it got as far as choosing a path.
    pub fn report(&self) -> Option<&BootstrapReport> {
        match self {
            Self::CatchUp { report, .. } => Some(report),
            _ => None,
        }
    }
}

/// What a bootstrap knows before it tries anything: the partition here, the log, the peers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Situation {
    /// A partition is on disk here (its `CURRENT` exists).
    pub present: bool,
    /// The offset it holds (`None`: not here, or made by a tool that keeps none).
    pub offset: Option<u64>,
    /// The log's watermarks, when Kafka answered.
    pub log: Option<Watermarks>,
    /// Whether any peer is known.
    pub peers: bool,
    /// Replay instead of transferring when the lag is below this many offsets.
    pub lag_threshold: u64,
}

/// The first step of a bootstrap, chosen from its [`Situation`] alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Build or catch up from Kafka without asking a peer, by this path.
    Log(BootstrapPath),
    /// Ask the peers; [`after_peers`] names the path once they answered. `gap`: the first
    /// offset the log still holds, when it no longer holds the next one the partition (or an
    /// empty start) needs. A partition here is then moved aside while the peers are asked.
    Peers {
        /// The log's first offset, past a retention gap.
        gap: Option<u64>,
    },
}

/// The path of a bootstrap in `s`, or why none can start (a partition here whose offset the
/// log cannot have written: an operator must look). Pure, so every case is one row of a
/// table test: a partition here resumes from its own offset; a lag below the threshold is
/// replayed; otherwise peers are asked, or with none the log is replayed — from its earliest
/// offset when retention removed records the partition never applied.
pub fn choose(s: &Situation) -> Result<Plan, CatchUpError> {
    let next = ingest::next_offset(s.offset)?;
    let gap = match s.log.map(|wm| ingest::check_position(s.offset, wm)) {
        Some(Err(CatchUpError::OffsetOutOfRange { earliest, .. })) => Some(earliest),
        Some(Err(error)) => return Err(error),
        _ => None,
    };
    let lag = s.log.map(|wm| wm.high.saturating_sub(next));
    Ok(match (gap, lag) {
        (None, _) if s.present => Plan::Log(BootstrapPath::LocalResume),
        (None, Some(lag)) if lag < s.lag_threshold => {
            Plan::Log(BootstrapPath::KafkaLagBelowThreshold { lag })
        }
        (gap, _) if s.peers => Plan::Peers { gap },
        (None, _) => Plan::Log(BootstrapPath::KafkaNoPeers),
        (Some(earliest), _) => Plan::Log(from_earliest(s.offset, earliest)),
    })
}

/// The path once the peers of [`Plan::Peers`] answered: `transferred` when one's snapshot
/// was committed, else every peer failed in a way that calls for the log.
pub fn after_peers(s: &Situation, gap: Option<u64>, transferred: bool) -> BootstrapPath {
    match (transferred, gap) {
        (true, Some(earliest)) if s.present => BootstrapPath::PeerTransferAfterGap {
            have: s.offset,
            earliest,
        },
        (true, _) => BootstrapPath::PeerTransfer,
        (false, Some(earliest)) => from_earliest(s.offset, earliest),
        (false, None) => BootstrapPath::KafkaAllPeersFailed,
    }
}

fn from_earliest(have: Option<u64>, earliest: u64) -> BootstrapPath {
    BootstrapPath::KafkaFromEarliest {
        have,
        earliest,
        lost: LostRange::between(have, earliest),
    }
}

/// Bootstraps `id` under `root` from `peers` and `log`.
pub async fn bootstrap<L: LogSource>(
    fetcher: &Fetcher,
    peers: &[Peer],
    root: &Path,
    id: &PartitionId,
    log: &mut L,
    cfg: &BootstrapConfig,
    progress: &Progress,
) -> Result<BootstrapReport, BootstrapError> {
    bootstrap_with(Some(fetcher), peers, root, id, log, cfg, progress).await
}

/// Bootstraps `id` under `root` from `log` alone, with no peer to ask: what a node without
/// certificates (or with transfer turned off for the store) can do.
pub async fn bootstrap_from_log<L: LogSource>(
    root: &Path,
    id: &PartitionId,
    log: &mut L,
    cfg: &BootstrapConfig,
    progress: &Progress,
) -> Result<BootstrapReport, BootstrapError> {
    bootstrap_with(None, &[], root, id, log, cfg, progress).await
}

async fn bootstrap_with<L: LogSource>(
    fetcher: Option<&Fetcher>,
    peers: &[Peer],
    root: &Path,
    id: &PartitionId,
    log: &mut L,
    cfg: &BootstrapConfig,
    progress: &Progress,
) -> Result<BootstrapReport, BootstrapError> {
    let started = Instant::now();
    let peers = if fetcher.is_some() { peers } else { &[] };
    let window = fetcher.map_or_else(
        || crate::protocol::fetch::FetchRules::default().resume_window,
        |f| f.config().resume_window,
    );
    workdir::sweep(root, window);
    let dir = id.dir(root);
    let present = dir.join("CURRENT").is_file();
    let local_offset = if present {
        let (d, format) = (dir.clone(), cfg.table_format);
        ingest::blocking(move || partition::read_meta(&partition::open(&d, format)?))
            .await?
            .offset
    } else {
        None
    };
    // One question, no retries: with the broker down, peers come first.
    let wm = match log.watermarks().await {
        Ok(wm) => Some(wm),
        Err(e) => {
            tracing::warn!(partition = %id, error = %e, "Kafka does not answer; trying peers first");
            None
        }
    };
    let situation = Situation {
        present,
        offset: local_offset,
        log: wm,
        peers: !peers.is_empty(),
        lag_threshold: cfg.lag_threshold,
    };
    let plan = choose(&situation)
        .map_err(|error| failed(id, BootstrapPath::LocalResume, wm, error, started))?;
    let mut attempts = Vec::new();
    let mut transfer = None;
    let path = match plan {
        Plan::Log(path) => path,
        Plan::Peers { gap } => {
            // A partition here that the log can no longer catch up is moved aside (a temp
            // dir the sweep removes if this process dies) and deleted once it is replaced.
            let aside = match (present, gap) {
                (true, Some(_)) => Some(workdir::move_aside(&dir, id).map_err(StorageError::Io)?),
                _ => None,
            };
            // Peers are asked only with a fetcher (`peers` is empty without one).
            let Some(fetcher) = fetcher else {
                return Err(BootstrapError::Fetch(FetchError::NoPeers));
            };
            // A snapshot this log cannot continue is refused before its first byte.
            match fetcher.fetch_within(id, peers, root, progress, wm).await {
                Ok(report) => {
                    attempts = report.attempts.clone();
                    transfer = Some(report);
                    if let Some(a) = aside {
                        a.remove();
                    }
                    after_peers(&situation, gap, true)
                }
                // Not after a cancel: peers that ran out because of it call for nothing.
                Err(e) if e.fallback() == Fallback::KafkaFromStart && !progress.is_cancelled() => {
                    tracing::warn!(partition = %id, error = %e, "no peer could serve; bootstrapping from Kafka");
                    attempts = e.attempts().to_vec();
                    if let Some(a) = aside {
                        // Peers failing (for whatever reason) is no reason to lose its data:
                        // the log is replayed onto it from its earliest offset.
                        a.put_back(&dir).map_err(StorageError::Io)?;
                    }
                    after_peers(&situation, gap, false)
                }
                Err(e) => {
                    if let Some(a) = aside {
                        // Nothing replaced it: put it back as it was.
                        if let Err(e) = a.put_back(&dir) {
                            tracing::warn!(partition = %id, error = %e, "cannot put the partition back; the next sweep does");
                        }
                    }
                    return Err(e.into());
                }
            }
        }
    };
    tracing::info!(partition = %id, ?path, "bootstrap path chosen");
    let fresh = !dir.join("CURRENT").is_file();
    if fresh {
        // Building from Kafka: a fresh DB. A leftover empty directory is fine; anything else
        // is a partition and was handled above.
        if dir.exists() && !crate::store::disk::is_empty_dir(&dir).map_err(StorageError::Io)? {
            return Err(BootstrapError::Fetch(FetchError::PartitionExists(dir)));
        }
        std::fs::create_dir_all(&dir).map_err(StorageError::Io)?;
    }
    let (d, format) = (dir.clone(), cfg.table_format);
    let db = Arc::new(ingest::blocking(move || partition::open(&d, format)).await?);
    // The partition is in place, however it was built: what fetches of it kept (a killed
    // one's, or an earlier attempt's before a fallback) can serve nothing any more.
    workdir::sweep(root, window);
    if fresh {
        // Recorded like a transferred partition's, so a peer serving this format can serve it.
        let state = VersionState {
            table_format: cfg.table_format,
            producer: "quicstrap (built from Kafka)".into(),
        };
        let w = db.clone();
        ingest::blocking(move || partition::write_version_state(&w, &state)).await?;
    }
    if let BootstrapPath::KafkaFromEarliest { earliest, lost, .. } = &path {
        // Fresh or the partition's own data: the replay starts where the log does.
        tracing::warn!(partition = %id, first = lost.first, last = lost.last, "offsets lost to retention: no peer could serve them");
        set_base(&db, *earliest).await?;
    }
    let mut report = BootstrapReport {
        partition: id.to_string(),
        path,
        transfer,
        attempts,
        catch_up: CatchUpReport::default(),
        high_watermark: wm.map(|w| w.high),
        seconds: 0.0,
    };
    let result = loop {
        let result = ingest::catch_up_into(
            &db,
            log,
            Until::HighWatermark,
            &cfg.catch_up,
            &mut report.catch_up,
        )
        .await;
        match &result {
            Err(CatchUpError::OffsetOutOfRange { earliest, .. })
                if fresh
                    && report.transfer.is_none()
                    && !matches!(report.path, BootstrapPath::KafkaFromEarliest { .. }) =>
            {
                // Kafka was down when the path was chosen and its head turns out to be
                // gone: the fresh partition starts at the earliest offset instead.
                report.path = from_earliest(None, *earliest);
                set_base(&db, *earliest).await?;
            }
            _ => break result,
        }
    };
    report.seconds = started.elapsed().as_secs_f64();
    match result {
        Ok(()) => Ok(report),
        Err(error) => Err(BootstrapError::CatchUp {
            error,
            report: Box::new(report),
        }),
    }
}

/// After a bootstrap, keeps `id` under `root` applying `log` as it grows: the steady state of
/// a node that serves reads from it. Returns only when following stops (a bad record under
/// policy `fail`, a retention gap, a broker gone past the deadline); dropping the future is
/// how a caller ends it.
pub async fn follow<L: LogSource>(
    root: &Path,
    id: &PartitionId,
    format: TableFormat,
    log: &mut L,
    cfg: &CatchUpConfig,
) -> Result<CatchUpReport, CatchUpError> {
    let dir = id.dir(root);
    let db = Arc::new(ingest::blocking(move || partition::open(&dir, format)).await?);
    ingest::catch_up(&db, log, Until::Follow, cfg).await
}

/// A bootstrap that failed while choosing its path.
fn failed(
    id: &PartitionId,
    path: BootstrapPath,
    wm: Option<Watermarks>,
    error: CatchUpError,
    started: Instant,
) -> BootstrapError {
    BootstrapError::CatchUp {
        error,
        report: Box::new(BootstrapReport {
            partition: id.to_string(),
            path,
            transfer: None,
            attempts: Vec::new(),
            catch_up: CatchUpReport::default(),
            high_watermark: wm.map(|w| w.high),
            seconds: started.elapsed().as_secs_f64(),
        }),
    }
}

/// Makes a fresh partition start right before `earliest`: the records before it are gone.
async fn set_base(db: &Arc<rocksdb::DB>, earliest: u64) -> Result<(), StorageError> {
    if let Some(base) = earliest.checked_sub(1) {
        let db = db.clone();
        ingest::blocking(move || partition::apply_batch(&db, [], base)).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wm(low: u64, high: u64) -> Option<Watermarks> {
        Some(Watermarks { low, high })
    }

    fn here(offset: Option<u64>, log: Option<Watermarks>, peers: bool) -> Situation {
        Situation {
            present: true,
            offset,
            log,
            peers,
            lag_threshold: 100,
        }
    }

    fn empty(log: Option<Watermarks>, peers: bool) -> Situation {
        Situation {
            present: false,
            ..here(None, log, peers)
        }
    }

    #[test]
    fn the_path_follows_from_the_partition_here_the_log_and_the_peers() {
        use BootstrapPath::*;
        let lost = |first, last| LostRange { first, last };
        let table: Vec<(&str, Situation, Plan)> = vec![
            (
                "here, the log continues it",
                here(Some(10), wm(0, 1000), true),
                Plan::Log(LocalResume),
            ),
            (
                "here, no offset kept, log from 0",
                here(None, wm(0, 1000), true),
                Plan::Log(LocalResume),
            ),
            (
                "here, Kafka down",
                here(Some(10), None, true),
                Plan::Log(LocalResume),
            ),
            (
                "empty, lag below the threshold",
                empty(wm(0, 50), true),
                Plan::Log(KafkaLagBelowThreshold { lag: 50 }),
            ),
            (
                "empty, lag at the threshold",
                empty(wm(0, 100), true),
                Plan::Peers { gap: None },
            ),
            (
                "empty, lag above, no peer",
                empty(wm(0, 1000), false),
                Plan::Log(KafkaNoPeers),
            ),
            (
                "empty, Kafka down",
                empty(None, true),
                Plan::Peers { gap: None },
            ),
            (
                "empty, Kafka down, no peer",
                empty(None, false),
                Plan::Log(KafkaNoPeers),
            ),
            (
                "here, behind retention",
                here(Some(10), wm(500, 1000), true),
                Plan::Peers { gap: Some(500) },
            ),
            (
                "here, behind retention, no peer",
                here(Some(10), wm(500, 1000), false),
                Plan::Log(KafkaFromEarliest {
                    have: Some(10),
                    earliest: 500,
                    lost: lost(11, 499),
                }),
            ),
            // A small lag does not replay across a gap: the records are gone.
            (
                "empty, small log past a gap",
                empty(wm(500, 550), true),
                Plan::Peers { gap: Some(500) },
            ),
            (
                "empty, small log past a gap, no peer",
                empty(wm(500, 550), false),
                Plan::Log(KafkaFromEarliest {
                    have: None,
                    earliest: 500,
                    lost: lost(0, 499),
                }),
            ),
        ];
        for (case, situation, want) in table {
            assert_eq!(choose(&situation).unwrap(), want, "{case}");
        }
        // A partition whose offset the log cannot have written: nothing starts.
        for impossible in [
            here(Some(2000), wm(0, 1000), true),
            here(Some(u64::MAX), None, true),
        ] {
            assert!(
                matches!(
                    choose(&impossible),
                    Err(CatchUpError::ImpossibleOffset { .. })
                ),
                "{impossible:?}"
            );
        }
    }

    #[test]
    fn after_the_peers_the_path_says_what_replaced_what() {
        use BootstrapPath::*;
        let behind = here(Some(10), wm(500, 1000), true);
        assert_eq!(
            after_peers(&behind, Some(500), true),
            PeerTransferAfterGap {
                have: Some(10),
                earliest: 500
            }
        );
        assert_eq!(
            after_peers(&behind, Some(500), false),
            KafkaFromEarliest {
                have: Some(10),
                earliest: 500,
                lost: LostRange {
                    first: 11,
                    last: 499
                }
            }
        );
        // An empty start behind retention is an ordinary transfer when a peer serves.
        let fresh = empty(wm(500, 1000), true);
        assert_eq!(after_peers(&fresh, Some(500), true), PeerTransfer);
        let plain = empty(wm(0, 1000), true);
        assert_eq!(after_peers(&plain, None, true), PeerTransfer);
        assert_eq!(after_peers(&plain, None, false), KafkaAllPeersFailed);
    }
}
