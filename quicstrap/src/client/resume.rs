//! What an interrupted fetch keeps so the next attempt at the same peer asks only for the
//! rest: the temp dir with the files received so far, and a journal beside them.
//!
//! The journal names the peer, the snapshot and its manifest, and which files validated (full
//! digest matched, fsynced). It is written by temp file + fsync + rename, so it is never
//! half-written; one that does not parse, or names another partition, peer or digest, is
//! discarded, never trusted. A partially received file's offset is not journaled: it is the
//! file's length on disk when the resume starts, and the digest is rebuilt by reading that
//! prefix back, so whatever is on disk — also after a crash — is checked against the
//! manifest's full-file digest before commit, like every other byte.
//!
//! A kept temp dir outlives its fetch only as a *parked* dir, one no process holds the lock of
//! ([`super::workdir`]): the next fetch of the partition, in this process or another, adopts
//! the newest one whose journal is younger than the resume window; the sweep deletes the
//! others once nothing can use them.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use crate::protocol::transfer::ResumeFrom;
use crate::protocol::{FileEntry, FileStart};
use crate::store::checksum::ChecksumAlgo;
use crate::store::partition::{PartitionId, TableFormat};

pub use super::journal::{Journal, JOURNAL_FILE};
use super::workdir::TempDir;

/// What the next attempt of a fetch can resume from: a temp dir and its journal.
#[derive(Debug)]
pub(crate) struct Kept {
    pub(crate) dir: TempDir,
    pub(crate) journal: Journal,
}

/// The resume a kept dir allows, and what it saves.
pub(crate) struct Plan {
    pub(crate) from: ResumeFrom,
    /// Bytes held that will not be sent again: validated files and partial prefixes.
    pub(crate) held: u64,
    /// Files resumed from an offset past 0: if one fails its digest, the held prefix was
    /// bad, not the peer.
    pub(crate) partial: BTreeSet<u32>,
}

impl Kept {
    /// Bytes of the manifest's files on disk (what discarding this dir throws away).
    pub(crate) fn bytes_on_disk(&self) -> u64 {
        self.journal
            .manifest
            .iter()
            .map(|f| on_disk(self.dir.path(), f))
            .sum()
    }

    /// The resume to ask for: every file not validated, from the bytes on disk (a file
    /// longer than its manifest size starts over).
    pub(crate) fn plan(&self) -> Plan {
        let mut files = Vec::new();
        let mut held = 0;
        let mut partial = BTreeSet::new();
        for (i, f) in self.journal.manifest.iter().enumerate() {
            let index = i as u32;
            let len = on_disk(self.dir.path(), f);
            if self.journal.validated.contains(&index) && len == f.size {
                held += f.size;
                continue;
            }
            let offset = if len <= f.size { len } else { 0 };
            if offset > 0 {
                partial.insert(index);
            }
            held += offset;
            files.push(FileStart { index, offset });
        }
        Plan {
            from: ResumeFrom {
                snapshot: self.journal.snapshot,
                manifest: self.journal.manifest.clone(),
                files,
            },
            held,
            partial,
        }
    }
}

fn on_disk(dir: &Path, f: &FileEntry) -> u64 {
    std::fs::metadata(dir.join(&f.name))
        .map(|m| m.len())
        .unwrap_or(0)
}

/// Claims what an earlier fetch of `id` kept under `parent` for a resume: the newest unowned
/// temp dir whose journal this fetch may resume ([`Journal::fits`]).
pub(crate) fn adopt(
    parent: &Path,
    id: &PartitionId,
    checksum: ChecksumAlgo,
    format: TableFormat,
    window: Duration,
) -> Option<Kept> {
    super::workdir::adopt(parent, id, |j| j.fits(id, checksum, format, window))
        .map(|(dir, journal)| Kept { dir, journal })
}

