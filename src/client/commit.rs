//! Commit: the only place a partition directory comes into being.
//!
//! Files land in a temp dir beside the target. Only when every file has validated and the
//! peer has said `Complete` does [`commit`] cross-check the shipped metadata against the offset
//! inside the received DB, record it, fsync, and rename the temp dir into place (then fsync the
//! parent), so the partition appears whole or not at all (docs/design.md, invariant *metadata
//! after files*). A [`TempDir`] deletes itself when dropped unless committed, so a failed or
//! cancelled attempt leaves nothing.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::partition::{self, PartitionMeta, TableFormat};

use super::error::AttemptError;

/// Name of the record of what was received, written into the partition at commit; no
/// manifest may name it (the protocol's rule).
pub use crate::protocol::transfer::RECEIPT_FILE;

/// Prefix of temp dirs, so leftovers of a crashed process can be recognised and removed.
pub const TEMP_PREFIX: &str = ".quicstrap-tmp-";

/// A temp dir that is deleted on drop unless it was committed.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
    armed: bool,
}

impl TempDir {
    /// Creates `<parent>/.quicstrap-tmp-<partition>-<tag>`.
    pub fn create(parent: &Path, partition: u32, tag: &str) -> Result<Self, AttemptError> {
        let path = parent.join(format!("{TEMP_PREFIX}{partition}-{tag}"));
        if path.exists() {
            std::fs::remove_dir_all(&path).map_err(AttemptError::local)?;
        }
        std::fs::create_dir_all(&path).map_err(AttemptError::local)?;
        Ok(Self { path, armed: true })
    }

    /// Takes over an existing temp dir (one kept for a resume), deleted on drop like a new
    /// one.
    pub fn adopt(path: PathBuf) -> Self {
        Self { path, armed: true }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Leaves it on disk: it was kept (parked) for a later resume.
    pub fn disarm(mut self) {
        self.armed = false;
    }

    /// Deletes it now.
    pub fn remove(mut self) {
        self.armed = false;
        remove(&self.path);
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
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
        }
    }
}

/// Provenance written into a committed partition.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Receipt {
    /// The offset and version state the peer shipped (equal to the DB's own).
    pub meta: PartitionMeta,
    /// Peer it came from.
    pub peer: String,
    /// Files received.
    pub files: usize,
    /// Payload bytes received.
    pub bytes: u64,
    /// Unix seconds at commit.
    pub committed_at: u64,
}

/// Validates the received DB against `meta`, writes the receipt, fsyncs and renames `tmp` to
/// `target` atomically. On error nothing is renamed and `tmp` is deleted by its drop.
pub fn commit(
    tmp: TempDir,
    target: &Path,
    format: TableFormat,
    receipt: &Receipt,
) -> Result<(), AttemptError> {
    // The shipped offset must be the one inside the data (docs/design.md, invariant *offset
    // never ahead of data*).
    let inside = {
        let db = partition::open_read_only(tmp.path(), format)
            .map_err(|e| AttemptError::Protocol(format!("received DB does not open: {e}")))?;
        partition::read_meta(&db)
            .map_err(|e| AttemptError::Protocol(format!("received DB metadata: {e}")))?
    };
    if inside.offset != receipt.meta.offset {
        return Err(AttemptError::Protocol(format!(
            "metadata offset {:?} disagrees with the data's own offset {:?}",
            receipt.meta.offset, inside.offset
        )));
    }
    // A resumed transfer's journal (and a save a crash cut short) has served its purpose; it
    // must not become part of the partition.
    for name in super::resume::journal_files() {
        match std::fs::remove_file(tmp.path().join(name)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(AttemptError::local(e))
            }
            _ => {}
        }
    }
    let json =
        serde_json::to_vec_pretty(receipt).map_err(|e| AttemptError::LocalIo(e.to_string()))?;
    let receipt_path = tmp.path().join(RECEIPT_FILE);
    std::fs::write(&receipt_path, json).map_err(AttemptError::local)?;
    std::fs::File::open(&receipt_path)
        .and_then(|f| f.sync_all())
        .map_err(AttemptError::local)?;
    sync_dir(tmp.path()).map_err(AttemptError::local)?;
    if target.exists() && !is_empty_dir(target).map_err(AttemptError::local)? {
        return Err(AttemptError::LocalIo(format!(
            "{} appeared while fetching; left untouched",
            target.display()
        )));
    }
    std::fs::rename(tmp.path(), target).map_err(AttemptError::local)?;
    let mut tmp = tmp;
    tmp.armed = false;
    // The partition is in place from here on; a failed parent fsync only weakens durability
    // across a power cut, and reporting failure now would misdescribe what is on disk.
    if let Some(parent) = target.parent() {
        if let Err(e) = sync_dir(parent) {
            tracing::warn!(dir = %parent.display(), error = %e, "fsync of parent dir failed");
        }
    }
    Ok(())
}

