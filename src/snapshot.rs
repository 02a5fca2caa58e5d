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

use crate::checksum::{digest_file_unless, ChecksumAlgo};
use crate::ingest::{IngestState, IngestStats};
use crate::lock::unpoisoned as lock;
use crate::lock::{DirLock, LockError};
use crate::partition::{self, PartitionId, PartitionMeta, StorageError, TableFormat};
use crate::protocol::names;
use crate::protocol::RejectReason;

/// Marker file in a snapshot root: proof the directory is ours to wipe.
const SNAPSHOT_MARKER: &str = ".quicstrap-snapshots";
/// Lock file in a snapshot root: the process holding it owns the root ([`crate::lock`]).
const SNAPSHOT_LOCK: &str = ".quicstrap-lock";

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
    /// How long to wait for another process to release the root (0: refuse at once). A
    /// rolling restart starts the new process with a wait, so it takes over the root the
    /// moment the old one exits.
    pub lock_wait: Duration,
}

impl SnapshotConfig {
    /// Defaults with checkpoints under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            ttl: Duration::from_secs(60 * 60),
            cleanup_interval: Duration::from_secs(120 * 60),
            max_users: 30,
            lock_wait: Duration::ZERO,
        }
    }
}

/// Why a snapshot root cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RootError {
    /// Another process serves from this root; starting would break its transfers.
    #[error(transparent)]
    Locked(#[from] LockError),
    /// The root could not be checked, wiped or made (or holds data that is not ours).
    #[error("snapshot dir: {0}")]
    Io(#[from] std::io::Error),
}

/// Where the server's live partitions come from. A node that embeds quicstrap registers its
/// open DBs; the CLI opens directories under a data root on demand.
pub trait PartitionSource: Send + Sync + 'static {
    /// The open DB of `id`, or `None` when this host does not hold it.
    fn get(&self, id: &PartitionId) -> Result<Option<Arc<DB>>, StorageError>;

    /// Why `id` must not be offered to peers although it is here (its ingestion stopped), or
    /// `None` when it may be.
    fn stale(&self, _id: &PartitionId) -> Option<String> {
        None
    }
}

/// Partitions under a data root (`<root>/<store>_v<version>/<partition>/`), opened on first use
/// and kept open, plus any DB registered by the embedding node.
pub struct DataDir {
    root: PathBuf,
    format: TableFormat,
    open: Mutex<HashMap<PartitionId, Arc<DB>>>,
    health: Mutex<HashMap<PartitionId, Arc<IngestStats>>>,
}

impl DataDir {
    /// A source over `root`, whose partitions all use `format`.
    pub fn new(root: impl Into<PathBuf>, format: TableFormat) -> Self {
        Self {
            root: root.into(),
            format,
            open: Mutex::new(HashMap::new()),
            health: Mutex::new(HashMap::new()),
        }
    }

    /// Ties `id`'s offer to its ingestion: while `stats` says stopped, `id` is refused as
    /// stale.
    pub fn watch(&self, id: PartitionId, stats: Arc<IngestStats>) {
        lock(&self.health).insert(id, stats);
    }

    /// Registers a DB the node already has open (it cannot be opened twice).
    pub fn insert(&self, id: PartitionId, db: Arc<DB>) {
        lock(&self.open).insert(id, db);
    }
}

impl PartitionSource for DataDir {
    fn stale(&self, id: &PartitionId) -> Option<String> {
        let stats = lock(&self.health).get(id)?.clone();
        (stats.state() == IngestState::Stopped).then(|| match stats.offset() {
            Some(o) => format!("{id} stopped following its change log at offset {o}"),
            None => format!("{id} stopped following its change log"),
        })
    }

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
    /// The digest computation running per algorithm (md5, blake3), shared by every request
    /// waiting for it.
    jobs: Mutex<[Option<DigestJob>; 2]>,
    users: AtomicUsize,
    stale: AtomicBool,
    digest_runs: AtomicUsize,
    digest_bytes: Arc<AtomicU64>,
}

