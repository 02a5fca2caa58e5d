//! The serving peer: accepts QUIC connections, answers requests, streams snapshot files.
//!
//! Each control stream is one partition transfer: read and validate the `Request`, lease a
//! snapshot, send `Accept` with the cached digests, push every file on its own stream (a bounded
//! number at once), wait until the client has acknowledged every byte, then send `Metadata`
//! and `Complete` and wait for `Done`/`Abort` before releasing the snapshot. Anything a client
//! sends that is malformed gets a typed `Reject` and that stream is closed; the connection and
//! every other client carry on (invariant 5).

use std::collections::HashSet;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::sync::{watch, Semaphore};

use crate::admission::{PerIp, PerIpLimit};
use crate::budget::{BufferBudget, Direction};
use crate::lock::unpoisoned as lock;
use crate::pacing::RateLimiter;
use crate::partition::{PartitionId, TableFormat};
use crate::protocol::codec::peek_request_version;
use crate::protocol::{
    codes, names, Accept, ControlFrame, DecodeError, FileEntry, FileHeader, Reject, RejectReason,
    Request, PROTOCOL_VERSION,
};
use crate::snapshot::{PartitionSource, SnapshotConfig, SnapshotLease, SnapshotManager};
use crate::tls::{self, AllowList, Identity};
use crate::transport::{self, TransportTuning};
use crate::wire::{write_frame, FrameReader, WireError};

/// Largest request frame a server reads: a request is a few dozen bytes.
pub const MAX_REQUEST_FRAME: usize = 64 * 1024;

/// Everything a server needs.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// UDP address to listen on.
    pub listen: SocketAddr,
    /// This server's certificate, key and trusted CA.
    pub identity: Identity,
    /// Clients allowed to fetch.
    pub allow: AllowList,
    /// Table format of every partition served here.
    pub table_format: TableFormat,
    /// Snapshot knobs.
    pub snapshots: SnapshotConfig,
    /// QUIC knobs.
    pub tuning: TransportTuning,
    /// Files of one transfer in flight at once (default 8).
    pub files_in_flight: usize,
    /// Longest a transfer may take on the server side (60 min).
    pub partition_timeout: Duration,
    /// Longest a client may take to send its request once the stream is open (10 s).
    pub request_timeout: Duration,
    /// Write-rate limit shared by every transfer of this process (unlimited by default).
    pub write_limiter: Arc<RateLimiter>,
    /// Give up on a client that reads nothing, or does not answer `Complete`, for this long
    /// (60 s), so a stalled client cannot hold a snapshot slot for the whole partition timeout.
    pub idle_timeout: Duration,
    /// Admission before authentication: connections held at once, handshakes included
    /// (default 1024); more are refused before any cryptography.
    pub max_connections: usize,
    /// Handshakes in progress at once (default 64); more are refused.
    pub max_handshakes: usize,
    /// Handshakes in progress at once from one IP address (default 8): one flooding host
    /// cannot take every handshake slot from the others.
    pub max_handshakes_per_ip: usize,
    /// Past this many handshakes in progress (default 16), a client must first prove it
    /// owns its address (a QUIC Retry round trip), so a spoofed-source flood costs the
    /// server no handshake state.
    pub retry_above: usize,
    /// Longest a handshake may take (default 10 s, well under the idle timeout), so a
    /// client that starts one and goes quiet frees its slot early.
    pub handshake_timeout: Duration,
    /// Most bytes all transfers of this server (and those started with
    /// [`Server::start_sharing`]) may queue for sending (default 256 MiB): the send windows
    /// quinn holds plus the file reads waiting to be written. A storage node gives up no more
    /// than this to serving, however many clients come and however slow their paths.
    pub max_send_buffer: u64,
}

