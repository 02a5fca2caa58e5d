//! The HTTPS side of the baseline: leases snapshots from the shared manager and streams their
//! files, one request per file, with the kernel's congestion control chosen per listener.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::sync::watch;

use crate::admission::{PerIp, PerIpLimit};
use crate::checksum::ChecksumAlgo;
use crate::pacing::RateLimiter;
use crate::partition::{PartitionId, TableFormat};
use crate::protocol::transfer::check_partition;
use crate::protocol::{names, RejectReason};
use crate::server::ServerError;
use crate::snapshot::{SnapshotLease, SnapshotManager};
use crate::tls::{self, AllowList, Identity};

use super::{query_pairs, Manifest, ManifestFile, TcpCongestion, REJECT_HEADER};
use crate::lock::unpoisoned as lock;

type Body = BoxBody<Bytes, std::io::Error>;

/// Chunk read from disk per body frame.
const CHUNK: usize = 256 * 1024;
/// Longest [`HttpServer::shutdown`] waits for open connections to hear `shutting_down`.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Everything an HTTPS baseline listener needs besides the shared snapshot manager.
#[derive(Clone, Debug)]
pub struct HttpServerConfig {
    /// TCP address to listen on.
    pub listen: SocketAddr,
    /// This server's certificate, key and trusted CA (the QUIC server's).
    pub identity: Identity,
    /// Clients allowed to fetch.
    pub allow: AllowList,
    /// Table format of every partition served here.
    pub table_format: TableFormat,
    /// Congestion controller set on every accepted socket (`None`: the kernel default).
    pub congestion: Option<TcpCongestion>,
    /// A session nobody used for this long is ended and its snapshot released (60 s).
    pub idle_timeout: Duration,
    /// Write-rate limit shared with the QUIC server of the process.
    pub write_limiter: Arc<RateLimiter>,
    /// Longest a TLS handshake may take (10 s): a client that connects and stalls must not
    /// hold a task and a socket forever. (There is deliberately no limit on the wait for the
    /// next request of a keep-alive connection: hyper counts a response as done once it is in
    /// the socket buffer, and on a slow link the client may take minutes to drain it before
    /// it asks for the next file.)
    pub handshake_timeout: Duration,
    /// Connections held at once (default 256), counted from `accept`, before TLS: more are
    /// closed at once.
    pub max_connections: usize,
    /// Connections held at once from one IP address (default 32): one flooding host cannot
    /// take every slot from the others.
    pub max_connections_per_ip: usize,
    /// Longest a client may take to send a request's headers once the connection is ready
    /// for them (default 30 s): a slowloris client cannot hold a connection. The clock
    /// starts only after the previous response has drained from the socket (see
    /// [`drained`]), so a keep-alive client on a slow link is never cut while it is still
    /// receiving the last body.
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
        Self {
            listen,
            identity,
            allow,
            table_format,
            congestion: None,
            idle_timeout: Duration::from_secs(60),
            write_limiter: RateLimiter::new(crate::pacing::DEFAULT_RATE),
            handshake_timeout: Duration::from_secs(10),
            max_connections: 256,
            max_connections_per_ip: 32,
            header_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(60),
        }
    }
}

/// A leased snapshot between the manifest and the metadata request.
struct Session {
    lease: Arc<SnapshotLease>,
    /// Touched by every request and by the end of every body: a file that takes longer than
    /// the idle timeout to stream must not expire the session under the next request.
    last_used: Arc<Mutex<Instant>>,
    /// Bodies streaming right now: a session is never expired under a running download.
    active: Arc<AtomicUsize>,
}

struct State {
    cfg: HttpServerConfig,
    snapshots: SnapshotManager,
    sessions: Mutex<HashMap<u64, Session>>,
    stats: Arc<HttpStats>,
    /// Set by [`HttpServer::shutdown`]: keep-alive clients still connected get a typed
    /// `shutting_down` refusal (503) and move on, not a `not_found` for their dropped session.
    shutting_down: AtomicBool,
    /// TLS connections being served right now.
    connections: AtomicUsize,
    /// The same, per client address.
    per_ip: Arc<PerIpLimit>,
}

/// Counters of one HTTPS listener, exported by [`crate::metrics::register_https`] beside the
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
    /// TLS handshakes refused (unknown or disallowed client) or timed out.
    pub handshakes_refused: AtomicU64,
    /// Connections closed unserved at `accept`: over the connection cap.
    pub connections_refused: AtomicU64,
    /// Connections ended because a response stopped draining (the client stopped reading).
    pub write_stalls: AtomicU64,
}

