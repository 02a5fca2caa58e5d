//! The receiving side of one transfer.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::frame::{Accept, ControlFrame, FileEntry, FileHeader, RejectReason, Request, Resume};
use crate::names::peer_text;
use crate::types::{ChecksumAlgo, PartitionMeta, SnapshotId};

use super::manifest::{check_manifest, merge_digests, same_files};
use super::resume::{check_resume, ResumeFrom};

/// The client's time limits and bounds.
#[derive(Clone, Copy, Debug)]
pub struct ClientLimits {
    /// Give up after this long without any progress: no frame, no file stream, no byte.
    pub idle: Duration,
    /// How long file streams may trail `Complete`. The server sends `Complete` only after
    /// every file byte was acknowledged, so each file stream has arrived by then, give or take
    /// the routing of its header; one still missing after this long was never sent.
    pub complete_grace: Duration,
    /// How long a transfer may sit without progress once its connection is closed: received
    /// bytes may still drain, but nothing new will come, so waiting out `idle` would only
    /// delay the next peer.
    pub closed_grace: Duration,
    /// Most files a manifest may list ([`MAX_FILES`]).
    pub max_files: usize,
    /// Longest wait for `Accept` or `Reject` after the request, however many `Preparing`
    /// heartbeats come ([`MAX_PREPARE`]): a server that only ever prepares holds no fetch
    /// longer than this.
    pub prepare: Duration,
}

/// Most files a manifest may list by default. A 10 GB partition of 64 MB SST files has ~160
/// files and a 1 TB one of 16 MB files ~65 000; a manifest of 100 000 names of up to 255
/// bytes with 32-byte digests decodes to at most ~33 MB, and the control frame that carries
/// it is capped lower still (the driver's frame limit).
pub const MAX_FILES: usize = 100_000;

/// Longest a server may answer `Preparing` before `Accept` by default (5 minutes). A
/// checkpoint takes well under a second on an idle server (digests come while sending); this
/// leaves room for a server whose disk is saturated.
pub const MAX_PREPARE: Duration = Duration::from_secs(300);

/// Most files of one transfer a client receives at once; a server sends no more at a time.
/// Each costs the client a receive buffer reserved from its receive budget and an open file.
/// Streams a server opens beyond it wait, unread, until a file finishes.
pub const MAX_FILES_IN_FLIGHT: usize = 16;

impl Default for ClientLimits {
    fn default() -> Self {
        Self {
            idle: Duration::from_secs(60),
            complete_grace: Duration::from_secs(2),
            closed_grace: Duration::from_secs(1),
            max_files: MAX_FILES,
            prepare: MAX_PREPARE,
        }
    }
}

/// Why the machine ended a transfer. The driver turns it into its own error type, adding what
/// only it knows (the connection's close reason).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientFailure {
    /// The server refused: try the next peer.
    Rejected {
        /// Typed reason.
        reason: RejectReason,
        /// The server's detail.
        message: String,
    },
    /// The server broke the protocol.
    Protocol(String),
    /// No progress for the idle limit, with the connection open.
    Idle(Duration),
    /// No progress since the connection closed: its close reason says why.
    ConnectionClosed,
    /// The server answered only `Preparing` for the prepare limit.
    Unprepared(Duration),
}

/// What the driver does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientAction {
    /// Write this frame on the control stream.
    Send(ControlFrame),
    /// The manifest was accepted ([`ClientTransfer::files`], [`ClientTransfer::meta`]): check
    /// the snapshot can be continued, make room for the files.
    Accepted,
    /// Receive the file stream just handed in into manifest entry `index`, checking its size
    /// against `entry` and its digest against `entry`'s or, when the manifest had none, the
    /// stream's trailer ([`crate::transfer::expected_digest`]); report the outcome with
    /// [`ClientTransfer::handle_file_done`].
    ReceiveFile {
        /// Manifest index.
        index: u32,
        /// What the file must be.
        entry: FileEntry,
        /// Bytes of the file already held (a resume): the stream carries the rest, and the
        /// digest covers the held prefix read back from disk plus the stream.
        offset: u64,
    },
    /// Every file has validated and the server has sent `Complete`: commit with the
    /// `Accept`'s metadata, then report with [`ClientTransfer::handle_committed`].
    Commit(PartitionMeta),
    /// The transfer failed: end every file task, clean up, then call
    /// [`ClientTransfer::abort`] so the server learns why.
    Fail(ClientFailure),
    /// Finish the control stream: nothing more will be sent.
    FinishSend,
}

