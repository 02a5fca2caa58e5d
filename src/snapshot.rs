//! Server-side snapshots: one RocksDB checkpoint per partition, shared and reused.
//!
//! A checkpoint is cheap (hard links) but its digests are not, so a snapshot is reused by every
//! request younger than the TTL and its digests are computed once, on first need, per
//! algorithm. A lease counts users; a snapshot that went stale is deleted when its last user
//! leaves, and a periodic sweep deletes stale snapshots nobody uses. The timing rules are pure
//! functions of `now` ([`policy`]) so they are tested without sleeping.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rocksdb::DB;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::checksum::{digest_file, ChecksumAlgo};
use crate::partition::{self, PartitionId, PartitionMeta, StorageError, TableFormat};
use crate::protocol::names;

/// Marker file in a snapshot root: proof the directory is ours to wipe.
const SNAPSHOT_MARKER: &str = ".quicstrap-snapshots";

/// Timing rules of snapshots, as pure functions.
pub mod policy {
    use std::time::{Duration, Instant};

    /// A snapshot made at `created` may serve a new request at `now`.
    pub fn reusable(created: Instant, now: Instant, ttl: Duration) -> bool {
        now.saturating_duration_since(created) < ttl
    }

    /// A snapshot may be deleted by the sweep: stale and nobody reading it.
    pub fn collectable(created: Instant, now: Instant, ttl: Duration, users: usize) -> bool {
        users == 0 && !reusable(created, now, ttl)
    }
}

/// Knobs of the snapshot manager (Venice's defaults).
#[derive(Clone, Debug)]
pub struct SnapshotConfig {
    /// Where checkpoints are made; wiped at start (leftovers of a crashed process).
    pub root: PathBuf,
    /// Reuse a snapshot younger than this (60 min).
    pub ttl: Duration,
    /// Sweep interval for stale snapshots (120 min).
    pub cleanup_interval: Duration,
    /// Concurrent snapshot users (transfers) on this host before `Busy` (30).
    pub max_users: usize,
}

impl SnapshotConfig {
    /// Defaults with checkpoints under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            ttl: Duration::from_secs(60 * 60),
            cleanup_interval: Duration::from_secs(120 * 60),
            max_users: 30,
        }
    }
}

/// Where the server's live partitions come from. A node that embeds quicstrap registers its
/// open DBs; the CLI opens directories under a data root on demand.
pub trait PartitionSource: Send + Sync + 'static {
    /// The open DB of `id`, or `None` when this host does not hold it.
    fn get(&self, id: &PartitionId) -> Result<Option<Arc<DB>>, StorageError>;
}

/// Partitions under a data root (`<root>/<store>_v<version>/<partition>/`), opened on first use
/// and kept open, plus any DB registered by the embedding node.
pub struct DataDir {
    root: PathBuf,
    format: TableFormat,
    open: Mutex<HashMap<PartitionId, Arc<DB>>>,
}

