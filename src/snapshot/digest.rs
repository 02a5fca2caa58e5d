//! A snapshot's digests: computed on first need per algorithm, in parallel across cores,
//! shared by every request waiting for them and cached for every later one. A computation
//! nobody waits for any more stops between blocks, so a client that loops request →
//! disconnect cannot stack full-partition reads.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::digest_cache::{DigestCache, FileIdentity};
use super::Snapshot;
use crate::checksum::{digest_file_unless, ChecksumAlgo};
use crate::lock::unpoisoned as lock;
use crate::partition::PartitionId;
use crate::partition::StorageError;

/// Digests of a snapshot's files, or why there are none.
type DigestResult = Result<Arc<Vec<Vec<u8>>>, String>;

/// One background digest computation and the requests waiting for it. When the last waiter
/// goes (its client disconnected), the job is cancelled between blocks: a client that
/// loops request → disconnect cannot stack full-partition reads.
pub(super) struct DigestJob {
    waiters: usize,
    cancel: Arc<AtomicBool>,
    done: tokio::sync::watch::Receiver<Option<DigestResult>>,
}

/// One request waiting on a [`DigestJob`]; cancels the job if it was the last.
struct DigestWaiter<'a> {
    snapshot: &'a Snapshot,
    slot: usize,
}

impl Drop for DigestWaiter<'_> {
    fn drop(&mut self) {
        let mut jobs = lock(&self.snapshot.jobs);
        if let Some(job) = jobs[self.slot].as_mut() {
            job.waiters -= 1;
            if job.waiters == 0 {
                job.cancel.store(true, Ordering::Relaxed);
            }
        }
    }
}

impl Snapshot {
    /// Digests of every file (in `files` order), computed on first call per algorithm, in
    /// parallel across cores, and cached for every later request. Concurrent requests share
    /// one computation; one that nobody waits for any more stops between blocks.
    pub async fn digests(&self, algo: ChecksumAlgo) -> Result<Arc<Vec<Vec<u8>>>, StorageError> {
        let (cell, slot) = match algo {
            ChecksumAlgo::Md5 => (&self.md5, 0),
            ChecksumAlgo::Blake3 => (&self.blake3, 1),
        };
        loop {
            if let Some(d) = cell.get() {
                return Ok(d.clone());
            }
            let (mut done, waiter) = self.join_digest_job(algo, slot);
            let result = done
                .wait_for(Option::is_some)
                .await
                .map_err(|e| StorageError::Io(std::io::Error::other(e)))?
                .clone();
            drop(waiter);
            match result {
                Some(Ok(d)) => {
                    let _ = cell.set(d.clone());
                    return Ok(d);
                }
                // Cancelled just before this request joined: run it again.
                Some(Err(e)) if e.starts_with(CANCELLED) => continue,
                Some(Err(e)) => return Err(StorageError::Io(std::io::Error::other(e))),
                None => continue,
            }
        }
    }

    /// Joins the running digest job of `algo`, starting one if none runs (or the last one
    /// ended without a result anybody used).
    fn join_digest_job(
        &self,
        algo: ChecksumAlgo,
        slot: usize,
    ) -> (
        tokio::sync::watch::Receiver<Option<DigestResult>>,
        DigestWaiter<'_>,
    ) {
        let mut jobs = lock(&self.jobs);
        let running = jobs[slot]
            .as_ref()
            .is_some_and(|j| j.done.borrow().is_none() || j.waiters > 0);
        if !running {
            self.digest_runs.fetch_add(1, Ordering::Relaxed);
            let files: Vec<(String, PathBuf)> = self
                .files
                .iter()
                .map(|f| (f.name.clone(), self.dir.join(&f.name)))
                .collect();
            let cancel = Arc::new(AtomicBool::new(false));
            let (tx, done) = tokio::sync::watch::channel(None);
            let (flag, bytes) = (cancel.clone(), self.digest_bytes.clone());
            let (cache, id) = (self.cache.clone(), self.id.clone());
            let live = LiveJob::start(&self.digest_live);
            tokio::task::spawn_blocking(move || {
                let _live = live;
                let result = digest_all(&files, algo, &flag, &bytes, (&cache, &id))
                    .map(Arc::new)
                    .map_err(|e| match e {
                        StorageError::Io(io) if io.kind() == std::io::ErrorKind::Interrupted => {
                            format!("{CANCELLED}: {io}")
                        }
                        other => other.to_string(),
                    });
                let _ = tx.send(Some(result));
            });
            jobs[slot] = Some(DigestJob {
                waiters: 0,
                cancel,
                done,
            });
        }
        let job = jobs[slot].as_mut().expect("set above");
        job.waiters += 1;
        // Wanted again before it noticed: let it go on.
        job.cancel.store(false, Ordering::Relaxed);
        (
            job.done.clone(),
            DigestWaiter {
                snapshot: self,
                slot,
            },
        )
    }

