//! The HTTPS side of the baseline's client: manifest, files, metadata over keep-alive TCP
//! connections, through the same receive → validate → commit path as QUIC.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use quicstrap::client::attempts::{
    self, check_manifest, receive_file, BadTrailer, ByteSource, FirstByte, Landing, OpenFiles,
    TempDir,
};
use quicstrap::client::{
    AttemptError, FetchError, FetchPolicy, FetchReport, FetchStats, Progress, SetupError,
};
use quicstrap::net::tls::{self, Identity};
use quicstrap::peers::Peer;
use quicstrap::protocol::fetch::FetchRules;
use quicstrap::protocol::FileEntry;
use quicstrap::store::lock::unpoisoned as lock;
use quicstrap::store::partition::{PartitionId, PartitionMeta};

use crate::http::{Manifest, DIGEST_TRAILER, REJECT_HEADER};
use crate::tcp::{set_tcp_congestion, TcpCongestion};
use quicstrap::protocol::RejectReason;

/// Largest JSON body (a manifest) the baseline client reads: the QUIC client's control-frame
/// limit, so both transports bound a hostile server alike.
const MAX_JSON_BODY: usize = quicstrap::client::MAX_CONTROL_FRAME;

/// Knobs of the baseline's fetching side.
#[derive(Clone, Debug)]
pub struct HttpFetchConfig {
    /// What to ask for, how long to wait, how fast to read: the QUIC fetcher's terms.
    pub policy: FetchPolicy,
    /// TCP connections pulling files from one queue (1: Venice's way, files one after
    /// another on one keep-alive connection).
    pub connections: usize,
    /// Congestion controller of this side's sockets (only matters for what the client sends;
    /// the server's listener decides for the file bytes).
    pub congestion: Option<TcpCongestion>,
}

impl HttpFetchConfig {
    /// Defaults around an identity.
    pub fn new(identity: Identity) -> Self {
        Self::with_policy(FetchPolicy::new(identity))
    }

    /// The baseline on the same terms as a QUIC fetcher's `policy`.
    pub fn with_policy(policy: FetchPolicy) -> Self {
        Self {
            policy,
            connections: 1,
            congestion: None,
        }
    }
}

/// The baseline's fetcher: one per process, like [`Fetcher`](quicstrap::client::Fetcher).
pub struct HttpFetcher {
    cfg: HttpFetchConfig,
    tls: Arc<rustls::ClientConfig>,
    stats: Arc<FetchStats>,
}

impl HttpFetcher {
    /// Checks the TLS material once, so a bad certificate is a setup error, not a failed peer.
    pub fn new(cfg: HttpFetchConfig) -> Result<Self, SetupError> {
        let mut tls = tls::client_config(&cfg.policy.identity)?;
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            cfg,
            tls: Arc::new(tls),
            stats: Arc::default(),
        })
    }

    /// Live counters, the same as [`Fetcher::stats`](quicstrap::client::Fetcher::stats).
    pub fn stats(&self) -> Arc<FetchStats> {
        self.stats.clone()
    }

    /// Fetches `id` over HTTPS from the first of `peers` (tried in order) that can serve it,
    /// with the same guarantees as [`Fetcher::fetch`](quicstrap::client::Fetcher::fetch):
    /// validated, atomic, nothing left behind on failure.
    pub async fn fetch(
        &self,
        id: &PartitionId,
        peers: &[Peer],
        root: &Path,
        progress: &Progress,
    ) -> Result<FetchReport, FetchError> {
        fetch(&self.cfg, &self.tls, &self.stats, id, peers, root, progress).await
    }
}

async fn fetch(
    cfg: &HttpFetchConfig,
    tls: &Arc<rustls::ClientConfig>,
    stats: &FetchStats,
    id: &PartitionId,
    peers: &[Peer],
    root: &Path,
    progress: &Progress,
) -> Result<FetchReport, FetchError> {
    attempts::sweep(root, FetchRules::default().resume_window);
    let target = attempts::check_target(id, root, peers)?;
    let parent = attempts::prepare_parent(id, root)?;
    let (parent, target_dir) = (&parent, &target);
    // The baseline has no connectivity check: every peer is worth an attempt.
    let candidates: Vec<_> = peers
        .iter()
        .map(|p| attempts::Candidate::new(&cfg.policy, p.clone(), Ok(())))
        .collect();
    attempts::try_peers(
        id,
        target.clone(),
        candidates,
        None,
        // The baseline does not resume: every attempt starts from byte 0, each peer once.
        FetchRules {
            max_resumes: 0,
            ..FetchRules::default()
        },
        progress,
        stats,
        |peer, _| async move { attempt(cfg, tls, id, &peer, parent, target_dir, progress).await },
        || None,
    )
    .await
}

