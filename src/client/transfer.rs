//! One attempt at one peer: the QUIC driver of [`ClientTransfer`].
//!
//! The machine holds the rules (what may arrive when, how long to wait); this driver opens the
//! control stream, feeds it frames, file streams, file outcomes and time, and carries out what
//! it asks: write a frame, receive a file into the temp dir (digest while writing), commit.
//! Any failure deletes the temp dir — after every file task has ended, so no handle is open
//! and no byte lands after the cleanup — and the server is told `Abort`.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use crate::budget::BudgetLease;
use crate::partition::{PartitionId, PartitionMeta};
use crate::peers::Peer;
use crate::protocol::transfer::{ClientAction, ClientFailure, ClientLimits, ClientTransfer};
use crate::protocol::{ControlFrame, Request, PROTOCOL_VERSION};
use crate::wire::{sleep_until, write_frame, FrameReader};

use super::pool::{FileStreams, RouteGuard};
use super::{attempts, commit, receive, AttemptError, Fetcher, Progress};

/// Largest control frame a client accepts (a manifest or metadata): Venice's 100 MB.
pub const MAX_CONTROL_FRAME: usize = 100 * 1024 * 1024;
/// How often received bytes are looked at, to tell a slow transfer from a stalled one.
const PROGRESS_TICK: Duration = Duration::from_millis(250);

/// A transfer's control stream and machine, with what keeps the transfer's resources held.
struct Control {
    machine: ClientTransfer,
    send: quinn::SendStream,
    reader: FrameReader,
    /// The connection, for its close reason.
    conn: quinn::Connection,
}

impl Control {
    /// Carries out the frames the machine wants sent; returns the first other action.
    async fn next_action(&mut self) -> Result<Option<ClientAction>, AttemptError> {
        while let Some(action) = self.machine.poll_action() {
            match action {
                ClientAction::Send(frame) => write_frame(&mut self.send, &frame)
                    .await
                    .map_err(|e| AttemptError::from_wire(&e))?,
                ClientAction::FinishSend => {
                    let _ = self.send.finish();
                }
                other => return Ok(Some(other)),
            }
        }
        Ok(None)
    }

    /// Feeds the machine the next control frame (or the end of the stream).
    fn feed(
        &mut self,
        frame: Result<Option<ControlFrame>, crate::wire::WireError>,
    ) -> Result<(), AttemptError> {
        let now = Instant::now();
        match frame.map_err(|e| AttemptError::from_wire(&e))? {
            Some(f) => self.machine.handle_frame(f, now),
            None => self.machine.handle_control_end(now),
        }
        Ok(())
    }

    fn failure(&self, f: ClientFailure) -> AttemptError {
        match f {
            ClientFailure::Rejected { reason, message } => {
                AttemptError::Rejected { reason, message }
            }
            ClientFailure::Protocol(m) => AttemptError::Protocol(m),
            ClientFailure::Idle(d) => AttemptError::Idle(d),
            ClientFailure::ConnectionClosed => match self.conn.close_reason() {
                Some(e) => AttemptError::from_connection(&e),
                None => AttemptError::PeerGone("connection closed".into()),
            },
        }
    }

    /// Sends what the machine still has to say (`Abort` or `Done`), then keeps the stream
    /// until the server has it, without holding up the caller.
    async fn goodbye(mut self, fetcher: &Fetcher) {
        let _ = self.next_action().await;
        fetcher.linger(self.send);
    }
}

/// What an accepted request leaves for the receive phase.
struct Accepted {
    /// Counts this transfer against the receive budget until the attempt ends.
    _budget: BudgetLease,
    /// Keeps this transfer's file streams routed here until the attempt ends.
    _route: RouteGuard,
    streams: FileStreams,
    control: Control,
}

