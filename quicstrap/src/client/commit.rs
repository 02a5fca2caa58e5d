//! Commit: the only place a partition directory comes into being.
//!
//! Files land in a temp dir beside the target. Only when every file has validated and the
//! peer has said `Complete` does [`commit`] cross-check the shipped metadata against the offset
//! inside the received DB, record it, fsync, and rename the temp dir into place (then fsync the
//! parent), so the partition appears whole or not at all (docs/design.md, invariant *metadata
//! after files*). A [`TempDir`] ([`super::workdir`]) deletes itself when dropped unless
//! committed or parked for a resume, so a failed attempt leaves nothing.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::store::partition::{self, PartitionMeta, TableFormat};

use super::error::AttemptError;
use crate::store::disk::{is_empty_dir, sync_dir};

/// Name of the record of what was received, written into the partition at commit; no
/// manifest may name it (the protocol's rule).
pub use crate::protocol::transfer::RECEIPT_FILE;

pub use super::workdir::{TempDir, TEMP_PREFIX};

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
    for name in super::journal::journal_files() {
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
    tmp.committed();
    // The partition is in place from here on; a failed parent fsync only weakens durability
    // across a power cut, and reporting failure now would misdescribe what is on disk.
    if let Some(parent) = target.parent() {
        if let Err(e) = sync_dir(parent) {
            tracing::warn!(dir = %parent.display(), error = %e, "fsync of parent dir failed");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_dir_is_removed_unless_committed() {
        let root = tempfile::tempdir().unwrap();
        let t = TempDir::create(root.path(), 3).unwrap();
        std::fs::write(t.path().join("f"), b"1").unwrap();
        let p = t.path().to_owned();
        drop(t);
        assert!(!p.exists());
    }

    #[test]
    fn commit_refuses_metadata_that_disagrees_with_the_data() {
        let root = tempfile::tempdir().unwrap();
        let t = TempDir::create(root.path(), 0).unwrap();
        crate::store::partition::fixture::fill(t.path(), TableFormat::Block, 10, 8, 10);
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
