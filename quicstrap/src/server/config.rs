//! What a server is told and what it tells: its policy and configuration, why it cannot
//! start, and the counters it keeps.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use crate::control::pacing::RateLimiter;
use crate::net::tls::{self, AllowList, Identity};

use super::LivePolicy;
use crate::net::transport::TransportTuning;
use crate::snapshot::SnapshotConfig;
use crate::store::partition::TableFormat;

/// Who may fetch what, and how patiently and fast it is served, whatever the transport: the
/// QUIC [`ServerConfig`] and the HTTPS baseline's listener both hold one, so the two serve on
/// the same terms.
#[derive(Clone, Debug)]
pub struct ServePolicy {
    /// This server's certificate, key and trusted CA.
    pub identity: Identity,
    /// Clients allowed to fetch, which stores are served, draining: what changes while the
    /// server runs, shared by every listener built from this policy.
    pub live: Arc<LivePolicy>,
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
            live: LivePolicy::new(allow),
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
    /// [`super::Server::start_sharing`]) may queue for sending (default 256 MiB): the send windows
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
    /// Connections closed because the allow list dropped their client.
    pub revoked: AtomicU64,
    /// Requests refused because their store is not served here (`disabled`).
    pub disabled: AtomicU64,
    /// Requests refused because the server drains (`draining`).
    pub draining: AtomicU64,
    /// Incoming connections asked to validate their address (QUIC Retry) first.
    pub retried: AtomicU64,
    /// Handshakes that failed or timed out.
    pub handshakes_failed: AtomicU64,
}