/// A running HTTPS baseline listener.
pub struct HttpServer {
    addr: SocketAddr,
    shutdown_tx: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    state: Arc<State>,
}

impl HttpServer {
    /// Binds and starts serving snapshots of `snapshots`.
    pub async fn start(
        cfg: HttpServerConfig,
        snapshots: SnapshotManager,
    ) -> Result<Self, ServerError> {
        let mut rustls_cfg = tls::server_config(&cfg.identity, cfg.allow.clone())?;
        rustls_cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(rustls_cfg));
        let listener = tokio::net::TcpListener::bind(cfg.listen).await?;
        if let Some(cc) = &cfg.congestion {
            // Fail at start, not on the first connection, when the kernel lacks the module.
            super::set_tcp_congestion(&listener, cc).map_err(|e| {
                std::io::Error::new(e.kind(), format!("TCP congestion control {cc}: {e}"))
            })?;
        }
        let addr = listener.local_addr()?;
        let (shutdown_tx, shutdown) = watch::channel(false);
        let cfg_per_ip = cfg.max_connections_per_ip;
        let state = Arc::new(State {
            cfg,
            snapshots,
            sessions: Mutex::default(),
            stats: Arc::default(),
            shutting_down: AtomicBool::new(false),
            connections: AtomicUsize::new(0),
            per_ip: Arc::new(PerIpLimit::new(cfg_per_ip)),
        });
        let task = tokio::spawn(accept_loop(listener, acceptor, state.clone(), shutdown));
        Ok(Self {
            addr,
            shutdown_tx,
            task,
            state,
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Live counters.
    pub fn stats(&self) -> Arc<HttpStats> {
        self.state.stats.clone()
    }

    /// Sessions holding a snapshot right now.
    pub fn sessions(&self) -> usize {
        lock(&self.state.sessions).len()
    }

    /// Stops accepting and ends every session (their snapshots are released).
    pub async fn shutdown(self) {
        // Before the sessions go, so no request in between sees its session missing.
        self.state.shutting_down.store(true, Ordering::SeqCst);
        let _ = self.shutdown_tx.send(true);
        self.task.abort();
        let _ = self.task.await;
        lock(&self.state.sessions).clear();
        // A body still streaming finishes (its lease keeps the file), and the client's next
        // request on that connection then gets the typed refusal and closes: give them that
        // long, bounded, before the process goes away under them.
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        while self.state.connections.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    state: Arc<State>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut sweep = tokio::time::interval(Duration::from_secs(1));
    loop {
        let (tcp, remote) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = sweep.tick() => {
                expire_sessions(&state, Instant::now());
                continue;
            }
            _ = shutdown.changed() => break,
        };
        // Admission before authentication: over a cap, the socket is closed unread.
        let per_ip = PerIp::enter(&state.per_ip, remote.ip());
        let (true, Some(per_ip)) = (
            state.connections.load(Ordering::SeqCst) < state.cfg.max_connections,
            per_ip,
        ) else {
            state
                .stats
                .connections_refused
                .fetch_add(1, Ordering::Relaxed);
            drop(tcp);
            continue;
        };
        if let Some(cc) = &state.cfg.congestion {
            if let Err(e) = super::set_tcp_congestion(&tcp, cc) {
                tracing::warn!(%remote, error = %e, "cannot set TCP congestion control");
            }
        }
        let _ = tcp.set_nodelay(true);
        // Keepalive probes find a client that vanished (host down, link cut) while its
        // connection sat idle between requests; the session sweep then frees its snapshot.
        let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(
            &socket2::TcpKeepalive::new()
                .with_time(Duration::from_secs(30))
                .with_interval(Duration::from_secs(10)),
        );
        let acceptor = acceptor.clone();
        let state = state.clone();
        let wire = Arc::new(Wire {
            fd: std::os::fd::AsRawFd::as_raw_fd(&tcp),
            body_bytes: AtomicU64::new(0),
        });
        // Counted here, not in the task, so a burst of accepts sees its own connections.
        state.connections.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            let _open = (Counted(state.clone()), per_ip);
            let limit = state.cfg.handshake_timeout;
            let tls = match tokio::time::timeout(limit, acceptor.accept(tcp)).await {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => {
                    state
                        .stats
                        .handshakes_refused
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::info!(%remote, error = %e, "handshake refused");
                    return;
                }
                Err(_) => {
                    state
                        .stats
                        .handshakes_refused
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::info!(%remote, "handshake timed out");
                    return;
                }
            };
            let service = {
                let (state, wire) = (state.clone(), wire.clone());
                hyper::service::service_fn(move |req| handle(req, state.clone(), wire.clone()))
            };
            let mut http = hyper::server::conn::http1::Builder::new();
            http.keep_alive(true)
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(state.cfg.header_timeout);
            let conn = http.serve_connection(TokioIo::new(tls), service);
            tokio::select! {
                r = conn => if let Err(e) = r {
                    tracing::debug!(%remote, error = %e, "connection ended");
                },
                _ = write_stalled(&wire, state.cfg.write_timeout) => {
                    state.stats.write_stalls.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(%remote, "client stopped reading; connection closed");
                }
            }
        });
    }
}