impl Fetcher {
    /// One attempt: request, receive, validate, commit. Returns the files and the metadata.
    pub(super) async fn attempt(
        &self,
        id: &PartitionId,
        peer: &Peer,
        parent: &Path,
        target: &Path,
        progress: &Progress,
        deadline: tokio::time::Instant,
    ) -> Result<(usize, PartitionMeta), AttemptError> {
        let limit = self.cfg.policy.partition_timeout;
        // Until files arrive nothing is on disk: dropping the work on a deadline or a cancel is
        // a complete cleanup.
        let setup = async {
            tokio::select! {
                r = self.request(id, peer) => r,
                _ = tokio::time::sleep_until(deadline) => Err(AttemptError::PartitionTimeout(limit)),
                _ = progress.cancelled() => Err(AttemptError::Cancelled),
            }
        };
        let Accepted {
            _budget,
            _route,
            mut streams,
            mut control,
        } = setup.await?;
        let files = control.machine.files();
        progress.total.store(
            files.iter().fold(0u64, |a, f| a.saturating_add(f.size)),
            Ordering::Relaxed,
        );
        let tmp = commit::TempDir::create(parent, id.partition, &super::temp_tag())?;
        let mut rx = Receiving {
            dir: tmp.path(),
            progress: progress.received.clone(),
            fetcher: self,
            open: receive::OpenFiles::default(),
            tasks: JoinSet::new(),
        };
        let outcome = tokio::select! {
            r = rx.drive(&mut control, &mut streams) => r,
            _ = tokio::time::sleep_until(deadline) => Err(AttemptError::PartitionTimeout(limit)),
            _ = progress.cancelled() => Err(AttemptError::Cancelled),
        };
        // Cleanup steps 1 and 2 (flush, close), before anyone deletes the directory.
        attempts::end_file_tasks(&mut rx.tasks, &rx.open).await;
        drop(rx);
        // Every file task has ended here: no handle is open, no byte can land any more.
        let meta = match outcome {
            Ok(meta) => meta,
            Err(e) => {
                control.machine.abort(e.to_string());
                control.goodbye(self).await;
                tmp.remove();
                return Err(e);
            }
        };
        let files = control.machine.files().len();
        let committed = attempts::commit_received(
            tmp,
            target,
            self.cfg.policy.table_format,
            peer,
            files,
            control.machine.bytes(),
            meta.clone(),
        )
        .await;
        control
            .machine
            .handle_committed(committed.as_ref().map(|_| ()).map_err(|e| e.to_string()));
        control.goodbye(self).await;
        committed?;
        Ok((files, meta))
    }

    /// Sends the request and waits for the answer: `Accept` (with a checked manifest) or a
    /// typed rejection; `Preparing` heartbeats keep the wait alive while the server digests.
    async fn request(&self, id: &PartitionId, peer: &Peer) -> Result<Accepted, AttemptError> {
        let pc = self.pool.connection(peer).await?;
        // From the request on, files may arrive: the connection's receive window follows its
        // path within the budget, and this transfer's receive buffers are reserved from it.
        let budget = self.budget.lease(&pc.conn, receive::RESERVED);
        let transfer_id = self.next_transfer.fetch_add(1, Ordering::Relaxed);
        let (route, streams) = pc.route(transfer_id);
        let idle = self.cfg.policy.idle_timeout;
        let (send, recv) = tokio::time::timeout(idle, pc.conn.open_bi())
            .await
            .map_err(|_| AttemptError::Idle(idle))?
            .map_err(|e| AttemptError::from_connection(&e))?;
        let request = Request {
            version: PROTOCOL_VERSION,
            transfer_id,
            store: id.store.clone(),
            store_version: id.version,
            partition: id.partition,
            table_format: self.cfg.policy.table_format,
            checksum: self.cfg.policy.checksum,
        };
        let limits = ClientLimits {
            idle,
            ..ClientLimits::default()
        };
        let mut control = Control {
            machine: ClientTransfer::new(request, limits, Instant::now()),
            send,
            reader: FrameReader::new(recv, MAX_CONTROL_FRAME),
            conn: pc.conn.clone(),
        };
        loop {
            match control.next_action().await? {
                Some(ClientAction::Accepted) => break,
                Some(ClientAction::Fail(f)) => return Err(control.failure(f)),
                Some(other) => {
                    return Err(AttemptError::Protocol(format!(
                        "unexpected step {other:?} before Accept"
                    )))
                }
                None => {}
            }
            tokio::select! {
                frame = control.reader.next_frame::<ControlFrame>() => control.feed(frame)?,
                _ = sleep_until(control.machine.poll_timeout()) => {
                    control.machine.handle_timeout(Instant::now())
                }
            }
        }
        Ok(Accepted {
            _budget: budget,
            _route: route,
            streams,
            control,
        })
    }
}