impl ClientAction {
    /// The variant's name, for errors and logs (never the payload, which may be a whole
    /// manifest).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Send(_) => "Send",
            Self::Accepted => "Accepted",
            Self::ReceiveFile { .. } => "ReceiveFile",
            Self::Commit(_) => "Commit",
            Self::Fail(_) => "Fail",
            Self::FinishSend => "FinishSend",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Request sent; waiting for `Accept` or `Reject`.
    Requested,
    /// Manifest accepted; files and closing frames arriving.
    Receiving,
    /// `Commit` handed out; waiting for its outcome.
    Committing,
    /// Over (committed, failed or aborted): every later event is ignored.
    Ended,
}

/// One transfer, seen from the client. Created with the request; see the module header of
/// [`crate::transfer`] for the driving loop.
#[derive(Debug)]
pub struct ClientTransfer {
    limits: ClientLimits,
    /// The digest algorithm asked for: every manifest digest must have its length.
    checksum: ChecksumAlgo,
    /// When the request went out: `Accept` must come within the prepare limit.
    requested_at: Instant,
    phase: Phase,
    actions: VecDeque<ClientAction>,
    files: Vec<FileEntry>,
    /// The snapshot the `Accept` named.
    snapshot: Option<SnapshotId>,
    /// Set when resuming: what the `Accept` must match.
    resume: Option<ResumeFrom>,
    /// Per file, the byte its stream must start at.
    offsets: Vec<u64>,
    started: Vec<bool>,
    done: Vec<bool>,
    validated: usize,
    bytes: u64,
    meta: Option<PartitionMeta>,
    complete_at: Option<Instant>,
    control_open: bool,
    last_progress: Instant,
    closed: bool,
    /// `Done` or `Abort` was queued: the last frame this side sends.
    said_goodbye: bool,
}

impl ClientTransfer {
    /// A fresh transfer asking for `request` (any `resume` in it is dropped); the first
    /// action sends it.
    pub fn new(mut request: Request, limits: ClientLimits, now: Instant) -> Self {
        request.resume = None;
        Self::start(request, None, limits, now)
    }

    /// A transfer resuming `from`: it asks for the files still needed, each from its offset,
    /// and accepts only the same snapshot with the same manifest.
    pub fn resume(
        mut request: Request,
        from: ResumeFrom,
        limits: ClientLimits,
        now: Instant,
    ) -> Self {
        request.resume = Some(Resume {
            snapshot: from.snapshot,
            files: from.files.clone(),
        });
        Self::start(request, Some(from), limits, now)
    }

    fn start(
        request: Request,
        resume: Option<ResumeFrom>,
        limits: ClientLimits,
        now: Instant,
    ) -> Self {
        Self {
            limits,
            checksum: request.checksum,
            requested_at: now,
            phase: Phase::Requested,
            actions: VecDeque::from([ClientAction::Send(ControlFrame::Request(request))]),
            files: Vec::new(),
            resume,
            snapshot: None,
            offsets: Vec::new(),
            started: Vec::new(),
            done: Vec::new(),
            validated: 0,
            bytes: 0,
            meta: None,
            complete_at: None,
            control_open: true,
            last_progress: now,
            closed: false,
            said_goodbye: false,
        }
    }

    /// The accepted manifest (empty before `Accept`).
    pub fn files(&self) -> &[FileEntry] {
        &self.files
    }

    /// Payload bytes of the files validated so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The accepted snapshot's offset and version state (`None` before `Accept`).
    pub fn meta(&self) -> Option<&PartitionMeta> {
        self.meta.as_ref()
    }

    /// The snapshot the accepted manifest belongs to (`None` before `Accept`): a resume
    /// names it.
    pub fn snapshot(&self) -> Option<SnapshotId> {
        self.snapshot
    }

    /// True when this transfer resumes an earlier one.
    pub fn is_resume(&self) -> bool {
        self.resume.is_some()
    }

    /// True once the transfer is over, whichever way.
    pub fn is_ended(&self) -> bool {
        self.phase == Phase::Ended
    }

    /// True while the control stream may still bring frames.
    pub fn wants_control(&self) -> bool {
        self.control_open && matches!(self.phase, Phase::Requested | Phase::Receiving)
    }

    /// The next thing to do, if any.
    pub fn poll_action(&mut self) -> Option<ClientAction> {
        self.actions.pop_front()
    }

