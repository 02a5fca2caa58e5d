//! The part of a fetch that does not depend on the transport: getting the target ready,
//! driving the fetch machine (which peer next, resume or not, how long to pause) with the
//! bookkeeping of each attempt, the rate floor, and ending an attempt —
//! waiting for every file handle to close, then validating and committing what arrived.
//!
//! QUIC ([`super::Fetcher`]) and any other transport (the HTTPS baseline, a crate of its own)
//! run through it, so they cannot drift apart in what they promise: the same typed outcomes,
//! the same next-peer / give-up decisions, the same receipt and the same atomic commit.
//!
//! It is the whole seam a transport needs, re-exported here: an attempt creates a
//! [`TempDir`], checks the manifest ([`check_manifest`]), feeds each file's bytes from its
//! own [`ByteSource`] through [`receive_file`] (digest as bytes land, trailer checked),
//! counts its handles in [`OpenFiles`], ends its tasks ([`end_file_tasks`]) and commits
//! ([`commit_received`]); [`try_peers`] runs attempts over the peers.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::peers::order::ZoneClass;
use crate::peers::Peer;
use crate::protocol::fetch::{FetchMachine, FetchRules, Outcome, PeerId, RateFloor, Step};
use crate::store::partition::{PartitionId, PartitionMeta, TableFormat};

use super::commit::{self, Receipt};
use super::error::{AttemptError, FetchError};
use super::report::NextStep;

pub use super::config::FirstByte;
pub use super::receive::{receive_file, BadTrailer, ByteSource, Landing, OpenFiles};
pub use super::workdir::{sweep, TempDir};
use super::{Attempt, FetchPolicy, FetchReport, FetchStats, Progress};
use crate::store::lock::unpoisoned as lock;

/// Refuses a fetch that must not start: the partition is already there (never touched), or
/// there is nobody to ask. Returns the partition's final directory.
pub fn check_target(id: &PartitionId, root: &Path, peers: &[Peer]) -> Result<PathBuf, FetchError> {
    let target = id.dir(root);
    if target.exists() && !crate::store::disk::is_empty_dir(&target)? {
        return Err(FetchError::PartitionExists(target));
    }
    if peers.is_empty() {
        return Err(FetchError::NoPeers);
    }
    Ok(target)
}

/// Creates the store-version directory temp dirs live in. Returns the directory.
pub fn prepare_parent(id: &PartitionId, root: &Path) -> Result<PathBuf, FetchError> {
    let parent = root.join(id.store_version_dir());
    std::fs::create_dir_all(&parent)?;
    Ok(parent)
}

/// A peer as the attempt loop takes it: with its zone class (for the counters and the report)
/// and its connectivity verdict.
#[derive(Clone, Debug)]
pub struct Candidate {
    /// The peer.
    pub peer: Peer,
    /// Whether its bytes cross zones ([`FetchPolicy::class`]).
    pub class: ZoneClass,
    /// What the connectivity check found; `Ok` when there was none.
    pub verdict: Result<(), AttemptError>,
}

impl Candidate {
    /// `peer` with `verdict`, classed by `policy`.
    pub fn new(policy: &FetchPolicy, peer: Peer, verdict: Result<(), AttemptError>) -> Self {
        Self {
            class: policy.class(&peer),
            peer,
            verdict,
        }
    }
}

