//! One attempt at one peer: the QUIC driver of [`ClientTransfer`].
//!
//! The machine holds the rules (what may arrive when, how long to wait); this driver opens the
//! control stream, feeds it frames, file streams, file outcomes and time, and carries out what
//! it asks: write a frame, receive a file into the temp dir (digest while writing), commit.
//! A failure ends every file task first, so no handle is open and no byte lands after the
//! cleanup. Then an attempt whose files the fetch machine keeps ([`keeps`]: interrupted,
//! too slow, cancelled, local trouble) keeps its temp dir and journal for a resume and tells
//! the server `Suspend`; any other failure deletes the temp dir and tells the server `Abort`.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use crate::control::budget::BudgetLease;
use crate::net::wire::{sleep_until, write_frame, FrameReader};
use crate::peers::Peer;
use crate::protocol::fetch::keeps;
use crate::protocol::transfer::{
    ClientAction, ClientFailure, ClientLimits, ClientTransfer, ResumeFrom, MAX_FILES_IN_FLIGHT,
};
use crate::protocol::{ControlFrame, Request, PROTOCOL_VERSION};
use crate::store::lock::unpoisoned as lock;
use crate::store::partition::{PartitionId, PartitionMeta};

use super::pool::Pool;
use super::pool::{FileStreams, RouteGuard};
use super::resume::{Journal, Kept};
use super::{attempts, commit, receive, space, AttemptError, FetchConfig, Progress};
use crate::control::budget::BufferBudget;
use crate::ingest::{self, Watermarks};

/// Largest control frame a client accepts (a manifest or metadata): 8 MiB. A manifest of a
/// real partition is far smaller (~160 files, ~10 KB, for 10 GB of 64 MB SSTs; ~3 MB for the
/// most files a manifest may list, [`crate::protocol::transfer::MAX_FILES`], under RocksDB's
/// own names), and a hostile server can make a client hold no more than this and its
/// decoding.
pub const MAX_CONTROL_FRAME: usize = 8 << 20;
/// How often received bytes are looked at, to tell a slow transfer from a stalled one.
const PROGRESS_TICK: Duration = Duration::from_millis(250);
/// Least time between two saves of the resume journal while files arrive.
const JOURNAL_EVERY: Duration = Duration::from_secs(1);

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
        frame: Result<Option<ControlFrame>, crate::net::wire::WireError>,
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
            ClientFailure::Unprepared(d) => AttemptError::Unprepared(d),
            ClientFailure::ConnectionClosed => match self.conn.close_reason() {
                Some(e) => AttemptError::from_connection(&e),
                None => AttemptError::PeerGone("connection closed".into()),
            },
        }
    }

    /// Sends what the machine still has to say (`Abort` or `Done`), then keeps the stream
    /// until the server has it, without holding up the caller.
    async fn goodbye(mut self, quic: &Quic) {
        let _ = self.next_action().await;
        quic.linger(self.send);
    }
}

