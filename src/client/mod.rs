//! The fetching side: try peers one by one, receive, validate, commit.
//!
//! A [`Fetcher`] owns one QUIC endpoint and keeps one connection per peer, reused by every
//! partition fetched from it. A connection's file streams are routed to their transfer by the
//! transfer id in each stream's header. One attempt: send `Request`, read `Accept`/`Reject`,
//! receive files into a temp dir (digest while writing), read `Metadata` and `Complete`, then
//! [`commit::commit`]. Any failure deletes the temp dir — after every file task has ended, so
//! no handle is open and no byte lands after the cleanup — and the loop moves on as
//! [`AttemptError::next_step`] says.

pub(crate) mod attempts;
pub mod commit;
pub mod connectivity;
pub mod error;
pub(crate) mod receive;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::mpsc;

use crate::budget::{BudgetLease, BufferBudget, Direction};
use crate::checksum::ChecksumAlgo;
use crate::lock::unpoisoned as lock;
use crate::pacing::RateLimiter;
use crate::partition::{PartitionId, PartitionMeta, TableFormat};
use crate::peers::{self, Peer};
use crate::protocol::{
    codes, names, ControlFrame, FileEntry, FileHeader, Request, PROTOCOL_VERSION,
};
use crate::tls::{self, Identity};
use crate::transport::{self, TransportTuning};
use crate::wire::{write_frame, FrameReader};

pub use commit::{Receipt, RECEIPT_FILE};
pub use error::{AttemptError, Fallback, FetchError, NextStep, SetupError};

/// Largest control frame a client accepts (a manifest or metadata): Venice's 100 MB.
pub const MAX_CONTROL_FRAME: usize = 100 * 1024 * 1024;
/// Largest file-stream header.
const MAX_HEADER_FRAME: usize = 1024;
/// Makes temp dir names unique across every fetcher of the process.
static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);
/// How long file streams may trail `Complete` (routing only; their bytes are acknowledged).
const COMPLETE_GRACE: Duration = Duration::from_secs(2);
/// How long a transfer may sit without progress once its connection is closed.
const CLOSED_GRACE: Duration = Duration::from_secs(1);
/// Most files a manifest may list.
const MAX_FILES: usize = 1_000_000;

/// Knobs of the fetching side.
#[derive(Clone, Debug)]
pub struct FetchConfig {
    /// This node's certificate, key and trusted CA.
    pub identity: Identity,
    /// QUIC knobs.
    pub tuning: TransportTuning,
    /// Local UDP address (port 0 picks one).
    pub bind: SocketAddr,
    /// Table format this node opens.
    pub table_format: TableFormat,
    /// Digest asked for in manifests.
    pub checksum: ChecksumAlgo,
    /// Connect + handshake timeout (10 s).
    pub connect_timeout: Duration,
    /// Give up on a peer after this long without a byte (60 s).
    pub idle_timeout: Duration,
    /// Give up on a peer after this long for one partition (20 min).
    pub partition_timeout: Duration,
    /// Shuffle peers before trying them (on by default; tests turn it off for a fixed order).
    pub shuffle: bool,
    /// Read-rate limit shared by every transfer of this process (unlimited by default).
    pub read_limiter: Arc<RateLimiter>,
    /// Partitions received at once (20); further fetches wait their turn, so a node
    /// recovering hundreds of partitions neither opens hundreds of temp dirs nor asks every
    /// peer at once.
    pub max_partitions: usize,
    /// Handshakes of the connectivity check running at once (16).
    pub check_concurrency: usize,
    /// Longest the whole connectivity check may take (60 s); peers not checked by then count
    /// as unreachable for this fetch.
    pub check_timeout: Duration,
    /// How long a connectivity verdict (good or bad) is trusted (30 s).
    pub check_freshness: Duration,
    /// Most bytes all partitions this fetcher receives at once may hold unread (default
    /// 256 MiB): the receive windows quinn grants plus the receive buffers. Each connection's
    /// window follows its path within that (`budget`).
    pub max_recv_buffer: u64,
}