/// Runs the fetch machine ([`FetchMachine`]) over `candidates` until it is done: carries out
/// each step it hands out (an attempt, a pause, the end) and reports each attempt's outcome
/// back. A candidate comes with its connectivity verdict: a peer already known dead becomes a
/// failed attempt without being asked (the first time only: a holder asked again after a
/// pause is really asked). `holder` names the peer whose files an earlier run kept; `held`
/// tells, after an attempt, whose files are kept now. Every attempt is recorded,
/// with its bytes (read from `progress`), time and what followed, in the report or the error.
#[allow(clippy::too_many_arguments)]
pub async fn try_peers<F, Fut>(
    id: &PartitionId,
    target: PathBuf,
    candidates: impl IntoIterator<Item = Candidate>,
    holder: Option<PeerId>,
    rules: FetchRules,
    progress: &Progress,
    stats: &FetchStats,
    mut attempt: F,
    held: impl Fn() -> Option<PeerId>,
) -> Result<FetchReport, FetchError>
where
    F: FnMut(Peer, bool) -> Fut,
    Fut: Future<Output = Result<(usize, PartitionMeta), AttemptError>>,
{
    let started = Instant::now();
    let mut attempts: Vec<Attempt> = Vec::new();
    // Each candidate, and whether its verdict was used: only its first attempt takes it.
    let mut peers: HashMap<PeerId, (Candidate, bool)> = HashMap::new();
    let mut order = Vec::new();
    for c in candidates {
        let pid = c.peer.id();
        order.push(pid.clone());
        peers.entry(pid).or_insert((c, false));
    }
    let mut machine = FetchMachine::new(order, holder, rules, Instant::now());
    // The last failure, for the error of a fetch that stops.
    let mut last: Option<(String, AttemptError)> = None;
    loop {
        if progress.is_cancelled() {
            machine.cancel();
        }
        let (pid, resume) = match machine.poll(Instant::now()) {
            Step::Attempt { peer, resume } => (peer, resume),
            Step::Wait(until) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(until.into()) => {}
                    _ = progress.cancelled() => machine.cancel(),
                }
                continue;
            }
            Step::Done => unreachable!("the fetch returns as soon as an attempt commits"),
            Step::Suspend => {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                let peer = last.map(|(p, _)| p).unwrap_or_default();
                return Err(FetchError::GaveUp {
                    peer,
                    error: AttemptError::Cancelled,
                    attempts,
                });
            }
            Step::GiveUp => {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                let (peer, error) = last
                    .unwrap_or_else(|| (String::new(), AttemptError::LocalIo("gave up".into())));
                return Err(FetchError::GaveUp {
                    peer,
                    error,
                    attempts,
                });
            }
            Step::Exhausted => {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                return Err(FetchError::AllPeersFailed { attempts });
            }
        };
        let Some((candidate, used)) = peers.get_mut(&pid) else {
            // The machine only hands out peers it was given.
            machine.attempt_ended(Outcome::Refused, false, held(), Instant::now());
            continue;
        };
        let verdict = (!std::mem::replace(used, true)).then(|| candidate.verdict.clone());
        let (peer, class) = (candidate.peer.clone(), candidate.class);
        progress.attempts.fetch_add(1, Ordering::Relaxed);
        progress.received.store(0, Ordering::Relaxed);
        progress.total.store(0, Ordering::Relaxed);
        progress.resumed.store(0, Ordering::Relaxed);
        progress.resent.store(0, Ordering::Relaxed);
        progress.first_byte.take();
        lock(&progress.commit).take();
        let t0 = Instant::now();
        let name = peer.to_string();
        let result = match verdict {
            Some(Err(e)) => Err(e),
            _ => attempt(peer.clone(), resume).await,
        };
        let bytes = progress.received.load(Ordering::Relaxed);
        let resumed_bytes = progress.resumed.load(Ordering::Relaxed);
        let resent_bytes = progress.resent.load(Ordering::Relaxed);
        stats.bytes_received.fetch_add(bytes, Ordering::Relaxed);
        match class {
            ZoneClass::Local => &stats.bytes_local,
            ZoneClass::Remote => &stats.bytes_remote,
        }
        .fetch_add(bytes, Ordering::Relaxed);
        let mut record = Attempt {
            peer: name.clone(),
            zone: class,
            outcome: "ok".into(),
            error: None,
            next_step: None,
            bytes,
            resumed_bytes,
            resent_bytes,
            seconds: t0.elapsed().as_secs_f64(),
            first_byte_seconds: progress
                .first_byte
                .take()
                .map(|at| at.saturating_duration_since(t0).as_secs_f64()),
            commit_seconds: lock(&progress.commit).take().map(|d| d.as_secs_f64()),
        };
        match result {
            Ok((files, meta)) => {
                machine.attempt_ended(Outcome::Committed, bytes > 0, None, Instant::now());
                stats.fetched.fetch_add(1, Ordering::Relaxed);
                attempts.push(record);
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
                let bound = match &e {
                    AttemptError::InsufficientSpace(_) => Some(&stats.insufficient_space),
                    AttemptError::StaleSnapshot { .. } => Some(&stats.stale_snapshot),
                    AttemptError::Protocol(_) => Some(&stats.protocol_violation),
                    AttemptError::Unprepared(_) => Some(&stats.not_ready),
                    _ => None,
                };
                if let Some(counter) = bound {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                let held = held();
                let ours = held.as_ref() == Some(&pid);
                let outcome = match e.outcome() {
                    // This peer's files survive a digest failure only when the bad bytes were
                    // a prefix held from before, dropped alone: not the peer's fault.
                    Outcome::Disproven if ours => Outcome::ResumedPrefixBad,
                    o => o,
                };
                let now = Instant::now();
                machine.attempt_ended(outcome, bytes > 0, held, now);
                let step = match machine.poll(now) {
                    Step::Attempt { peer, resume: true } if peer == pid => NextStep::Resume,
                    Step::Wait(_) => NextStep::Resume,
                    Step::Attempt {
                        peer,
                        resume: false,
                    } if peer == pid => NextStep::Afresh,
                    Step::Suspend => NextStep::Suspend,
                    Step::GiveUp => NextStep::GiveUp,
                    _ if bytes > 0 && !ours => NextStep::CleanupThenNextPeer,
                    _ => NextStep::NextPeer,
                };
                tracing::warn!(partition = %id, peer = %name, error = %e, next = ?step, "attempt failed");
                record.outcome = e.label().into();
                record.error = Some(e.to_string());
                record.next_step = Some(step);
                attempts.push(record);
                last = Some((name, e));
            }
        }
    }
}