impl ServerConfig {
    /// Defaults around the required parts.
    pub fn new(
        listen: SocketAddr,
        identity: Identity,
        allow: AllowList,
        table_format: TableFormat,
        snapshot_root: impl Into<std::path::PathBuf>,
    ) -> Self {
        Self {
            listen,
            identity,
            allow,
            table_format,
            snapshots: SnapshotConfig::new(snapshot_root),
            tuning: TransportTuning::default(),
            files_in_flight: 8,
            partition_timeout: Duration::from_secs(60 * 60),
            request_timeout: Duration::from_secs(10),
            write_limiter: RateLimiter::new(crate::pacing::DEFAULT_RATE),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1024,
            max_handshakes: 64,
            max_handshakes_per_ip: 8,
            retry_above: 16,
            handshake_timeout: Duration::from_secs(10),
            max_send_buffer: crate::budget::DEFAULT_CAP,
        }
    }
}

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// TLS material or configuration is unusable.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// Binding the socket failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The snapshot root is another process's (locked) or unusable: do not start.
    #[error(transparent)]
    Snapshots(#[from] crate::snapshot::RootError),
}

/// Counters a server keeps, for tests, the demo and operators.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Requests answered with `Accept`.
    pub accepted: AtomicU64,
    /// Transfers the client confirmed with `Done`.
    pub completed: AtomicU64,
    /// Transfers that ended any other way after `Accept`.
    pub failed: AtomicU64,
    /// Requests answered with `Reject`.
    pub rejected: AtomicU64,
    /// File payload bytes written to streams.
    pub bytes_sent: AtomicU64,
    /// Connections that completed the handshake.
    pub connections: AtomicU64,
    /// Requests answered `Busy` (also counted in `rejected`): the adaptive throttle's signal
    /// that this server is asked for more than it serves.
    pub busy: AtomicU64,
    /// Incoming connections refused unauthenticated: over the connection or handshake cap.
    pub refused: AtomicU64,
    /// Incoming connections asked to validate their address (QUIC Retry) first.
    pub retried: AtomicU64,
    /// Handshakes that failed or timed out.
    pub handshakes_failed: AtomicU64,
}

struct Shared {
    cfg: ServerConfig,
    source: Arc<dyn PartitionSource>,
    /// False for [`Server::start_sharing`]: only the owner retires the snapshots.
    owns_snapshots: bool,
    snapshots: SnapshotManager,
    stats: Arc<ServerStats>,
    shutdown: watch::Receiver<bool>,
    /// One clone per live task, so shutdown can wait for all of them.
    tasks: Arc<()>,
    /// One clone per live transfer (control stream) task.
    transfers: Arc<()>,
    /// Live connections by `stable_id`, so shutdown can size its drain by their RTTs.
    conns: Mutex<std::collections::HashMap<usize, quinn::Connection>>,
    /// Send windows and read buffers of every transfer, bounded together.
    budget: Arc<BufferBudget>,
}

/// A running server. Dropping it without [`Server::shutdown`] leaves its tasks running until the
/// runtime ends.
pub struct Server {
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    shutdown_tx: watch::Sender<bool>,
    accept_task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Binds, prepares the snapshot directory and starts accepting.
    pub async fn start(
        cfg: ServerConfig,
        source: Arc<dyn PartitionSource>,
    ) -> Result<Self, ServerError> {
        Self::start_inner(cfg, source, None).await
    }

    /// Another endpoint over the snapshots of a running server (same checkpoints, same cached
    /// digests), e.g. with another congestion controller in `cfg.tuning`; `cfg.snapshots` is
    /// ignored.
    pub async fn start_sharing(cfg: ServerConfig, with: &Server) -> Result<Self, ServerError> {
        let source = with.shared.source.clone();
        let shared = (with.shared.snapshots.clone(), with.shared.budget.clone());
        Self::start_inner(cfg, source, Some(shared)).await
    }

