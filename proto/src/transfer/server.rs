//! The serving side of one transfer.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::codec::{peek_request_version, DecodeError};
use crate::frame::{
    Accept, ControlFrame, FileEntry, FileStart, Reject, RejectReason, Request, Resume,
};
use crate::names::peer_text;
use crate::types::{PartitionMeta, SnapshotId, TableFormat};

use super::manifest::{check_request, unsupported};
use super::resume::push_plan;

/// The server's rules for one transfer.
#[derive(Clone, Copy, Debug)]
pub struct ServerLimits {
    /// Table format of every partition served here.
    pub table_format: TableFormat,
    /// Longest a client may take to send its request once the stream is open.
    pub request_timeout: Duration,
    /// Give up on a client that takes nothing (no byte leaves) or does not answer `Complete`
    /// for this long, so a stalled client cannot hold a snapshot for the partition timeout.
    /// Also paces the `Preparing` heartbeats ([`heartbeat_interval`]).
    pub idle: Duration,
    /// Longest a transfer may take from the lease on.
    pub partition_timeout: Duration,
}

/// Interval of `Preparing` heartbeats, and of the checks for a stalled client: well inside
/// the idle limit of both sides, so a slow first digest never looks like a dead peer.
pub fn heartbeat_interval(idle: Duration) -> Duration {
    (idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(5))
}

/// How a transfer ended on the server (logged and counted; the client learns from frames and
/// stream states). The machine's own ends and the ones its driver finds (a stream lost, a file
/// unreadable, a shutdown) are one type, so one rule ([`Self::resumable`]) decides which
/// snapshots stay for a resume.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ServerEnd {
    /// Refused with this reason before anything was sent.
    #[error("rejected: {0}")]
    Rejected(RejectReason),
    /// The client confirmed with `Done`.
    #[error("done")]
    Done,
    /// The client sent `Abort`: it gave up, nothing of this transfer will be resumed.
    #[error("client aborted: {0}")]
    ClientAborted(String),
    /// The client sent `Suspend`: it keeps what it received and may come back to resume.
    #[error("client suspended: {0}")]
    Suspended(String),
    /// The client went away without a word (its control stream ended early): it may come
    /// back to resume.
    #[error("client gone: {0}")]
    ClientGone(String),
    /// The client broke the protocol.
    #[error("protocol violation by client: {0}")]
    Protocol(String),
    /// The client stalled, or the partition timeout passed.
    #[error("timed out")]
    Timeout,
    /// A stream to the client broke (reset, stopped, connection lost): found by the driver.
    #[error("stream lost: {0}")]
    StreamLost(String),
    /// The server could not read what it serves: found by the driver.
    #[error("local io: {0}")]
    LocalIo(String),
    /// The server is stopping.
    #[error("server shutting down")]
    ShuttingDown,
    /// The client was taken off the allow list while the transfer ran: it is not to have
    /// the rest, nor to resume.
    #[error("client no longer allowed")]
    Revoked,
}

impl ServerEnd {
    /// True when the client may come back to resume: the transfer was interrupted (a stall,
    /// a lost stream or path, a `Suspend`, a stopping server), not finished, refused, given up
    /// (`Abort`) or broken. The driver keeps the snapshot for the resume window after such an
    /// end.
    pub fn resumable(&self) -> bool {
        matches!(
            self,
            Self::Suspended(_)
                | Self::ClientGone(_)
                | Self::Timeout
                | Self::StreamLost(_)
                | Self::ShuttingDown
        )
    }
}

/// What the driver does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerAction {
    /// Write this frame on the control stream.
    Send(ControlFrame),
    /// Finish the control stream: nothing more will be sent.
    FinishSend,
    /// Stop reading the control stream (with the protocol-violation code): the request was
    /// unreadable, so nothing after it is wanted.
    StopReading,
    /// A valid request: decide whether it can be served (shutting down, transfer id in use,
    /// no snapshot slot) and answer [`ServerTransfer::handle_leased`] or
    /// [`ServerTransfer::handle_refused`].
    Lease(Request),
    /// `Accept` is out: push these files (every file from byte 0, or what a resume asked
    /// for), each on its own stream starting at its offset, then report
    /// [`ServerTransfer::handle_files_acked`] once the client acknowledged every byte.
    PushFiles(Vec<FileStart>),
    /// The transfer is over; release everything. Streams of a transfer that did not end with
    /// [`ServerEnd::Done`] or a rejection are reset.
    End(ServerEnd),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    AwaitingRequest,
    Leasing,
    Preparing,
    Pushing,
    AwaitingDone,
    Ended,
}