/// Counts a connection out of [`State::connections`] however its task ends.
struct Counted(Arc<State>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One TCP connection's outgoing side, as the body streams and the stall watch see it.
struct Wire {
    /// The socket (valid while its connection is served).
    fd: std::os::fd::RawFd,
    /// Body bytes handed to hyper on this connection.
    body_bytes: AtomicU64,
}

impl Wire {
    /// Bytes in the socket's send queue, not yet acknowledged by the client (`SIOCOUTQ`).
    fn unacked(&self) -> u64 {
        let mut n: libc::c_int = 0;
        // SAFETY: TIOCOUTQ (= SIOCOUTQ) writes one int; `fd` stays open while its connection
        // is served, which is the only time this is called.
        let rc = unsafe { libc::ioctl(self.fd, libc::TIOCOUTQ, &mut n) };
        if rc == 0 {
            n.max(0) as u64
        } else {
            0
        }
    }
}

/// How often the stall watch and the drain wait look at the socket.
const WIRE_POLL: Duration = Duration::from_millis(20);

/// Resolves once bytes wait in the socket and none left for `limit`: the client stopped
/// reading. Progress is a body chunk handed to hyper or the send queue shrinking.
async fn write_stalled(wire: &Wire, limit: Duration) {
    let mut last = (wire.body_bytes.load(Ordering::Relaxed), wire.unacked());
    let mut since = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let now = (wire.body_bytes.load(Ordering::Relaxed), wire.unacked());
        let moved = now.0 != last.0 || now.1 < last.1;
        if moved || now.1 == 0 {
            since = Instant::now();
        } else if since.elapsed() >= limit {
            return;
        }
        last = now;
    }
}

/// Waits until the socket's send queue is empty: the client has every byte of the body.
/// Ending a body only then starts hyper's header timeout for the next request when the
/// client can actually send it, however slow its link.
async fn drained(wire: &Wire) {
    while wire.unacked() > 0 {
        tokio::time::sleep(WIRE_POLL).await;
    }
}

fn expire_sessions(state: &State, now: Instant) {
    let idle = state.cfg.idle_timeout;
    lock(&state.sessions).retain(|_, s| {
        s.active.load(Ordering::SeqCst) > 0
            || now.saturating_duration_since(*lock(&s.last_used)) < idle
    });
}

/// A refusal the client maps onto the same typed errors as QUIC's `Reject`.
fn refuse(reason: RejectReason, msg: String) -> Response<Body> {
    let status = match reason {
        RejectReason::NotFound => StatusCode::NOT_FOUND,
        RejectReason::Busy | RejectReason::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        RejectReason::FormatMismatch => StatusCode::CONFLICT,
        RejectReason::UnsupportedVersion | RejectReason::BadRequest => StatusCode::BAD_REQUEST,
        RejectReason::ServerError => StatusCode::INTERNAL_SERVER_ERROR,
        RejectReason::Stale => StatusCode::SERVICE_UNAVAILABLE,
    };
    tracing::info!(?reason, message = %msg, "http request refused");
    let mut resp = Response::new(full(Bytes::from(msg + "\n")));
    *resp.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(reason.as_str()) {
        resp.headers_mut().insert(REJECT_HEADER, v);
    }
    resp
}

fn full(b: Bytes) -> Body {
    Full::new(b).map_err(|never| match never {}).boxed()
}

fn json(v: &impl serde::Serialize) -> Response<Body> {
    match serde_json::to_vec(v) {
        Ok(b) => {
            let mut r = Response::new(full(Bytes::from(b)));
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/json"),
            );
            r
        }
        Err(e) => refuse(RejectReason::ServerError, e.to_string()),
    }
}

/// A parsed request path.
struct Route<'a> {
    id: PartitionId,
    what: &'a str,
    file: Option<&'a str>,
}

