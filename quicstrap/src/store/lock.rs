//! Exclusive ownership of a directory by one process (an advisory `flock` on a lock file),
//! and the crate's one way of taking an in-process mutex.
//!
//! A serving process wipes its snapshot root at start (leftovers of a crash) and deletes
//! snapshots as they go stale. Two processes on one root would delete each other's live
//! snapshots mid-transfer, so the root belongs to whoever holds its lock. `flock` locks die
//! with the process (also on SIGKILL), so a crash never leaves a stale lock behind, and a
//! rolling restart can wait for the old process to let go.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How often a waiting process tries the lock again.
const RETRY: Duration = Duration::from_millis(100);

/// Why a lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds it (for the whole of the wait, if there was one). The caller
    /// should not start: it would break the holder's work.
    #[error(
        "{} is locked by another quicstrap process (pid {}); stop it, use another directory, or \
         wait for it with --wait-for-lock SECS",
        path.display(),
        holder.as_deref().unwrap_or("unknown")
    )]
    Held {
        /// The lock file.
        path: PathBuf,
        /// The holder's pid, as it wrote it into the lock file.
        holder: Option<String>,
    },
    /// The lock file could not be created or locked.
    #[error("lock file {}: {source}", path.display())]
    Io {
        /// The lock file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
}

/// A held lock; released when dropped (or when the process ends, however it ends).
#[derive(Debug)]
pub struct DirLock {
    _file: File,
    path: PathBuf,
}

impl DirLock {
    /// Takes the exclusive lock on `path` (created if missing), trying again for up to `wait`
    /// while another process holds it. Blocking: call it off the async workers.
    pub fn acquire(path: &Path, wait: Duration) -> Result<Self, LockError> {
        let io = |source| LockError::Io {
            path: path.to_owned(),
            source,
        };
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)
            .map_err(io)?;
        let deadline = Instant::now() + wait;
        loop {
            // SAFETY: flock on a file descriptor this function owns.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                break;
            }
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(io(err));
            }
            if Instant::now() >= deadline {
                let holder = std::fs::read_to_string(path)
                    .ok()
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty());
                return Err(LockError::Held {
                    path: path.to_owned(),
                    holder,
                });
            }
            std::thread::sleep(RETRY);
        }
        // Who holds it, for the next one's error message.
        use std::io::{Seek, Write};
        file.set_len(0).map_err(io)?;
        file.seek(std::io::SeekFrom::Start(0)).map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        Ok(Self {
            _file: file,
            path: path.to_owned(),
        })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Locks `m`, taking over a poisoned lock: every mutex in this crate guards a short
/// critical section that leaves its data consistent even if a holder panicked.
pub fn unpoisoned<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let first = DirLock::acquire(&path, Duration::ZERO).unwrap();
        // flock locks belong to the open file description: a second open in the same
        // process conflicts exactly as another process would.
        match DirLock::acquire(&path, Duration::from_millis(250)) {
            Err(LockError::Held { holder, .. }) => {
                assert_eq!(holder, Some(std::process::id().to_string()))
            }
            other => panic!("second lock: {other:?}"),
        }
        let waiter = {
            let path = path.clone();
            std::thread::spawn(move || DirLock::acquire(&path, Duration::from_secs(10)))
        };
        std::thread::sleep(Duration::from_millis(300));
        drop(first);
        waiter
            .join()
            .unwrap()
            .expect("the waiter gets the lock once it is free");
    }
}