/// Digests of a snapshot's files, or why there are none.
type DigestResult = Result<Arc<Vec<Vec<u8>>>, String>;

/// One background digest computation and the requests waiting for it. When the last waiter
/// goes (its client disconnected), the job is cancelled between blocks: a client that
/// loops request → disconnect cannot stack full-partition reads.
struct DigestJob {
    waiters: usize,
    cancel: Arc<AtomicBool>,
    done: tokio::sync::watch::Receiver<Option<DigestResult>>,
}

/// One request waiting on a [`DigestJob`]; cancels the job if it was the last.
struct DigestWaiter<'a> {
    snapshot: &'a Snapshot,
    slot: usize,
}

impl Drop for DigestWaiter<'_> {
    fn drop(&mut self) {
        let mut jobs = lock(&self.snapshot.jobs);
        if let Some(job) = jobs[self.slot].as_mut() {
            job.waiters -= 1;
            if job.waiters == 0 {
                job.cancel.store(true, Ordering::Relaxed);
            }
        }
    }
}

impl Snapshot {
    /// Digests of every file (in `files` order), computed on first call per algorithm, in
    /// parallel across cores, and cached for every later request. Concurrent requests share
    /// one computation; one that nobody waits for any more stops between blocks.
    pub async fn digests(&self, algo: ChecksumAlgo) -> Result<Arc<Vec<Vec<u8>>>, StorageError> {
        let (cell, slot) = match algo {
            ChecksumAlgo::Md5 => (&self.md5, 0),
            ChecksumAlgo::Blake3 => (&self.blake3, 1),
        };
        loop {
            if let Some(d) = cell.get() {
                return Ok(d.clone());
            }
            let (mut done, waiter) = self.join_digest_job(algo, slot);
            let result = done
                .wait_for(Option::is_some)
                .await
                .map_err(|e| StorageError::Io(std::io::Error::other(e)))?
                .clone();
            drop(waiter);
            match result {
                Some(Ok(d)) => {
                    let _ = cell.set(d.clone());
                    return Ok(d);
                }
                // Cancelled just before this request joined: run it again.
                Some(Err(e)) if e.starts_with(CANCELLED) => continue,
                Some(Err(e)) => return Err(StorageError::Io(std::io::Error::other(e))),
                None => continue,
            }
        }
    }

    /// Joins the running digest job of `algo`, starting one if none runs (or the last one
    /// ended without a result anybody used).
    fn join_digest_job(
        &self,
        algo: ChecksumAlgo,
        slot: usize,
    ) -> (
        tokio::sync::watch::Receiver<Option<DigestResult>>,
        DigestWaiter<'_>,
    ) {
        let mut jobs = lock(&self.jobs);
        let running = jobs[slot]
            .as_ref()
            .is_some_and(|j| j.done.borrow().is_none() || j.waiters > 0);
        if !running {
            self.digest_runs.fetch_add(1, Ordering::Relaxed);
            let paths: Vec<PathBuf> = self.files.iter().map(|f| self.dir.join(&f.name)).collect();
            let cancel = Arc::new(AtomicBool::new(false));
            let (tx, done) = tokio::sync::watch::channel(None);
            let (flag, bytes) = (cancel.clone(), self.digest_bytes.clone());
            tokio::task::spawn_blocking(move || {
                let result = digest_all(&paths, algo, &flag, &bytes)
                    .map(Arc::new)
                    .map_err(|e| match e {
                        StorageError::Io(io) if io.kind() == std::io::ErrorKind::Interrupted => {
                            format!("{CANCELLED}: {io}")
                        }
                        other => other.to_string(),
                    });
                let _ = tx.send(Some(result));
            });
            jobs[slot] = Some(DigestJob {
                waiters: 0,
                cancel,
                done,
            });
        }
        let job = jobs[slot].as_mut().expect("set above");
        job.waiters += 1;
        // Wanted again before it noticed: let it go on.
        job.cancel.store(false, Ordering::Relaxed);
        (
            job.done.clone(),
            DigestWaiter {
                snapshot: self,
                slot,
            },
        )
    }