impl FetchConfig {
    /// Defaults around an identity.
    pub fn new(identity: Identity) -> Self {
        Self {
            identity,
            tuning: TransportTuning::default(),
            bind: SocketAddr::from(([0, 0, 0, 0], 0)),
            table_format: TableFormat::Block,
            checksum: ChecksumAlgo::Md5,
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            partition_timeout: Duration::from_secs(20 * 60),
            shuffle: true,
            read_limiter: RateLimiter::new(crate::pacing::DEFAULT_RATE),
            max_partitions: 20,
            check_concurrency: 16,
            check_timeout: Duration::from_secs(60),
            check_freshness: Duration::from_secs(30),
            max_recv_buffer: crate::budget::DEFAULT_CAP,
        }
    }
}

/// The outcome of one attempt at one peer.
#[derive(Clone, Debug, Serialize)]
pub struct Attempt {
    /// The peer.
    pub peer: String,
    /// `ok` or the error label.
    pub outcome: String,
    /// The error, when it failed.
    pub error: Option<String>,
    /// What the loop did next.
    pub next_step: Option<NextStep>,
    /// Payload bytes received in this attempt.
    pub bytes: u64,
    /// Wall time of the attempt.
    pub seconds: f64,
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

/// Live progress of a fetch, and its cancel switch: poll it from another task for a progress
/// bar; call [`Progress::cancel`] to stop the fetch with a full cleanup (dropping the fetch
/// future also cancels, but cannot wait for file handles to close).
#[derive(Debug, Default)]
pub struct Progress {
    /// Bytes of the current attempt's manifest.
    pub total: AtomicU64,
    /// Bytes received in the current attempt.
    pub received: Arc<AtomicU64>,
    /// Attempts started so far.
    pub attempts: AtomicU64,
    cancelled: std::sync::atomic::AtomicBool,
    cancel_notify: tokio::sync::Notify,
}

impl Progress {
    /// Asks the fetch to stop: the attempt in flight cleans up and the fetch ends with
    /// [`AttemptError::Cancelled`] (no Kafka fallback).
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        self.cancel_notify.notify_waiters();
    }

    /// True once [`Self::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    pub(crate) async fn cancelled(&self) {
        loop {
            let notified = self.cancel_notify.notified();
            if self.is_cancelled() {
                return;
            }
            notified.await;
        }
    }
}

type Route = mpsc::UnboundedSender<(FileHeader, quinn::RecvStream)>;
type ConnSlot = Arc<tokio::sync::Mutex<Option<Arc<PeerConn>>>>;

/// One QUIC connection to a peer, plus the table routing its file streams to transfers.
struct PeerConn {
    conn: quinn::Connection,
    routes: Arc<Mutex<HashMap<u64, Route>>>,
}

impl PeerConn {
    fn new(conn: quinn::Connection) -> Arc<Self> {
        let routes: Arc<Mutex<HashMap<u64, Route>>> = Arc::default();
        tokio::spawn(dispatch(conn.clone(), routes.clone()));
        Arc::new(Self { conn, routes })
    }
}

/// Accepts the server's file streams and hands each to its transfer.
async fn dispatch(conn: quinn::Connection, routes: Arc<Mutex<HashMap<u64, Route>>>) {
    while let Ok(stream) = conn.accept_uni().await {
        let routes = routes.clone();
        tokio::spawn(async move {
            let mut reader = FrameReader::new(stream, MAX_HEADER_FRAME);
            let header =
                tokio::time::timeout(Duration::from_secs(30), reader.next_frame::<FileHeader>());
            let header = match header.await {
                Ok(Ok(Some(h))) => h,
                _ => {
                    let _ = reader.recv.stop(codes::PROTOCOL.into());
                    return;
                }
            };
            let route = lock(&routes).get(&header.transfer_id).cloned();
            match route {
                Some(tx) => {
                    if let Err(mpsc::error::SendError((_, mut s))) = tx.send((header, reader.recv))
                    {
                        let _ = s.stop(codes::ABORTED.into());
                    }
                }
                None => {
                    let _ = reader.recv.stop(codes::ABORTED.into());
                }
            }
        });
    }
}