#[cfg(test)]
mod tests {
    use super::super::journal::JOURNAL_TEMP;
    use super::*;
    use crate::protocol::SnapshotId;

    fn id() -> PartitionId {
        PartitionId {
            store: "s".into(),
            version: 1,
            partition: 3,
        }
    }

    fn journal() -> Journal {
        let entry = |name: &str, size| FileEntry {
            name: name.into(),
            size,
            digest: vec![0; 16],
        };
        Journal::new(
            &id(),
            "127.0.0.1:1".into(),
            SnapshotId([1; 16]),
            ChecksumAlgo::Md5,
            TableFormat::Block,
            vec![entry("CURRENT", 4), entry("1.sst", 10), entry("2.sst", 10)],
        )
    }

    #[test]
    fn the_plan_asks_for_what_is_not_validated_from_the_bytes_on_disk() {
        let root = tempfile::tempdir().unwrap();
        let dir = TempDir::create(root.path(), 3).unwrap();
        let mut j = journal();
        std::fs::write(dir.path().join("CURRENT"), b"abcd").unwrap();
        std::fs::write(dir.path().join("1.sst"), b"12345").unwrap();
        // Validated but short on disk (a crash before the fsync): asked for again.
        std::fs::write(dir.path().join("2.sst"), b"123").unwrap();
        j.validated.extend([0, 2]);
        let kept = Kept { dir, journal: j };
        let plan = kept.plan();
        assert_eq!(
            plan.from.files,
            vec![
                FileStart {
                    index: 1,
                    offset: 5
                },
                FileStart {
                    index: 2,
                    offset: 3
                }
            ]
        );
        assert_eq!(plan.held, 4 + 5 + 3);
        assert_eq!(plan.partial, BTreeSet::from([1, 2]));
        assert_eq!(kept.bytes_on_disk(), 12);
    }

    #[test]
    fn a_journal_is_written_whole_and_a_bad_one_is_never_trusted() {
        let root = tempfile::tempdir().unwrap();
        let mut j = journal();
        j.save(root.path()).unwrap();
        assert_eq!(Journal::load(root.path()), Some(j.clone()));
        assert!(!root.path().join(JOURNAL_TEMP).exists());
        let window = Duration::from_secs(600);
        assert!(j.fits(&id(), ChecksumAlgo::Md5, TableFormat::Block, window));
        // Another digest, format or partition, or too old: not resumed.
        assert!(!j.fits(&id(), ChecksumAlgo::Blake3, TableFormat::Block, window));
        assert!(!j.fits(&id(), ChecksumAlgo::Md5, TableFormat::Plain, window));
        let mut other = id();
        other.partition = 4;
        assert!(!j.fits(&other, ChecksumAlgo::Md5, TableFormat::Block, window));
        let mut old = j.clone();
        old.written_at -= 601;
        assert!(!old.fits(&id(), ChecksumAlgo::Md5, TableFormat::Block, window));
        // Digests are hex, not lists of numbers; a journal of the older form still loads.
        let text = std::fs::read_to_string(root.path().join(JOURNAL_FILE)).unwrap();
        assert!(
            text.contains(&format!("\"digest\":\"{}\"", "00".repeat(16))),
            "{text}"
        );
        let older = text.replace(
            &format!("\"{}\"", "00".repeat(16)),
            &format!("[{}]", vec!["0"; 16].join(",")),
        );
        std::fs::write(root.path().join(JOURNAL_FILE), older).unwrap();
        assert_eq!(Journal::load(root.path()), Some(j.clone()));
        // Garbage, a cut-off file, an index outside the manifest: discarded.
        std::fs::write(root.path().join(JOURNAL_FILE), b"{\"layout\":1,").unwrap();
        assert_eq!(Journal::load(root.path()), None);
        let mut bad = j.clone();
        bad.validated.insert(7);
        assert!(!bad.fits(&id(), ChecksumAlgo::Md5, TableFormat::Block, window));
    }
}