    async fn start_inner(
        cfg: ServerConfig,
        source: Arc<dyn PartitionSource>,
        shared_with: Option<(SnapshotManager, Arc<BufferBudget>)>,
    ) -> Result<Self, ServerError> {
        let rustls_cfg = tls::server_config(&cfg.identity, cfg.allow.clone())?;
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(rustls_cfg)
            .map_err(|e| ServerError::Tls(tls::TlsError::Verifier(e.to_string())))?;
        let mut qcfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        qcfg.transport_config(Arc::new(
            cfg.tuning.transport_config(transport::Side::Server),
        ));
        qcfg.migration(true);
        let endpoint = transport::endpoint(cfg.listen, &cfg.tuning, Some(qcfg))?;
        let (shutdown_tx, shutdown) = watch::channel(false);
        let owns_snapshots = shared_with.is_none();
        let (snapshots, budget) = match shared_with {
            Some(s) => s,
            None => {
                let (snap_cfg, src) = (cfg.snapshots.clone(), source.clone());
                // Waits for the root's lock and wipes leftovers: file system work.
                let s = tokio::task::spawn_blocking(move || SnapshotManager::new(snap_cfg, src))
                    .await
                    .map_err(|e| ServerError::Io(std::io::Error::other(e)))??;
                s.spawn_cleanup(shutdown.clone());
                let budget = BufferBudget::new(
                    Direction::Send,
                    cfg.max_send_buffer,
                    transport::MIN_SEND_WINDOW,
                    cfg.tuning.connection_window,
                    transport::CONTROL_WINDOW,
                );
                (s, budget)
            }
        };
        let shared = Arc::new(Shared {
            cfg,
            source,
            owns_snapshots,
            snapshots,
            stats: Arc::new(ServerStats::default()),
            shutdown,
            tasks: Arc::new(()),
            transfers: Arc::new(()),
            conns: Mutex::default(),
            budget,
        });
        let accept_task = tokio::spawn(accept_loop(endpoint.clone(), shared.clone()));
        Ok(Self {
            endpoint,
            shared,
            shutdown_tx,
            accept_task,
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Live counters.
    pub fn stats(&self) -> Arc<ServerStats> {
        self.shared.stats.clone()
    }

    /// The snapshot manager (for inspection and tests).
    pub fn snapshots(&self) -> &SnapshotManager {
        &self.shared.snapshots
    }

    /// The budget bounding what this server's transfers queue for sending (shared with the
    /// servers started with [`Server::start_sharing`]), for metrics and tests.
    pub fn send_budget(&self) -> &Arc<BufferBudget> {
        &self.shared.budget
    }

    /// Graceful shutdown: stop accepting, end every transfer with a typed `SHUTTING_DOWN`
    /// so in-flight clients move on at once, close every connection with the same code, wait
    /// (bounded) for tasks to end, and delete every snapshot.
    ///
    /// The order works around quinn-rs/quinn#2785 (fixed upstream by #2787, in no release
    /// up to quinn-proto 0.11.19): a CONNECTION_CLOSE is gated on the congestion window while
    /// stream data is still queued, and after `close()` nothing drains that window, so under
    /// a full window (bbr keeps it full) the close was never sent and clients waited out
    /// their idle timeout. So transfers first reset their streams with `SHUTTING_DOWN` — the
    /// client learns the reason from the resets alone — queued data is dropped, and the bytes
    /// already in flight get about two round trips (capped) to be acknowledged before the
    /// close, which then leaves at once. Drop this ordering's reason, not the resets, once a
    /// quinn release carries the fix.
    pub async fn shutdown(self) {
        let _ = self.shutdown_tx.send(true);
        self.endpoint.set_server_config(None);
        self.accept_task.abort();
        // Transfers see the signal and reset their streams (see `run_transfer`).
        let deadline = Instant::now() + Duration::from_secs(2);
        while Arc::strong_count(&self.shared.transfers) > 1 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let rtt = lock(&self.shared.conns)
            .values()
            .map(quinn::Connection::rtt)
            .max()
            .unwrap_or_default();
        tokio::time::sleep((rtt * 2).min(CLOSE_DRAIN_CAP)).await;
        self.endpoint
            .close(codes::SHUTTING_DOWN.into(), b"server shutting down");
        lock(&self.shared.conns).clear();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Arc::strong_count(&self.shared.tasks) > 1 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if self.shared.owns_snapshots {
            self.shared.snapshots.retire_all().await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
    }
}

/// Longest [`Server::shutdown`] lets bytes in flight drain before closing connections.
const CLOSE_DRAIN_CAP: Duration = Duration::from_secs(1);

async fn accept_loop(endpoint: quinn::Endpoint, shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.clone();
    // Held by each connection (handshake included) and by each handshake in progress.
    let connections = Arc::new(Semaphore::new(shared.cfg.max_connections.max(1)));
    let handshakes = Arc::new(Semaphore::new(shared.cfg.max_handshakes.max(1)));
    let per_ip_handshakes = Arc::new(PerIpLimit::new(shared.cfg.max_handshakes_per_ip));
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => match i { Some(i) => i, None => break },
            _ = shutdown.changed() => break,
        };
        let stats = &shared.stats;
        let in_progress = shared.cfg.max_handshakes.max(1) - handshakes.available_permits();
        let admitted = (
            connections.clone().try_acquire_owned(),
            handshakes.clone().try_acquire_owned(),
        );
        let per_ip = PerIp::enter(&per_ip_handshakes, incoming.remote_address().ip());
        let (Ok(conn_slot), Ok(handshake_slot), Some(per_ip)) = (admitted.0, admitted.1, per_ip)
        else {
            // Before any cryptography: refusing costs one small packet.
            stats.refused.fetch_add(1, Ordering::Relaxed);
            incoming.refuse();
            continue;
        };
        if in_progress >= shared.cfg.retry_above && !incoming.remote_address_validated() {
            stats.retried.fetch_add(1, Ordering::Relaxed);
            // A stateless Retry: only a client that receives it at its claimed address
            // comes back (validated) and gets a handshake.
            if let Err(e) = incoming.retry() {
                e.into_incoming().ignore();
            }
            continue;
        }
        let shared = shared.clone();
        let token = shared.tasks.clone();
        tokio::spawn(async move {
            let _token = token;
            let _conn_slot = conn_slot;
            let remote = incoming.remote_address();
            let handshake = tokio::time::timeout(shared.cfg.handshake_timeout, async {
                incoming.accept()?.await
            })
            .await;
            drop((handshake_slot, per_ip));
            match handshake {
                Ok(Ok(conn)) => serve_connection(conn, shared).await,
                Ok(Err(e)) => {
                    shared
                        .stats
                        .handshakes_failed
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::info!(%remote, error = %e, "handshake refused");
                }
                Err(_) => {
                    shared
                        .stats
                        .handshakes_failed
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::info!(%remote, "handshake timed out");
                }
            }
        });
    }
}

async fn serve_connection(conn: quinn::Connection, shared: Arc<Shared>) {
    let remote = conn.remote_address();
    shared.stats.connections.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(%remote, "connection up");
    lock(&shared.conns).insert(conn.stable_id(), conn.clone());
    let ids: Arc<Mutex<HashSet<u64>>> = Arc::default();
    loop {
        let (send, recv) = match conn.accept_bi().await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(%remote, error = %e, "connection ended");
                lock(&shared.conns).remove(&conn.stable_id());
                return;
            }
        };
        let shared = shared.clone();
        let tokens = (shared.tasks.clone(), shared.transfers.clone());
        let conn = conn.clone();
        let ids = ids.clone();
        tokio::spawn(async move {
            let _tokens = tokens;
            serve_control(conn, send, recv, shared, ids).await;
        });
    }
}

