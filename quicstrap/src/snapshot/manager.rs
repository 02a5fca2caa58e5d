//! The snapshot manager: one current snapshot per partition, leased to each transfer. A fresh
//! snapshot (younger than the TTL) is shared by every request; concurrent first requests wait
//! for one checkpoint. Leases count users; the users on the host are capped, and so are those
//! of any one client (its share).
//!
//! The manager keeps state only for partitions this host holds: a request for one it does not
//! hold is answered `NotFound` from the source and leaves nothing behind, so a client asking
//! for ever new names cannot make the server's memory grow.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rocksdb::DB;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::checkpoint::{make_checkpoint, remove_snapshot_dir};
use super::cleanup::take_root;
use super::digest::DigestBook;
use super::digest_cache::DigestCache;
use super::{policy, ClientKey, PartitionSource, RootError, Snapshot};
use crate::net::admission::{PerKey, PerKeyLimit};
use crate::protocol::{RejectReason, SnapshotId};
use crate::store::lock::unpoisoned as lock;
use crate::store::lock::DirLock;
use crate::store::partition::{self, PartitionId, StorageError, TableFormat};

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
    /// Concurrent snapshot users one client ([`ClientKey`]: its certificate at its host) may
    /// be before it is answered `Busy` while others are still served (20, at least 1). 20 is
    /// the most partitions one fetcher receives at once (`FetchConfig::max_partitions`), so a
    /// node restoring itself is not refused for its share even when a single peer holds
    /// everything it needs (a refused fetch with no other peer would fall back to Kafka);
    /// below the default [`Self::max_users`] (30), so one client — however many partitions it
    /// asks for, however slowly it reads — leaves a third of the slots to the others.
    pub max_users_per_client: usize,
    /// How long to wait for another process to release the root (0: refuse at once). A
    /// rolling restart starts the new process with a wait, so it takes over the root the
    /// moment the old one exits.
    pub lock_wait: Duration,
    /// How long after an interrupted transfer its client may resume it (10 min), bounded by
    /// the TTL: a snapshot past its TTL is replaced, and a resume never holds one longer.
    pub resume_window: Duration,
}

impl SnapshotConfig {
    /// Defaults with checkpoints under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            ttl: Duration::from_secs(60 * 60),
            cleanup_interval: Duration::from_secs(120 * 60),
            max_users: 30,
            max_users_per_client: 20,
            lock_wait: Duration::ZERO,
            resume_window: Duration::from_secs(10 * 60),
        }
    }
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
    /// The asking client already holds its share of the user slots
    /// ([`SnapshotConfig::max_users_per_client`]); others may still be served.
    #[error("this client already holds its per-client share of {share} concurrent snapshot users")]
    ClientBusy {
        /// The share: users one client may be at once.
        share: usize,
    },
    /// Making the checkpoint failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The partition is here but its ingestion has stopped: its data no longer moves.
    #[error("ingestion stopped: {0}")]
    Stale(String),
    /// A resume named a snapshot not kept here (any more): its window passed, its client gave
    /// up, or this server restarted since.
    #[error("snapshot {0} is not kept for resuming")]
    SnapshotGone(SnapshotId),
}

impl AcquireError {
    /// The typed refusal a client gets for it.
    pub fn reason(&self) -> RejectReason {
        match self {
            Self::NotFound => RejectReason::NotFound,
            Self::Busy | Self::ClientBusy { .. } => RejectReason::Busy,
            Self::Storage(_) => RejectReason::ServerError,
            Self::Stale(_) => RejectReason::Stale,
            Self::SnapshotGone(_) => RejectReason::SnapshotGone,
        }
    }
}

/// A partition's current snapshot, behind an async lock: concurrent first requests wait for
/// one checkpoint.
#[derive(Default)]
pub(super) struct Slot {
    pub(super) current: Option<Arc<Snapshot>>,
}

pub(super) struct Inner {
    pub(super) cfg: SnapshotConfig,
    /// Held for the manager's life: no other process wipes or sweeps this root meanwhile.
    _lock: DirLock,
    source: Arc<dyn PartitionSource>,
    /// One entry per partition this host holds that was asked for; never one for a partition
    /// it does not hold (see [`SnapshotManager::acquire_as`]), and one without a snapshot
    /// that nobody uses goes with the next sweep ([`SnapshotManager::collect`]).
    pub(super) slots: Mutex<HashMap<PartitionId, Arc<tokio::sync::Mutex<Slot>>>>,
    permits: Arc<Semaphore>,
    /// What each client holds of `permits`.
    pub(super) shares: Arc<PerKeyLimit<ClientKey>>,
    /// Digests of SST files from earlier snapshots, kept across restarts.
    digests: Arc<DigestCache>,
    seq: AtomicU64,
    created: AtomicU64,
    /// Random per manager: snapshot ids of a restarted server never match an old one's.
    nonce: [u8; 16],
}

