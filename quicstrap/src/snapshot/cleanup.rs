//! Deleting snapshots. At start, a crashed run's leftovers, but only in a root this process
//! holds the lock of and that is ours (marked, or empty). While serving, a snapshot that went
//! stale is deleted when its last user leaves, and a periodic sweep deletes stale snapshots
//! nobody uses.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::digest_cache::DIGEST_CACHE_DIR;
use super::{policy, Snapshot, SnapshotConfig, SnapshotManager};
use crate::store::lock::unpoisoned as lock;
use crate::store::lock::{DirLock, LockError};

/// Marker file in a snapshot root: proof the directory is ours to wipe.
const SNAPSHOT_MARKER: &str = ".quicstrap-snapshots";
/// Lock file in a snapshot root: the process holding it owns the root ([`crate::store::lock`]).
const SNAPSHOT_LOCK: &str = ".quicstrap-lock";

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

/// Takes `cfg.root` for this process: its lock first (waiting up to `cfg.lock_wait`), then
/// wipes a previous run's leftovers from it. Refuses a root that is neither empty nor marked
/// as ours, so a mistyped `--snapshot-dir` can never delete data. Blocking.
pub(super) fn take_root(cfg: &SnapshotConfig) -> Result<DirLock, RootError> {
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
        // The lock, and the digests of SST files, which outlive any run (their entries are
        // checked against each file's identity before use).
        if entry.file_name() == SNAPSHOT_LOCK || entry.file_name() == DIGEST_CACHE_DIR {
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
    Ok(lock)
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
                    retire(&old);
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
                retire(&old);
            }
        }
    }
}

/// Marks `snap` stale; deletes it now if nobody uses it, else its last lease does.
pub(super) fn retire(snap: &Arc<Snapshot>) {
    snap.stale.store(true, Ordering::SeqCst);
    if snap.users.load(Ordering::SeqCst) == 0 {
        remove_snapshot_dir(&snap.dir);
    }
}

/// Deletes a snapshot directory; one already gone is no error.
pub(super) fn remove_snapshot_dir(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(dir = %dir.display(), error = %e, "could not delete snapshot");
        }
    }
}