impl DataDir {
    /// A source over `root`, whose partitions all use `format`.
    pub fn new(root: impl Into<PathBuf>, format: TableFormat) -> Self {
        Self {
            root: root.into(),
            format,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// Registers a DB the node already has open (it cannot be opened twice).
    pub fn insert(&self, id: PartitionId, db: Arc<DB>) {
        lock(&self.open).insert(id, db);
    }
}

impl PartitionSource for DataDir {
    fn get(&self, id: &PartitionId) -> Result<Option<Arc<DB>>, StorageError> {
        let mut open = lock(&self.open);
        if let Some(db) = open.get(id) {
            return Ok(Some(db.clone()));
        }
        let dir = id.dir(&self.root);
        if !dir.join("CURRENT").is_file() {
            return Ok(None);
        }
        let db = Arc::new(partition::open(&dir, self.format)?);
        open.insert(id.clone(), db.clone());
        Ok(Some(db))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these short critical sections leaves consistent data.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One file of a snapshot.
#[derive(Clone, Debug)]
pub struct SnapshotFile {
    /// File name inside the snapshot directory.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
}

/// A checkpoint of one partition, with lazily computed, cached digests.
pub struct Snapshot {
    /// The partition it is a checkpoint of.
    pub id: PartitionId,
    /// Its directory.
    pub dir: PathBuf,
    /// When it was made.
    pub created: Instant,
    /// Its files, sorted by name.
    pub files: Vec<SnapshotFile>,
    /// Offset and version state read from the checkpoint itself (so never ahead of its data).
    pub meta: PartitionMeta,
    md5: tokio::sync::OnceCell<Arc<Vec<Vec<u8>>>>,
    blake3: tokio::sync::OnceCell<Arc<Vec<Vec<u8>>>>,
    users: AtomicUsize,
    stale: AtomicBool,
    digest_runs: AtomicUsize,
}

impl Snapshot {
    /// Digests of every file (in `files` order), computed on first call per algorithm, in
    /// parallel across cores, and cached for every later request.
    pub async fn digests(&self, algo: ChecksumAlgo) -> Result<Arc<Vec<Vec<u8>>>, StorageError> {
        let cell = match algo {
            ChecksumAlgo::Md5 => &self.md5,
            ChecksumAlgo::Blake3 => &self.blake3,
        };
        cell.get_or_try_init(|| async {
            self.digest_runs.fetch_add(1, Ordering::Relaxed);
            let paths: Vec<PathBuf> = self.files.iter().map(|f| self.dir.join(&f.name)).collect();
            let digests = tokio::task::spawn_blocking(move || digest_all(&paths, algo))
                .await
                .map_err(|e| StorageError::Io(std::io::Error::other(e)))??;
            Ok(Arc::new(digests))
        })
        .await
        .cloned()
    }

    /// How many times digests were computed for this snapshot (one per algorithm at most).
    pub fn digest_runs(&self) -> usize {
        self.digest_runs.load(Ordering::Relaxed)
    }

    /// Current number of users.
    pub fn users(&self) -> usize {
        self.users.load(Ordering::Acquire)
    }
}

fn digest_all(paths: &[PathBuf], algo: ChecksumAlgo) -> Result<Vec<Vec<u8>>, StorageError> {
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .min(paths.len().max(1));
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<std::io::Result<Vec<u8>>>>> =
        Mutex::new((0..paths.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= paths.len() {
                    break;
                }
                let r = digest_file(&paths[i], algo).map(|(_, d)| d);
                lock(&results)[i] = Some(r);
            });
        }
    });
    results
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(std::io::Error::other("digest not computed"))))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(StorageError::from)
}

/// Why a snapshot could not be leased.
#[derive(Debug, thiserror::Error)]
pub enum AcquireError {
    /// This host does not hold the partition.
    #[error("partition not found")]
    NotFound,
    /// Every user slot is taken.
    #[error("too many concurrent snapshot users")]
    Busy,
    /// Making the checkpoint failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

#[derive(Default)]
struct Slot {
    current: Option<Arc<Snapshot>>,
}

struct Inner {
    cfg: SnapshotConfig,
    source: Arc<dyn PartitionSource>,
    slots: Mutex<HashMap<PartitionId, Arc<tokio::sync::Mutex<Slot>>>>,
    permits: Arc<Semaphore>,
    seq: AtomicU64,
    created: AtomicU64,
}

/// Makes, shares and deletes snapshots. Cheap to clone.
#[derive(Clone)]
pub struct SnapshotManager {
    inner: Arc<Inner>,
}

/// A user's hold on a snapshot; dropping it releases the user slot and, if the snapshot went
/// stale meanwhile and this was its last user, deletes it.
pub struct SnapshotLease {
    snapshot: Arc<Snapshot>,
    _permit: OwnedSemaphorePermit,
}

impl SnapshotLease {
    /// The leased snapshot.
    pub fn snapshot(&self) -> &Arc<Snapshot> {
        &self.snapshot
    }
}

impl Drop for SnapshotLease {
    fn drop(&mut self) {
        // SeqCst pairs with `retire`: whichever of the two runs last sees the other's write,
        // so a stale snapshot is deleted exactly when both "stale" and "unused" hold.
        let left = self.snapshot.users.fetch_sub(1, Ordering::SeqCst) - 1;
        if left == 0 && self.snapshot.stale.load(Ordering::SeqCst) {
            remove_snapshot_dir(&self.snapshot.dir);
        }
    }
}

fn remove_snapshot_dir(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(dir = %dir.display(), error = %e, "could not delete snapshot");
        }
    }
}

