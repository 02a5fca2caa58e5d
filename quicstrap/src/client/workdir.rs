//! The work-directory owner: every temp dir a fetch receives into is claimed, adopted, parked,
//! swept and committed here, and nowhere else.
//!
//! A temp dir (`<root>/<store>_v<version>/.quicstrap-tmp-<partition>-<tag>`) belongs to the
//! process that holds an exclusive `flock` on the directory itself. The kernel drops the lock
//! when the process ends, however it ends, so "owned" never depends on a PID: a reused PID, or
//! every run being PID 1 in its own PID namespace (a container), cannot make a dead fetch's
//! directory look alive, and a new fetch never takes an old one's name (tags are random).
//!
//! * [`TempDir::create`] claims a fresh one (locked before anyone else can see it as unowned).
//! * `adopt` claims the newest unowned dir of a partition whose journal may be resumed.
//! * [`TempDir::park`] lets go of a dir kept for a later resume: files and journal stay, the
//!   lock is released.
//! * [`sweep`] deletes every unowned temp dir under a data dir that nothing can use any more
//!   (no journal, older than the resume window, its partition already in place), and puts back
//!   a partition that was moved aside and never replaced. Every fetch, recovery, bootstrap
//!   and `serve` runs it at start, whatever then builds the partition.
//! * `TempDir::committed` marks one renamed into place ([`super::commit::commit`]).
//!
//! Directories created or moved here are fsynced into their parent.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::store::partition::PartitionId;

use super::error::AttemptError;
use super::journal::{unix_now, Journal};
use crate::store::disk::{is_empty_dir, sync_dir};

/// Prefix of temp dirs, so leftovers of a crashed process can be recognised and removed.
pub const TEMP_PREFIX: &str = ".quicstrap-tmp-";
/// Suffix of a partition moved aside while a replacement is fetched (it could not catch up
/// with the log): deleted once the replacement is in place, put back if none came.
pub const ASIDE_SUFFIX: &str = "-behind-retention";

/// A temp dir this process owns (holds the lock of). Deleted on drop unless committed or
/// parked, so a failed attempt leaves nothing.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
    /// The open directory holding the `flock`; the lock goes with it.
    lock: Option<File>,
    armed: bool,
}

/// Takes the exclusive lock of the directory at `path`, without waiting. `None` when another
/// open file description holds it (another process, or another fetch of this one), or the
/// directory is gone or was replaced while locking.
fn lock_dir(path: &Path) -> Option<File> {
    let file = File::open(path).ok()?;
    // SAFETY: flock on a file descriptor owned by `file`, alive for the call.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return None;
    }
    // Still the directory at `path`: a sweep may have deleted it between the open and the
    // lock (its inode then differs from what the name leads to now, or the name is gone).
    let held = file.metadata().ok()?;
    let now = std::fs::symlink_metadata(path).ok()?;
    (held.dev() == now.dev() && held.ino() == now.ino()).then_some(file)
}

/// A random tag, so no two temp dirs ever share a name (every container's fetch is PID 1).
fn tag() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// The partition a temp dir's name belongs to, if it is one.
fn partition_of(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(TEMP_PREFIX)?;
    rest.split('-').next()?.parse().ok()
}

