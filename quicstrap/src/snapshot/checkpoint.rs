//! One snapshot: a RocksDB checkpoint (hard links) in its own directory, its files listed and
//! its offset read from the checkpoint itself, so the offset shipped is never ahead of the
//! data shipped.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rocksdb::DB;

use super::digest::DigestBook;
use crate::protocol::{names, FileEntry, SnapshotId};
use crate::store::checksum::ChecksumAlgo;
use crate::store::partition::{self, PartitionId, PartitionMeta, StorageError, TableFormat};

/// One file of a snapshot.
#[derive(Clone, Debug)]
pub struct SnapshotFile {
    /// File name inside the snapshot directory.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
}

/// A checkpoint of one partition, with the digests of its files as they become known.
pub struct Snapshot {
    /// The partition it is a checkpoint of.
    pub id: PartitionId,
    /// Its directory.
    pub dir: PathBuf,
    /// When it was made.
    pub created: Instant,
    /// Its identity on the wire, for resumes: unique across snapshots and server restarts.
    pub snapshot_id: SnapshotId,
    /// Until when a resume of it is honoured: set when a transfer of it is interrupted,
    /// cleared when its client gives up.
    pub(super) resume_until: Mutex<Option<Instant>>,
    /// Its files, sorted by name.
    pub files: Vec<SnapshotFile>,
    /// Offset and version state read from the checkpoint itself (so never ahead of its data).
    pub meta: PartitionMeta,
    /// The digests known so far, per algorithm ([`Snapshot::manifest`]); SST digests of
    /// earlier snapshots come from the digest cache through it.
    pub(super) book: DigestBook,
    /// Leases held on it.
    pub(super) users: AtomicUsize,
    /// Retired: deleted when its last user leaves.
    pub(super) stale: AtomicBool,
}

impl Snapshot {
    /// Current number of users.
    pub fn users(&self) -> usize {
        self.users.load(Ordering::Acquire)
    }

    /// Forgets every resume hold: its client said it gave up.
    pub fn release_resume(&self) {
        *crate::store::lock::unpoisoned(&self.resume_until) = None;
    }

    /// The manifest for `algo`: every file with its size, and its digest where already known
    /// (empty where its trailer will bring it). Reads the digest cache on first use per
    /// algorithm (blocking: a file read and one `stat` per file).
    pub fn manifest(&self, algo: ChecksumAlgo) -> Vec<FileEntry> {
        self.book.manifest(algo)
    }

    /// Bytes read to compute digests of this snapshot so far, all algorithms: 0 for a snapshot
    /// whose SST digests were all cached, one read of each file for a cold one.
    pub fn digest_bytes(&self) -> u64 {
        self.book.bytes()
    }

    /// Every file's digest (in `files` order), computing the ones not yet known now, in
    /// parallel across cores. For tools and tests that want them all at once; a transfer never
    /// waits for this (its digests come while sending).
    pub async fn digests(
        self: &Arc<Self>,
        algo: ChecksumAlgo,
    ) -> Result<Vec<Vec<u8>>, StorageError> {
        let snap = self.clone();
        tokio::task::spawn_blocking(move || snap.book.digest_all(algo))
            .await
            .map_err(|e| StorageError::Io(std::io::Error::other(e)))?
    }

    /// Marks it stale; deletes it now if nobody uses it, else its last lease does.
    pub(super) fn retire(&self) {
        self.stale.store(true, Ordering::SeqCst);
        if self.users.load(Ordering::SeqCst) == 0 {
            remove_snapshot_dir(&self.dir);
        }
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

/// Makes a checkpoint of `db` in `dir` and lists it; a failed one leaves no directory behind.
pub(super) fn make_checkpoint(
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
