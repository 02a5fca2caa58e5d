//! Following: a serving node keeps every partition under its data root caught up with its
//! change log for as long as it runs.
//!
//! Each partition follows on its own task, so one that cannot open, hits a bad record under
//! policy `fail`, or falls into a retention gap stops alone: it is reported, marked
//! [`IngestState::Stopped`] (the server then refuses it to peers as `stale`, since its data
//! no longer moves), retried every [`FollowConfig::retry_stopped`], and offered again as soon
//! as it applies records. The others keep following and serving.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::kafka::KafkaConfig;
use super::{catch_up, CatchUpConfig, IngestState, IngestStats, Until};
use crate::snapshot::DataDir;
use crate::store::partition::{self, PartitionId, TableFormat};

/// Knobs of following.
#[derive(Clone, Debug)]
pub struct FollowConfig {
    /// The cluster and topic naming.
    pub kafka: KafkaConfig,
    /// Catch-up knobs; each partition gets its own stats.
    pub catch_up: CatchUpConfig,
    /// A stopped partition is tried again after this long.
    pub retry_stopped: Duration,
}

impl FollowConfig {
    /// Defaults over `kafka`.
    pub fn new(kafka: KafkaConfig) -> Self {
        Self {
            kafka,
            catch_up: CatchUpConfig::default(),
            retry_stopped: Duration::from_secs(60),
        }
    }
}

/// One partition being followed.
#[derive(Clone, Debug)]
pub struct Followed {
    /// The partition.
    pub id: PartitionId,
    /// Its ingestion health, for metrics.
    pub stats: Arc<IngestStats>,
    /// Why it could not be opened at start, if it could not (it is retried meanwhile).
    pub open_error: Option<String>,
}

/// The partitions under `root`: `<store>_v<version>/<partition>/` directories with valid names.
pub fn partitions_under(root: &Path) -> std::io::Result<Vec<PartitionId>> {
    let mut ids = Vec::new();
    for store in std::fs::read_dir(root)?.flatten() {
        let name = store.file_name().to_string_lossy().into_owned();
        let Some((s, v)) = name.rsplit_once("_v") else {
            continue;
        };
        let Ok(version) = v.parse::<u32>() else {
            continue;
        };
        let Ok(parts) = std::fs::read_dir(store.path()) else {
            continue;
        };
        for p in parts.flatten() {
            let Ok(partition) = p.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if let Ok(id) = PartitionId::new(s, version, partition) {
                ids.push(id);
            }
        }
    }
    ids.sort_by_key(|id| id.to_string());
    Ok(ids)
}

/// Opens every partition under `root`, registers it with `source` (and its health, so a
/// stopped one is refused), and follows each on its own task. A partition that does not open
/// is reported in its [`Followed::open_error`] and retried; the others are served meanwhile.
pub async fn follow_all(
    root: &Path,
    format: TableFormat,
    cfg: &FollowConfig,
    source: &Arc<DataDir>,
) -> std::io::Result<Vec<Followed>> {
    let mut out = Vec::new();
    for id in partitions_under(root)? {
        let stats = Arc::new(IngestStats::default());
        source.watch(id.clone(), stats.clone());
        let task = Task {
            id: id.clone(),
            root: root.to_owned(),
            format,
            cfg: cfg.clone(),
            source: source.clone(),
            stats: stats.clone(),
        };
        let db = task.open().await;
        let open_error = match &db {
            Ok(_) => None,
            Err(e) => {
                tracing::error!(partition = %id, error = %e, "cannot open partition; serving the others");
                Some(e.to_string())
            }
        };
        out.push(Followed {
            id,
            stats,
            open_error,
        });
        tokio::spawn(task.run(db.ok()));
    }
    Ok(out)
}

struct Task {
    id: PartitionId,
    root: std::path::PathBuf,
    format: TableFormat,
    cfg: FollowConfig,
    source: Arc<DataDir>,
    stats: Arc<IngestStats>,
}

impl Task {
    async fn run(self, mut db: Option<Arc<rocksdb::DB>>) {
        let cc = CatchUpConfig {
            stats: self.stats.clone(),
            ..self.cfg.catch_up.clone()
        };
        loop {
            if db.is_none() {
                // Reported when it first failed (at start); retries that fail alike are quiet.
                db = self
                    .open()
                    .await
                    .inspect_err(|e| tracing::debug!(partition = %self.id, error = %e, "partition still does not open"))
                    .ok();
            }
            if let Some(db) = &db {
                match self.cfg.kafka.log(&self.id) {
                    Ok(mut log) => {
                        // Following returns only with an error no retry fixes; catch-up has
                        // marked the partition stopped and logged why.
                        let _ = catch_up(db, &mut log, Until::Follow, &cc).await;
                    }
                    Err(e) => {
                        self.stats.set_state(IngestState::Stopped);
                        tracing::error!(partition = %self.id, error = %e, "cannot read the change log");
                    }
                }
            }
            tokio::time::sleep(self.cfg.retry_stopped).await;
        }
    }

    /// Opens the partition and registers it with the source; a failure marks it stopped.
    async fn open(&self) -> Result<Arc<rocksdb::DB>, crate::store::partition::StorageError> {
        let (dir, format) = (self.id.dir(&self.root), self.format);
        match super::blocking(move || partition::open(&dir, format)).await {
            Ok(db) => {
                let db = Arc::new(db);
                self.source.insert(self.id.clone(), db.clone());
                Ok(db)
            }
            Err(e) => {
                self.stats.set_state(IngestState::Stopped);
                Err(e)
            }
        }
    }
}