/// One transfer, seen from the server: created when the client opens a control stream.
#[derive(Debug)]
pub struct ServerTransfer {
    limits: ServerLimits,
    phase: Phase,
    actions: VecDeque<ServerAction>,
    /// When the phase's clock started: the stream's opening, the lease, the last progress.
    since: Instant,
    next_beat: Instant,
    deadline: Option<Instant>,
    /// What a resuming client still needs.
    resume: Option<Resume>,
}

impl ServerTransfer {
    /// A transfer whose control stream opened at `now`.
    pub fn new(limits: ServerLimits, now: Instant) -> Self {
        Self {
            limits,
            phase: Phase::AwaitingRequest,
            actions: VecDeque::new(),
            since: now,
            next_beat: now,
            deadline: None,
            resume: None,
        }
    }

    /// The next thing to do, if any.
    pub fn poll_action(&mut self) -> Option<ServerAction> {
        self.actions.pop_front()
    }

    /// True while frames from the client are wanted: while files are pushed (an `Abort` ends
    /// the transfer early) and while `Done` is awaited.
    pub fn wants_control(&self) -> bool {
        matches!(self.phase, Phase::Pushing | Phase::AwaitingDone)
    }

    /// True once the transfer is over.
    pub fn is_ended(&self) -> bool {
        self.phase == Phase::Ended
    }