/// Removes a transfer's route when the attempt ends, however it ends.
struct RouteGuard {
    routes: Arc<Mutex<HashMap<u64, Route>>>,
    id: u64,
}

impl Drop for RouteGuard {
    fn drop(&mut self) {
        lock(&self.routes).remove(&self.id);
    }
}

/// Counters of a [`Fetcher`], for metrics.
#[derive(Debug, Default)]
pub struct FetchStats {
    /// File payload bytes received, in every attempt.
    pub bytes_received: AtomicU64,
    /// Fetches that ended with the partition in place.
    pub fetched: AtomicU64,
    /// Fetches that ended without it.
    pub failed: AtomicU64,
    /// Attempts that failed (each moved on to the next peer or gave up).
    pub attempts_failed: AtomicU64,
}

/// Fetches partitions from peers. Cheap to share behind an `Arc`; one per process is typical.
pub struct Fetcher {
    endpoint: quinn::Endpoint,
    client_cfg: quinn::ClientConfig,
    cfg: FetchConfig,
    /// One slot per peer; each slot has its own lock so a slow handshake with one peer never
    /// delays fetches from another.
    conns: Mutex<HashMap<(SocketAddr, String), ConnSlot>>,
    next_transfer: AtomicU64,
    /// Control streams whose last frame (`Done`/`Abort`) may not be delivered yet: closing
    /// the endpoint waits for them (bounded), or the server would never learn the outcome.
    lingering: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// One permit per partition being received (`max_partitions`).
    partitions: Arc<tokio::sync::Semaphore>,
    /// Recent handshake verdicts per peer.
    connectivity: connectivity::ConnectivityCache,
    stats: Arc<FetchStats>,
    /// Receive windows and buffers of every transfer, bounded together.
    budget: Arc<BufferBudget>,
}