/// Why a transfer ended early on the server side (logged; the client learns by stream state).
#[derive(Debug, thiserror::Error)]
enum TransferEnd {
    #[error("wire: {0}")]
    Wire(#[from] WireError),
    #[error("stream: {0}")]
    Stream(String),
    #[error("client aborted: {0}")]
    ClientAborted(String),
    #[error("protocol violation by client: {0}")]
    Protocol(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("timed out")]
    Timeout,
    #[error("server shutting down")]
    ShuttingDown,
}

async fn reject(
    send: &mut quinn::SendStream,
    stats: &ServerStats,
    reason: RejectReason,
    msg: String,
) {
    stats.rejected.fetch_add(1, Ordering::Relaxed);
    tracing::info!(?reason, message = %msg, "request rejected");
    let _ = write_frame(
        send,
        &ControlFrame::Reject(Reject {
            reason,
            message: msg,
        }),
    )
    .await;
    let _ = send.finish();
}

/// Reads and checks the request; `Err` carries the rejection to send.
async fn read_request(
    reader: &mut FrameReader,
    shared: &Shared,
) -> Result<Request, (RejectReason, String)> {
    let raw = match tokio::time::timeout(shared.cfg.request_timeout, reader.next_raw()).await {
        Err(_) => return Err((RejectReason::BadRequest, "no request in time".into())),
        Ok(Ok(Some(raw))) => raw,
        Ok(Ok(None)) => return Err((RejectReason::BadRequest, "stream ended".into())),
        Ok(Err(WireError::Decode(DecodeError::TooLarge { len, max }))) => {
            return Err((
                RejectReason::BadRequest,
                format!("frame of {len} bytes over the {max} limit"),
            ))
        }
        Ok(Err(e)) => return Err((RejectReason::BadRequest, e.to_string())),
    };
    let req = match postcard::from_bytes::<ControlFrame>(&raw) {
        Ok(ControlFrame::Request(r)) => r,
        Ok(other) => {
            return Err((
                RejectReason::BadRequest,
                format!("expected a request, got {}", frame_name(&other)),
            ))
        }
        Err(e) => {
            return Err(match peek_request_version(&raw) {
                Some(v) if v != PROTOCOL_VERSION => (
                    RejectReason::UnsupportedVersion,
                    format!(
                        "protocol version {v} not supported (this peer speaks {PROTOCOL_VERSION})"
                    ),
                ),
                _ => (RejectReason::BadRequest, format!("malformed request: {e}")),
            })
        }
    };
    if req.version != PROTOCOL_VERSION {
        return Err((
            RejectReason::UnsupportedVersion,
            format!(
                "protocol version {} not supported (this peer speaks {PROTOCOL_VERSION})",
                req.version
            ),
        ));
    }
    if let Err(e) = names::validate_store(&req.store) {
        return Err((RejectReason::BadRequest, format!("store name: {e}")));
    }
    if req.table_format != shared.cfg.table_format {
        return Err((
            RejectReason::FormatMismatch,
            format!(
                "requested {} but this peer serves {}",
                req.table_format, shared.cfg.table_format
            ),
        ));
    }
    Ok(req)
}

fn frame_name(f: &ControlFrame) -> &'static str {
    match f {
        ControlFrame::Request(_) => "Request",
        ControlFrame::Accept(_) => "Accept",
        ControlFrame::Reject(_) => "Reject",
        ControlFrame::Metadata(_) => "Metadata",
        ControlFrame::Complete => "Complete",
        ControlFrame::Done => "Done",
        ControlFrame::Abort { .. } => "Abort",
        ControlFrame::Preparing => "Preparing",
    }
}