    /// Bytes read by digest computations of this snapshot so far, all algorithms.
    pub fn digest_bytes(&self) -> u64 {
        self.digest_bytes.load(Ordering::Relaxed)
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

/// How a cancelled digest job's error starts.
const CANCELLED: &str = "cancelled";

fn digest_all(
    paths: &[PathBuf],
    algo: ChecksumAlgo,
    cancel: &AtomicBool,
    bytes: &AtomicU64,
) -> Result<Vec<Vec<u8>>, StorageError> {
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
                let count = |n| {
                    bytes.fetch_add(n, Ordering::Relaxed);
                };
                let r = digest_file_unless(&paths[i], algo, cancel, &count).map(|(_, d)| d);
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
    /// The partition is here but its ingestion has stopped: its data no longer moves.
    #[error("ingestion stopped: {0}")]
    Stale(String),
}

impl AcquireError {
    /// The typed refusal a client gets for it.
    pub fn reason(&self) -> RejectReason {
        match self {
            Self::NotFound => RejectReason::NotFound,
            Self::Busy => RejectReason::Busy,
            Self::Storage(_) => RejectReason::ServerError,
            Self::Stale(_) => RejectReason::Stale,
        }
    }
}

#[derive(Default)]
struct Slot {
    current: Option<Arc<Snapshot>>,
}

struct Inner {
    cfg: SnapshotConfig,
    /// Held for the manager's life: no other process wipes or sweeps this root meanwhile.
    _lock: DirLock,
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
    /// A manager over `source`. Takes the root's lock first (waiting up to `cfg.lock_wait`),
    /// so two processes never share a root: a second one would delete the first one's live
    /// snapshots. Then wipes `cfg.root` of a previous run's leftovers — but only a directory
    /// this manager made (it carries a marker file) or an empty one, so a mistyped
    /// `--snapshot-dir` can never delete data. Blocking: call it off the async workers.
    pub fn new(cfg: SnapshotConfig, source: Arc<dyn PartitionSource>) -> Result<Self, RootError> {
        let marker = cfg.root.join(SNAPSHOT_MARKER);
        let ours = |name: &std::ffi::OsStr| name == SNAPSHOT_MARKER || name == SNAPSHOT_LOCK;
        if cfg.root.exists() && !marker.is_file() {
            for entry in std::fs::read_dir(&cfg.root)? {
                if !ours(&entry?.file_name()) {
                    return Err(RootError::Io(std::io::Error::new(
                        std::io::ErrorKind::AlreadyExists,
                        format!(
                            "snapshot dir {} is not empty and was not made by quicstrap",
                            cfg.root.display()
                        ),
                    )));
                }
            }
        }
        std::fs::create_dir_all(&cfg.root)?;
        let lock = DirLock::acquire(&cfg.root.join(SNAPSHOT_LOCK), cfg.lock_wait)?;
        // Ours now: everything but the lock is a crashed run's leftover.
        for entry in std::fs::read_dir(&cfg.root)? {
            let entry = entry?;
            if entry.file_name() == SNAPSHOT_LOCK {
                continue;
            }
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                std::fs::remove_dir_all(&path)?;
            } else {
                std::fs::remove_file(&path)?;
            }
        }
        std::fs::write(&marker, b"quicstrap snapshots; deleted at every start\n")?;
        let permits = Arc::new(Semaphore::new(cfg.max_users));
        Ok(Self {
            inner: Arc::new(Inner {
                cfg,
                _lock: lock,
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
        if let Some(why) = self.inner.source.stale(id) {
            return Err(AcquireError::Stale(why));
        }
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
            digest_bytes: Arc::default(),
            jobs: Mutex::default(),
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