fn parse_path(path: &str) -> Result<Route<'_>, String> {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (store, version, partition, what, file) = match parts.as_slice() {
        ["v1", s, v, p, w] => (*s, *v, *p, *w, None),
        ["v1", s, v, p, w, f] => (*s, *v, *p, *w, Some(*f)),
        _ => return Err(format!("no such path {path:?}")),
    };
    let version = version.parse().map_err(|_| "bad version".to_string())?;
    let partition = partition.parse().map_err(|_| "bad partition".to_string())?;
    let id = PartitionId::new(store, version, partition).map_err(|e| format!("store: {e}"))?;
    Ok(Route { id, what, file })
}

async fn handle(
    req: Request<Incoming>,
    state: Arc<State>,
    wire: Arc<Wire>,
) -> Result<Response<Body>, Infallible> {
    let (what, resp) = answer(&req, &state, wire).await;
    // Counted once, here, from what the request asked and whether it was refused.
    let stats = &state.stats;
    if resp.headers().contains_key(REJECT_HEADER) {
        stats.rejected.fetch_add(1, Ordering::Relaxed);
    } else if what == Some("manifest") {
        stats.started.fetch_add(1, Ordering::Relaxed);
    } else if what == Some("metadata") {
        stats.completed.fetch_add(1, Ordering::Relaxed);
    }
    Ok(resp)
}

/// Answers one request; also says which resource it asked for, when the path parsed.
async fn answer<'r>(
    req: &'r Request<Incoming>,
    state: &State,
    wire: Arc<Wire>,
) -> (Option<&'r str>, Response<Body>) {
    if state.shutting_down.load(Ordering::SeqCst) {
        let mut resp = refuse(RejectReason::ShuttingDown, "server shutting down".into());
        resp.headers_mut().insert(
            hyper::header::CONNECTION,
            hyper::header::HeaderValue::from_static("close"),
        );
        return (None, resp);
    }
    if req.method() != Method::GET {
        return (None, refuse(RejectReason::BadRequest, "only GET".into()));
    }
    let route = match parse_path(req.uri().path()) {
        Ok(r) => r,
        Err(e) => return (None, refuse(RejectReason::BadRequest, e)),
    };
    let query = req.uri().query();
    let resp = match (route.what, route.file) {
        ("manifest", None) => manifest(state, &route.id, query).await,
        ("files", Some(name)) => file(state, &route.id, name, query, wire).await,
        ("metadata", None) => metadata(state, &route.id, query),
        _ => refuse(RejectReason::BadRequest, "no such resource".into()),
    };
    (Some(route.what), resp)
}

async fn manifest(state: &State, id: &PartitionId, query: Option<&str>) -> Response<Body> {
    let mut algo = ChecksumAlgo::Md5;
    let mut format = state.cfg.table_format;
    for (k, v) in query_pairs(query) {
        match k {
            "checksum" => match v.parse() {
                Ok(a) => algo = a,
                Err(e) => return refuse(RejectReason::BadRequest, format!("checksum: {e}")),
            },
            "format" => match v.parse() {
                Ok(f) => format = f,
                Err(e) => return refuse(RejectReason::BadRequest, format!("format: {e}")),
            },
            _ => {}
        }
    }
    // The QUIC server's rule for what may be served, applied to the URL's request.
    if let Err((reason, msg)) = check_partition(&id.store, format, state.cfg.table_format) {
        return refuse(reason, msg);
    }
    let lease = match state.snapshots.acquire(id, Instant::now()).await {
        Ok(l) => l,
        Err(e) => {
            return refuse(e.reason(), format!("{id}: {e}"));
        }
    };
    let snap = lease.snapshot().clone();
    let digests = match snap.digests(algo).await {
        Ok(d) => d,
        Err(e) => return refuse(RejectReason::ServerError, format!("digests: {e}")),
    };
    let session = rand::random::<u64>();
    lock(&state.sessions).insert(
        session,
        Session {
            lease: Arc::new(lease),
            last_used: Arc::new(Mutex::new(Instant::now())),
            active: Arc::default(),
        },
    );
    json(&Manifest {
        session: format!("{session:016x}"),
        files: snap
            .files
            .iter()
            .zip(digests.iter())
            .map(|(f, d)| ManifestFile {
                name: f.name.clone(),
                size: f.size,
                digest: hex::encode(d),
            })
            .collect(),
    })
}

/// A refusal before it becomes a response.
type Refusal = (RejectReason, String);

/// A session's key and the handles a request needs from it.
type SessionHandles = (
    u64,
    Arc<SnapshotLease>,
    Arc<AtomicUsize>,
    Arc<Mutex<Instant>>,
);

