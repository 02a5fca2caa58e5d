//! Bootstrap = peer transfer + Kafka catch-up, or Kafka alone — the node always ends complete.
//!
//! The path is chosen, and reported with its reason: a partition already on disk resumes from
//! its own offset; a lag below the threshold is cheaper to replay than to transfer; otherwise
//! peers are tried and the result caught up from the snapshot's offset to the high watermark;
//! with no peers, or when every peer fails, the partition is built from Kafka from the start.

use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use crate::client::{commit, Attempt, Fallback, FetchError, FetchReport, Fetcher, Progress};
use crate::ingest::{self, CatchUpConfig, CatchUpError, CatchUpReport, LogSource, Until};
use crate::partition::{self, PartitionId, StorageError, TableFormat};
use crate::peers::Peer;

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
}

/// What a bootstrap did.
#[derive(Clone, Debug, Serialize)]
pub struct BootstrapReport {
    /// The partition.
    pub partition: String,
    /// The path taken and its reason.
    pub path: BootstrapPath,
    /// The peer transfer, when one succeeded.
    pub transfer: Option<FetchReport>,
    /// Every peer attempt (also the failed ones that led to a Kafka bootstrap).
    pub attempts: Vec<Attempt>,
    /// The Kafka catch-up.
    pub catch_up: CatchUpReport,
    /// High watermark seen when the bootstrap decided its path.
    pub high_watermark: u64,
    /// Wall time.
    pub seconds: f64,
}

/// Why a bootstrap did not complete.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// The fetch failed in a way that calls for no fallback (cancelled).
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// Catch-up stopped short; the partition is valid at its last offset and a rerun resumes.
    #[error("catch-up: {0}")]
    CatchUp(#[from] CatchUpError),
    /// Local storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
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
    let started = Instant::now();
    let dir = id.dir(root);
    let present = dir.join("CURRENT").is_file();
    let local_offset = if present {
        let db = partition::open(&dir, cfg.table_format)?;
        partition::read_meta(&db)?.offset
    } else {
        None
    };
    let local_next = local_offset.map_or(0, |o| o + 1);
    let hw = ingest::high_watermark(log, &cfg.catch_up, local_offset).await?;
    let lag = hw.saturating_sub(local_next);
    let mut attempts = Vec::new();
    let mut transfer = None;
    let path = if present {
        BootstrapPath::LocalResume
    } else if lag < cfg.lag_threshold {
        BootstrapPath::KafkaLagBelowThreshold { lag }
    } else if peers.is_empty() {
        BootstrapPath::KafkaNoPeers
    } else {
        match fetcher.fetch_with_progress(id, peers, root, progress).await {
            Ok(report) => {
                attempts = report.attempts.clone();
                transfer = Some(report);
                BootstrapPath::PeerTransfer
            }
            Err(e) if e.fallback() == Fallback::KafkaFromStart => {
                tracing::warn!(partition = %id, error = %e, "no peer could serve; bootstrapping from Kafka");
                if let FetchError::AllPeersFailed { attempts: a }
                | FetchError::GaveUp { attempts: a, .. } = &e
                {
                    attempts = a.clone();
                }
                BootstrapPath::KafkaAllPeersFailed
            }
            Err(e) => return Err(e.into()),
        }
    };
    tracing::info!(partition = %id, ?path, lag, "bootstrap path chosen");
    if !dir.join("CURRENT").is_file() {
        // Building from Kafka: a fresh DB. A leftover empty directory is fine; anything else
        // is a partition and was handled above.
        if dir.exists() && !commit::is_empty_dir(&dir).map_err(StorageError::Io)? {
            return Err(BootstrapError::Fetch(FetchError::PartitionExists(dir)));
        }
        std::fs::create_dir_all(&dir).map_err(StorageError::Io)?;
    }
    let db = partition::open(&dir, cfg.table_format)?;
    let catch_up = ingest::catch_up(&db, log, Until::HighWatermark, &cfg.catch_up).await?;
    Ok(BootstrapReport {
        partition: id.to_string(),
        path,
        transfer,
        attempts,
        catch_up,
        high_watermark: hw,
        seconds: started.elapsed().as_secs_f64(),
    })
}