type Sender = SendRequest<Empty<Bytes>>;

/// One keep-alive HTTPS connection to a peer.
struct Conn {
    sender: Sender,
    host: String,
}

async fn connect(
    cfg: &HttpFetchConfig,
    tls: &Arc<rustls::ClientConfig>,
    peer: &Peer,
) -> Result<Conn, AttemptError> {
    let setup = async {
        let sock = if peer.addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        }
        .map_err(AttemptError::local)?;
        if let Some(cc) = &cfg.congestion {
            set_tcp_congestion(&sock, cc).map_err(AttemptError::local)?;
        }
        let tcp = sock
            .connect(peer.addr)
            .await
            .map_err(|e| AttemptError::Connect(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let name = rustls_pki_types::ServerName::try_from(peer.server_name.clone())
            .map_err(|e| AttemptError::Connect(format!("server name: {e}")))?;
        let stream = tokio_rustls::TlsConnector::from(tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| AttemptError::Connect(e.to_string()))?;
        let (sender, driver) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| AttemptError::Connect(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(e) = driver.await {
                tracing::debug!(error = %e, "http connection ended");
            }
        });
        Ok(Conn {
            sender,
            host: peer.server_name.clone(),
        })
    };
    tokio::time::timeout(cfg.policy.connect_timeout, setup)
        .await
        .map_err(|_| AttemptError::ConnectTimeout)?
}

impl Conn {
    /// GETs `path`; a refusal becomes the typed rejection, any other non-200 a protocol error.
    async fn get(
        &mut self,
        path: &str,
        idle: Duration,
    ) -> Result<Response<Incoming>, AttemptError> {
        // A file's digest follows its body as a trailer, which HTTP/1.1 sends only to a client
        // that says it takes them.
        let req = Request::get(path)
            .header(hyper::header::HOST, &self.host)
            .header(hyper::header::TE, "trailers")
            .body(Empty::new())
            .map_err(|e| AttemptError::Protocol(format!("request: {e}")))?;
        let resp = tokio::time::timeout(idle, async {
            self.sender
                .ready()
                .await
                .map_err(|e| AttemptError::PeerGone(e.to_string()))?;
            self.sender
                .send_request(req)
                .await
                .map_err(|e| AttemptError::PeerGone(e.to_string()))
        })
        .await
        .map_err(|_| AttemptError::Idle(idle))??;
        if resp.status() == StatusCode::OK {
            return Ok(resp);
        }
        let status = resp.status();
        let reason = resp
            .headers()
            .get(REJECT_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.parse().unwrap_or(RejectReason::ServerError));
        let body = read_json_body(resp, idle).await.unwrap_or_default();
        let message = quicstrap::protocol::names::peer_text(String::from_utf8_lossy(&body).trim());
        Err(match reason {
            Some(reason) => AttemptError::Rejected { reason, message },
            None => AttemptError::Protocol(format!("HTTP {status}: {message}")),
        })
    }
}

async fn read_json_body(resp: Response<Incoming>, idle: Duration) -> Result<Bytes, AttemptError> {
    let body = Limited::new(resp.into_body(), MAX_JSON_BODY);
    let collected = tokio::time::timeout(idle, body.collect())
        .await
        .map_err(|_| AttemptError::Idle(idle))?
        .map_err(|e| AttemptError::Protocol(format!("body: {e}")))?;
    Ok(collected.to_bytes())
}

/// An HTTP body as a [`ByteSource`], with the reader-idle timeout on every wait.
struct BodySource {
    body: Incoming,
    pending: Bytes,
    /// The trailer fields, once the body's last frame brought them.
    trailers: Option<hyper::HeaderMap>,
    idle: Duration,
}

