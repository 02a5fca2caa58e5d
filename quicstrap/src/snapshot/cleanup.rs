//! The snapshot root at start: taken only when this process holds its lock and it is ours
//! (marked, or empty), then cleared of a crashed run's leftovers. While serving, a snapshot
//! that went stale is deleted when its last user leaves ([`super::Snapshot`]), and the
//! manager's periodic sweep deletes stale snapshots nobody uses.

use std::path::Path;
use std::time::Duration;

use super::digest_cache::DIGEST_CACHE_DIR;
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

/// Takes `root` for this process: its lock first (waiting up to `lock_wait`), then wipes a
/// previous run's leftovers from it. Refuses a root that is neither empty nor marked as ours,
/// so a mistyped `--snapshot-dir` can never delete data. Blocking.
pub(super) fn take_root(root: &Path, lock_wait: Duration) -> Result<DirLock, RootError> {
    let marker = root.join(SNAPSHOT_MARKER);
    let ours = |name: &std::ffi::OsStr| name == SNAPSHOT_MARKER || name == SNAPSHOT_LOCK;
    if root.exists() && !marker.is_file() {
        for entry in std::fs::read_dir(root)? {
            if !ours(&entry?.file_name()) {
                return Err(RootError::Io(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    format!(
                        "snapshot dir {} is not empty and was not made by quicstrap",
                        root.display()
                    ),
                )));
            }
        }
    }
    std::fs::create_dir_all(root)?;
    let lock = DirLock::acquire(&root.join(SNAPSHOT_LOCK), lock_wait)?;
    // Ours now: everything but the lock is a crashed run's leftover.
    for entry in std::fs::read_dir(root)? {
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
