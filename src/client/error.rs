//! What can go wrong while fetching, typed by what the caller does next.
//!
//! The error table of docs/design.md ("Errors and what happens next"), in code: every
//! [`AttemptError`] says through [`AttemptError::next_step`] whether to move on to the next
//! peer (after cleanup or not) or to stop, and a [`FetchError`] says through
//! [`FetchError::fallback`] whether a Kafka bootstrap from the beginning follows.

use std::path::PathBuf;

use serde::Serialize;

use crate::protocol::{codes, RejectReason};

/// What the fetch loop does after a failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum NextStep {
    /// Nothing was written: try the next peer.
    NextPeer,
    /// Partial files were written: delete the temp dir (done by the attempt), try the next peer.
    CleanupThenNextPeer,
    /// No other peer can help (cancelled, local disk trouble): stop.
    GiveUp,
    /// The attempt was interrupted and its files are kept: ask the same peer for the rest
    /// (then the next peer, which starts afresh).
    Resume,
}

/// One failed attempt at one peer.
#[derive(Debug, Clone, thiserror::Error, Serialize)]
pub enum AttemptError {
    /// Could not connect, or the TLS handshake failed (unknown CA, not allowed, ...).
    #[error("cannot connect: {0}")]
    Connect(String),
    /// Connecting took longer than the connect timeout.
    #[error("connect timed out")]
    ConnectTimeout,
    /// The peer refused the request.
    #[error("rejected ({reason:?}): {message}")]
    Rejected {
        /// Typed reason.
        reason: RejectReason,
        /// Peer's detail.
        message: String,
    },
    /// A file's digest differs from the manifest.
    #[error("checksum mismatch in {file}")]
    ChecksumMismatch {
        /// File name.
        file: String,
    },
    /// A file's size differs from the manifest.
    #[error("size mismatch in {file}: expected {expected}, got {got}{}", if *.more { " or more" } else { "" })]
    SizeMismatch {
        /// File name.
        file: String,
        /// Manifest size.
        expected: u64,
        /// Bytes seen.
        got: u64,
        /// The peer sent more than announced (the stream was cut there).
        more: bool,
    },
    /// The peer broke the protocol (bad names in the manifest, unexpected frames, Complete
    /// before every file, frames over the limit, ...).
    #[error("protocol violation by peer: {0}")]
    Protocol(String),
    /// The peer reset a stream mid-transfer.
    #[error("stream reset by peer (code {0})")]
    StreamReset(u64),
    /// The connection died (peer crashed, network gone, idle timeout of QUIC).
    #[error("peer gone: {0}")]
    PeerGone(String),
    /// The peer is shutting down.
    #[error("peer is shutting down")]
    PeerShuttingDown,
    /// No byte arrived for the reader-idle timeout.
    #[error("no progress for {0:?}")]
    Idle(std::time::Duration),
    /// The whole partition took longer than its timeout.
    #[error("partition timeout after {0:?}")]
    PartitionTimeout(std::time::Duration),
    /// Local filesystem trouble (disk full, permissions): another peer would not help.
    #[error("local io: {0}")]
    LocalIo(String),
    /// The node cancelled the fetch.
    #[error("cancelled")]
    Cancelled,
}

impl AttemptError {
    /// What the fetch loop does next.
    pub fn next_step(&self) -> NextStep {
        match self {
            Self::Connect(_) | Self::ConnectTimeout | Self::Rejected { .. } => NextStep::NextPeer,
            Self::ChecksumMismatch { .. }
            | Self::SizeMismatch { .. }
            | Self::Protocol(_)
            | Self::StreamReset(_)
            | Self::PeerGone(_)
            | Self::PeerShuttingDown
            | Self::Idle(_)
            | Self::PartitionTimeout(_) => NextStep::CleanupThenNextPeer,
            Self::LocalIo(_) | Self::Cancelled => NextStep::GiveUp,
        }
    }

    /// True when what arrived before this failure is still good and may be resumed: the
    /// transfer was interrupted (a stall, a lost path or peer, a server going down), not
    /// proven wrong or given up. A partition timeout is not (this peer is too slow for the
    /// partition), nor a stream the server reset (it gave up on the transfer itself: a file it
    /// could not read, a client it had timed out).
    pub fn interrupted(&self) -> bool {
        matches!(
            self,
            Self::PeerGone(_) | Self::PeerShuttingDown | Self::Idle(_)
        )
    }

