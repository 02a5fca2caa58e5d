//! The serving peer: accepts QUIC connections, answers requests, streams snapshot files.
//!
//! `accept` admits connections (limits before any cryptography) and opens one transfer per
//! control stream; `request` drives the protocol's server state machine for it — validate
//! the `Request`, lease a snapshot, heartbeat while digesting, `Accept`, then `Metadata` and
//! `Complete` once the client acknowledged every byte, and wait for `Done`/`Abort` before
//! releasing the snapshot; `push` sends the files, each on its own stream, a bounded number
//! at once. Anything a client sends that is malformed gets a typed `Reject` and that stream is
//! closed; the connection and every other client carry on (docs/design.md, invariant *bad
//! input never crashes a peer*).

mod accept;
mod push;
mod request;

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::control::budget::{BufferBudget, Direction};
use crate::control::pacing::RateLimiter;
use crate::net::tls::{self, AllowList, Identity};
use crate::net::transport::{self, TransportTuning};
use crate::protocol::codes;
use crate::snapshot::{PartitionSource, SnapshotConfig, SnapshotManager};
use crate::store::lock::unpoisoned as lock;
use crate::store::partition::TableFormat;

pub use request::MAX_REQUEST_FRAME;

/// Who may fetch what, and how patiently and fast it is served, whatever the transport: the
/// QUIC [`ServerConfig`] and the HTTPS baseline's listener both hold one, so the two serve on
/// the same terms.
#[derive(Clone, Debug)]
pub struct ServePolicy {
    /// This server's certificate, key and trusted CA.
    pub identity: Identity,
    /// Clients allowed to fetch.
    pub allow: AllowList,
    /// Table format of every partition served here.
    pub table_format: TableFormat,
    /// Give up on a client that reads nothing, or does not answer `Complete`, for this long
    /// (60 s), so a stalled client cannot hold a snapshot slot for the whole partition timeout.
    pub idle_timeout: Duration,
    /// Write-rate limit shared by every transfer of this process (default
    /// [`crate::control::pacing::DEFAULT_RATE`]).
    pub write_limiter: Arc<RateLimiter>,
    /// Longest a handshake may take (default 10 s, well under the idle timeout), so a
    /// client that starts one and goes quiet frees its slot early.
    pub handshake_timeout: Duration,
}

impl ServePolicy {
    /// Defaults around the required parts.
    pub fn new(identity: Identity, allow: AllowList, table_format: TableFormat) -> Self {
        Self {
            identity,
            allow,
            table_format,
            idle_timeout: Duration::from_secs(60),
            write_limiter: RateLimiter::new(crate::control::pacing::DEFAULT_RATE),
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// Everything a server needs.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// UDP address to listen on.
    pub listen: SocketAddr,
    /// Who may fetch what, how patiently and how fast.
    pub policy: ServePolicy,
    /// Snapshot knobs.
    pub snapshots: SnapshotConfig,
    /// QUIC knobs.
    pub tuning: TransportTuning,
    /// Files of one transfer in flight at once (default 8; at most the
    /// [`MAX_FILES_IN_FLIGHT`](crate::protocol::transfer::MAX_FILES_IN_FLIGHT) a client reads at
    /// once, larger values count as that): a stream a client does not read yet only holds
    /// send buffer here.
    pub files_in_flight: usize,
    /// Longest a transfer may take on the server side (60 min).
    pub partition_timeout: Duration,
    /// Longest a client may take to send its request once the stream is open (10 s).
    pub request_timeout: Duration,
    /// Admission before authentication: connections held at once, handshakes included
    /// (default 1024); more are refused before any cryptography.
    pub max_connections: usize,
    /// Handshakes in progress at once (default 64); more are refused.
    pub max_handshakes: usize,
    /// Handshakes in progress at once from one host — an IPv4 address, or an IPv6 /64
    /// (default 8): one flooding host cannot take every handshake slot from the others, and
    /// one holding a whole /64 counts once, not once per address.
    pub max_handshakes_per_ip: usize,
    /// Past this many handshakes in progress (default 16), a client must first prove it
    /// owns its address (a QUIC Retry round trip), so a spoofed-source flood costs the
    /// server no handshake state.
    pub retry_above: usize,
    /// Most bytes all transfers of this server (and those started with
    /// [`Server::start_sharing`]) may queue for sending (default 256 MiB): the send windows
    /// quinn holds plus the file reads waiting to be written. A storage node gives up no more
    /// than this to serving, however many clients come and however slow their paths.
    pub max_send_buffer: u64,
    /// Close a connection that has carried no transfer for this long (default 60 s), so
    /// connections kept open without use — a fleet of fetchers between partitions, a client
    /// that connects and asks for nothing — cannot hold the [`Self::max_connections`] cap.
    /// Twice the fetchers' own idle close of pooled connections
    /// ([`TransportTuning::pool_idle`], 30 s), so a fetcher closes its connection first and
    /// never has it closed under a request it is about to send.
    pub connection_idle: Duration,
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
            policy: ServePolicy::new(identity, allow, table_format),
            snapshots: SnapshotConfig::new(snapshot_root),
            tuning: TransportTuning::default(),
            files_in_flight: 8,
            partition_timeout: Duration::from_secs(60 * 60),
            request_timeout: Duration::from_secs(10),
            max_connections: 1024,
            max_handshakes: 64,
            max_handshakes_per_ip: 8,
            retry_above: 16,
            max_send_buffer: crate::control::budget::DEFAULT_CAP,
            connection_idle: Duration::from_secs(60),
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
    /// Of those, resumes of an interrupted transfer (only the missing bytes sent).
    pub resumed: AtomicU64,
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
    /// Of those, requests whose client held its share of snapshot users
    /// ([`SnapshotConfig::max_users_per_client`]) while the server had slots left.
    pub busy_per_client: AtomicU64,
    /// Incoming connections refused unauthenticated: over the connection or handshake cap.
    pub refused: AtomicU64,
    /// Of those, connections refused only because their host (an IPv4 address or an IPv6
    /// /64) held its share of handshakes ([`ServerConfig::max_handshakes_per_ip`]).
    pub refused_per_host: AtomicU64,
    /// Connections closed after carrying no transfer for [`ServerConfig::connection_idle`].
    pub idle_closed: AtomicU64,
    /// Incoming connections asked to validate their address (QUIC Retry) first.
    pub retried: AtomicU64,
    /// Handshakes that failed or timed out.
    pub handshakes_failed: AtomicU64,
}

pub(crate) struct Shared {
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

impl Shared {
    /// Files of one transfer sent at once: the configured number, within what a client reads
    /// at once.
    pub(crate) fn files_in_flight(&self) -> usize {
        self.cfg
            .files_in_flight
            .clamp(1, crate::protocol::transfer::MAX_FILES_IN_FLIGHT)
    }
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
        let rustls_cfg = tls::server_config(&cfg.policy.identity, cfg.policy.allow.clone())?;
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
        let accept_task = tokio::spawn(accept::accept_loop(endpoint.clone(), shared.clone()));
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

    /// Connections open right now (handshake done), for metrics and tests.
    pub fn open_connections(&self) -> usize {
        lock(&self.shared.conns).len()
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