impl Fetcher {
    /// Binds the client endpoint.
    pub fn new(cfg: FetchConfig) -> Result<Self, SetupError> {
        let rustls_cfg = tls::client_config(&cfg.identity)?;
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(rustls_cfg)
            .map_err(|e| tls::TlsError::Verifier(e.to_string()))?;
        let mut client_cfg = quinn::ClientConfig::new(Arc::new(crypto));
        client_cfg.transport_config(Arc::new(
            cfg.tuning.transport_config(transport::Side::Client),
        ));
        let endpoint =
            transport::endpoint(cfg.bind, &cfg.tuning, None).map_err(SetupError::Bind)?;
        let cfg_partitions = cfg.max_partitions.max(1);
        let freshness = cfg.check_freshness;
        let budget = BufferBudget::new(
            Direction::Receive,
            cfg.max_recv_buffer,
            transport::MIN_RECV_WINDOW,
            cfg.tuning.connection_window,
            transport::CONTROL_WINDOW,
        );
        Ok(Self {
            endpoint,
            client_cfg,
            cfg,
            conns: Mutex::new(HashMap::new()),
            next_transfer: AtomicU64::new(1),
            lingering: Mutex::default(),
            partitions: Arc::new(tokio::sync::Semaphore::new(cfg_partitions)),
            connectivity: connectivity::ConnectivityCache::new(freshness),
            stats: Arc::default(),
            budget,
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &FetchConfig {
        &self.cfg
    }

    /// Local UDP address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Moves the endpoint to a new UDP socket bound to `addr`; live connections migrate to it
    /// (QUIC connection migration), transfers in flight carry on.
    pub fn rebind(&self, addr: SocketAddr) -> std::io::Result<()> {
        let socket = transport::bind_udp(addr, self.cfg.tuning.socket_buffer)?;
        self.endpoint.rebind(socket)
    }

    /// Closes every connection.
    pub async fn close(&self) {
        let lingering = std::mem::take(&mut *lock(&self.lingering));
        for task in lingering {
            let _ = task.await;
        }
        self.endpoint.close(codes::OK.into(), b"bye");
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
    }

    async fn connection(&self, peer: &Peer) -> Result<Arc<PeerConn>, AttemptError> {
        let key = (peer.addr, peer.server_name.clone());
        let slot = lock(&self.conns).entry(key).or_default().clone();
        let mut slot = slot.lock().await;
        if let Some(c) = slot.as_ref() {
            if c.conn.close_reason().is_none() {
                return Ok(c.clone());
            }
        }
        *slot = None;
        let connecting = self
            .endpoint
            .connect_with(self.client_cfg.clone(), peer.addr, &peer.server_name)
            .map_err(|e| AttemptError::Connect(e.to_string()))?;
        let conn = match tokio::time::timeout(self.cfg.connect_timeout, connecting).await {
            Err(_) => return Err(AttemptError::ConnectTimeout),
            Ok(Err(e)) => return Err(AttemptError::Connect(e.to_string())),
            Ok(Ok(c)) => c,
        };
        let pc = PeerConn::new(conn);
        *slot = Some(pc.clone());
        Ok(pc)
    }

    /// The connectivity check: a verdict per peer (in `peers` order), from the cache when
    /// fresh, else from a QUIC handshake — all peers at once, `check_concurrency` at a time,
    /// `check_timeout` in all. A good handshake leaves its connection warm for the transfer.
    pub async fn check_peers(&self, peers: &[Peer]) -> Vec<Result<(), AttemptError>> {
        let now = Instant::now();
        self.connectivity.purge(now);
        let verdicts: Vec<Mutex<Option<Result<(), AttemptError>>>> = peers
            .iter()
            .map(|p| Mutex::new(self.connectivity.get(p, now)))
            .collect();
        let limit = tokio::sync::Semaphore::new(self.cfg.check_concurrency.max(1));
        let checks = peers
            .iter()
            .enumerate()
            .filter(|(i, _)| lock(&verdicts[*i]).is_none())
            .map(|(i, p)| {
                let (limit, verdicts) = (&limit, &verdicts);
                async move {
                    let _permit = limit.acquire().await;
                    let verdict = self.connection(p).await.map(|_| ());
                    self.connectivity.record(p, verdict.clone(), Instant::now());
                    *lock(&verdicts[i]) = Some(verdict);
                }
            });
        let all = futures_util::future::join_all(checks);
        let _ = tokio::time::timeout(self.cfg.check_timeout, all).await;
        verdicts
            .into_iter()
            .map(|v| {
                v.into_inner()
                    .unwrap_or_else(|e| e.into_inner())
                    .unwrap_or(Err(AttemptError::ConnectTimeout))
            })
            .collect()
    }

    /// Live counters.
    pub fn stats(&self) -> Arc<FetchStats> {
        self.stats.clone()
    }

    /// The budget bounding what this fetcher's transfers hold unread, for metrics and tests.
    pub fn recv_budget(&self) -> &Arc<BufferBudget> {
        &self.budget
    }

    /// Peers with a cached connectivity verdict (for metrics).
    pub fn connectivity_cache_len(&self) -> usize {
        self.connectivity.len()
    }

    /// Fetches `id` into `<root>/<store>_v<version>/<partition>/` from the first of `peers`
    /// (shuffled) that can serve it.
    pub async fn fetch(
        &self,
        id: &PartitionId,
        peers: &[Peer],
        root: &Path,
    ) -> Result<FetchReport, FetchError> {
        self.fetch_with_progress(id, peers, root, &Progress::default())
            .await
    }

    /// [`Self::fetch`], reporting progress into `progress`.
    pub async fn fetch_with_progress(
        &self,
        id: &PartitionId,
        peers: &[Peer],
        root: &Path,
        progress: &Progress,
    ) -> Result<FetchReport, FetchError> {
        let target = attempts::check_target(id, root, peers)?;
        // Wait for a turn (a cancel while queued ends the fetch with nothing done).
        let _turn = tokio::select! {
            p = self.partitions.clone().acquire_owned() => p.ok(),
            _ = progress.cancelled() => {
                return Err(FetchError::GaveUp {
                    peer: String::new(),
                    error: AttemptError::Cancelled,
                    attempts: Vec::new(),
                })
            }
        };
        let parent = attempts::prepare_parent(id, root)?;
        let order = if self.cfg.shuffle {
            peers::shuffled(peers.to_vec())
        } else {
            peers.to_vec()
        };
        // Handshake with every candidate at once; known-dead peers then fail in no time.
        let verdicts = tokio::select! {
            v = self.check_peers(&order) => v,
            _ = progress.cancelled() => {
                return Err(FetchError::GaveUp {
                    peer: String::new(),
                    error: AttemptError::Cancelled,
                    attempts: Vec::new(),
                })
            }
        };
        let (parent, target_dir) = (&parent, &target);
        attempts::try_peers(
            id,
            target.clone(),
            order.into_iter().zip(verdicts),
            progress,
            &self.stats,
            |peer| async move {
                let span = tracing::info_span!(
                    "fetch",
                    store = %id.store,
                    version = id.version,
                    partition = id.partition,
                    peer = %peer
                );
                let deadline = tokio::time::Instant::now() + self.cfg.partition_timeout;
                let result = tracing::Instrument::instrument(
                    self.attempt(id, &peer, parent, target_dir, progress, deadline),
                    span,
                )
                .await;
                if let Err(e @ (AttemptError::Connect(_) | AttemptError::ConnectTimeout)) = &result
                {
                    self.connectivity
                        .record(&peer, Err(e.clone()), Instant::now());
                }
                result
            },
        )
        .await
    }

    /// Sends the request and reads the answer: `Accept` (with a checked manifest) or a typed
    /// rejection. `Preparing` heartbeats keep the wait alive while the server digests.
    async fn request(&self, id: &PartitionId, peer: &Peer) -> Result<Accepted, AttemptError> {
        let pc = self.connection(peer).await?;
        // From the request on, files may arrive: the connection's receive window follows its
        // path within the budget, and this transfer's receive buffers are reserved from it.
        let budget = self.budget.lease(&pc.conn, receive::RESERVED);
        let transfer_id = self.next_transfer.fetch_add(1, Ordering::Relaxed);
        let (tx, streams) = mpsc::unbounded_channel();
        lock(&pc.routes).insert(transfer_id, tx);
        let route = RouteGuard {
            routes: pc.routes.clone(),
            id: transfer_id,
        };
        let idle = self.cfg.idle_timeout;
        let (mut send, recv) = tokio::time::timeout(idle, pc.conn.open_bi())
            .await
            .map_err(|_| AttemptError::Idle(idle))?
            .map_err(|e| AttemptError::from_connection(&e))?;
        let mut control = FrameReader::new(recv, MAX_CONTROL_FRAME);
        write_frame(
            &mut send,
            &ControlFrame::Request(Request {
                version: PROTOCOL_VERSION,
                transfer_id,
                store: id.store.clone(),
                store_version: id.version,
                partition: id.partition,
                table_format: self.cfg.table_format,
                checksum: self.cfg.checksum,
            }),
        )
        .await
        .map_err(|e| AttemptError::from_wire(&e))?;

        let answer = loop {
            let frame = tokio::time::timeout(idle, control.next_frame::<ControlFrame>())
                .await
                .map_err(|_| AttemptError::Idle(idle))?
                .map_err(|e| AttemptError::from_wire(&e))?;
            if frame != Some(ControlFrame::Preparing) {
                break frame;
            }
        };
        let files = match answer {
            Some(ControlFrame::Accept(a)) => a.files,
            Some(ControlFrame::Reject(r)) => {
                return Err(AttemptError::Rejected {
                    reason: r.reason,
                    message: r.message,
                })
            }
            Some(other) => {
                return Err(AttemptError::Protocol(format!(
                    "expected Accept or Reject, got {other:?}"
                )))
            }
            None => return Err(AttemptError::Protocol("control stream ended".into())),
        };
        check_manifest(&files)?;
        Ok(Accepted {
            _budget: budget,
            _route: route,
            streams,
            send,
            control,
            files,
            conn: pc.conn.clone(),
        })
    }

    async fn attempt(
        &self,
        id: &PartitionId,
        peer: &Peer,
        parent: &Path,
        target: &Path,
        progress: &Progress,
        deadline: tokio::time::Instant,
    ) -> Result<(usize, PartitionMeta), AttemptError> {
        let limit = self.cfg.partition_timeout;
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
            mut send,
            mut control,
            files,
            conn,
        } = setup.await?;
        progress.total.store(
            files.iter().fold(0u64, |a, f| a.saturating_add(f.size)),
            Ordering::Relaxed,
        );

        let tmp = commit::TempDir::create(parent, id.partition, &temp_tag())?;
        let mut state = Receiving::new(
            files,
            self.cfg.checksum,
            progress.received.clone(),
            self.cfg.read_limiter.clone(),
        );
        let outcome = state
            .run(
                tmp.path(),
                &mut streams,
                &mut control,
                Limits {
                    idle: self.cfg.idle_timeout,
                    deadline,
                    partition_timeout: limit,
                    conn,
                },
                progress,
            )
            .await;
        // Every file task has ended here: no handle is open, no byte can land any more.
        let meta = match outcome {
            Ok(meta) => meta,
            Err(e) => {
                let _ = write_frame(
                    &mut send,
                    &ControlFrame::Abort {
                        reason: e.to_string(),
                    },
                )
                .await;
                let _ = send.finish();
                self.linger(send);
                tmp.remove();
                return Err(e);
            }
        };
        let files = state.files.len();
        let committed = attempts::commit_received(
            tmp,
            target,
            self.cfg.table_format,
            peer,
            files,
            state.bytes,
            meta.clone(),
        )
        .await;
        let done = match &committed {
            Ok(()) => ControlFrame::Done,
            Err(e) => ControlFrame::Abort {
                reason: e.to_string(),
            },
        };
        let _ = write_frame(&mut send, &done).await;
        let _ = send.finish();
        self.linger(send);
        committed?;
        Ok((files, meta))
    }
}

impl Fetcher {
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
}

/// A temp dir tag unique across every fetch of the process, and across processes.
pub(crate) fn temp_tag() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        TEMP_SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// What an accepted request leaves for the receive phase.
struct Accepted {
    /// Counts this transfer against the receive budget until the attempt ends.
    _budget: BudgetLease,
    /// Keeps this transfer's file streams routed here until the attempt ends.
    _route: RouteGuard,
    streams: mpsc::UnboundedReceiver<(FileHeader, quinn::RecvStream)>,
    send: quinn::SendStream,
    control: FrameReader,
    files: Vec<FileEntry>,
    /// The connection, to tell a closed one from a slow peer.
    conn: quinn::Connection,
}

/// Time limits of the receive phase.
struct Limits {
    idle: Duration,
    deadline: tokio::time::Instant,
    partition_timeout: Duration,
    conn: quinn::Connection,
}

/// A manifest a client will act on: safe unique names, a bounded count.
pub(crate) fn check_manifest(files: &[FileEntry]) -> Result<(), AttemptError> {
    if files.len() > MAX_FILES {
        return Err(AttemptError::Protocol(format!(
            "manifest lists {} files",
            files.len()
        )));
    }
    let mut seen = std::collections::HashSet::new();
    for f in files {
        names::validate_file_name(&f.name)
            .map_err(|e| AttemptError::Protocol(format!("manifest file name: {e}")))?;
        if f.name == RECEIPT_FILE {
            return Err(AttemptError::Protocol(format!(
                "manifest names {RECEIPT_FILE}"
            )));
        }
        if !seen.insert(f.name.as_str()) {
            return Err(AttemptError::Protocol(format!("{} listed twice", f.name)));
        }
    }
    if files
        .iter()
        .try_fold(0u64, |a, f| a.checked_add(f.size))
        .is_none()
    {
        return Err(AttemptError::Protocol("manifest sizes overflow".into()));
    }
    if !files.iter().any(|f| f.name == "CURRENT") {
        return Err(AttemptError::Protocol(
            "manifest has no CURRENT file".into(),
        ));
    }
    Ok(())
}

/// State of the receive phase of one attempt.
struct Receiving {
    files: Vec<FileEntry>,
    algo: ChecksumAlgo,
    progress: Arc<AtomicU64>,
    limiter: Arc<RateLimiter>,
    open: receive::OpenFiles,
    started: Vec<bool>,
    validated: usize,
    bytes: u64,
}

impl Receiving {
    fn new(
        files: Vec<FileEntry>,
        algo: ChecksumAlgo,
        progress: Arc<AtomicU64>,
        limiter: Arc<RateLimiter>,
    ) -> Self {
        let n = files.len();
        Self {
            files,
            algo,
            progress,
            limiter,
            open: receive::OpenFiles::default(),
            started: vec![false; n],
            validated: 0,
            bytes: 0,
        }
    }

    /// Receives every file and the closing frames; returns the metadata once every file has
    /// validated and `Complete` has arrived. Every spawned file task has ended when this
    /// returns, whatever the outcome.
    async fn run(
        &mut self,
        dir: &Path,
        streams: &mut mpsc::UnboundedReceiver<(FileHeader, quinn::RecvStream)>,
        control: &mut FrameReader,
        limits: Limits,
        progress: &Progress,
    ) -> Result<PartitionMeta, AttemptError> {
        let mut tasks = tokio::task::JoinSet::new();
        let result = tokio::select! {
            r = self.drive(dir, streams, control, limits.idle, &limits.conn, &mut tasks) => r,
            _ = tokio::time::sleep_until(limits.deadline) => {
                Err(AttemptError::PartitionTimeout(limits.partition_timeout))
            }
            _ = progress.cancelled() => Err(AttemptError::Cancelled),
        };
        // Cleanup steps 1 and 2 (flush, close), before anyone deletes the directory.
        attempts::end_file_tasks(&mut tasks, &self.open).await;
        result
    }

    async fn drive(
        &mut self,
        dir: &Path,
        streams: &mut mpsc::UnboundedReceiver<(FileHeader, quinn::RecvStream)>,
        control: &mut FrameReader,
        idle: Duration,
        conn: &quinn::Connection,
        tasks: &mut tokio::task::JoinSet<Result<u64, AttemptError>>,
    ) -> Result<PartitionMeta, AttemptError> {
        let mut meta: Option<PartitionMeta> = None;
        let mut complete = false;
        let mut complete_at = Instant::now();
        let mut control_open = true;
        let mut last_bytes = self.progress.load(Ordering::Relaxed);
        let mut last_progress = Instant::now();
        let mut tick = tokio::time::interval(
            Duration::from_millis(250)
                .min(idle)
                .max(Duration::from_millis(10)),
        );
        loop {
            if complete && self.validated == self.files.len() {
                return meta
                    .ok_or_else(|| AttemptError::Protocol("Complete without Metadata".into()));
            }
            tokio::select! {
                Some((header, stream)) = streams.recv() => {
                    let i = header.index as usize;
                    if i >= self.files.len() || self.started[i] {
                        return Err(AttemptError::Protocol(format!(
                            "file stream for index {i} not in the manifest or sent twice"
                        )));
                    }
                    self.started[i] = true;
                    let entry = self.files[i].clone();
                    let path = dir.join(&entry.name);
                    tasks.spawn(receive::receive_file(
                        stream,
                        path,
                        entry,
                        self.algo,
                        self.progress.clone(),
                        self.limiter.clone(),
                        self.open.clone(),
                    ));
                    last_progress = Instant::now();
                }
                Some(done) = tasks.join_next() => {
                    let bytes = done.map_err(|e| AttemptError::LocalIo(format!("file task: {e}")))??;
                    self.bytes += bytes;
                    self.validated += 1;
                    last_progress = Instant::now();
                }
                frame = control.next_frame::<ControlFrame>(), if control_open => {
                    last_progress = Instant::now();
                    match frame.map_err(|e| AttemptError::from_wire(&e))? {
                        Some(ControlFrame::Metadata(m)) if meta.is_none() && !complete => meta = Some(m),
                        Some(ControlFrame::Complete) if !complete => {
                            complete = true;
                            complete_at = Instant::now();
                        }
                        Some(other) => {
                            return Err(AttemptError::Protocol(format!("unexpected frame {other:?}")))
                        }
                        None => {
                            if !complete {
                                return Err(AttemptError::Protocol("control stream ended before Complete".into()));
                            }
                            control_open = false;
                        }
                    }
                }
                _ = tick.tick() => {
                    // The server sends Complete only after the client's QUIC stack has
                    // acknowledged every file byte, so every file stream is here already, give
                    // or take the routing of its header. One still missing is a lie.
                    if complete
                        && self.started.iter().any(|s| !s)
                        && complete_at.elapsed() >= COMPLETE_GRACE
                    {
                        return Err(AttemptError::Protocol(
                            "Complete before every file was sent".into(),
                        ));
                    }
                    let now_bytes = self.progress.load(Ordering::Relaxed);
                    if now_bytes != last_bytes {
                        last_bytes = now_bytes;
                        last_progress = Instant::now();
                    } else {
                        // A closed connection may still hold received bytes to drain, but
                        // nothing more will come: once they stop, say why at once instead of
                        // waiting out the idle timeout.
                        let closed = conn.close_reason();
                        let limit = match closed {
                            Some(_) => idle.min(CLOSED_GRACE),
                            None => idle,
                        };
                        if last_progress.elapsed() >= limit {
                            return Err(match closed {
                                Some(e) => AttemptError::from_connection(&e),
                                None => AttemptError::Idle(idle),
                            });
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, size: u64) -> FileEntry {
        FileEntry {
            name: name.into(),
            size,
            digest: vec![0; 16],
        }
    }

    #[test]
    fn manifests_with_path_tricks_or_lies_are_refused() {
        let ok = vec![entry("CURRENT", 16), entry("000001.sst", 10)];
        check_manifest(&ok).unwrap();
        for bad in [
            "../CURRENT",
            "/etc/passwd",
            "a/b",
            "..",
            ".hidden",
            RECEIPT_FILE,
        ] {
            let mut m = ok.clone();
            m.push(entry(bad, 1));
            assert!(check_manifest(&m).is_err(), "{bad:?} accepted");
        }
        let mut twice = ok.clone();
        twice.push(entry("000001.sst", 10));
        assert!(check_manifest(&twice).is_err());
        assert!(
            check_manifest(&[entry("000001.sst", 1)]).is_err(),
            "no CURRENT"
        );
        let huge = vec![entry("CURRENT", u64::MAX), entry("x.sst", 2)];
        assert!(check_manifest(&huge).is_err());
    }
}
