//! What a fetch tells its caller: each attempt with its outcome and what followed, and the
//! report of a fetch that succeeded. A failed fetch carries the same attempts in its
//! [`super::FetchError`].

use std::path::PathBuf;

use serde::Serialize;

use crate::peers::order::ZoneClass;
use crate::store::partition::PartitionMeta;

/// What the fetch did after a failed attempt, as its report shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum NextStep {
    /// Nothing was written: try the next peer (or, with none left, give the node the fallback).
    NextPeer,
    /// Files this attempt wrote were deleted (not to be trusted, or resume off); next peer.
    CleanupThenNextPeer,
    /// Local disk trouble: stop; no other peer can help.
    GiveUp,
    /// The attempt was interrupted and its files are kept: ask the same peer for the rest,
    /// after a pause.
    Resume,
    /// The peer no longer keeps the snapshot a resume named: ask it again from byte 0.
    Afresh,
    /// Cancelled (SIGTERM, the node's cancel): files kept, nothing more started; a rerun
    /// resumes.
    Suspend,
}

/// The outcome of one attempt at one peer.
#[derive(Clone, Debug, Serialize)]
pub struct Attempt {
    /// The peer.
    pub peer: String,
    /// Whether the peer is in this node's zone: `local` or `remote`.
    pub zone: ZoneClass,
    /// `ok` or the error label.
    pub outcome: String,
    /// The error, when it failed.
    pub error: Option<String>,
    /// What the loop did next.
    pub next_step: Option<NextStep>,
    /// Payload bytes received in this attempt.
    pub bytes: u64,
    /// Bytes an earlier attempt (or an earlier run) received that this one kept: not sent
    /// again.
    pub resumed_bytes: u64,
    /// Bytes an earlier attempt received that this one could not keep (another peer, the
    /// snapshot gone, a held prefix that failed its digest), so they were asked for again.
    pub resent_bytes: u64,
    /// Wall time of the attempt.
    pub seconds: f64,
    /// Seconds from the attempt's start to its first file byte: what the peer's preparation
    /// cost (absent when no file byte came).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_byte_seconds: Option<f64>,
    /// Seconds the commit took: checking the database, the receipt, the rename (absent when
    /// the attempt did not get that far).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit_seconds: Option<f64>,
}

/// A successful fetch.
#[derive(Clone, Debug, Serialize)]
pub struct FetchReport {
    /// The partition.
    pub partition: String,
    /// Where it now is.
    pub dir: PathBuf,
    /// The peer it came from.
    pub peer: String,
    /// Every attempt, in order (the last one succeeded).
    pub attempts: Vec<Attempt>,
    /// Files received.
    pub files: usize,
    /// Payload bytes received in the successful attempt.
    pub bytes: u64,
    /// Wall time from the first request to the rename.
    pub seconds: f64,
    /// Offset and version state of the snapshot (Kafka catch-up starts after `offset`).
    pub meta: PartitionMeta,
}
