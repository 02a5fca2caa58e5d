//! What a listener is told (its configuration), what its tasks share (sessions, counters,
//! the connection counts), and what it tells (its counters).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;

use quicstrap::net::admission::PerIpLimit;
use quicstrap::net::tls::{AllowList, Identity};
use quicstrap::server::ServePolicy;
use quicstrap::snapshot::{SnapshotLease, SnapshotManager};
use quicstrap::store::checksum::ChecksumAlgo;
use quicstrap::store::partition::TableFormat;

use crate::TcpCongestion;

/// A response body: whole JSON, or a file streamed with its trailer.
pub(super) type Body = BoxBody<Bytes, std::io::Error>;

/// Longest [`HttpServer::shutdown`] waits for open connections to hear `shutting_down`.
pub(super) const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Everything an HTTPS baseline listener needs besides the shared snapshot manager.
#[derive(Clone, Debug)]
pub struct HttpServerConfig {
    /// TCP address to listen on.
    pub listen: SocketAddr,
    /// Who may fetch what, how patiently and how fast: the QUIC server's terms. Its idle
    /// timeout ends a session nobody used for that long, releasing its snapshot; its
    /// handshake timeout bounds the TLS handshake, so a client that connects and stalls
    /// cannot hold a task and a socket forever. (There is deliberately no limit on the wait
    /// for the next request of a keep-alive connection: hyper counts a response as done once
    /// it is in the socket buffer, and on a slow link the client may take minutes to drain it
    /// before it asks for the next file.)
    pub policy: ServePolicy,
    /// Congestion controller set on every accepted socket (`None`: the kernel default).
    pub congestion: Option<TcpCongestion>,
    /// Connections held at once (default 256), counted from `accept`, before TLS: more are
    /// closed at once.
    pub max_connections: usize,
    /// Connections held at once from one host — an IPv4 address, or an IPv6 /64 (default
    /// 32): one flooding host cannot take every slot from the others.
    pub max_connections_per_ip: usize,
    /// Longest a client may take to send a request's headers once the connection is ready
    /// for them (default 30 s): a slowloris client cannot hold a connection. The clock
    /// starts only once what is left of the previous response in the socket would drain
    /// well within it (see `drains_within`), so a keep-alive client on a slow link is never
    /// cut while it is still receiving the last body.
    pub header_timeout: Duration,
    /// A response whose bytes stop leaving for this long (default 60 s) ends its
    /// connection: a client that stops reading a body releases its snapshot slot.
    pub write_timeout: Duration,
}

impl HttpServerConfig {
    /// Defaults around the required parts.
    pub fn new(
        listen: SocketAddr,
        identity: Identity,
        allow: AllowList,
        table_format: TableFormat,
    ) -> Self {
        Self::with_policy(listen, ServePolicy::new(identity, allow, table_format))
    }

    /// A listener on the same terms as a QUIC server's `policy`.
    pub fn with_policy(listen: SocketAddr, policy: ServePolicy) -> Self {
        Self {
            listen,
            policy,
            congestion: None,
            max_connections: 256,
            max_connections_per_ip: 32,
            header_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(60),
        }
    }
}

/// A leased snapshot between the manifest and the metadata request.
pub(super) struct Session {
    pub(super) lease: Arc<SnapshotLease>,
    /// The digest algorithm its manifest was listed with: file trailers use the same.
    pub(super) algo: ChecksumAlgo,
    /// Touched by every request and by the end of every body: a file that takes longer than
    /// the idle timeout to stream must not expire the session under the next request.
    pub(super) last_used: Arc<Mutex<Instant>>,
    /// Bodies streaming right now: a session is never expired under a running download.
    pub(super) active: Arc<AtomicUsize>,
}

pub(super) struct State {
    pub(super) cfg: HttpServerConfig,
    pub(super) snapshots: SnapshotManager,
    pub(super) sessions: Mutex<HashMap<u64, Session>>,
    pub(super) stats: Arc<HttpStats>,
    /// Set by [`HttpServer::shutdown`]: keep-alive clients still connected get a typed
    /// `shutting_down` refusal (503) and move on, not a `not_found` for their dropped session.
    pub(super) shutting_down: AtomicBool,
    /// TLS connections being served right now.
    pub(super) connections: AtomicUsize,
    /// The same, per client address.
    pub(super) per_ip: Arc<PerIpLimit>,
}

/// Counters of one HTTPS listener, exported by [`crate::metrics::register`] beside the
/// QUIC server's, so an operator comparing the two transports sees both.
#[derive(Debug, Default)]
pub struct HttpStats {
    /// File payload bytes put into response bodies.
    pub bytes_sent: AtomicU64,
    /// Manifests served: transfers started (each holds a snapshot until its metadata).
    pub started: AtomicU64,
    /// Metadata served: transfers that reached their last request.
    pub completed: AtomicU64,
    /// Requests refused with a typed reason (busy, not found, bad request, ...).
    pub rejected: AtomicU64,
    /// Of those, manifests refused `Busy` because their client held its share of snapshot
    /// users (`SnapshotConfig::max_users_per_client`) while the server had slots left.
    pub busy_per_client: AtomicU64,
    /// TLS handshakes refused (unknown or disallowed client) or timed out.
    pub handshakes_refused: AtomicU64,
    /// Connections closed unserved at `accept`: over the connection cap.
    pub connections_refused: AtomicU64,
    /// Of those, connections refused only because their host (an IPv4 address or an IPv6
    /// /64) held its share ([`HttpServerConfig::max_connections_per_ip`]).
    pub connections_refused_per_host: AtomicU64,
    /// Connections ended because a response stopped draining (the client stopped reading).
    pub write_stalls: AtomicU64,
}