/// Makes, shares and deletes snapshots. Cheap to clone.
#[derive(Clone)]
pub struct SnapshotManager {
    pub(super) inner: Arc<Inner>,
}

/// A user's hold on a snapshot; dropping it releases the user slot and, if the snapshot went
/// stale meanwhile and this was its last user, deletes it.
pub struct SnapshotLease {
    snapshot: Arc<Snapshot>,
    _users: Users,
}

/// A user slot on the host and, for a request from a known client, one of its share.
struct Users {
    _permit: OwnedSemaphorePermit,
    _share: Option<PerKey<ClientKey>>,
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

impl SnapshotManager {
    /// A manager over `source`. Takes the root's lock first (waiting up to `cfg.lock_wait`),
    /// so two processes never share a root: a second one would delete the first one's live
    /// snapshots. Then wipes `cfg.root` of a previous run's leftovers — but only a directory
    /// this manager made (it carries a marker file) or an empty one, so a mistyped
    /// `--snapshot-dir` can never delete data. Blocking: call it off the async workers.
    pub fn new(cfg: SnapshotConfig, source: Arc<dyn PartitionSource>) -> Result<Self, RootError> {
        let lock = take_root(&cfg.root, cfg.lock_wait)?;
        let permits = Arc::new(Semaphore::new(cfg.max_users));
        let shares = Arc::new(PerKeyLimit::new(cfg.max_users_per_client));
        let digests = Arc::new(DigestCache::new(&cfg.root));
        Ok(Self {
            inner: Arc::new(Inner {
                cfg,
                _lock: lock,
                source,
                slots: Mutex::new(HashMap::new()),
                permits,
                shares,
                digests,
                seq: AtomicU64::new(0),
                created: AtomicU64::new(0),
                nonce: rand::random(),
            }),
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &SnapshotConfig {
        &self.inner.cfg
    }

    /// Leases snapshot `snapshot` of `id` for a resume by `client` (counted in its share;
    /// `None`: in nobody's) at `now`: only while it is in use or held for a resume
    /// ([`Self::keep_for_resume`]), else [`AcquireError::SnapshotGone`].
    pub async fn acquire_for_resume(
        &self,
        client: Option<&ClientKey>,
        id: &PartitionId,
        snapshot: SnapshotId,
        now: Instant,
    ) -> Result<SnapshotLease, AcquireError> {
        let users = self.take_users(client, id)?;
        // No entry, no snapshot: nothing to resume, and nothing is added for asking.
        let slot = self
            .existing(id)
            .ok_or(AcquireError::SnapshotGone(snapshot))?;
        let slot = slot.lock().await;
        match &slot.current {
            // In use (a transfer of it may be the very one being resumed, not yet seen to be
            // dead), or held for a resume.
            Some(snap)
                if snap.snapshot_id == snapshot
                    && policy::resumable(snap.users(), *lock(&snap.resume_until), now) =>
            {
                snap.users.fetch_add(1, Ordering::SeqCst);
                Ok(SnapshotLease {
                    snapshot: snap.clone(),
                    _users: users,
                })
            }
            _ => Err(AcquireError::SnapshotGone(snapshot)),
        }
    }

    /// Keeps `snap` for a resume of an interrupted transfer: for the resume window from
    /// `now`, never past its TTL. Costs no user slot: within its TTL a snapshot stays anyway,
    /// and the hold only says a resume of it is honoured.
    pub fn keep_for_resume(&self, snap: &Snapshot, now: Instant) {
        let cfg = &self.inner.cfg;
        let until = policy::resume_until(snap.created, now, cfg.resume_window, cfg.ttl);
        let mut held = lock(&snap.resume_until);
        *held = Some(held.map_or(until, |h| h.max(until)));
    }

    /// A user slot for `client` (and one of its share), or why not. Refused before anything
    /// else is looked at, so the slots also bound the source lookups that requests cause.
    fn take_users(
        &self,
        client: Option<&ClientKey>,
        id: &PartitionId,
    ) -> Result<Users, AcquireError> {
        if let Some(why) = self.inner.source.stale(id) {
            return Err(AcquireError::Stale(why));
        }
        let permit = self
            .inner
            .permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| AcquireError::Busy)?;
        let share = match client {
            None => None,
            Some(c) => Some(PerKey::take(&self.inner.shares, c.clone()).ok_or(
                AcquireError::ClientBusy {
                    share: self.inner.shares.max(),
                },
            )?),
        };
        Ok(Users {
            _permit: permit,
            _share: share,
        })
    }

    /// The partition's slot, if it has one.
    fn existing(&self, id: &PartitionId) -> Option<Arc<tokio::sync::Mutex<Slot>>> {
        lock(&self.inner.slots).get(id).cloned()
    }

    /// The open DB of `id` from the source, or [`AcquireError::NotFound`].
    async fn lookup(&self, id: &PartitionId) -> Result<Arc<DB>, AcquireError> {
        let source = self.inner.source.clone();
        let lookup = id.clone();
        tokio::task::spawn_blocking(move || source.get(&lookup))
            .await
            .map_err(|e| StorageError::Io(std::io::Error::other(e)))??
            .ok_or(AcquireError::NotFound)
    }

    /// Leases a snapshot of `id` at time `now`, counted in no client's share (for an
    /// embedding node's own use and for tests): [`Self::acquire_as`] without a client.
    pub async fn acquire(
        &self,
        id: &PartitionId,
        now: Instant,
    ) -> Result<SnapshotLease, AcquireError> {
        self.acquire_as(None, id, now).await
    }

    /// Leases a snapshot of `id` for `client` (counted in its share; `None`: in nobody's) at
    /// time `now`: reuses a fresh one, else makes a new checkpoint. Concurrent first requests
    /// wait for one checkpoint and share it.
    ///
    /// A partition gets its entry only once the source has it: a request for one this host
    /// does not hold is answered [`AcquireError::NotFound`] and leaves no state behind.
    pub async fn acquire_as(
        &self,
        client: Option<&ClientKey>,
        id: &PartitionId,
        now: Instant,
    ) -> Result<SnapshotLease, AcquireError> {
        let users = self.take_users(client, id)?;
        let (slot, mut found) = match self.existing(id) {
            Some(slot) => (slot, None),
            None => {
                let db = self.lookup(id).await?;
                let slot = lock(&self.inner.slots)
                    .entry(id.clone())
                    .or_default()
                    .clone();
                (slot, Some(db))
            }
        };
        let mut slot = slot.lock().await;
        if let Some(snap) = &slot.current {
            if policy::reusable(snap.created, now, self.inner.cfg.ttl) {
                snap.users.fetch_add(1, Ordering::SeqCst);
                return Ok(SnapshotLease {
                    snapshot: snap.clone(),
                    _users: users,
                });
            }
        }
        let db = match found.take() {
            Some(db) => db,
            None => self.lookup(id).await?,
        };
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
        let snapshot_id = self.snapshot_id(id, seq, &files);
        let book = DigestBook::new(
            id.clone(),
            dir.clone(),
            files.iter().map(|f| (f.name.clone(), f.size)),
            self.inner.digests.clone(),
        );
        let snap = Arc::new(Snapshot {
            id: id.clone(),
            dir,
            created: now,
            snapshot_id,
            resume_until: Mutex::default(),
            files,
            meta,
            book,
            users: AtomicUsize::new(1),
            stale: AtomicBool::new(false),
        });
        if let Some(old) = slot.current.replace(snap.clone()) {
            old.retire();
        }
        Ok(SnapshotLease {
            snapshot: snap,
            _users: users,
        })
    }

    /// The id of checkpoint `seq` of `id`: this manager's nonce, the sequence number and the
    /// files, hashed.
    fn snapshot_id(&self, id: &PartitionId, seq: u64, files: &[super::SnapshotFile]) -> SnapshotId {
        let mut h = blake3::Hasher::new();
        h.update(&self.inner.nonce);
        h.update(&seq.to_le_bytes());
        h.update(id.to_string().as_bytes());
        for f in files {
            h.update(f.name.as_bytes());
            h.update(&f.size.to_le_bytes());
        }
        let mut out = [0u8; 16];
        out.copy_from_slice(&h.finalize().as_bytes()[..16]);
        SnapshotId(out)
    }

    fn table_format_hint(&self, db: &DB) -> TableFormat {
        partition::read_meta(db)
            .ok()
            .and_then(|m| m.version_state)
            .map(|v| v.table_format)
            .unwrap_or(TableFormat::Block)
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

    /// Partitions the manager keeps an entry for: ones this host holds that were asked for
    /// (for inspection and tests: it never counts a name this host does not hold).
    pub fn partitions(&self) -> usize {
        lock(&self.inner.slots).len()
    }
}

impl SnapshotManager {
    /// Deletes every snapshot that is stale at `now` and unused; returns how many. Then drops
    /// the entries of partitions left without a snapshot that no request is using (a
    /// partition this host no longer holds, or whose checkpoint failed), so the map holds no
    /// more than the partitions asked for since the last sweep that are still here.
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
                    old.retire();
                    removed += 1;
                }
            }
        }
        self.prune();
        removed
    }

    /// Removes every entry without a snapshot that nobody holds. Under the map's lock, where
    /// every other holder takes its clone: an entry only the map holds cannot be picked up
    /// meanwhile, and one whose lock is taken is in use.
    pub(super) fn prune(&self) {
        lock(&self.inner.slots).retain(|_, slot| {
            Arc::strong_count(slot) > 1 || slot.try_lock().map_or(true, |s| s.current.is_some())
        });
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
                old.retire();
            }
        }
    }
}