    /// When to call [`Self::handle_timeout`] next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let phase_limit = match self.phase {
            Phase::AwaitingRequest => Some(self.since + self.limits.request_timeout),
            Phase::Preparing => Some(self.next_beat),
            Phase::Pushing | Phase::AwaitingDone => Some(self.since + self.limits.idle),
            Phase::Leasing | Phase::Ended => None,
        };
        match (
            phase_limit,
            self.deadline.filter(|_| self.phase != Phase::Ended),
        ) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The request frame's payload arrived (`None`: the stream ended without one).
    pub fn handle_request(&mut self, raw: Option<&[u8]>) {
        if self.phase != Phase::AwaitingRequest {
            return;
        }
        let Some(raw) = raw else {
            return self.reject_request(RejectReason::BadRequest, "stream ended".into());
        };
        match postcard::from_bytes::<ControlFrame>(raw) {
            Ok(ControlFrame::Request(req)) => match check_request(&req, self.limits.table_format) {
                Ok(()) => {
                    self.phase = Phase::Leasing;
                    self.resume = req.resume.clone();
                    self.actions.push_back(ServerAction::Lease(req));
                }
                Err((reason, message)) => self.reject_request(reason, message),
            },
            Ok(other) => self.reject_request(
                RejectReason::BadRequest,
                format!("expected a request, got {}", other.name()),
            ),
            // A request this build cannot decode may still say which version it speaks.
            Err(e) => {
                let (reason, message) = match peek_request_version(raw) {
                    Some(v) if v != crate::PROTOCOL_VERSION => unsupported(v),
                    _ => (RejectReason::BadRequest, format!("malformed request: {e}")),
                };
                self.reject_request(reason, message)
            }
        }
    }

    /// The request could not be read: over the size limit, cut off, or the stream failed
    /// (`detail` says how).
    pub fn handle_request_error(&mut self, error: Option<&DecodeError>, detail: String) {
        if self.phase != Phase::AwaitingRequest {
            return;
        }
        let message = match error {
            Some(DecodeError::TooLarge { len, max }) => {
                format!("frame of {len} bytes over the {max} limit")
            }
            _ => detail,
        };
        self.reject_request(RejectReason::BadRequest, message)
    }

    /// The request cannot be served (shutting down, transfer id in use, no snapshot): refuse.
    pub fn handle_refused(&mut self, reason: RejectReason, message: String) {
        if self.phase != Phase::Leasing {
            return;
        }
        self.reject(reason, message)
    }

    /// The snapshot is leased and its manifest is being made; heartbeats start.
    pub fn handle_leased(&mut self, now: Instant) {
        if self.phase != Phase::Leasing {
            return;
        }
        self.phase = Phase::Preparing;
        self.since = now;
        self.next_beat = now + heartbeat_interval(self.limits.idle);
        self.deadline = Some(now + self.limits.partition_timeout);
    }

    /// The manifest of snapshot `snapshot` is ready (digests where already known, the rest
    /// to follow in trailers), with the snapshot's metadata: accept and push (for a resume,
    /// only the files asked for, from their offsets; a list that does not fit the manifest
    /// is a `BadRequest`).
    pub fn handle_manifest(
        &mut self,
        files: Vec<FileEntry>,
        snapshot: SnapshotId,
        meta: PartitionMeta,
        now: Instant,
    ) {
        if self.phase != Phase::Preparing {
            return;
        }
        let plan = match push_plan(self.resume.as_ref(), &files) {
            Ok(plan) => plan,
            Err(e) => return self.reject(RejectReason::BadRequest, e),
        };
        self.phase = Phase::Pushing;
        self.since = now;
        self.actions
            .push_back(ServerAction::Send(ControlFrame::Accept(Accept {
                files,
                snapshot,
                meta,
            })));
        self.actions.push_back(ServerAction::PushFiles(plan));
    }

    /// File data was handed to the transport or left on the wire: the client is taking it.
    pub fn handle_send_progress(&mut self, now: Instant) {
        if self.phase == Phase::Pushing {
            self.since = now;
        }
    }

    /// The client acknowledged every byte of every file: only now does `Complete` go out, so
    /// the client can hold a missing file stream for a lie.
    pub fn handle_files_acked(&mut self, now: Instant) {
        if self.phase != Phase::Pushing {
            return;
        }
        self.phase = Phase::AwaitingDone;
        self.since = now;
        self.actions
            .push_back(ServerAction::Send(ControlFrame::Complete));
        self.actions.push_back(ServerAction::FinishSend);
    }

    /// A frame from the client on the control stream.
    pub fn handle_frame(&mut self, frame: ControlFrame) {
        if !self.wants_control() {
            return;
        }
        let end = match (self.phase, frame) {
            (_, ControlFrame::Abort { reason }) => ServerEnd::ClientAborted(peer_text(&reason)),
            (_, ControlFrame::Suspend { reason }) => ServerEnd::Suspended(peer_text(&reason)),
            (Phase::AwaitingDone, ControlFrame::Done) => ServerEnd::Done,
            (_, other) => ServerEnd::Protocol(format!("unexpected {}", other.name())),
        };
        self.end(end)
    }

    /// The client finished its control stream.
    pub fn handle_control_end(&mut self) {
        let why = match self.phase {
            Phase::Pushing => "control stream closed",
            Phase::AwaitingDone => "no Done",
            _ => return,
        };
        self.end(ServerEnd::ClientGone(why.into()))
    }

    /// Time passed; call at [`Self::poll_timeout`] or later.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.phase == Phase::Ended {
            return;
        }
        if self.deadline.is_some_and(|d| now >= d) {
            return self.end(ServerEnd::Timeout);
        }
        match self.phase {
            Phase::AwaitingRequest if now >= self.since + self.limits.request_timeout => {
                self.reject_request(RejectReason::BadRequest, "no request in time".into())
            }
            Phase::Preparing if now >= self.next_beat => {
                self.actions
                    .push_back(ServerAction::Send(ControlFrame::Preparing));
                let beat = heartbeat_interval(self.limits.idle);
                // Missed beats are not made up for: one frame says "still working".
                while self.next_beat <= now {
                    self.next_beat += beat;
                }
            }
            Phase::Pushing | Phase::AwaitingDone if now >= self.since + self.limits.idle => {
                self.end(ServerEnd::Timeout)
            }
            _ => {}
        }
    }

    /// Ends the transfer for a reason the driver found (a file could not be read or sent, the
    /// server is stopping): the client sees its streams reset.
    pub fn fail(&mut self, end: ServerEnd) {
        if self.phase != Phase::Ended {
            // Whatever was still to be done (a frame, the push) is moot now.
            self.actions.clear();
        }
        self.end(end)
    }

    fn reject_request(&mut self, reason: RejectReason, message: String) {
        self.actions.push_back(ServerAction::StopReading);
        self.reject(reason, message)
    }

    fn reject(&mut self, reason: RejectReason, message: String) {
        self.actions
            .push_back(ServerAction::Send(ControlFrame::Reject(Reject {
                reason,
                message,
            })));
        self.actions.push_back(ServerAction::FinishSend);
        self.end(ServerEnd::Rejected(reason))
    }

    fn end(&mut self, end: ServerEnd) {
        if self.phase == Phase::Ended {
            return;
        }
        self.phase = Phase::Ended;
        self.actions.push_back(ServerAction::End(end));
    }
}