impl BodySource {
    /// The next data of the body into `pending`; `false` at its end (trailers or none).
    async fn fill(&mut self) -> Result<bool, AttemptError> {
        while self.pending.is_empty() {
            if self.trailers.is_some() {
                return Ok(false);
            }
            match tokio::time::timeout(self.idle, self.body.frame()).await {
                Err(_) => return Err(AttemptError::Idle(self.idle)),
                Ok(None) => return Ok(false),
                Ok(Some(Err(e))) => return Err(AttemptError::PeerGone(e.to_string())),
                Ok(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => self.pending = data,
                    Err(frame) => self.trailers = frame.into_trailers().ok(),
                },
            }
        }
        Ok(true)
    }
}

impl ByteSource for BodySource {
    async fn read_some(&mut self, buf: &mut [u8]) -> Result<Option<usize>, AttemptError> {
        if !self.fill().await? {
            return Ok(None);
        }
        let n = buf.len().min(self.pending.len());
        buf[..n].copy_from_slice(&self.pending[..n]);
        self.pending.advance(n);
        Ok(Some(n))
    }

    async fn trailer(&mut self) -> Result<Result<Vec<u8>, BadTrailer>, AttemptError> {
        if self.fill().await? {
            return Ok(Err(BadTrailer::More));
        }
        let digest = self
            .trailers
            .as_ref()
            .and_then(|t| t.get(DIGEST_TRAILER))
            .and_then(|v| v.to_str().ok())
            .map(hex::decode);
        Ok(match digest {
            Some(Ok(d)) => Ok(d),
            Some(Err(e)) => Err(BadTrailer::Malformed(format!("digest trailer: {e}"))),
            None => Err(BadTrailer::Malformed(
                "the body ended without a digest trailer".into(),
            )),
        })
    }

    fn cut(&mut self) {
        // Dropping the body (with the attempt) closes the connection; nothing more to say.
    }
}

fn base(id: &PartitionId) -> String {
    format!("/v1/{}/{}/{}", id.store, id.version, id.partition)
}

async fn attempt(
    cfg: &HttpFetchConfig,
    tls: &Arc<rustls::ClientConfig>,
    id: &PartitionId,
    peer: &Peer,
    parent: &Path,
    target: &Path,
    progress: &Progress,
) -> Result<(usize, PartitionMeta), AttemptError> {
    let idle = cfg.policy.idle_timeout;
    let base = base(id);
    // Until files arrive nothing is on disk: dropping this on a cancel is clean.
    let setup = async {
        let mut conn = connect(cfg, tls, peer).await?;
        let resp = conn
            .get(
                &format!(
                    "{base}/manifest?checksum={}&format={}",
                    cfg.policy.checksum, cfg.policy.table_format
                ),
                idle,
            )
            .await?;
        let body = read_json_body(resp, idle).await?;
        let manifest: Manifest = serde_json::from_slice(&body)
            .map_err(|e| AttemptError::Protocol(format!("manifest: {e}")))?;
        let files = manifest
            .files
            .into_iter()
            .map(|f| {
                Ok(FileEntry {
                    digest: hex::decode(&f.digest).map_err(|e| {
                        AttemptError::Protocol(format!("digest of {}: {e}", f.name))
                    })?,
                    name: f.name,
                    size: f.size,
                })
            })
            .collect::<Result<Vec<_>, AttemptError>>()?;
        check_manifest(&files, cfg.policy.checksum)?;
        Ok::<_, AttemptError>((conn, manifest.session, files))
    };
    let (conn, session, files) = tokio::select! {
        r = setup => r?,
        _ = progress.cancelled() => return Err(AttemptError::Cancelled),
    };
    progress.total.store(
        files.iter().fold(0u64, |a, f| a.saturating_add(f.size)),
        Ordering::Relaxed,
    );
    let tmp = TempDir::create(parent, id.partition)?;
    let open = OpenFiles::default();
    let mut tasks = tokio::task::JoinSet::new();
    let received = tokio::select! {
        r = receive_all(cfg, tls, peer, conn, &base, &session, &files, (tmp.path(), &open), progress, &mut tasks) => r,
        e = attempts::too_slow(&cfg.policy, &progress.received) => Err(e),
        _ = progress.cancelled() => Err(AttemptError::Cancelled),
    };
    // Every worker ends and every file handle closes before anyone deletes the directory.
    attempts::end_file_tasks(&mut tasks, &open).await;
    let (meta, bytes) = match received {
        Ok(r) => r,
        Err(e) => {
            tmp.remove();
            release(cfg, tls, peer, format!("{base}/metadata?session={session}"));
            return Err(e);
        }
    };
    attempts::commit_received(
        tmp,
        target,
        cfg.policy.table_format,
        peer,
        files.len(),
        bytes,
        meta.clone(),
        progress,
    )
    .await?;
    Ok((files.len(), meta))
}