/// Resolves once the attempt receiving into `received` moves slower than the policy's rate
/// floor over a whole window ([`RateFloor`]); never when the floor is off.
pub async fn too_slow(policy: &FetchPolicy, received: &AtomicU64) -> AttemptError {
    let mut floor = RateFloor::new(policy.min_rate, policy.rate_window, Instant::now());
    if policy.min_rate == 0 || policy.rate_window.is_zero() {
        return std::future::pending().await;
    }
    let every = (policy.rate_window / 20).clamp(Duration::from_millis(50), Duration::from_secs(5));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if floor.observe(received.load(Ordering::Relaxed), Instant::now()) {
            return AttemptError::TooSlow {
                min_rate: policy.min_rate,
                window: policy.rate_window,
            };
        }
    }
}

/// Stops every file task of an attempt and waits for each to end, then for each of its file
/// handles to be dropped (an fsync in flight holds one, for 30 s at most): only then may the
/// temp dir be deleted or committed, so no byte lands after the cleanup.
pub async fn end_file_tasks<T: 'static>(tasks: &mut tokio::task::JoinSet<T>, open: &OpenFiles) {
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    let until = Instant::now() + Duration::from_secs(30);
    while open.count() > 0 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Validates what arrived in `tmp` against `meta`, writes the receipt and renames `tmp` to
/// `target` atomically ([`commit::commit`], on a blocking thread). On error `tmp` is gone.
#[allow(clippy::too_many_arguments)]
pub async fn commit_received(
    tmp: TempDir,
    target: &Path,
    format: TableFormat,
    peer: &Peer,
    files: usize,
    bytes: u64,
    meta: PartitionMeta,
    progress: &Progress,
) -> Result<(), AttemptError> {
    let started = Instant::now();
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
    let committed =
        tokio::task::spawn_blocking(move || commit::commit(tmp, &target, format, &receipt))
            .await
            .map_err(|e| AttemptError::LocalIo(e.to_string()))?;
    *lock(&progress.commit) = Some(started.elapsed());
    committed
}

/// A manifest a client will act on ([`crate::protocol::transfer::check_manifest`]), as an attempt's error.
pub fn check_manifest(
    files: &[crate::protocol::FileEntry],
    checksum: crate::protocol::ChecksumAlgo,
) -> Result<(), AttemptError> {
    crate::protocol::transfer::check_manifest(
        files,
        crate::protocol::transfer::ClientLimits::default().max_files,
        checksum,
    )
    .map_err(|e| AttemptError::Protocol(e.to_string()))
}
