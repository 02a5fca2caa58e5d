//! What can go wrong while fetching, typed by what the caller does next.
//!
//! The error table of docs/design.md ("Errors and what happens next"), in code: every
//! [`AttemptError`] names through [`AttemptError::outcome`] the row of the fetch machine's
//! decision table ([`crate::protocol::fetch`]) it falls in — the machine alone decides what
//! happens next — and a [`FetchError`] says through [`FetchError::fallback`] whether a Kafka
//! bootstrap from the beginning follows.

use std::path::PathBuf;

use serde::Serialize;

use super::report::Attempt;
use crate::protocol::fetch::Outcome;
use crate::protocol::{codes, RejectReason};

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
    /// The peer's operator removed this client from its allow list while the connection
    /// stood: the peer closed it, ending the transfer. Another peer may still allow it.
    #[error("this client is no longer allowed by the peer")]
    Revoked,
    /// No byte arrived for the reader-idle timeout.
    #[error("no progress for {0:?}")]
    Idle(std::time::Duration),
    /// The peer answered only "preparing" for the prepare limit: it may be ready later.
    #[error("no answer but \"preparing\" for {0:?}")]
    Unprepared(std::time::Duration),
    /// The transfer moved slower than the rate floor over a whole window (a trickling peer):
    /// what arrived is kept; another peer is asked if there is one.
    #[error("slower than {min_rate} B/s over {window:?}")]
    TooSlow {
        /// The floor, bytes/s.
        min_rate: u64,
        /// The window it was measured over.
        window: std::time::Duration,
    },
    /// Local filesystem trouble (permissions, I/O errors): another peer would not help.
    #[error("local io: {0}")]
    LocalIo(String),
    /// The partition does not fit on the local disk: found before the first byte from the
    /// manifest's sizes, or when the disk filled up while bytes arrived. What arrived is kept
    /// for a resume once space is freed; no Kafka rebuild onto the same disk follows.
    #[error("insufficient space: {0}")]
    InsufficientSpace(String),
    /// The node cancelled the fetch.
    #[error("cancelled")]
    Cancelled,
    /// The peer's snapshot is at an offset the log cannot continue from: below its first
    /// offset (the peer stopped following and retention moved on) or past its end (another
    /// cluster, a recreated topic). Its files are deleted; another peer is asked.
    #[error("stale snapshot: offset {offset:?}, the log holds [{low}, {high})")]
    StaleSnapshot {
        /// The snapshot's offset.
        offset: Option<u64>,
        /// First offset of the log.
        low: u64,
        /// High watermark of the log.
        high: u64,
    },
}

