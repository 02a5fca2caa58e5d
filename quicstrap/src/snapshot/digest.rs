//! A snapshot's digests. A transfer never waits for them: the manifest lists the ones already
//! known — cached from an earlier snapshot of the same SST files, or computed while this
//! snapshot was sent before — and the rest are computed in the very read that sends a file
//! ([`Snapshot::read_file`](super::Snapshot::read_file)), then remembered here for the next
//! request and, through the digest cache, for the next snapshot and the next server run.
//!
//! A [`DigestBook`] knows its snapshot's directory and files but not the snapshot itself, so
//! a snapshot owns its book and the book never reaches back.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::digest_cache::{DigestCache, FileIdentity};
use crate::protocol::FileEntry;
use crate::store::checksum::{digest_file_counting, ChecksumAlgo};
use crate::store::lock::unpoisoned as lock;
use crate::store::partition::PartitionId;
use crate::store::partition::StorageError;

/// Least time between two writes of the digest cache while digests are learned one file at a
/// time: a partition of many small files must not rewrite its cache once per file. The rest is
/// written when every file is known, or when the snapshot goes.
const SAVE_EVERY: Duration = Duration::from_secs(1);

/// What a snapshot knows of its files' digests, per algorithm (MD5, BLAKE3).
pub(super) struct DigestBook {
    /// The partition, as the digest cache files it.
    id: PartitionId,
    /// The snapshot's directory.
    dir: PathBuf,
    /// Its files (names and sizes; digests come from the books).
    files: Vec<FileEntry>,
    /// Digests of SST files computed for earlier snapshots.
    cache: Arc<DigestCache>,
    /// The identity of each file, for the digest cache (looked up once).
    identities: OnceLock<Vec<Option<FileIdentity>>>,
    books: Mutex<[Option<Book>; 2]>,
    /// Bytes read to compute digests, all algorithms.
    bytes: AtomicU64,
}

/// The digests of one algorithm.
struct Book {
    digests: Vec<Option<Vec<u8>>>,
    /// Digests learned since the cache was last written.
    unsaved: usize,
    saved_at: Instant,
}

fn slot(algo: ChecksumAlgo) -> usize {
    match algo {
        ChecksumAlgo::Md5 => 0,
        ChecksumAlgo::Blake3 => 1,
    }
}

impl DigestBook {
    /// The book of a snapshot of `id` in `dir` holding `files` (name and size each): nothing
    /// known until first asked, then what `cache` holds.
    pub(super) fn new(
        id: PartitionId,
        dir: PathBuf,
        files: impl IntoIterator<Item = (String, u64)>,
        cache: Arc<DigestCache>,
    ) -> Self {
        Self {
            id,
            dir,
            files: files
                .into_iter()
                .map(|(name, size)| FileEntry {
                    name,
                    size,
                    digest: Vec::new(),
                })
                .collect(),
            cache,
            identities: OnceLock::new(),
            books: Mutex::default(),
            bytes: AtomicU64::new(0),
        }
    }

    fn identities(&self) -> &[Option<FileIdentity>] {
        self.identities.get_or_init(|| {
            self.files
                .iter()
                .map(|f| FileIdentity::of(&f.name, &self.dir.join(&f.name)))
                .collect()
        })
    }

    /// Runs `f` on the book of `algo`, opening it from the digest cache on first use.
    fn with_book<T>(&self, algo: ChecksumAlgo, f: impl FnOnce(&mut Book) -> T) -> T {
        let identities = self.identities();
        let mut books = lock(&self.books);
        let book = books[slot(algo)].get_or_insert_with(|| {
            let cached = self.cache.load(&self.id, algo);
            Book {
                digests: identities
                    .iter()
                    .map(|i| i.as_ref().and_then(|i| cached.get(i).cloned()))
                    .collect(),
                unsaved: 0,
                saved_at: Instant::now(),
            }
        });
        f(book)
    }