    /// Short stable label for reports and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Connect(_) => "connect_failed",
            Self::ConnectTimeout => "connect_timeout",
            Self::Rejected { reason, .. } => reason.as_str(),
            Self::ChecksumMismatch { .. } => "checksum_mismatch",
            Self::SizeMismatch { .. } => "size_mismatch",
            Self::Protocol(_) => "protocol_violation",
            Self::StreamReset(_) => "stream_reset",
            Self::PeerGone(_) => "peer_gone",
            Self::PeerShuttingDown => "peer_shutting_down",
            Self::Idle(_) => "idle_timeout",
            Self::PartitionTimeout(_) => "partition_timeout",
            Self::LocalIo(_) => "local_io",
            Self::Cancelled => "cancelled",
        }
    }

    pub(crate) fn from_connection(e: &quinn::ConnectionError) -> Self {
        match e {
            quinn::ConnectionError::ApplicationClosed(c)
                if c.error_code == codes::SHUTTING_DOWN.into() =>
            {
                Self::PeerShuttingDown
            }
            other => Self::PeerGone(other.to_string()),
        }
    }

    pub(crate) fn from_read(e: &quinn::ReadError) -> Self {
        match e {
            // A stopping server resets its streams with this code before it closes.
            quinn::ReadError::Reset(code) if *code == codes::SHUTTING_DOWN.into() => {
                Self::PeerShuttingDown
            }
            quinn::ReadError::Reset(code) => Self::StreamReset(code.into_inner()),
            quinn::ReadError::ConnectionLost(c) => Self::from_connection(c),
            other => Self::PeerGone(other.to_string()),
        }
    }

    pub(crate) fn from_write(e: &quinn::WriteError) -> Self {
        match e {
            quinn::WriteError::ConnectionLost(c) => Self::from_connection(c),
            other => Self::PeerGone(other.to_string()),
        }
    }

    pub(crate) fn from_wire(e: &crate::wire::WireError) -> Self {
        match e {
            crate::wire::WireError::Read(r) => Self::from_read(r),
            crate::wire::WireError::Write(w) => Self::from_write(w),
            crate::wire::WireError::Decode(d) => Self::Protocol(d.to_string()),
        }
    }

    pub(crate) fn local(e: std::io::Error) -> Self {
        Self::LocalIo(e.to_string())
    }
}

/// The final failure of a fetch.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The partition directory exists and is not empty: it is never touched.
    #[error("partition directory {0} already exists and is not empty")]
    PartitionExists(PathBuf),
    /// No peer to ask.
    #[error("no peers to fetch from")]
    NoPeers,
    /// Every peer was tried and failed.
    #[error("all {} peers failed: {}", attempts.len(), summary(attempts))]
    AllPeersFailed {
        /// Every attempt, in order.
        attempts: Vec<super::Attempt>,
    },
    /// An attempt failed in a way no other peer can fix.
    #[error("gave up at {peer}: {error}")]
    GaveUp {
        /// The peer of the last attempt.
        peer: String,
        /// Why.
        error: AttemptError,
        /// Every attempt, in order.
        attempts: Vec<super::Attempt>,
    },
    /// Local setup failed before any attempt (creating directories).
    #[error("local io: {0}")]
    Local(#[from] std::io::Error),
}

fn summary(attempts: &[super::Attempt]) -> String {
    attempts
        .iter()
        .map(|a| format!("{} {}", a.peer, a.outcome))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why a [`super::Fetcher`] could not be made: fix the configuration, nothing to retry.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// Certificates or TLS configuration are unusable.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The local UDP socket could not be bound.
    #[error("cannot bind the client socket: {0}")]
    Bind(std::io::Error),
}

/// What a node does after a failed fetch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fallback {
    /// Bootstrap the partition from Kafka from the beginning.
    KafkaFromStart,
    /// Do nothing more: the node cancelled, or the partition is already there.
    None,
}

impl FetchError {
    /// Every attempt made before this failure, in order (none when it failed before any).
    pub fn attempts(&self) -> &[super::Attempt] {
        match self {
            Self::AllPeersFailed { attempts } | Self::GaveUp { attempts, .. } => attempts,
            Self::PartitionExists(_) | Self::NoPeers | Self::Local(_) => &[],
        }
    }

    /// Short stable label for reports.
    pub fn label(&self) -> &'static str {
        match self {
            Self::PartitionExists(_) => "partition_exists",
            Self::NoPeers => "no_peers",
            Self::AllPeersFailed { .. } => "all_peers_failed",
            Self::GaveUp { error, .. } => error.label(),
            Self::Local(_) => "local_io",
        }
    }

    /// The fallback this failure calls for (docs/design.md, "Errors and what happens next").
    pub fn fallback(&self) -> Fallback {
        match self {
            Self::NoPeers | Self::AllPeersFailed { .. } => Fallback::KafkaFromStart,
            Self::GaveUp { error, .. } if *error != AttemptError::Cancelled => {
                Fallback::KafkaFromStart
            }
            _ => Fallback::None,
        }
    }
}

impl PartialEq for AttemptError {
    fn eq(&self, other: &Self) -> bool {
        self.label() == other.label()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_follow_the_design_table() {
        let rejected = |reason| AttemptError::Rejected {
            reason,
            message: String::new(),
        };
        for r in [
            RejectReason::NotFound,
            RejectReason::Busy,
            RejectReason::FormatMismatch,
        ] {
            assert_eq!(rejected(r).next_step(), NextStep::NextPeer);
        }
        assert_eq!(AttemptError::ConnectTimeout.next_step(), NextStep::NextPeer);
        assert_eq!(
            AttemptError::ChecksumMismatch { file: "x".into() }.next_step(),
            NextStep::CleanupThenNextPeer
        );
        assert_eq!(
            AttemptError::PeerGone("x".into()).next_step(),
            NextStep::CleanupThenNextPeer
        );
        assert_eq!(AttemptError::Cancelled.next_step(), NextStep::GiveUp);
        assert_eq!(FetchError::NoPeers.fallback(), Fallback::KafkaFromStart);
        assert_eq!(
            FetchError::GaveUp {
                peer: "p".into(),
                error: AttemptError::Cancelled,
                attempts: vec![]
            }
            .fallback(),
            Fallback::None
        );
    }
}
