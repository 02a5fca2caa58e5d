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
//! A kept temp dir outlives its fetch only as a *parked* dir (owner pid 0, which no process
//! has): the next fetch of the partition, in this process or another, adopts the newest
//! parked or dead-owner dir whose journal is younger than the resume window; the existing
//! sweep deletes every other one.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::checksum::ChecksumAlgo;
use crate::partition::{PartitionId, TableFormat};
use crate::protocol::transfer::ResumeFrom;
use crate::protocol::{FileEntry, FileStart, SnapshotId};

use super::commit::{sync_dir, TempDir, TEMP_PREFIX};

/// The journal's name inside a temp dir. Manifests cannot name it (hidden names are refused),
/// and it is deleted before the temp dir becomes the partition.
pub const JOURNAL_FILE: &str = ".quicstrap-journal.json";
/// Where a journal save in progress writes, before its rename.
const JOURNAL_TEMP: &str = ".quicstrap-journal.json.tmp";

/// The names a journal occupies in a temp dir, all removed before a commit.
pub(crate) fn journal_files() -> [&'static str; 2] {
    [JOURNAL_FILE, JOURNAL_TEMP]
}

/// Layout version of the journal; another one is discarded.
const JOURNAL_LAYOUT: u32 = 1;

/// The record of an interrupted transfer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    /// [`JOURNAL_LAYOUT`].
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

fn unix_now() -> u64 {
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
            && crate::protocol::transfer::check_manifest(&self.manifest, usize::MAX).is_ok()
            && self
                .validated
                .iter()
                .all(|i| (*i as usize) < self.manifest.len())
    }
}

impl Kept {
    /// What `peer` may resume: this, if its files came from `peer`; otherwise nothing, and the
    /// files are deleted (replicas compact independently, so another peer's files differ).
    /// `Err` carries the bytes thrown away.
    pub(crate) fn for_peer(self, peer: &str) -> Result<Self, u64> {
        if self.journal.peer == peer {
            Ok(self)
        } else {
            Err(self.bytes_on_disk())
        }
    }

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

/// The owner pid of a temp dir of `partition`, from its name (`None`: not one).
fn owner(name: &str, partition: u32) -> Option<Option<u32>> {
    let rest = name.strip_prefix(&format!("{TEMP_PREFIX}{partition}-"))?;
    Some(rest.split('-').next().and_then(|p| p.parse::<u32>().ok()))
}

fn alive(pid: Option<u32>) -> bool {
    pid.is_some_and(|p| p != 0 && Path::new(&format!("/proc/{p}")).exists())
}

/// Claims the newest temp dir of `id` in `parent` that no live process owns and whose journal
/// this fetch may resume ([`Journal::fits`]), renaming it to `claim` (atomic: of two processes
/// only one gets it). Returns it, if any; the others stay for the sweep.
pub(crate) fn adopt(
    parent: &Path,
    id: &PartitionId,
    checksum: ChecksumAlgo,
    format: TableFormat,
    window: Duration,
    claim: PathBuf,
) -> Option<Kept> {
    let mut best: Option<(u64, PathBuf, Journal)> = None;
    for e in std::fs::read_dir(parent).ok()?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        match owner(&name, id.partition) {
            Some(pid) if !alive(pid) => {}
            _ => continue,
        }
        let Some(journal) = Journal::load(&e.path()) else {
            continue;
        };
        if !journal.fits(id, checksum, format, window) {
            continue;
        }
        if best
            .as_ref()
            .map_or(true, |(t, ..)| journal.written_at > *t)
        {
            best = Some((journal.written_at, e.path(), journal));
        }
    }
    let (_, path, journal) = best?;
    std::fs::rename(&path, &claim).ok()?;
    Some(Kept {
        dir: TempDir::adopt(claim),
        journal,
    })
}

/// Leaves `kept` on disk for a later fetch: renamed to a parked name (owner pid 0) so no
/// live fetch of this process holds it, with its journal as last saved.
pub(crate) fn park(kept: Kept, partition: u32, tag: &str) {
    let parked = kept
        .dir
        .path()
        .with_file_name(format!("{TEMP_PREFIX}{partition}-0-{tag}"));
    match std::fs::rename(kept.dir.path(), &parked) {
        Ok(()) => {
            kept.dir.disarm();
            tracing::info!(dir = %parked.display(), "kept the received files for a resume");
        }
        // Dropped: deleted. Nothing half-kept stays behind.
        Err(e) => tracing::warn!(error = %e, "could not park the received files; deleted"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let dir = TempDir::create(root.path(), 3, "1-1").unwrap();
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
    fn only_the_peer_the_files_came_from_resumes_them() {
        let root = tempfile::tempdir().unwrap();
        let dir = TempDir::create(root.path(), 3, "1-2").unwrap();
        std::fs::write(dir.path().join("1.sst"), b"12345").unwrap();
        let path = dir.path().to_owned();
        let kept = Kept {
            dir,
            journal: journal(),
        };
        let kept = kept.for_peer("127.0.0.1:1").expect("the same peer");
        // Another peer: thrown away, files and all.
        assert_eq!(kept.for_peer("127.0.0.1:2").unwrap_err(), 5);
        assert!(!path.exists());
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
        // Garbage, a cut-off file, an index outside the manifest: discarded.
        std::fs::write(root.path().join(JOURNAL_FILE), b"{\"layout\":1,").unwrap();
        assert_eq!(Journal::load(root.path()), None);
        let mut bad = j.clone();
        bad.validated.insert(7);
        assert!(!bad.fits(&id(), ChecksumAlgo::Md5, TableFormat::Block, window));
    }

    #[test]
    fn only_an_unowned_dir_with_a_fitting_journal_is_adopted() {
        let root = tempfile::tempdir().unwrap();
        let window = Duration::from_secs(600);
        let make = |name: String, journal: Option<Journal>| {
            let dir = root.path().join(name);
            std::fs::create_dir_all(&dir).unwrap();
            if let Some(mut j) = journal {
                j.save(&dir).unwrap();
            }
            dir
        };
        let live = make(
            format!("{TEMP_PREFIX}3-{}-1", std::process::id()),
            Some(journal()),
        );
        let no_journal = make(format!("{TEMP_PREFIX}3-4000000000-1"), None);
        let parked = make(format!("{TEMP_PREFIX}3-0-2"), Some(journal()));
        let claim = root
            .path()
            .join(format!("{TEMP_PREFIX}3-{}-9", std::process::id()));
        let kept = adopt(
            root.path(),
            &id(),
            ChecksumAlgo::Md5,
            TableFormat::Block,
            window,
            claim.clone(),
        )
        .expect("the parked dir");
        assert_eq!(kept.dir.path(), claim);
        assert!(!parked.exists() && live.exists() && no_journal.exists());
        // Nothing else fits now.
        assert!(adopt(
            root.path(),
            &id(),
            ChecksumAlgo::Md5,
            TableFormat::Block,
            window,
            root.path().join("x"),
        )
        .is_none());
    }
}