async fn serve_control(
    conn: quinn::Connection,
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
    shared: Arc<Shared>,
    ids: Arc<Mutex<HashSet<u64>>>,
) {
    let stats = shared.stats.clone();
    let mut reader = FrameReader::new(recv, MAX_REQUEST_FRAME);
    let req = match read_request(&mut reader, &shared).await {
        Ok(r) => r,
        Err((reason, msg)) => {
            let _ = reader.recv.stop(codes::PROTOCOL.into());
            reject(&mut send, &stats, reason, msg).await;
            return;
        }
    };
    if *shared.shutdown.borrow() {
        reject(
            &mut send,
            &stats,
            RejectReason::ShuttingDown,
            "shutting down".into(),
        )
        .await;
        return;
    }
    if !ids
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(req.transfer_id)
    {
        reject(
            &mut send,
            &stats,
            RejectReason::BadRequest,
            format!("transfer id {} already in use", req.transfer_id),
        )
        .await;
        return;
    }
    let id = PartitionId {
        store: req.store.clone(),
        version: req.store_version,
        partition: req.partition,
    };
    let span = tracing::info_span!(
        "serve",
        store = %id.store,
        version = id.version,
        partition = id.partition,
        peer = %conn.remote_address(),
        transfer = req.transfer_id
    );
    tracing::Instrument::instrument(
        serve_partition(&conn, &mut send, &mut reader, &req, &id, &shared),
        span,
    )
    .await;
    forget(&ids, req.transfer_id);
}

