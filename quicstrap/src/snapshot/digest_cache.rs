//! Digests of SST files kept across snapshots and server restarts. An SST file is never
//! changed once written, and a checkpoint hard-links it, so a file with the same identity —
//! device, inode, size, modification time and name — has the digest computed the last time:
//! a new snapshot of a partition whose SST files did not change costs no digest work, only
//! its few small mutable files (MANIFEST, OPTIONS, CURRENT) are read again.
//!
//! One cache file per partition and algorithm, under the snapshot root's `digests/` (kept
//! when a restart wipes the rest of the root): a line with the BLAKE3 hash of the body, then
//! the body, JSON. Written to a temporary file, synced and renamed into place, so a reader
//! sees the old cache or the new one; one whose hash does not match (a torn or edited file)
//! is ignored whole. It holds entries only for the files of the latest snapshot digested, so
//! it is bounded by a partition's file count and forgets files as compaction deletes them.
//!
//! What it does not protect against: a file changed in place without its modification time
//! changing (bit rot, a write that restores the time). Then the cached digest, of what the
//! file held before, no longer matches the bytes sent, and the client refuses them
//! (`checksum_mismatch`): a cached digest can make a transfer fail, never make a wrong one
//! pass.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::store::checksum::ChecksumAlgo;
use crate::store::partition::PartitionId;

/// The directory under a snapshot root the cache lives in.
pub(super) const DIGEST_CACHE_DIR: &str = "digests";

/// Version of the cache file's body; a file of another version is ignored.
const FORMAT: u32 = 1;

/// What makes one file on disk that file: if any of it differs, the file may differ.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(super) struct FileIdentity {
    name: String,
    size: u64,
    dev: u64,
    ino: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl FileIdentity {
    /// The identity of the file `name` at `path`, when it is one whose digest may be cached:
    /// an SST or blob file (immutable once written) that can be looked at.
    pub(super) fn of(name: &str, path: &Path) -> Option<Self> {
        if !(name.ends_with(".sst") || name.ends_with(".blob")) {
            return None;
        }
        let m = std::fs::metadata(path).ok()?;
        Some(Self {
            name: name.to_owned(),
            size: m.len(),
            dev: m.dev(),
            ino: m.ino(),
            mtime: m.mtime(),
            mtime_nsec: m.mtime_nsec(),
        })
    }
}

#[derive(Serialize, Deserialize)]
struct Body {
    format: u32,
    algo: ChecksumAlgo,
    entries: Vec<Entry>,
}

#[derive(Serialize, Deserialize)]
struct Entry {
    file: FileIdentity,
    digest: String,
}

/// The cache of one snapshot root.
#[derive(Debug)]
pub(super) struct DigestCache {
    dir: PathBuf,
}

impl DigestCache {
    /// The cache under snapshot root `root`.
    pub(super) fn new(root: &Path) -> Self {
        Self {
            dir: root.join(DIGEST_CACHE_DIR),
        }
    }

    fn path(&self, id: &PartitionId, algo: ChecksumAlgo) -> PathBuf {
        self.dir
            .join(id.store_version_dir())
            .join(format!("{}.{algo}.json", id.partition))
    }

    /// The cached digests of `id` for `algo`; empty when there is no cache file or it cannot
    /// be trusted (unreadable, its hash wrong, another format or algorithm).
    pub(super) fn load(
        &self,
        id: &PartitionId,
        algo: ChecksumAlgo,
    ) -> HashMap<FileIdentity, Vec<u8>> {
        let path = self.path(id, algo);
        let Ok(text) = std::fs::read_to_string(&path) else {
            return HashMap::new();
        };
        let parsed = text.split_once('\n').and_then(|(hash, body)| {
            (blake3::hash(body.as_bytes()).to_hex().as_str() == hash)
                .then(|| serde_json::from_str::<Body>(body).ok())
                .flatten()
        });
        let Some(body) = parsed.filter(|b| b.format == FORMAT && b.algo == algo) else {
            tracing::warn!(path = %path.display(), "digest cache not trusted; digesting afresh");
            return HashMap::new();
        };
        body.entries
            .into_iter()
            .filter_map(|e| {
                let digest = hex::decode(&e.digest).ok()?;
                (digest.len() == algo.digest_len()).then_some((e.file, digest))
            })
            .collect()
    }

    /// Replaces the cache of `id` for `algo` with `entries` (atomically: a reader sees the old
    /// cache or this one). A failure is logged and costs only digest work later.
    pub(super) fn store(
        &self,
        id: &PartitionId,
        algo: ChecksumAlgo,
        entries: Vec<(FileIdentity, Vec<u8>)>,
    ) {
        let path = self.path(id, algo);
        if let Err(e) = write(&path, algo, entries) {
            tracing::warn!(path = %path.display(), error = %e, "could not save the digest cache");
        }
    }
}

fn write(
    path: &Path,
    algo: ChecksumAlgo,
    entries: Vec<(FileIdentity, Vec<u8>)>,
) -> std::io::Result<()> {
    use std::io::Write;
    let mut entries: Vec<Entry> = entries
        .into_iter()
        .map(|(file, d)| Entry {
            file,
            digest: hex::encode(d),
        })
        .collect();
    entries.sort_by(|a, b| a.file.name.cmp(&b.file.name));
    let body = serde_json::to_string(&Body {
        format: FORMAT,
        algo,
        entries,
    })
    .map_err(std::io::Error::other)?;
    let parent = path
        .parent()
        .ok_or_else(|| std::io::Error::other("no parent"))?;
    std::fs::create_dir_all(parent)?;
    let tmp = path.with_extension(format!("tmp-{:016x}", rand::random::<u64>()));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        writeln!(f, "{}", blake3::hash(body.as_bytes()).to_hex())?;
        f.write_all(body.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cache_round_trips_and_a_tampered_one_is_ignored() {
        let root = tempfile::tempdir().unwrap();
        let data = root.path().join("000007.sst");
        std::fs::write(&data, b"sst bytes").unwrap();
        assert!(FileIdentity::of("MANIFEST-000005", &data).is_none());
        let file = FileIdentity::of("000007.sst", &data).unwrap();
        let cache = DigestCache::new(root.path());
        let id = PartitionId::new("store", 1, 3).unwrap();
        assert!(cache.load(&id, ChecksumAlgo::Md5).is_empty());
        let digest = vec![7u8; 16];
        cache.store(&id, ChecksumAlgo::Md5, vec![(file.clone(), digest.clone())]);
        let got = cache.load(&id, ChecksumAlgo::Md5);
        assert_eq!(got.get(&file), Some(&digest));
        // Another algorithm has its own file.
        assert!(cache.load(&id, ChecksumAlgo::Blake3).is_empty());
        // One byte changed in the file: its hash no longer matches, nothing is trusted.
        let path = cache.path(&id, ChecksumAlgo::Md5);
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("0707", "0708");
        std::fs::write(&path, text).unwrap();
        assert!(cache.load(&id, ChecksumAlgo::Md5).is_empty());
        // Nothing but the cache file is left behind.
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }
}