/// Ends a session the attempt gave up on (its metadata request does), in the background and
/// best effort, so the server does not hold the snapshot slot until its idle timeout.
fn release(cfg: &HttpFetchConfig, tls: &Arc<rustls::ClientConfig>, peer: &Peer, path: String) {
    let (cfg, tls, peer) = (cfg.clone(), tls.clone(), peer.clone());
    tokio::spawn(async move {
        let ended = tokio::time::timeout(Duration::from_secs(5), async {
            let mut conn = connect(&cfg, &tls, &peer).await?;
            let resp = conn.get(&path, Duration::from_secs(5)).await?;
            read_json_body(resp, Duration::from_secs(5)).await
        })
        .await;
        if !matches!(ended, Ok(Ok(_))) {
            tracing::debug!(%peer, "could not end the session; the server's idle timeout will");
        }
    });
}

/// Pulls every file through `cfg.connections` connections (the first is `first`), then the
/// metadata; returns it with the payload bytes.
#[allow(clippy::too_many_arguments)]
async fn receive_all(
    cfg: &HttpFetchConfig,
    tls: &Arc<rustls::ClientConfig>,
    peer: &Peer,
    first: Conn,
    base: &str,
    session: &str,
    files: &[FileEntry],
    (dir, open): (&Path, &OpenFiles),
    progress: &Progress,
    tasks: &mut tokio::task::JoinSet<Result<(Conn, u64), AttemptError>>,
) -> Result<(PartitionMeta, u64), AttemptError> {
    let queue: Arc<Mutex<VecDeque<FileEntry>>> =
        Arc::new(Mutex::new(files.iter().cloned().collect()));
    let workers = cfg.connections.clamp(1, files.len().max(1));
    // The extra connections handshake together, and a failed one only costs its share: the
    // files go to the connections that exist.
    let extra = futures_util::future::join_all((1..workers).map(|_| connect(cfg, tls, peer))).await;
    let conns = std::iter::once(first).chain(extra.into_iter().filter_map(|c| match c {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::info!(error = %e, "extra connection failed; carrying on with fewer");
            None
        }
    }));
    for conn in conns {
        tasks.spawn(worker(
            conn,
            queue.clone(),
            format!("{base}/files"),
            session.to_owned(),
            dir.to_owned(),
            cfg.policy.idle_timeout,
            progress.first_byte.clone(),
            Landing::new(&cfg.policy, peer, progress.received.clone(), open.clone()),
        ));
    }
    let mut bytes = 0;
    let mut keep = None;
    while let Some(done) = tasks.join_next().await {
        let (conn, n) = done.map_err(|e| AttemptError::LocalIo(format!("file task: {e}")))??;
        bytes += n;
        keep.get_or_insert(conn);
    }
    let mut conn = keep.ok_or_else(|| AttemptError::Protocol("no connection left".into()))?;
    let resp = conn
        .get(
            &format!("{base}/metadata?session={session}"),
            cfg.policy.idle_timeout,
        )
        .await?;
    let body = read_json_body(resp, cfg.policy.idle_timeout).await?;
    let meta: PartitionMeta = serde_json::from_slice(&body)
        .map_err(|e| AttemptError::Protocol(format!("metadata: {e}")))?;
    Ok((meta, bytes))
}

/// One connection's loop: take the next file, GET it, receive and validate it.
#[allow(clippy::too_many_arguments)]
async fn worker(
    mut conn: Conn,
    queue: Arc<Mutex<VecDeque<FileEntry>>>,
    files_url: String,
    session: String,
    dir: std::path::PathBuf,
    idle: Duration,
    first_byte: FirstByte,
    landing: Landing,
) -> Result<(Conn, u64), AttemptError> {
    let mut total = 0;
    loop {
        let next = lock(&queue).pop_front();
        let Some(entry) = next else {
            return Ok((conn, total));
        };
        let resp = conn
            .get(
                &format!("{files_url}/{}?session={session}", entry.name),
                idle,
            )
            .await?;
        first_byte.mark();
        let source = BodySource {
            body: resp.into_body(),
            pending: Bytes::new(),
            trailers: None,
            idle,
        };
        let path = dir.join(&entry.name);
        total += receive_file(source, path, entry, 0, landing.clone()).await?;
    }
}