    /// When to call [`Self::handle_timeout`] next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Requested | Phase::Receiving => {}
            Phase::Committing | Phase::Ended => return None,
        }
        let mut idle = self.last_progress + self.idle_limit();
        if self.phase == Phase::Requested {
            idle = idle.min(self.requested_at + self.limits.prepare);
        }
        let grace = self
            .complete_at
            .filter(|_| self.started.iter().any(|s| !s))
            .map(|at| at + self.limits.complete_grace);
        Some(grace.map_or(idle, |g| g.min(idle)))
    }

    fn idle_limit(&self) -> Duration {
        if self.closed {
            self.limits.idle.min(self.limits.closed_grace)
        } else {
            self.limits.idle
        }
    }

    /// A frame arrived on the control stream.
    pub fn handle_frame(&mut self, frame: ControlFrame, now: Instant) {
        self.last_progress = now;
        match (self.phase, frame) {
            // "Still working": the server is making and digesting the snapshot.
            (Phase::Requested, ControlFrame::Preparing) => {}
            (
                Phase::Requested,
                ControlFrame::Accept(Accept {
                    mut files,
                    snapshot,
                    meta,
                }),
            ) => {
                if let Err(e) = check_manifest(&files, self.limits.max_files, self.checksum) {
                    return self.fail(ClientFailure::Protocol(e.to_string()));
                }
                self.started = vec![false; files.len()];
                self.done = vec![false; files.len()];
                self.offsets = vec![0; files.len()];
                if let Some(from) = &self.resume {
                    if snapshot != from.snapshot || !same_files(&from.manifest, &files) {
                        return self.fail(ClientFailure::Protocol(format!(
                            "resume of snapshot {} answered with snapshot {snapshot} or another manifest",
                            from.snapshot
                        )));
                    }
                    files = merge_digests(&from.manifest, files);
                    let asked = Resume {
                        snapshot,
                        files: from.files.clone(),
                    };
                    if let Err(e) = check_resume(&asked, &files) {
                        return self.fail(ClientFailure::Protocol(e));
                    }
                    // Files not asked for were validated by an earlier attempt.
                    self.started = vec![true; files.len()];
                    self.done = vec![true; files.len()];
                    self.validated = files.len() - from.files.len();
                    for f in &from.files {
                        let i = f.index as usize;
                        self.started[i] = false;
                        self.done[i] = false;
                        self.offsets[i] = f.offset;
                    }
                }
                self.files = files;
                self.snapshot = Some(snapshot);
                self.meta = Some(meta);
                self.phase = Phase::Receiving;
                self.actions.push_back(ClientAction::Accepted);
                self.check_finished();
            }
            (Phase::Requested, ControlFrame::Reject(r)) => self.fail(ClientFailure::Rejected {
                reason: r.reason,
                message: peer_text(&r.message),
            }),
            (Phase::Requested, other) => self.fail(ClientFailure::Protocol(format!(
                "expected Accept or Reject, got {}",
                other.name()
            ))),
            (Phase::Receiving, ControlFrame::Complete) if self.complete_at.is_none() => {
                self.complete_at = Some(now);
                self.check_finished();
            }
            (Phase::Receiving, other) => self.fail(ClientFailure::Protocol(format!(
                "unexpected frame {}",
                other.name()
            ))),
            (Phase::Committing | Phase::Ended, _) => {}
        }
    }

    /// The control stream ended cleanly.
    pub fn handle_control_end(&mut self, now: Instant) {
        self.last_progress = now;
        self.control_open = false;
        match self.phase {
            Phase::Requested => self.fail(ClientFailure::Protocol("control stream ended".into())),
            Phase::Receiving if self.complete_at.is_none() => self.fail(ClientFailure::Protocol(
                "control stream ended before Complete".into(),
            )),
            _ => {}
        }
    }

    /// A file stream for this transfer arrived with `header`. On success the next action is
    /// [`ClientAction::ReceiveFile`]; a stream that is not in the manifest, or comes twice,
    /// fails the transfer (the driver then drops the stream).
    pub fn handle_file_stream(&mut self, header: FileHeader, now: Instant) {
        self.last_progress = now;
        if self.phase != Phase::Receiving {
            // Before Accept no index can be checked; after the end nothing is wanted.
            if self.phase == Phase::Requested {
                self.fail(ClientFailure::Protocol(format!(
                    "file stream for index {} before Accept",
                    header.index
                )));
            }
            return;
        }
        let i = header.index as usize;
        if i >= self.files.len() || self.started[i] {
            return self.fail(ClientFailure::Protocol(format!(
                "file stream for index {i} not in the manifest, not asked for, or sent twice"
            )));
        }
        if header.offset != self.offsets[i] {
            return self.fail(ClientFailure::Protocol(format!(
                "file stream for index {i} starts at byte {} instead of {}",
                header.offset, self.offsets[i]
            )));
        }
        self.started[i] = true;
        self.actions.push_back(ClientAction::ReceiveFile {
            index: header.index,
            entry: self.files[i].clone(),
            offset: header.offset,
        });
    }

    /// File bytes arrived (on any stream of this transfer).
    pub fn handle_file_progress(&mut self, now: Instant) {
        self.last_progress = now;
    }

    /// File `index` arrived whole and matched its manifest entry (`bytes` long). Only an
    /// index handed out by [`ClientAction::ReceiveFile`] counts, and only once.
    pub fn handle_file_done(&mut self, index: u32, bytes: u64, now: Instant) {
        self.last_progress = now;
        let i = index as usize;
        if self.phase != Phase::Receiving || !self.started.get(i).copied().unwrap_or(false) {
            return;
        }
        if std::mem::replace(&mut self.done[i], true) {
            return;
        }
        self.validated += 1;
        self.bytes += bytes;
        self.check_finished();
    }

    /// The connection closed: nothing new will arrive, so stop waiting sooner. Received bytes
    /// may still drain; once they stop for the shorter limit, the transfer fails.
    pub fn handle_connection_closed(&mut self) {
        self.closed = true;
    }

    /// Time passed; call at [`Self::poll_timeout`] or later.
    pub fn handle_timeout(&mut self, now: Instant) {
        if !matches!(self.phase, Phase::Requested | Phase::Receiving) {
            return;
        }
        if let Some(at) = self.complete_at {
            if self.started.iter().any(|s| !s)
                && now.saturating_duration_since(at) >= self.limits.complete_grace
            {
                return self.fail(ClientFailure::Protocol(
                    "Complete before every file was sent".into(),
                ));
            }
        }
        if self.phase == Phase::Requested
            && now.saturating_duration_since(self.requested_at) >= self.limits.prepare
        {
            return self.fail(ClientFailure::Unprepared(self.limits.prepare));
        }
        if now.saturating_duration_since(self.last_progress) >= self.idle_limit() {
            let failure = if self.closed {
                ClientFailure::ConnectionClosed
            } else {
                ClientFailure::Idle(self.limits.idle)
            };
            self.fail(failure);
        }
    }

    /// The commit finished: `Ok` tells the server `Done`, `Err` carries the reason of the
    /// `Abort` it gets instead.
    pub fn handle_committed(&mut self, outcome: Result<(), String>) {
        if self.phase != Phase::Committing {
            return;
        }
        self.phase = Phase::Ended;
        self.said_goodbye = true;
        let frame = match outcome {
            Ok(()) => ControlFrame::Done,
            Err(reason) => ControlFrame::Abort { reason },
        };
        self.actions.push_back(ClientAction::Send(frame));
        self.actions.push_back(ClientAction::FinishSend);
    }

    /// Ends the transfer from this side (a failure the driver found: a bad file, a deadline, a
    /// cancel, or a [`ClientAction::Fail`] it has cleaned up after): the server gets `Abort`.
    /// Nothing is sent once `Done` or `Abort` was.
    pub fn abort(&mut self, reason: String) {
        if self.phase == Phase::Committing {
            return self.handle_committed(Err(reason));
        }
        self.goodbye(ControlFrame::Abort { reason })
    }

    /// Ends the transfer from this side keeping what arrived, to resume it later (a stall, a
    /// lost path): the server gets `Suspend` and keeps the snapshot for its resume window.
    /// During a commit this is an [`Self::abort`]: a commit that failed is not resumed.
    pub fn suspend(&mut self, reason: String) {
        if self.phase == Phase::Committing {
            return self.handle_committed(Err(reason));
        }
        self.goodbye(ControlFrame::Suspend { reason })
    }

    fn goodbye(&mut self, frame: ControlFrame) {
        if self.said_goodbye {
            return;
        }
        self.phase = Phase::Ended;
        self.said_goodbye = true;
        self.actions.clear();
        self.actions.push_back(ClientAction::Send(frame));
        self.actions.push_back(ClientAction::FinishSend);
    }

    fn fail(&mut self, failure: ClientFailure) {
        if self.phase == Phase::Ended {
            return;
        }
        self.phase = Phase::Ended;
        // Whatever was asked before the failure is moot: no more files to receive, no commit.
        self.actions.clear();
        self.actions.push_back(ClientAction::Fail(failure));
    }

    fn check_finished(&mut self) {
        if self.phase != Phase::Receiving
            || self.complete_at.is_none()
            || self.validated != self.files.len()
        {
            return;
        }
        // Set with the manifest: the phase is past `Accept`.
        let meta = self.meta.clone().unwrap_or_default();
        self.phase = Phase::Committing;
        self.actions.push_back(ClientAction::Commit(meta));
    }
}