impl SnapshotManager {
    /// A manager over `source`; wipes `cfg.root` of a previous run's leftovers first — but only
    /// a directory this manager made (it carries a marker file) or an empty one, so a
    /// mistyped `--snapshot-dir` can never delete data.
    pub fn new(cfg: SnapshotConfig, source: Arc<dyn PartitionSource>) -> std::io::Result<Self> {
        let marker = cfg.root.join(SNAPSHOT_MARKER);
        if cfg.root.exists() {
            if marker.is_file() {
                std::fs::remove_dir_all(&cfg.root)?;
            } else if std::fs::read_dir(&cfg.root)?.next().is_some() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    format!(
                        "snapshot dir {} is not empty and was not made by quicstrap",
                        cfg.root.display()
                    ),
                ));
            }
        }
        std::fs::create_dir_all(&cfg.root)?;
        std::fs::write(&marker, b"quicstrap snapshots; deleted at every start\n")?;
        let permits = Arc::new(Semaphore::new(cfg.max_users));
        Ok(Self {
            inner: Arc::new(Inner {
                cfg,
                source,
                slots: Mutex::new(HashMap::new()),
                permits,
                seq: AtomicU64::new(0),
                created: AtomicU64::new(0),
            }),
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &SnapshotConfig {
        &self.inner.cfg
    }

    /// Leases a snapshot of `id` at time `now`: reuses a fresh one, else makes a new
    /// checkpoint. Concurrent first requests wait for one checkpoint and share it.
    pub async fn acquire(
        &self,
        id: &PartitionId,
        now: Instant,
    ) -> Result<SnapshotLease, AcquireError> {
        let permit = self
            .inner
            .permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| AcquireError::Busy)?;
        let slot = lock(&self.inner.slots)
            .entry(id.clone())
            .or_default()
            .clone();
        let mut slot = slot.lock().await;
        if let Some(snap) = &slot.current {
            if policy::reusable(snap.created, now, self.inner.cfg.ttl) {
                snap.users.fetch_add(1, Ordering::SeqCst);
                return Ok(SnapshotLease {
                    snapshot: snap.clone(),
                    _permit: permit,
                });
            }
        }
        let source = self.inner.source.clone();
        let lookup = id.clone();
        let db = tokio::task::spawn_blocking(move || source.get(&lookup))
            .await
            .map_err(|e| StorageError::Io(std::io::Error::other(e)))??
            .ok_or(AcquireError::NotFound)?;
        let seq = self.inner.seq.fetch_add(1, Ordering::Relaxed);
        let dir = self
            .inner
            .cfg
            .root
            .join(id.store_version_dir())
            .join(id.partition.to_string())
            .join(seq.to_string());
        let make_dir = dir.clone();
        let format = self.table_format_hint(&db);
        let (files, meta) =
            tokio::task::spawn_blocking(move || make_checkpoint(&db, &make_dir, format))
                .await
                .map_err(|e| StorageError::Io(std::io::Error::other(e)))??;
        self.inner.created.fetch_add(1, Ordering::Relaxed);
        let snap = Arc::new(Snapshot {
            id: id.clone(),
            dir,
            created: now,
            files,
            meta,
            md5: Default::default(),
            blake3: Default::default(),
            users: AtomicUsize::new(1),
            stale: AtomicBool::new(false),
            digest_runs: AtomicUsize::new(0),
        });
        if let Some(old) = slot.current.replace(snap.clone()) {
            retire(&old);
        }
        Ok(SnapshotLease {
            snapshot: snap,
            _permit: permit,
        })
    }

    fn table_format_hint(&self, db: &DB) -> TableFormat {
        partition::read_meta(db)
            .ok()
            .and_then(|m| m.version_state)
            .map(|v| v.table_format)
            .unwrap_or(TableFormat::Block)
    }

    /// Deletes every snapshot that is stale at `now` and unused; returns how many.
    pub async fn collect(&self, now: Instant) -> usize {
        let slots: Vec<_> = lock(&self.inner.slots).values().cloned().collect();
        let mut removed = 0;
        for slot in slots {
            let mut slot = slot.lock().await;
            let drop_it = slot.current.as_ref().is_some_and(|s| {
                policy::collectable(s.created, now, self.inner.cfg.ttl, s.users())
            });
            if drop_it {
                if let Some(old) = slot.current.take() {
                    retire(&old);
                    removed += 1;
                }
            }
        }
        removed
    }

    /// Runs [`Self::collect`] every `cleanup_interval` until the manager's last handle is gone
    /// or `shutdown` fires.
    pub fn spawn_cleanup(&self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let weak = Arc::downgrade(&self.inner);
        let every = self.inner.cfg.cleanup_interval;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = shutdown.changed() => break,
                }
                let Some(inner) = weak.upgrade() else { break };
                let n = SnapshotManager { inner }.collect(Instant::now()).await;
                if n > 0 {
                    tracing::info!(removed = n, "stale snapshots removed");
                }
            }
        });
    }

    /// Retires every snapshot (deleted now if unused, else when its last user leaves); for
    /// shutdown.
    pub async fn retire_all(&self) {
        let slots: Vec<_> = lock(&self.inner.slots).values().cloned().collect();
        for slot in slots {
            if let Some(old) = slot.lock().await.current.take() {
                retire(&old);
            }
        }
    }

    /// Checkpoints made since start: a second request within the TTL must not add one.
    pub fn created(&self) -> u64 {
        self.inner.created.load(Ordering::Relaxed)
    }

    /// The current snapshot of `id`, if any (for inspection and tests).
    pub async fn current(&self, id: &PartitionId) -> Option<Arc<Snapshot>> {
        let slot = lock(&self.inner.slots).get(id).cloned()?;
        let slot = slot.lock().await;
        slot.current.clone()
    }

    /// Snapshot users right now, across partitions.
    pub fn users(&self) -> usize {
        self.inner.cfg.max_users - self.inner.permits.available_permits()
    }
}