/// Leases the snapshot and runs the transfer; a refusal to lease becomes a typed `Reject`.
async fn serve_partition(
    conn: &quinn::Connection,
    send: &mut quinn::SendStream,
    reader: &mut FrameReader,
    req: &Request,
    id: &PartitionId,
    shared: &Shared,
) {
    let stats = &shared.stats;
    let lease = match shared.snapshots.acquire(id, Instant::now()).await {
        Ok(l) => l,
        Err(e) => {
            let reason = e.reason();
            if reason == RejectReason::Busy {
                stats.busy.fetch_add(1, Ordering::Relaxed);
            }
            reject(send, stats, reason, format!("{id}: {e}")).await;
            return;
        }
    };
    let result = tokio::time::timeout(
        shared.cfg.partition_timeout,
        run_transfer(conn, send, reader, req, &lease, shared),
    )
    .await
    .unwrap_or(Err(TransferEnd::Timeout));
    match result {
        Ok(()) => {
            stats.completed.fetch_add(1, Ordering::Relaxed);
            let path = conn.stats().path;
            tracing::info!(
                rtt_ms = path.rtt.as_secs_f64() * 1e3,
                mtu = path.current_mtu,
                cwnd = path.cwnd,
                lost_packets = path.lost_packets,
                sent_packets = path.sent_packets,
                "transfer done"
            );
        }
        Err(e) => {
            stats.failed.fetch_add(1, Ordering::Relaxed);
            tracing::info!(error = %e, "transfer ended early");
            let code = match e {
                TransferEnd::ShuttingDown => codes::SHUTTING_DOWN,
                _ => codes::ABORTED,
            };
            let _ = send.reset(code.into());
            let _ = reader.recv.stop(code.into());
        }
    }
    drop(lease);
}

fn forget(ids: &Mutex<HashSet<u64>>, id: u64) {
    ids.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
}