/// Whether a partition at the snapshot's offset (`meta`, from `Accept`) can catch up from
/// `log`; `Ok` when the log is not known.
fn continues(meta: Option<&PartitionMeta>, log: Option<Watermarks>) -> Result<(), AttemptError> {
    let (Some(meta), Some(wm)) = (meta, log) else {
        return Ok(());
    };
    ingest::check_position(meta.offset, wm).map_err(|_| AttemptError::StaleSnapshot {
        offset: meta.offset,
        low: wm.low,
        high: wm.high,
    })
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

/// What an attempt must respect besides its peer and place.
#[derive(Clone, Copy, Debug)]
pub(super) struct Terms {
    /// Whether it may resume kept files (the fetch machine's choice for this attempt).
    pub(super) resume: bool,
    /// The log the partition will catch up from, when known: a snapshot it cannot continue
    /// is refused before its first byte.
    pub(super) log: Option<Watermarks>,
}

/// What every QUIC attempt of a fetcher shares: its configuration, the endpoint and its
/// connections, the receive budget, and the control streams still saying goodbye.
pub(super) struct Quic {
    pub(super) cfg: FetchConfig,
    pub(super) pool: Pool,
    pub(super) next_transfer: AtomicU64,
    /// Control streams whose last frame (`Done`/`Abort`) may not be delivered yet: closing
    /// the endpoint waits for them (bounded), or the server would never learn the outcome.
    pub(super) lingering: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Receive windows and buffers of every transfer, bounded together.
    pub(super) budget: Arc<BufferBudget>,
}

impl Quic {
    /// Keeps `send` until the peer has its last frame (it stops or reads the stream), for at
    /// most 2 s, without holding up the caller.
    fn linger(&self, send: quinn::SendStream) {
        let task = tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
        });
        let mut lingering = lock(&self.lingering);
        lingering.retain(|t| !t.is_finished());
        lingering.push(task);
    }

    /// One attempt: request (a resume of `kept` when it holds part of this peer's snapshot),
    /// receive, validate, commit. Returns the files and the metadata. An interrupted attempt
    /// leaves its files and journal in `kept` for the next one.
    pub(super) async fn attempt(
        &self,
        id: &PartitionId,
        peer: &Peer,
        Terms { resume, log }: Terms,
        (parent, target): (&Path, &Path),
        progress: &Progress,
        kept: &Mutex<Option<Kept>>,
    ) -> Result<(usize, PartitionMeta), AttemptError> {
        // Replicas compact on their own: another peer's files are never resumed — they go once
        // this peer accepts (until then they are still good for their own peer) — and the
        // fetch machine asks for a fresh start when the peer lost the snapshot.
        let held = {
            let mut slot = lock(kept);
            match slot.take() {
                Some(k) if k.journal.peer == peer.to_string() && resume && self.cfg.resume => {
                    Some(k)
                }
                Some(k) if k.journal.peer == peer.to_string() => {
                    progress
                        .resent
                        .fetch_add(k.bytes_on_disk(), Ordering::Relaxed);
                    k.dir.remove();
                    None
                }
                other => {
                    *slot = other;
                    None
                }
            }
        };
        let plan = held.as_ref().map(Kept::plan);
        // Until files arrive nothing new is on disk: dropping the work on a cancel is a
        // complete cleanup (what was kept goes back below).
        let setup = tokio::select! {
            r = self.request(id, peer, plan.as_ref().map(|p| p.from.clone())) => r,
            _ = progress.cancelled() => Err(AttemptError::Cancelled),
        };
        let Accepted {
            _budget,
            _route,
            mut streams,
            mut control,
        } = match setup {
            Ok(accepted) => {
                // Another peer's files are of no use from here on.
                if let Some(k) = lock(kept).take() {
                    progress
                        .resent
                        .fetch_add(k.bytes_on_disk(), Ordering::Relaxed);
                    k.dir.remove();
                }
                accepted
            }
            Err(e) => {
                // Nothing was received this time: what was kept stays good, unless the peer
                // no longer has its snapshot or the failure disproves it.
                match held {
                    Some(k) if keeps(e.outcome()) => *lock(kept) = Some(k),
                    Some(k) => {
                        progress
                            .resent
                            .fetch_add(k.bytes_on_disk(), Ordering::Relaxed);
                        k.dir.remove();
                    }
                    None => {}
                }
                return Err(e);
            }
        };
        // A snapshot the log cannot continue is of no use, however good its files: refused
        // before its first byte (the rule is catch-up's own: what it would refuse is refused
        // here).
        if let Err(e) = continues(control.machine.meta(), log) {
            if let Some(k) = held {
                k.dir.remove();
            }
            control.machine.abort(e.to_string());
            control.goodbye(self).await;
            return Err(e);
        }
        // Counted once the peer agreed to resume: only then are these bytes not sent again.
        if let Some(p) = &plan {
            progress.resumed.store(p.held, Ordering::Relaxed);
        }
        let files = control.machine.files();
        let total = files.iter().fold(0u64, |a, f| a.saturating_add(f.size));
        progress.total.store(total, Ordering::Relaxed);
        // Before the first byte: the rest of the partition must fit, with headroom.
        let needed = total.saturating_sub(plan.as_ref().map_or(0, |p| p.held));
        if let Err(e) = space::check(parent, needed, total) {
            if let Some(k) = held {
                // What is held stays for a resume once space is freed.
                *lock(kept) = Some(k);
            }
            control.machine.suspend(e.to_string());
            control.goodbye(self).await;
            return Err(e);
        }
        let (tmp, mut journal) = match held {
            Some(k) => (k.dir, k.journal),
            None => {
                let tmp = commit::TempDir::create(parent, id.partition)?;
                let mut journal = Journal::new(
                    id,
                    peer.to_string(),
                    control.machine.snapshot().unwrap_or_default(),
                    self.cfg.policy.checksum,
                    self.cfg.policy.table_format,
                    files.to_vec(),
                );
                if self.cfg.resume {
                    journal.save(tmp.path()).map_err(AttemptError::local)?;
                }
                (tmp, journal)
            }
        };
        let mut rx = Receiving {
            dir: tmp.path(),
            peer,
            progress: progress.received.clone(),
            first_byte: progress.first_byte.clone(),
            fetcher: self,
            open: receive::OpenFiles::default(),
            tasks: JoinSet::new(),
            waiting: Default::default(),
            journal: &mut journal,
            saved: Instant::now(),
            dirty: false,
        };
        let outcome = tokio::select! {
            r = rx.drive(&mut control, &mut streams) => r,
            e = attempts::too_slow(&self.cfg.policy, &progress.received) => Err(e),
            _ = progress.cancelled() => Err(AttemptError::Cancelled),
        };
        // Cleanup steps 1 and 2 (flush, close), before anyone deletes the directory.
        attempts::end_file_tasks(&mut rx.tasks, &rx.open).await;
        drop(rx);
        // Every file task has ended here: no handle is open, no byte can land any more.
        let meta = match outcome {
            Ok(meta) => meta,
            Err(e) => {
                let partial = plan.map(|p| p.partial).unwrap_or_default();
                match self.keep(tmp, journal, &e, &partial) {
                    Some(k) => {
                        *lock(kept) = Some(k);
                        control.machine.suspend(e.to_string());
                    }
                    None => control.machine.abort(e.to_string()),
                }
                control.goodbye(self).await;
                return Err(e);
            }
        };
        let files = control.machine.files();
        let total = files.iter().fold(0u64, |a, f| a.saturating_add(f.size));
        let files = files.len();
        let committed = attempts::commit_received(
            tmp,
            target,
            self.cfg.policy.table_format,
            peer,
            files,
            total,
            meta.clone(),
            progress,
        )
        .await;
        control
            .machine
            .handle_committed(committed.as_ref().map(|_| ()).map_err(|e| e.to_string()));
        control.goodbye(self).await;
        committed?;
        Ok((files, meta))
    }

    /// What an attempt that failed with `e` leaves for the next one: its temp dir and journal
    /// when the fetch machine keeps them ([`keeps`]), minus a resumed file whose held prefix failed
    /// its digest (that file starts over); nothing (the dir is deleted) when resume is off or
    /// what arrived is not to be trusted.
    fn keep(
        &self,
        tmp: commit::TempDir,
        mut journal: Journal,
        e: &AttemptError,
        partial: &std::collections::BTreeSet<u32>,
    ) -> Option<Kept> {
        if !self.cfg.resume {
            tmp.remove();
            return None;
        }
        let bad_prefix = match e {
            AttemptError::ChecksumMismatch { file } | AttemptError::SizeMismatch { file, .. } => {
                journal
                    .manifest
                    .iter()
                    .position(|f| &f.name == file)
                    .filter(|i| partial.contains(&(*i as u32)))
            }
            _ => None,
        };
        if let Some(i) = bad_prefix {
            tracing::warn!(file = %journal.manifest[i].name, "a resumed file failed its digest; fetching it again");
            journal.validated.remove(&(i as u32));
            if std::fs::remove_file(tmp.path().join(&journal.manifest[i].name)).is_err() {
                tmp.remove();
                return None;
            }
        } else if !keeps(e.outcome()) {
            tmp.remove();
            return None;
        }
        match journal.save(tmp.path()) {
            Ok(()) => Some(Kept { dir: tmp, journal }),
            // An older journal on disk (saved at Accept and every second since) still
            // describes this transfer: files it does not list as validated are read back and
            // digested on resume like any partial file, so keeping it is safe — and on a full
            // disk, where this save fails, it is what lets the fetch resume once space is
            // freed.
            Err(err) if Journal::load(tmp.path()).is_some() => {
                tracing::warn!(error = %err, "could not update the resume journal; keeping the last one saved");
                Some(Kept { dir: tmp, journal })
            }
            Err(err) => {
                tracing::warn!(error = %err, "could not write the resume journal; files deleted");
                tmp.remove();
                None
            }
        }
    }

    /// Sends the request and waits for the answer: `Accept` (with a checked manifest) or a
    /// typed rejection; `Preparing` heartbeats keep the wait alive while the server digests.
    async fn request(
        &self,
        id: &PartitionId,
        peer: &Peer,
        resume: Option<ResumeFrom>,
    ) -> Result<Accepted, AttemptError> {
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
            resume: None,
        };
        let limits = ClientLimits {
            idle,
            ..ClientLimits::default()
        };
        let machine = match resume {
            Some(from) => ClientTransfer::resume(request, from, limits, Instant::now()),
            None => ClientTransfer::new(request, limits, Instant::now()),
        };
        let mut control = Control {
            machine,
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
                        "unexpected step {} before Accept",
                        other.name()
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
    peer: &'a Peer,
    progress: Arc<AtomicU64>,
    first_byte: super::FirstByte,
    fetcher: &'a Quic,
    open: receive::OpenFiles,
    tasks: JoinSet<(u32, Result<u64, AttemptError>)>,
    /// File streams handed out by the machine, not yet received ([`Self::start_waiting`]).
    waiting: std::collections::VecDeque<(u32, crate::protocol::FileEntry, u64, quinn::RecvStream)>,
    /// Which files validated, saved now and then so a killed process loses little.
    journal: &'a mut Journal,
    saved: Instant,
    dirty: bool,
}

