//! The part of a fetch that does not depend on the transport: getting the target ready,
//! trying peers one by one with the bookkeeping of each attempt, and ending an attempt —
//! waiting for every file handle to close, then validating and committing what arrived.
//!
//! QUIC ([`super::Fetcher`]) and the HTTPS baseline (`crate::baseline`) both run through it, so
//! the two cannot drift apart in what they promise: the same typed outcomes, the same
//! next-peer / give-up decisions, the same receipt and the same atomic commit.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::partition::{PartitionId, PartitionMeta, TableFormat};
use crate::peers::Peer;

use super::commit::{self, Receipt, TempDir};
use super::error::{AttemptError, FetchError, NextStep};
use super::receive::OpenFiles;
use super::{Attempt, FetchReport, FetchStats, Progress};

/// Refuses a fetch that must not start: the partition is already there (never touched), or
/// there is nobody to ask. Returns the partition's final directory.
pub(crate) fn check_target(
    id: &PartitionId,
    root: &Path,
    peers: &[Peer],
) -> Result<PathBuf, FetchError> {
    let target = id.dir(root);
    if target.exists() && !commit::is_empty_dir(&target)? {
        return Err(FetchError::PartitionExists(target));
    }
    if peers.is_empty() {
        return Err(FetchError::NoPeers);
    }
    Ok(target)
}

/// Creates the store-version directory temp dirs live in and removes the temp dirs a crashed
/// fetch of this partition left there. Returns the directory.
pub(crate) fn prepare_parent(id: &PartitionId, root: &Path) -> Result<PathBuf, FetchError> {
    let parent = root.join(id.store_version_dir());
    std::fs::create_dir_all(&parent)?;
    let stale = commit::remove_dead_temp_dirs(&parent, id.partition)?;
    if stale > 0 {
        tracing::info!(partition = %id, removed = stale, "removed temp dirs of crashed fetches");
    }
    Ok(parent)
}

/// Tries `candidates` in order until one attempt commits the partition or an error says to
/// give up. A candidate comes with its connectivity verdict: a peer already known dead
/// becomes a failed attempt without being asked. After a failed attempt `again` says whether
/// the same peer is asked once more (a resume of what it kept). Every attempt is recorded,
/// with its bytes (read from `progress`) and time, in the report or the error.
pub(crate) async fn try_peers<F, Fut>(
    id: &PartitionId,
    target: PathBuf,
    candidates: impl IntoIterator<Item = (Peer, Result<(), AttemptError>)>,
    progress: &Progress,
    stats: &FetchStats,
    mut attempt: F,
    mut again: impl FnMut(&Peer, &AttemptError) -> bool,
) -> Result<FetchReport, FetchError>
where
    F: FnMut(Peer) -> Fut,
    Fut: Future<Output = Result<(usize, PartitionMeta), AttemptError>>,
{
    let started = Instant::now();
    let mut attempts = Vec::new();
    let mut queue: std::collections::VecDeque<_> = candidates.into_iter().collect();
    while let Some((peer, verdict)) = queue.pop_front() {
        // A cancel between attempts ends the fetch there: the next peer is not asked, and a
        // run out of peers must not read as "every peer failed" (which calls for Kafka).
        if progress.is_cancelled() {
            stats.failed.fetch_add(1, Ordering::Relaxed);
            return Err(FetchError::GaveUp {
                peer: peer.to_string(),
                error: AttemptError::Cancelled,
                attempts,
            });
        }
        progress.attempts.fetch_add(1, Ordering::Relaxed);
        progress.received.store(0, Ordering::Relaxed);
        progress.total.store(0, Ordering::Relaxed);
        progress.resumed.store(0, Ordering::Relaxed);
        progress.resent.store(0, Ordering::Relaxed);
        let t0 = Instant::now();
        let name = peer.to_string();
        let result = match verdict {
            Err(e) => Err(e),
            Ok(()) => attempt(peer.clone()).await,
        };
        let bytes = progress.received.load(Ordering::Relaxed);
        let resumed_bytes = progress.resumed.load(Ordering::Relaxed);
        let resent_bytes = progress.resent.load(Ordering::Relaxed);
        stats.bytes_received.fetch_add(bytes, Ordering::Relaxed);
        match result {
            Ok((files, meta)) => {
                stats.fetched.fetch_add(1, Ordering::Relaxed);
                attempts.push(Attempt {
                    peer: name.clone(),
                    outcome: "ok".into(),
                    error: None,
                    next_step: None,
                    bytes,
                    resumed_bytes,
                    resent_bytes,
                    seconds: t0.elapsed().as_secs_f64(),
                });
                return Ok(FetchReport {
                    partition: id.to_string(),
                    dir: target,
                    peer: name,
                    attempts,
                    files,
                    bytes,
                    seconds: started.elapsed().as_secs_f64(),
                    meta,
                });
            }
            Err(e) => {
                stats.attempts_failed.fetch_add(1, Ordering::Relaxed);
                let step = match e.next_step() {
                    NextStep::GiveUp => NextStep::GiveUp,
                    _ if again(&peer, &e) => NextStep::Resume,
                    step => step,
                };
                tracing::warn!(partition = %id, peer = %name, error = %e, next = ?step, "attempt failed");
                attempts.push(Attempt {
                    peer: name.clone(),
                    outcome: e.label().into(),
                    error: Some(e.to_string()),
                    next_step: Some(step),
                    bytes,
                    resumed_bytes,
                    resent_bytes,
                    seconds: t0.elapsed().as_secs_f64(),
                });
                if step == NextStep::Resume {
                    queue.push_front((peer, Ok(())));
                }
                if step == NextStep::GiveUp {
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                    return Err(FetchError::GaveUp {
                        peer: name,
                        error: e,
                        attempts,
                    });
                }
            }
        }
    }
    stats.failed.fetch_add(1, Ordering::Relaxed);
    Err(FetchError::AllPeersFailed { attempts })
}

/// Stops every file task of an attempt and waits for each to end, then for each of its file
/// handles to be dropped (an fsync in flight holds one, for 30 s at most): only then may the
/// temp dir be deleted or committed, so no byte lands after the cleanup.
pub(crate) async fn end_file_tasks<T: 'static>(
    tasks: &mut tokio::task::JoinSet<T>,
    open: &OpenFiles,
) {
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    let until = Instant::now() + Duration::from_secs(30);
    while open.count() > 0 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Validates what arrived in `tmp` against `meta`, writes the receipt and renames `tmp` to
/// `target` atomically ([`commit::commit`], on a blocking thread). On error `tmp` is gone.
pub(crate) async fn commit_received(
    tmp: TempDir,
    target: &Path,
    format: TableFormat,
    peer: &Peer,
    files: usize,
    bytes: u64,
    meta: PartitionMeta,
) -> Result<(), AttemptError> {
    let receipt = Receipt {
        meta,
        peer: peer.to_string(),
        files,
        bytes,
        committed_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    };
    let target = target.to_owned();
    tokio::task::spawn_blocking(move || commit::commit(tmp, &target, format, &receipt))
        .await
        .map_err(|e| AttemptError::LocalIo(e.to_string()))?
}
