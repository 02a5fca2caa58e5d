//! A snapshot's digests: computed on first need per algorithm, in parallel across cores,
//! shared by every request waiting for them and cached for every later one. A computation
//! nobody waits for any more stops between blocks, so a client that loops request →
//! disconnect cannot stack full-partition reads.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::Snapshot;
use crate::checksum::{digest_file_unless, ChecksumAlgo};
use crate::lock::unpoisoned as lock;
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
            let paths: Vec<PathBuf> = self.files.iter().map(|f| self.dir.join(&f.name)).collect();
            let cancel = Arc::new(AtomicBool::new(false));
            let (tx, done) = tokio::sync::watch::channel(None);
            let (flag, bytes) = (cancel.clone(), self.digest_bytes.clone());
            let live = LiveJob::start(&self.digest_live);
            tokio::task::spawn_blocking(move || {
                let _live = live;
                let result = digest_all(&paths, algo, &flag, &bytes)
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

fn digest_all(
    paths: &[PathBuf],
    algo: ChecksumAlgo,
    cancel: &AtomicBool,
    bytes: &AtomicU64,
) -> Result<Vec<Vec<u8>>, StorageError> {
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .min(paths.len().max(1));
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<std::io::Result<Vec<u8>>>>> =
        Mutex::new((0..paths.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= paths.len() {
                    break;
                }
                let count = |n| {
                    bytes.fetch_add(n, Ordering::Relaxed);
                };
                let r = digest_file_unless(&paths[i], algo, cancel, &count).map(|(_, d)| d);
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