impl Receiving<'_> {
    /// Saves the journal if files validated since the last save, at most once a second: a
    /// file not yet journaled is only read back, not sent again, after a crash.
    fn save_journal(&mut self) {
        if !self.dirty || !self.fetcher.cfg.resume || self.saved.elapsed() < JOURNAL_EVERY {
            return;
        }
        if let Err(e) = self.journal.save(self.dir) {
            tracing::warn!(error = %e, "could not save the resume journal");
        }
        self.saved = Instant::now();
        self.dirty = false;
    }

    /// Starts receiving waiting streams, oldest first, while fewer than
    /// [`MAX_FILES_IN_FLIGHT`] files are being received. Oldest first keeps an honest server
    /// from ever stalling: the streams it has not finished sending are its newest, at most its
    /// own files in flight, which is no more than this limit.
    fn start_waiting(&mut self) {
        while self.tasks.len() < MAX_FILES_IN_FLIGHT {
            let Some((index, entry, offset, stream)) = self.waiting.pop_front() else {
                return;
            };
            let fut = receive::receive_file(
                stream,
                self.dir.join(&entry.name),
                entry,
                offset,
                receive::Landing::new(
                    &self.fetcher.cfg.policy,
                    self.peer,
                    self.progress.clone(),
                    self.open.clone(),
                ),
            );
            self.tasks.spawn(async move { (index, fut.await) });
        }
    }

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
                Some(ClientAction::ReceiveFile {
                    index,
                    entry,
                    offset,
                }) => {
                    let stream = pending.take().ok_or_else(|| {
                        AttemptError::Protocol(format!("no stream for file {index}"))
                    })?;
                    // Beyond the files a transfer receives at once, a stream waits unread:
                    // a server opening streams by the hundred costs no buffer and no open
                    // file, and one keeping to the limit never stalls (`start_waiting`).
                    self.waiting.push_back((index, entry, offset, stream));
                    self.start_waiting();
                    continue;
                }
                Some(ClientAction::Commit(meta)) => {
                    let stats = control.conn.stats();
                    // Datagrams per receive call (GRO) and the path the data came over.
                    tracing::info!(
                        rtt_ms = stats.path.rtt.as_secs_f64() * 1e3,
                        udp_rx_datagrams = stats.udp_rx.datagrams,
                        udp_rx_calls = stats.udp_rx.ios,
                        udp_tx_datagrams = stats.udp_tx.datagrams,
                        udp_tx_calls = stats.udp_tx.ios,
                        "transfer received"
                    );
                    return Ok(meta);
                }
                Some(ClientAction::Fail(f)) => return Err(control.failure(f)),
                Some(other) => {
                    return Err(AttemptError::Protocol(format!(
                        "unexpected step {}",
                        other.name()
                    )))
                }
                None => {}
            }
            // A stream the machine refused is dropped here (stopped by quinn).
            pending = None;
            tokio::select! {
                Some((header, stream)) = streams.recv() => {
                    // A file stream's header comes with its first bytes.
                    self.first_byte.mark();
                    pending = Some(stream);
                    control.machine.handle_file_stream(header, Instant::now());
                }
                Some(done) = self.tasks.join_next() => {
                    let (index, result) =
                        done.map_err(|e| AttemptError::LocalIo(format!("file task: {e}")))?;
                    control.machine.handle_file_done(index, result?, Instant::now());
                    self.journal.validated.insert(index);
                    self.dirty = true;
                    self.start_waiting();
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
                    self.save_journal();
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