    /// The manifest for `algo`: every file with its size, and its digest where already known
    /// (empty where its trailer will bring it). Reads the digest cache on first use per
    /// algorithm (blocking: a file read and one `stat` per file).
    pub(super) fn manifest(&self, algo: ChecksumAlgo) -> Vec<FileEntry> {
        self.with_book(algo, |book| {
            self.files
                .iter()
                .zip(&book.digests)
                .map(|(f, d)| FileEntry {
                    name: f.name.clone(),
                    size: f.size,
                    digest: d.clone().unwrap_or_default(),
                })
                .collect()
        })
    }

    /// The digest of file `index` with `algo`, when known.
    pub(super) fn known_digest(&self, algo: ChecksumAlgo, index: usize) -> Option<Vec<u8>> {
        self.with_book(algo, |b| b.digests.get(index).cloned().flatten())
    }

    /// Remembers the digest of file `index`, computed while reading it, for later requests and
    /// (at most once a second, and once every file is known) for later snapshots. Blocking.
    pub(super) fn learn(&self, algo: ChecksumAlgo, index: usize, digest: Vec<u8>) {
        let save = self.with_book(algo, |book| {
            let d = book.digests.get_mut(index)?;
            if d.is_some() {
                return None;
            }
            *d = Some(digest);
            book.unsaved += 1;
            let complete = book.digests.iter().all(Option::is_some);
            (complete || book.saved_at.elapsed() >= SAVE_EVERY).then(|| book.take_unsaved())
        });
        if let Some(digests) = save {
            self.save(algo, digests);
        }
    }

    /// Writes what `digests` knows to the digest cache (blocking).
    fn save(&self, algo: ChecksumAlgo, digests: Vec<Option<Vec<u8>>>) {
        let entries = self
            .identities()
            .iter()
            .zip(digests)
            .filter_map(|(i, d)| Some((i.clone()?, d?)))
            .collect();
        self.cache.store(&self.id, algo, entries);
    }

    /// Counts `n` bytes read to compute a digest.
    pub(super) fn count_digested(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
    }

    /// Bytes read to compute digests so far, all algorithms.
    pub(super) fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Every file's digest (in `files` order), computing the ones not yet known now, in
    /// parallel across cores. Blocking.
    pub(super) fn digest_all(&self, algo: ChecksumAlgo) -> Result<Vec<Vec<u8>>, StorageError> {
        let known = self.manifest(algo);
        let todo: Vec<(usize, PathBuf)> = known
            .iter()
            .enumerate()
            .filter(|(_, f)| !f.digest_known())
            .map(|(i, f)| (i, self.dir.join(&f.name)))
            .collect();
        let computed = digest_each(&todo, algo, &|n| self.count_digested(n))?;
        for ((i, _), d) in todo.iter().zip(computed) {
            self.learn(algo, *i, d);
        }
        Ok(self.manifest(algo).into_iter().map(|f| f.digest).collect())
    }
}

impl Book {
    fn take_unsaved(&mut self) -> Vec<Option<Vec<u8>>> {
        self.unsaved = 0;
        self.saved_at = Instant::now();
        self.digests.clone()
    }
}

impl Drop for DigestBook {
    fn drop(&mut self) {
        // What was learned in the last second before the snapshot went is kept too.
        let pending: Vec<_> = lock(&self.books)
            .iter_mut()
            .enumerate()
            .filter_map(|(i, b)| {
                let b = b.as_mut().filter(|b| b.unsaved > 0)?;
                let algo = [ChecksumAlgo::Md5, ChecksumAlgo::Blake3][i];
                Some((algo, b.take_unsaved()))
            })
            .collect();
        for (algo, digests) in pending {
            self.save(algo, digests);
        }
    }
}

/// Digests of the files at `which` (index, path), in that order, read in parallel across
/// cores; `read` counts the bytes.
fn digest_each(
    which: &[(usize, PathBuf)],
    algo: ChecksumAlgo,
    read: &(dyn Fn(u64) + Sync),
) -> Result<Vec<Vec<u8>>, StorageError> {
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .min(which.len().max(1));
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<std::io::Result<Vec<u8>>>>> =
        Mutex::new((0..which.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= which.len() {
                    break;
                }
                let r = digest_file_counting(&which[i].1, algo, read).map(|(_, d)| d);
                lock(&results)[i] = Some(r);
            });
        }
    });
    results
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(std::io::Error::other("digest not computed"))))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(StorageError::from)
}