async fn run_transfer(
    conn: &quinn::Connection,
    send: &mut quinn::SendStream,
    reader: &mut FrameReader,
    req: &Request,
    lease: &SnapshotLease,
    shared: &Shared,
) -> Result<(), TransferEnd> {
    let snap = lease.snapshot();
    let digests = {
        let digesting = snap.digests(req.checksum);
        tokio::pin!(digesting);
        let mut beat = tokio::time::interval(heartbeat(shared.cfg.idle_timeout));
        beat.tick().await;
        loop {
            tokio::select! {
                d = &mut digesting => break d.map_err(|e| TransferEnd::Io(std::io::Error::other(e)))?,
                _ = beat.tick() => write_frame(send, &ControlFrame::Preparing).await?,
            }
        }
    };
    let files: Vec<FileEntry> = snap
        .files
        .iter()
        .zip(digests.iter())
        .map(|(f, d)| FileEntry {
            name: f.name.clone(),
            size: f.size,
            digest: d.clone(),
        })
        .collect();
    shared.stats.accepted.fetch_add(1, Ordering::Relaxed);
    // From here on this transfer sends: its connection's send window follows its path within
    // the process's budget, and its file reads are reserved from that budget up front.
    let reads = shared.cfg.files_in_flight.max(1) as u64 * CHUNK as u64;
    let _budget = shared.budget.lease(conn, reads);
    write_frame(send, &ControlFrame::Accept(Accept { files })).await?;

    // Push the files while listening for an Abort (or a vanished client) on the control stream,
    // and give up on a client that stops reading: it must not hold a snapshot slot forever.
    let sent = Arc::new(AtomicU64::new(0));
    let push = push_files(conn, req.transfer_id, snap, shared, sent.clone());
    let stalled = stall_watch(conn, &sent, shared.cfg.idle_timeout);
    let mut shutdown = shared.shutdown.clone();
    tokio::select! {
        r = push => r?,
        _ = stalled => return Err(TransferEnd::Timeout),
        // Dropping `push` resets every file stream with SHUTTING_DOWN (`ResetOnDrop`).
        _ = shutdown.wait_for(|down| *down) => return Err(TransferEnd::ShuttingDown),
        frame = reader.next_frame::<ControlFrame>() => {
            return Err(match frame {
                Ok(Some(ControlFrame::Abort { reason })) => TransferEnd::ClientAborted(reason),
                Ok(Some(other)) => TransferEnd::Protocol(format!("unexpected {}", frame_name(&other))),
                Ok(None) => TransferEnd::ClientAborted("control stream closed".into()),
                Err(e) => e.into(),
            });
        }
    }
    write_frame(send, &ControlFrame::Metadata(snap.meta.clone())).await?;
    write_frame(send, &ControlFrame::Complete).await?;
    let _ = send.finish();
    let answer = tokio::time::timeout(shared.cfg.idle_timeout, reader.next_frame::<ControlFrame>())
        .await
        .map_err(|_| TransferEnd::Timeout)??;
    match answer {
        Some(ControlFrame::Done) => Ok(()),
        Some(ControlFrame::Abort { reason }) => Err(TransferEnd::ClientAborted(reason)),
        Some(other) => Err(TransferEnd::Protocol(format!(
            "unexpected {}",
            frame_name(&other)
        ))),
        None => Err(TransferEnd::ClientAborted("no Done".into())),
    }
}