impl TempDir {
    /// Claims a new, empty `<parent>/.quicstrap-tmp-<partition>-<random>` for this process.
    pub fn create(parent: &Path, partition: u32) -> Result<Self, AttemptError> {
        for _ in 0..16 {
            let path = parent.join(format!("{TEMP_PREFIX}{partition}-{}", tag()));
            match std::fs::create_dir(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(AttemptError::local(e)),
            }
            // A sweep that locked it first (it looks unowned for an instant) deletes it; then
            // the lock fails or finds another inode, and a new name is tried.
            if let Some(lock) = lock_dir(&path) {
                sync_dir(parent).map_err(AttemptError::local)?;
                return Ok(Self {
                    path,
                    lock: Some(lock),
                    armed: true,
                });
            }
        }
        Err(AttemptError::LocalIo(format!(
            "could not claim a temp dir in {}",
            parent.display()
        )))
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Leaves it on disk for a later resume, unowned: the next fetch of the partition, in this
    /// process or another, may adopt it; a sweep deletes it once nothing can use it.
    pub fn park(mut self) {
        self.armed = false;
        if let Some(parent) = self.path.parent() {
            let _ = sync_dir(parent);
        }
        self.lock = None;
        tracing::info!(dir = %self.path.display(), "kept the received files for a resume");
    }

    /// Deletes it now.
    pub fn remove(mut self) {
        self.armed = false;
        remove(&self.path);
    }

    /// It was renamed into place: nothing to delete any more.
    pub(crate) fn committed(&mut self) {
        self.armed = false;
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.armed {
            remove(&self.path);
        }
    }
}

fn remove(path: &Path) {
    // A fetch dropped mid-flight (not cancelled through `Progress`) cannot wait for its file
    // tasks; one may create its file while the directory is being emptied. Retry briefly.
    for attempt in 0..20 {
        match std::fs::remove_dir_all(path) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) if attempt == 19 => {
                tracing::warn!(dir = %path.display(), error = %e, "could not delete temp dir");
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// Claims the newest unowned temp dir of `id` in `parent` whose journal `fits` (this fetch
/// may resume it). The others stay for the sweep.
pub(crate) fn adopt(
    parent: &Path,
    id: &PartitionId,
    fits: impl Fn(&Journal) -> bool,
) -> Option<(TempDir, Journal)> {
    let mut best: Option<(TempDir, Journal)> = None;
    for e in std::fs::read_dir(parent).ok()?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if partition_of(&name) != Some(id.partition) || name.ends_with(ASIDE_SUFFIX) {
            continue;
        }
        let path = e.path();
        let Some(lock) = lock_dir(&path) else {
            continue;
        };
        let Some(journal) = Journal::load(&path).filter(|j| fits(j)) else {
            continue;
        };
        if best
            .as_ref()
            .map_or(true, |(_, j)| journal.written_at > j.written_at)
        {
            // Not armed: a dir adopted but then not used stays for the next fetch.
            let dir = TempDir {
                path,
                lock: Some(lock),
                armed: false,
            };
            best = Some((dir, journal));
        }
    }
    best.map(|(mut dir, journal)| {
        dir.armed = true;
        (dir, journal)
    })
}

/// Deletes every unowned temp dir under `root` (a data dir: `<root>/<store>_v<version>/…`)
/// that nothing can use any more — no journal, a journal older than `window`, or its partition
/// already in place — and puts back a partition that was moved aside and never replaced.
/// Dirs a live fetch owns are never touched, nor is a journaled one a later fetch may resume.
/// Returns how many it deleted.
pub fn sweep(root: &Path, window: Duration) -> usize {
    let Ok(stores) = std::fs::read_dir(root) else {
        return 0;
    };
    let mut removed = 0;
    for store in stores.flatten() {
        if !store.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        removed += sweep_store(&store.path(), window);
    }
    removed
}

fn sweep_store(store: &Path, window: Duration) -> usize {
    let Ok(entries) = std::fs::read_dir(store) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(partition) = partition_of(&name) else {
            continue;
        };
        let path = e.path();
        let Some(_lock) = lock_dir(&path) else {
            continue;
        };
        let target = store.join(partition.to_string());
        let in_place = target.join("CURRENT").is_file();
        if name.ends_with(ASIDE_SUFFIX) && !in_place {
            // The process that moved it aside died before a replacement came: put it back.
            let empty = !target.exists() || is_empty_dir(&target).unwrap_or(false);
            if empty {
                let _ = std::fs::remove_dir(&target);
                if std::fs::rename(&path, &target).is_ok() {
                    let _ = sync_dir(store);
                    tracing::info!(dir = %target.display(), "put back a partition moved aside by a process that died");
                }
            }
            continue;
        }
        let resumable = !in_place
            && Journal::load(&path).is_some_and(|j| {
                let age = unix_now().saturating_sub(j.written_at);
                age <= window.as_secs()
            });
        if resumable {
            continue;
        }
        match std::fs::remove_dir_all(&path) {
            Ok(()) => {
                removed += 1;
                tracing::info!(dir = %path.display(), "removed a temp dir nothing can use");
            }
            Err(e) => {
                tracing::warn!(dir = %path.display(), error = %e, "could not remove a temp dir")
            }
        }
    }
    if removed > 0 {
        let _ = sync_dir(store);
    }
    removed
}

/// Moves the partition at `dir` aside while a replacement is fetched, as a temp dir this
/// process owns: not armed (dropping it leaves it, and a sweep then puts it back).
pub(crate) fn move_aside(dir: &Path, id: &PartitionId) -> std::io::Result<TempDir> {
    let aside = dir.with_file_name(format!(
        "{TEMP_PREFIX}{}-{}{ASIDE_SUFFIX}",
        id.partition,
        tag()
    ));
    std::fs::rename(dir, &aside)?;
    if let Some(parent) = aside.parent() {
        sync_dir(parent)?;
    }
    let lock = lock_dir(&aside);
    Ok(TempDir {
        path: aside,
        lock,
        armed: false,
    })
}

impl TempDir {
    /// Puts a partition moved aside ([`move_aside`]) back where it was.
    pub(crate) fn put_back(self, dir: &Path) -> std::io::Result<()> {
        let _ = std::fs::remove_dir(dir);
        std::fs::rename(&self.path, dir)?;
        if let Some(parent) = dir.parent() {
            sync_dir(parent)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::SnapshotId;
    use crate::store::checksum::ChecksumAlgo;
    use crate::store::partition::TableFormat;

    fn id(partition: u32) -> PartitionId {
        PartitionId {
            store: "s".into(),
            version: 1,
            partition,
        }
    }

    fn journal(partition: u32) -> Journal {
        Journal::new(
            &id(partition),
            "127.0.0.1:1".into(),
            SnapshotId([1; 16]),
            ChecksumAlgo::Md5,
            TableFormat::Block,
            Vec::new(),
        )
    }

    /// A temp dir left by a process that died: unowned, with or without a journal.
    fn left(store: &Path, partition: u32, journaled: bool) -> PathBuf {
        let dir = TempDir::create(store, partition).unwrap();
        if journaled {
            journal(partition).save(dir.path()).unwrap();
        }
        let path = dir.path().to_owned();
        dir.park();
        path
    }

    #[test]
    fn a_dir_is_owned_by_its_lock_not_by_a_pid() {
        let root = tempfile::tempdir().unwrap();
        let owned = TempDir::create(root.path(), 3).unwrap();
        journal(3).save(owned.path()).unwrap();
        // Owned: neither adopted nor swept, whatever its name says.
        assert!(adopt(root.path(), &id(3), |_| true).is_none());
        assert_eq!(sweep_store(root.path(), Duration::from_secs(600)), 0);
        assert!(owned.path().exists());
        // Two claims never share a name.
        let other = TempDir::create(root.path(), 3).unwrap();
        assert_ne!(other.path(), owned.path());
        // Parked: adoptable, with its files.
        let path = owned.path().to_owned();
        owned.park();
        let (dir, j) = adopt(root.path(), &id(3), |_| true).expect("unowned now");
        assert_eq!(dir.path(), path);
        assert_eq!(j.partition, id(3).to_string());
        // Adopted: owned again.
        assert!(adopt(root.path(), &id(3), |_| true).is_none());
    }

    #[test]
    fn the_sweep_removes_only_what_nothing_can_use() {
        let root = tempfile::tempdir().unwrap();
        let store = root.path().join("s_v1");
        std::fs::create_dir_all(&store).unwrap();
        let window = Duration::from_secs(600);
        let resumable = left(&store, 1, true);
        let no_journal = left(&store, 2, false);
        let built = left(&store, 3, true);
        crate::store::partition::fixture::fill(&store.join("3"), TableFormat::Block, 10, 8, 10);
        let old = left(&store, 4, true);
        let mut j = journal(4);
        j.save(&old).unwrap();
        j.written_at -= 601;
        std::fs::write(
            old.join(super::super::journal::JOURNAL_FILE),
            serde_json::to_vec(&j).unwrap(),
        )
        .unwrap();
        let live = TempDir::create(&store, 5).unwrap();
        let partition = store.join("6");
        std::fs::create_dir_all(&partition).unwrap();
        assert_eq!(sweep(root.path(), window), 3);
        assert!(resumable.exists() && live.path().exists() && partition.exists());
        assert!(!no_journal.exists() && !built.exists() && !old.exists());
    }

    #[test]
    fn a_partition_moved_aside_goes_once_replaced_and_comes_back_if_not() {
        let root = tempfile::tempdir().unwrap();
        let store = root.path().join("s_v1");
        let dir = store.join("0");
        crate::store::partition::fixture::fill(&dir, TableFormat::Block, 10, 8, 10);
        // Moved aside and owned: the sweep leaves it alone.
        let aside = move_aside(&dir, &id(0)).unwrap();
        assert!(!dir.exists());
        assert_eq!(sweep(root.path(), Duration::from_secs(600)), 0);
        assert!(aside.path().exists());
        // Its process died with no replacement: put back.
        let path = aside.path().to_owned();
        drop(aside);
        sweep(root.path(), Duration::from_secs(600));
        assert!(dir.join("CURRENT").is_file() && !path.exists());
        // Replaced, then the process died: the copy goes.
        let aside = move_aside(&dir, &id(0)).unwrap();
        let path = aside.path().to_owned();
        crate::store::partition::fixture::fill(&dir, TableFormat::Block, 10, 8, 10);
        drop(aside);
        assert_eq!(sweep(root.path(), Duration::from_secs(600)), 1);
        assert!(!path.exists() && dir.join("CURRENT").is_file());
    }

    #[test]
    fn a_dir_locked_by_another_process_is_left_alone() {
        let root = tempfile::tempdir().unwrap();
        let store = root.path().join("s_v1");
        std::fs::create_dir_all(&store).unwrap();
        let path = left(&store, 7, false);
        // flock(1) from util-linux holds the directory's lock in another process (`-o`: itself
        // only, not the command it waits for).
        let Ok(mut holder) = std::process::Command::new("flock")
            .arg("-o")
            .arg(&path)
            .args(["sleep", "30"])
            .spawn()
        else {
            return;
        };
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while lock_dir(&path).is_some() && std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(sweep(root.path(), Duration::from_secs(600)), 0);
        assert!(path.exists());
        let _ = holder.kill();
        let _ = holder.wait();
        assert_eq!(sweep(root.path(), Duration::from_secs(600)), 1);
    }
}