/// The session named in the query, if it exists and is for `id`; touches it.
fn session(
    state: &State,
    id: &PartitionId,
    query: Option<&str>,
) -> Result<SessionHandles, Refusal> {
    let key = query_pairs(query)
        .find(|(k, _)| *k == "session")
        .and_then(|(_, v)| u64::from_str_radix(v, 16).ok())
        .ok_or((RejectReason::BadRequest, "missing or bad session".into()))?;
    let mut sessions = lock(&state.sessions);
    let s = sessions
        .get_mut(&key)
        .ok_or((RejectReason::NotFound, "no such session (expired?)".into()))?;
    if s.lease.snapshot().id != *id {
        return Err((
            RejectReason::BadRequest,
            "session is for another partition".into(),
        ));
    }
    *lock(&s.last_used) = Instant::now();
    Ok((key, s.lease.clone(), s.active.clone(), s.last_used.clone()))
}

/// Counts a running body in its session and keeps the snapshot leased until it ends.
struct Streaming {
    active: Arc<AtomicUsize>,
    last_used: Arc<Mutex<Instant>>,
    _lease: Arc<SnapshotLease>,
}

impl Drop for Streaming {
    fn drop(&mut self) {
        // The idle clock restarts when the body ends, not when it was asked for.
        *lock(&self.last_used) = Instant::now();
        self.active.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn file(
    state: &State,
    id: &PartitionId,
    name: &str,
    query: Option<&str>,
    wire: Arc<Wire>,
) -> Response<Body> {
    let (_, lease, active, last_used) = match session(state, id, query) {
        Ok(s) => s,
        Err((reason, msg)) => return refuse(reason, msg),
    };
    if names::validate_file_name(name).is_err() {
        return refuse(RejectReason::BadRequest, "bad file name".into());
    }
    let snap = lease.snapshot();
    let Some(entry) = snap.files.iter().find(|f| f.name == name) else {
        return refuse(
            RejectReason::NotFound,
            format!("{name} not in the snapshot"),
        );
    };
    let f = match tokio::fs::File::open(snap.dir.join(&entry.name)).await {
        Ok(f) => f,
        Err(e) => return refuse(RejectReason::ServerError, format!("{name}: {e}")),
    };
    active.fetch_add(1, Ordering::SeqCst);
    let guard = Arc::new(Streaming {
        active,
        last_used,
        _lease: lease.clone(),
    });
    let limiter = state.cfg.write_limiter.clone();
    let stats = state.stats.clone();
    let counted = wire.clone();
    let stream = tokio_util::io::ReaderStream::with_capacity(f, CHUNK).then(move |chunk| {
        let limiter = limiter.clone();
        let stats = stats.clone();
        let wire = counted.clone();
        let _alive = guard.clone();
        async move {
            let chunk = chunk?;
            limiter.acquire(chunk.len() as u64).await;
            stats
                .bytes_sent
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            wire.body_bytes
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            Ok::<_, std::io::Error>(Frame::data(chunk))
        }
    });
    // The body ends only once the socket has drained (see `drained`); it yields nothing.
    let end = futures_util::stream::once(async move { drained(&wire).await })
        .filter_map(|()| async { None::<Result<Frame<Bytes>, std::io::Error>> });
    let stream = stream.chain(end);
    let mut resp = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    resp.headers_mut().insert(
        hyper::header::CONTENT_LENGTH,
        hyper::header::HeaderValue::from(entry.size),
    );
    resp
}

fn metadata(state: &State, id: &PartitionId, query: Option<&str>) -> Response<Body> {
    let (key, lease, _, _) = match session(state, id, query) {
        Ok(s) => s,
        Err((reason, msg)) => return refuse(reason, msg),
    };
    let resp = json(&lease.snapshot().meta);
    // The metadata is the last request of a transfer: release the snapshot now.
    lock(&state.sessions).remove(&key);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_parse_or_are_refused() {
        let r = parse_path("/v1/store/3/7/files/000012.sst").unwrap();
        assert_eq!(r.id, PartitionId::new("store", 3, 7).unwrap());
        assert_eq!((r.what, r.file), ("files", Some("000012.sst")));
        let r = parse_path("/v1/store/3/7/manifest").unwrap();
        assert_eq!((r.what, r.file), ("manifest", None));
        for bad in [
            "/",
            "/v2/store/3/7/manifest",
            "/v1/../3/7/manifest",
            "/v1/store/x/7/manifest",
            "/v1/store/3/-1/manifest",
            "/v1/store/3/7/files/a/b",
        ] {
            assert!(parse_path(bad).is_err(), "{bad} accepted");
        }
    }
}