    /// Bytes read by digest computations of this snapshot so far, all algorithms.
    pub fn digest_bytes(&self) -> u64 {
        self.digest_bytes.load(Ordering::Relaxed)
    }

    /// Whether a digest computation of this snapshot is still running (a cancelled one stops
    /// at its next block), so a caller can tell an abandoned job from one still reading.
    pub fn digesting(&self) -> bool {
        self.digest_live.load(Ordering::Acquire) > 0
    }

    /// How many times digests were computed for this snapshot (one per algorithm at most).
    pub fn digest_runs(&self) -> usize {
        self.digest_runs.load(Ordering::Relaxed)
    }
}

/// Counts one running digest computation for as long as it lives (until its thread ends,
/// however it ends).
struct LiveJob(Arc<AtomicUsize>);

impl LiveJob {
    fn start(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Self(count.clone())
    }
}

impl Drop for LiveJob {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How a cancelled digest job's error starts.
const CANCELLED: &str = "cancelled";

/// Digests of `files` (name, path) in order: from `cache` where it knows a file, the rest
/// read in parallel across cores; the cache then holds exactly these files' digests.
fn digest_all(
    files: &[(String, PathBuf)],
    algo: ChecksumAlgo,
    cancel: &AtomicBool,
    bytes: &AtomicU64,
    (cache, id): (&DigestCache, &PartitionId),
) -> Result<Vec<Vec<u8>>, StorageError> {
    let identities: Vec<Option<FileIdentity>> = files
        .iter()
        .map(|(name, path)| FileIdentity::of(name, path))
        .collect();
    let known = cache.load(id, algo);
    let cached: Vec<Option<Vec<u8>>> = identities
        .iter()
        .map(|i| i.as_ref().and_then(|i| known.get(i).cloned()))
        .collect();
    let todo: Vec<usize> = (0..files.len()).filter(|&i| cached[i].is_none()).collect();
    let computed = digest_each(files, &todo, algo, cancel, bytes)?;
    let mut out = cached;
    for (i, d) in todo.iter().zip(computed) {
        out[*i] = Some(d);
    }
    let out: Vec<Vec<u8>> = out.into_iter().map(Option::unwrap_or_default).collect();
    let entries: Vec<(FileIdentity, Vec<u8>)> = identities
        .into_iter()
        .zip(&out)
        .filter_map(|(i, d)| Some((i?, d.clone())))
        .collect();
    // Rewritten only when it would hold something else: a new file, or one gone.
    let same = entries.len() == known.len() && entries.iter().all(|(i, d)| known.get(i) == Some(d));
    if !same {
        cache.store(id, algo, entries);
    }
    Ok(out)
}

/// Digests of the files at `which` of `files`, in that order, read in parallel across cores.
fn digest_each(
    files: &[(String, PathBuf)],
    which: &[usize],
    algo: ChecksumAlgo,
    cancel: &AtomicBool,
    bytes: &AtomicU64,
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
                let count = |n| {
                    bytes.fetch_add(n, Ordering::Relaxed);
                };
                let path = &files[which[i]].1;
                let r = digest_file_unless(path, algo, cancel, &count).map(|(_, d)| d);
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