impl AttemptError {
    /// The row of the fetch machine's decision table this failure falls in
    /// ([`crate::protocol::fetch`]): whether what arrived is kept, and what happens next.
    pub fn outcome(&self) -> Outcome {
        match self {
            Self::Connect(_) | Self::ConnectTimeout => Outcome::Unreachable,
            Self::Rejected {
                reason: RejectReason::Busy,
                ..
            }
            | Self::Unprepared(_) => Outcome::Busy,
            Self::Rejected {
                reason: RejectReason::SnapshotGone,
                ..
            } => Outcome::SnapshotGone,
            Self::Rejected {
                reason: RejectReason::ShuttingDown | RejectReason::Draining,
                ..
            } => Outcome::ShuttingDown,
            Self::Rejected { .. } | Self::StaleSnapshot { .. } | Self::Revoked => Outcome::Refused,
            Self::ChecksumMismatch { .. } | Self::SizeMismatch { .. } | Self::Protocol(_) => {
                Outcome::Disproven
            }
            // A reset stream (the server gave up: its own time limit, a file it could not
            // read) proves nothing wrong with what validated; the resume budget bounds retries.
            Self::StreamReset(_) | Self::PeerGone(_) | Self::Idle(_) => Outcome::Interrupted,
            Self::PeerShuttingDown => Outcome::ShuttingDown,
            Self::TooSlow { .. } => Outcome::TooSlow,
            Self::LocalIo(_) | Self::InsufficientSpace(_) => Outcome::Local,
            Self::Cancelled => Outcome::Cancelled,
        }
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
            Self::Revoked => "revoked",
            Self::Idle(_) => "idle_timeout",
            Self::Unprepared(_) => "not_ready",
            Self::TooSlow { .. } => "too_slow",
            Self::LocalIo(_) => "local_io",
            Self::InsufficientSpace(_) => "insufficient_space",
            Self::Cancelled => "cancelled",
            Self::StaleSnapshot { .. } => "stale_snapshot",
        }
    }

    pub(crate) fn from_connection(e: &quinn::ConnectionError) -> Self {
        match e {
            quinn::ConnectionError::ApplicationClosed(c)
                if c.error_code == codes::SHUTTING_DOWN.into() =>
            {
                Self::PeerShuttingDown
            }
            quinn::ConnectionError::ApplicationClosed(c)
                if c.error_code == codes::REVOKED.into() =>
            {
                Self::Revoked
            }
            // A TLS alert (QUIC's crypto error codes, 0x100–0x1ff): the peer refused the
            // handshake. TLS 1.3 checks a client's certificate after the client has sent its
            // last handshake message, so a refusal by the allow list arrives as a close of a
            // connection the client already counted as up: it is still a refused connect.
            quinn::ConnectionError::ConnectionClosed(c)
                if (0x100..0x200).contains(&u64::from(c.error_code)) =>
            {
                Self::Connect(format!("handshake refused by the peer: {c}"))
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
            quinn::ReadError::Reset(code) if *code == codes::REVOKED.into() => Self::Revoked,
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

    pub(crate) fn from_wire(e: &crate::net::wire::WireError) -> Self {
        match e {
            crate::net::wire::WireError::Read(r) => Self::from_read(r),
            crate::net::wire::WireError::Write(w) => Self::from_write(w),
            crate::net::wire::WireError::Decode(d) => Self::Protocol(d.to_string()),
        }
    }

    /// A failure of this machine's disk or filesystem: the attempt's outcome is local, no
    /// peer is to blame.
    pub fn local(e: std::io::Error) -> Self {
        if crate::store::disk::is_full(&e) {
            return Self::InsufficientSpace(e.to_string());
        }
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
    #[error("all {} peers failed ({} attempts): {}", peers(attempts), attempts.len(), summary(attempts))]
    AllPeersFailed {
        /// Every attempt, in order.
        attempts: Vec<Attempt>,
    },
    /// An attempt failed in a way no other peer can fix.
    #[error("gave up at {peer}: {error}")]
    GaveUp {
        /// The peer of the last attempt.
        peer: String,
        /// Why.
        error: AttemptError,
        /// Every attempt, in order.
        attempts: Vec<Attempt>,
    },
    /// Local setup failed before any attempt (creating directories).
    #[error("local io: {0}")]
    Local(#[from] std::io::Error),
}

/// Distinct peers among `attempts` (a peer asked again for a resume counts once).
fn peers(attempts: &[Attempt]) -> usize {
    attempts
        .iter()
        .map(|a| a.peer.as_str())
        .collect::<std::collections::BTreeSet<_>>()
        .len()
}

fn summary(attempts: &[Attempt]) -> String {
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
    Tls(#[from] crate::net::tls::TlsError),
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
    pub fn attempts(&self) -> &[Attempt] {
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
            // A full disk would be filled again by a rebuild from the log.
            Self::GaveUp { error, .. }
                if !matches!(
                    error,
                    AttemptError::Cancelled | AttemptError::InsufficientSpace(_)
                ) =>
            {
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
    fn failures_fall_in_the_rows_of_the_design_table() {
        let rejected = |reason| AttemptError::Rejected {
            reason,
            message: String::new(),
        };
        for r in [
            RejectReason::NotFound,
            RejectReason::FormatMismatch,
            RejectReason::UnsupportedVersion,
            RejectReason::Disabled,
            RejectReason::NotAllowed,
        ] {
            assert_eq!(rejected(r).outcome(), Outcome::Refused);
        }
        // A draining peer is asked again later, like one shutting down; what arrived is kept.
        assert_eq!(
            rejected(RejectReason::Draining).outcome(),
            Outcome::ShuttingDown
        );
        assert_eq!(AttemptError::Revoked.outcome(), Outcome::Refused);
        assert_eq!(rejected(RejectReason::Busy).outcome(), Outcome::Busy);
        assert_eq!(
            rejected(RejectReason::SnapshotGone).outcome(),
            Outcome::SnapshotGone
        );
        assert_eq!(AttemptError::ConnectTimeout.outcome(), Outcome::Unreachable);
        assert_eq!(
            AttemptError::ChecksumMismatch { file: "x".into() }.outcome(),
            Outcome::Disproven
        );
        for e in [
            AttemptError::PeerGone("x".into()),
            AttemptError::Idle(std::time::Duration::from_secs(1)),
            AttemptError::StreamReset(1),
        ] {
            assert_eq!(e.outcome(), Outcome::Interrupted);
        }
        assert_eq!(
            AttemptError::PeerShuttingDown.outcome(),
            Outcome::ShuttingDown
        );
        assert_eq!(AttemptError::LocalIo("x".into()).outcome(), Outcome::Local);
        assert_eq!(AttemptError::Cancelled.outcome(), Outcome::Cancelled);
        let full = AttemptError::local(std::io::Error::from_raw_os_error(libc::ENOSPC));
        assert_eq!(full.label(), "insufficient_space");
        assert_eq!(full.outcome(), Outcome::Local);
        assert_eq!(
            FetchError::GaveUp {
                peer: "p".into(),
                error: full,
                attempts: vec![]
            }
            .fallback(),
            Fallback::None,
            "no rebuild from the log onto a full disk"
        );
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
