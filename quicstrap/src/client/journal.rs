//! The journal of an interrupted transfer: which peer, snapshot and manifest, and which
//! files validated. Written by temp file + fsync + rename, so it is never half-written; one
//! that does not parse or has another layout is discarded, never trusted. The temp dirs
//! ([`super::workdir`]) read it to decide what can still be resumed, the resume
//! ([`super::resume`]) to plan one, and the commit removes it.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::protocol::{FileEntry, SnapshotId};
use crate::store::checksum::ChecksumAlgo;
use crate::store::disk::sync_dir;
use crate::store::partition::{PartitionId, TableFormat};

/// The journal's name inside a temp dir. Manifests cannot name it (hidden names are refused),
/// and it is deleted before the temp dir becomes the partition.
pub const JOURNAL_FILE: &str = ".quicstrap-journal.json";
/// Where a journal save in progress writes, before its rename.
pub(super) const JOURNAL_TEMP: &str = ".quicstrap-journal.json.tmp";

/// The names a journal occupies in a temp dir, all removed before a commit.
pub(crate) fn journal_files() -> [&'static str; 2] {
    [JOURNAL_FILE, JOURNAL_TEMP]
}

/// Layout version of the journal; another one is discarded.
const JOURNAL_LAYOUT: u32 = 1;

/// The record of an interrupted transfer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    /// `JOURNAL_LAYOUT`.
    pub layout: u32,
    /// The partition, as `store_v<version>/<partition>`.
    pub partition: String,
    /// The peer the files came from: only it may be asked for the rest.
    pub peer: String,
    /// The snapshot the files were cut from.
    pub snapshot: SnapshotId,
    /// Digest of the manifest.
    pub checksum: ChecksumAlgo,
    /// Table format asked for.
    pub table_format: TableFormat,
    /// The manifest of that snapshot.
    pub manifest: Vec<FileEntry>,
    /// Manifest indexes whose file validated whole.
    pub validated: BTreeSet<u32>,
    /// Unix seconds of the last write.
    pub written_at: u64,
}

/// Seconds since the Unix epoch, as journals record time.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Journal {
    /// A journal of a transfer just accepted: nothing validated yet.
    pub(crate) fn new(
        id: &PartitionId,
        peer: String,
        snapshot: SnapshotId,
        checksum: ChecksumAlgo,
        table_format: TableFormat,
        manifest: Vec<FileEntry>,
    ) -> Self {
        Self {
            layout: JOURNAL_LAYOUT,
            partition: id.to_string(),
            peer,
            snapshot,
            checksum,
            table_format,
            manifest,
            validated: BTreeSet::new(),
            written_at: unix_now(),
        }
    }

    /// Writes it into `dir` atomically and durably: temp file, fsync, rename, fsync of `dir`.
    pub(crate) fn save(&mut self, dir: &Path) -> std::io::Result<()> {
        use std::io::Write;
        self.written_at = unix_now();
        let tmp = dir.join(JOURNAL_TEMP);
        let json = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&json)?;
        f.sync_all()?;
        std::fs::rename(&tmp, dir.join(JOURNAL_FILE))?;
        sync_dir(dir)
    }

    /// The journal in `dir`, if there is one that parses and has this layout.
    pub(crate) fn load(dir: &Path) -> Option<Self> {
        let bytes = std::fs::read(dir.join(JOURNAL_FILE)).ok()?;
        serde_json::from_slice::<Self>(&bytes)
            .ok()
            .filter(|j| j.layout == JOURNAL_LAYOUT)
    }

    /// True when it records a transfer this fetch may resume: the same partition, digest and
    /// table format, written within `window`.
    pub(crate) fn fits(
        &self,
        id: &PartitionId,
        checksum: ChecksumAlgo,
        format: TableFormat,
        window: Duration,
    ) -> bool {
        self.partition == id.to_string()
            && self.checksum == checksum
            && self.table_format == format
            && unix_now().saturating_sub(self.written_at) <= window.as_secs()
            && crate::protocol::transfer::check_manifest(&self.manifest, usize::MAX, checksum)
                .is_ok()
            && self
                .validated
                .iter()
                .all(|i| (*i as usize) < self.manifest.len())
    }
}