/// fsync of a directory, so the entries in it (new files, a rename) are durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// True when `dir` has no entries.
pub fn is_empty_dir(dir: &Path) -> std::io::Result<bool> {
    Ok(std::fs::read_dir(dir)?.next().is_none())
}

/// Deletes the temp dirs of `partition` in `store_dir` left by processes that no longer run
/// (a crash mid-fetch); never a partition dir, never a live fetch's temp dir.
pub fn remove_dead_temp_dirs(store_dir: &Path, partition: u32) -> std::io::Result<usize> {
    let prefix = format!("{TEMP_PREFIX}{partition}-");
    let mut n = 0;
    let Ok(entries) = std::fs::read_dir(store_dir) else {
        return Ok(0);
    };
    for e in entries {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(&prefix) else {
            continue;
        };
        let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
        let alive = pid.is_some_and(|p| Path::new(&format!("/proc/{p}")).exists());
        if !alive && e.path().is_dir() {
            std::fs::remove_dir_all(e.path())?;
            n += 1;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_dir_is_removed_unless_committed() {
        let root = tempfile::tempdir().unwrap();
        let t = TempDir::create(root.path(), 3, "x").unwrap();
        std::fs::write(t.path().join("f"), b"1").unwrap();
        let p = t.path().to_owned();
        drop(t);
        assert!(!p.exists());
    }

    #[test]
    fn only_dead_processes_temp_dirs_are_removed() {
        let root = tempfile::tempdir().unwrap();
        let dead = root.path().join(format!("{TEMP_PREFIX}4-4000000000-1"));
        let live = root
            .path()
            .join(format!("{TEMP_PREFIX}4-{}-1", std::process::id()));
        let other = root.path().join(format!("{TEMP_PREFIX}5-4000000000-1"));
        let partition = root.path().join("4");
        for d in [&dead, &live, &other, &partition] {
            std::fs::create_dir_all(d).unwrap();
        }
        assert_eq!(remove_dead_temp_dirs(root.path(), 4).unwrap(), 1);
        assert!(!dead.exists());
        assert!(live.exists() && other.exists() && partition.exists());
    }

    #[test]
    fn commit_refuses_metadata_that_disagrees_with_the_data() {
        let root = tempfile::tempdir().unwrap();
        let t = TempDir::create(root.path(), 0, "y").unwrap();
        crate::demo::seed::seed(t.path(), TableFormat::Block, 10, 8, 10).unwrap();
        let tmp_path = t.path().to_owned();
        let target = root.path().join("0");
        let receipt = Receipt {
            meta: PartitionMeta {
                offset: Some(10_000),
                version_state: None,
            },
            peer: "p".into(),
            files: 0,
            bytes: 0,
            committed_at: 0,
        };
        let err = commit(t, &target, TableFormat::Block, &receipt).unwrap_err();
        assert!(matches!(err, AttemptError::Protocol(_)), "{err}");
        assert!(!target.exists());
        assert!(!tmp_path.exists());
    }
}