/// The receive phase of one attempt: the file tasks and what they share.
struct Receiving<'a> {
    dir: &'a Path,
    progress: Arc<AtomicU64>,
    fetcher: &'a Fetcher,
    open: receive::OpenFiles,
    tasks: JoinSet<(u32, Result<u64, AttemptError>)>,
}

impl Receiving<'_> {
    /// Tells the machine when file bytes arrived since the last look.
    fn note_progress(&self, last: &mut u64, machine: &mut ClientTransfer) {
        let now = self.progress.load(Ordering::Relaxed);
        if now != *last {
            *last = now;
            machine.handle_file_progress(Instant::now());
        }
    }

    /// Receives every file and the closing frames; returns the metadata once the machine says
    /// commit. File tasks may still run when this returns: the caller ends them.
    async fn drive(
        &mut self,
        control: &mut Control,
        streams: &mut FileStreams,
    ) -> Result<PartitionMeta, AttemptError> {
        let mut pending: Option<quinn::RecvStream> = None;
        let mut closed = false;
        let mut last_bytes = self.progress.load(Ordering::Relaxed);
        let idle = self.fetcher.cfg.policy.idle_timeout;
        let mut tick =
            tokio::time::interval(PROGRESS_TICK.min(idle).max(Duration::from_millis(10)));
        loop {
            match control.next_action().await? {
                Some(ClientAction::ReceiveFile { index, entry }) => {
                    let stream = pending.take().ok_or_else(|| {
                        AttemptError::Protocol(format!("no stream for file {index}"))
                    })?;
                    let fut = receive::receive_file(
                        stream,
                        self.dir.join(&entry.name),
                        entry,
                        self.fetcher.cfg.policy.checksum,
                        self.progress.clone(),
                        self.fetcher.cfg.policy.read_limiter.clone(),
                        self.open.clone(),
                    );
                    self.tasks.spawn(async move { (index, fut.await) });
                    continue;
                }
                Some(ClientAction::Commit(meta)) => return Ok(meta),
                Some(ClientAction::Fail(f)) => return Err(control.failure(f)),
                Some(other) => {
                    return Err(AttemptError::Protocol(format!("unexpected step {other:?}")))
                }
                None => {}
            }
            // A stream the machine refused is dropped here (stopped by quinn).
            pending = None;
            tokio::select! {
                Some((header, stream)) = streams.recv() => {
                    pending = Some(stream);
                    control.machine.handle_file_stream(header, Instant::now());
                }
                Some(done) = self.tasks.join_next() => {
                    let (index, result) =
                        done.map_err(|e| AttemptError::LocalIo(format!("file task: {e}")))?;
                    control.machine.handle_file_done(index, result?, Instant::now());
                }
                frame = control.reader.next_frame::<ControlFrame>(), if control.machine.wants_control() => {
                    control.feed(frame)?;
                }
                _ = control.conn.closed(), if !closed => {
                    closed = true;
                    control.machine.handle_connection_closed();
                }
                _ = tick.tick() => {
                    self.note_progress(&mut last_bytes, &mut control.machine);
                }
                _ = sleep_until(control.machine.poll_timeout()) => {
                    // Bytes that arrived since the last tick count before the clock does.
                    self.note_progress(&mut last_bytes, &mut control.machine);
                    control.machine.handle_timeout(Instant::now());
                }
            }
        }
    }
}