fn retire(snap: &Arc<Snapshot>) {
    snap.stale.store(true, Ordering::SeqCst);
    if snap.users.load(Ordering::SeqCst) == 0 {
        remove_snapshot_dir(&snap.dir);
    }
}

fn make_checkpoint(
    db: &DB,
    dir: &Path,
    format: TableFormat,
) -> Result<(Vec<SnapshotFile>, PartitionMeta), StorageError> {
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let made = list_checkpoint(db, dir, format);
    if made.is_err() {
        remove_snapshot_dir(dir);
    }
    made
}

fn list_checkpoint(
    db: &DB,
    dir: &Path,
    format: TableFormat,
) -> Result<(Vec<SnapshotFile>, PartitionMeta), StorageError> {
    rocksdb::checkpoint::Checkpoint::new(db)?.create_checkpoint(dir)?;
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !meta.is_file() || names::validate_file_name(&name).is_err() {
            return Err(StorageError::CorruptMeta(format!(
                "checkpoint holds an entry that cannot be shipped: {name:?}"
            )));
        }
        files.push(SnapshotFile {
            name,
            size: meta.len(),
        });
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    let meta = {
        let ro = partition::open_read_only(dir, format)?;
        partition::read_meta(&ro)?
    };
    Ok((files, meta))
}

#[cfg(test)]
mod tests {
    use super::policy::*;
    use std::time::{Duration, Instant};

    #[test]
    fn reuse_and_collection_follow_the_ttl() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(3600);
        assert!(reusable(t0, t0 + Duration::from_secs(3599), ttl));
        assert!(!reusable(t0, t0 + ttl, ttl));
        assert!(!collectable(t0, t0 + Duration::from_secs(10), ttl, 0));
        assert!(!collectable(t0, t0 + ttl * 2, ttl, 1));
        assert!(collectable(t0, t0 + ttl * 2, ttl, 0));
    }
}