/// Sends every file on its own stream, at most `files_in_flight` at once, and returns once the
/// client has acknowledged every byte of every file.
async fn push_files(
    conn: &quinn::Connection,
    transfer_id: u64,
    snap: &Arc<crate::snapshot::Snapshot>,
    shared: &Shared,
    sent: Arc<AtomicU64>,
) -> Result<(), TransferEnd> {
    let slots = Arc::new(Semaphore::new(shared.cfg.files_in_flight.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for (index, file) in snap.files.iter().enumerate() {
        let permit = slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| TransferEnd::Stream("slots closed".into()))?;
        // Surface a failure of an earlier file before opening more streams.
        while let Some(done) = tasks.try_join_next() {
            done.map_err(|e| TransferEnd::Stream(e.to_string()))??;
        }
        let conn = conn.clone();
        let path = snap.dir.join(&file.name);
        let size = file.size;
        let stats = shared.stats.clone();
        let limiter = shared.cfg.write_limiter.clone();
        let sent = sent.clone();
        let shutdown = shared.shutdown.clone();
        tasks.spawn(async move {
            let stream = conn
                .open_uni()
                .await
                .map_err(|e| TransferEnd::Stream(e.to_string()))?;
            let mut guard = ResetOnDrop {
                stream: Some(stream),
                shutdown,
            };
            let stream = guard.stream();
            write_frame(
                stream,
                &FileHeader {
                    transfer_id,
                    index: index as u32,
                },
            )
            .await?;
            send_file(stream, path, size, &stats, &limiter, &sent).await?;
            stream
                .finish()
                .map_err(|e| TransferEnd::Stream(e.to_string()))?;
            drop(permit);
            // Every byte acknowledged by the client (or the client stopped the stream).
            // Still guarded: a transfer ended meanwhile (shutdown, another file failed)
            // resets this stream too, so none of its data stays queued.
            let stopped = guard.stream().stopped().await;
            guard.disarm();
            match stopped {
                Ok(None) => Ok(()),
                Ok(Some(code)) => Err(TransferEnd::ClientAborted(format!(
                    "file stream stopped with code {code}"
                ))),
                Err(e) => Err(TransferEnd::Stream(e.to_string())),
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.map_err(|e| TransferEnd::Stream(e.to_string()))??;
    }
    Ok(())
}

/// Interval of `Preparing` heartbeats: well inside the client's idle timeout.
fn heartbeat(idle: Duration) -> Duration {
    (idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(5))
}

/// Resolves once the transfer has made no progress for `idle`: the client stopped reading
/// (flow control blocks every write) or vanished.
///
/// Progress is bytes handed to quinn (`sent`) *or* stream data leaving on the wire (STREAM
/// frames the connection sent, retransmissions included). Counting only the first gave up
/// on slow paths: once the last file was handed over, a send buffer's worth of data was
/// still draining at the path's rate, with no new bytes handed over meanwhile.
async fn stall_watch(conn: &quinn::Connection, sent: &AtomicU64, idle: Duration) {
    let progress = || (sent.load(Ordering::Relaxed), conn.stats().frame_tx.stream);
    let mut last = progress();
    let mut since = Instant::now();
    let mut tick = tokio::time::interval(heartbeat(idle));
    loop {
        tick.tick().await;
        let now = progress();
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= idle {
            return;
        }
    }
}

/// A file stream that is reset, not finished, when dropped before the client acknowledged its
/// last byte: quinn finishes dropped streams, and a cut-off file must look cut off to the
/// client, never like a short but complete one. The reset says `SHUTTING_DOWN` when the
/// server is stopping (the client then moves on at once, typed), `ABORTED` otherwise.
struct ResetOnDrop {
    stream: Option<quinn::SendStream>,
    shutdown: watch::Receiver<bool>,
}

impl ResetOnDrop {
    fn stream(&mut self) -> &mut quinn::SendStream {
        self.stream.as_mut().expect("stream present until disarmed")
    }

    /// The stream is done with (acknowledged or failed on its own): nothing to reset.
    fn disarm(mut self) {
        self.stream.take();
    }
}

impl Drop for ResetOnDrop {
    fn drop(&mut self) {
        if let Some(s) = self.stream.as_mut() {
            let code = if *self.shutdown.borrow() {
                codes::SHUTTING_DOWN
            } else {
                codes::ABORTED
            };
            let _ = s.reset(code.into());
        }
    }
}

/// Bytes read from a file at a time: each file in flight holds one chunk outside quinn.
const CHUNK: usize = 256 << 10;

async fn send_file(
    stream: &mut quinn::SendStream,
    path: std::path::PathBuf,
    size: u64,
    stats: &ServerStats,
    limiter: &RateLimiter,
    sent_total: &AtomicU64,
) -> Result<(), TransferEnd> {
    let mut file = Some(std::fs::File::open(&path)?);
    let mut sent = 0u64;
    while sent < size {
        let f = file
            .take()
            .ok_or_else(|| TransferEnd::Stream("file lost".into()))?;
        let want = CHUNK.min((size - sent) as usize);
        let (f, chunk) = tokio::task::spawn_blocking(move || {
            let mut f = f;
            let mut buf = BytesMut::zeroed(want);
            let n = f.read(&mut buf)?;
            buf.truncate(n);
            Ok::<_, std::io::Error>((f, buf.freeze()))
        })
        .await
        .map_err(|e| TransferEnd::Stream(e.to_string()))??;
        file = Some(f);
        if chunk.is_empty() {
            // The snapshot file shrank under us: never send fewer bytes than announced
            // silently; the client will see the short file and reject it.
            return Err(TransferEnd::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("{} shorter than its manifest size", path.display()),
            )));
        }
        let n = chunk.len() as u64;
        limiter.acquire(n).await;
        stream
            .write_chunk(chunk)
            .await
            .map_err(|e| TransferEnd::Stream(e.to_string()))?;
        sent += n;
        sent_total.fetch_add(n, Ordering::Relaxed);
        stats.bytes_sent.fetch_add(n, Ordering::Relaxed);
    }
    Ok(())
}
