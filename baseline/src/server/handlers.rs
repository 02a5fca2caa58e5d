//! The three requests of a baseline transfer: the manifest (which leases the snapshot and opens
//! a session), each file, and the metadata (which ends the session).

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};

use quicstrap::protocol::transfer::check_partition;
use quicstrap::protocol::{names, RejectReason};
use quicstrap::snapshot::{AcquireError, ClientKey, Piece, SnapshotLease};
use quicstrap::store::checksum::ChecksumAlgo;
use quicstrap::store::partition::PartitionId;
use rustls_pki_types::CertificateDer;

use crate::http::{query_pairs, Manifest, ManifestFile, DIGEST_TRAILER, REJECT_HEADER};
use quicstrap::store::lock::unpoisoned as lock;

use super::drain::{drains_within, Wire};
use super::state::{Body, HttpStats, Session, State};

pub(super) fn expire_sessions(state: &State, now: Instant) {
    let idle = state.cfg.policy.idle_timeout;
    lock(&state.sessions).retain(|_, s| {
        s.active.load(Ordering::SeqCst) > 0
            || now.saturating_duration_since(*lock(&s.last_used)) < idle
    });
}

/// A refusal the client maps onto the same typed errors as QUIC's `Reject`.
fn refuse(reason: RejectReason, msg: String) -> Response<Body> {
    let status = match reason {
        RejectReason::NotFound => StatusCode::NOT_FOUND,
        RejectReason::Busy | RejectReason::ShuttingDown | RejectReason::Draining => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        RejectReason::Disabled | RejectReason::NotAllowed => StatusCode::FORBIDDEN,
        RejectReason::FormatMismatch => StatusCode::CONFLICT,
        RejectReason::UnsupportedVersion | RejectReason::BadRequest => StatusCode::BAD_REQUEST,
        RejectReason::ServerError => StatusCode::INTERNAL_SERVER_ERROR,
        RejectReason::Stale => StatusCode::SERVICE_UNAVAILABLE,
        RejectReason::SnapshotGone => StatusCode::GONE,
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

pub(super) async fn handle(
    req: Request<Incoming>,
    state: Arc<State>,
    wire: Arc<Wire>,
    (client, cert): (Arc<ClientKey>, Arc<Option<CertificateDer<'static>>>),
) -> Result<Response<Body>, Infallible> {
    let allowed = cert
        .as_ref()
        .as_ref()
        .map_or(true, |c| state.cfg.policy.live.permits(c));
    let (what, resp) = if allowed {
        answer(&req, &state, wire, &client).await
    } else {
        let msg = "this client is no longer allowed".to_owned();
        (None, refuse(RejectReason::NotAllowed, msg))
    };
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
    client: &ClientKey,
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
        ("manifest", None) => manifest(state, &route.id, query, client).await,
        ("files", Some(name)) => file(state, &route.id, name, query, wire).await,
        ("metadata", None) => metadata(state, &route.id, query),
        _ => refuse(RejectReason::BadRequest, "no such resource".into()),
    };
    (Some(route.what), resp)
}

async fn manifest(
    state: &State,
    id: &PartitionId,
    query: Option<&str>,
    client: &ClientKey,
) -> Response<Body> {
    let mut algo = ChecksumAlgo::Md5;
    let mut format = state.cfg.policy.table_format;
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
    if let Err((reason, msg)) = check_partition(&id.store, format, state.cfg.policy.table_format) {
        return refuse(reason, msg);
    }
    // The node's live policy, as the QUIC listeners apply it: drain, stores turned off.
    let live = &state.cfg.policy.live;
    if live.draining() {
        return refuse(RejectReason::Draining, "draining: no new transfers".into());
    }
    if !live.store(&id.store).serve {
        return refuse(
            RejectReason::Disabled,
            format!("store {} is not served here", id.store),
        );
    }
    let lease = match state
        .snapshots
        .acquire_as(Some(client), id, Instant::now())
        .await
    {
        Ok(l) => l,
        Err(e) => {
            if matches!(e, AcquireError::ClientBusy { .. }) {
                state.stats.busy_per_client.fetch_add(1, Ordering::Relaxed);
            }
            return refuse(e.reason(), format!("{id}: {e}"));
        }
    };
    // Digests where known; the others follow each file in its trailer, as over QUIC.
    let snap = lease.snapshot().clone();
    let files = match tokio::task::spawn_blocking(move || snap.manifest(algo)).await {
        Ok(files) => files,
        Err(e) => return refuse(RejectReason::ServerError, format!("manifest: {e}")),
    };
    let session = rand::random::<u64>();
    lock(&state.sessions).insert(
        session,
        Session {
            lease: Arc::new(lease),
            algo,
            last_used: Arc::new(Mutex::new(Instant::now())),
            active: Arc::default(),
        },
    );
    json(&Manifest {
        session: format!("{session:016x}"),
        files: files
            .into_iter()
            .map(|f| ManifestFile {
                digest: hex::encode(&f.digest),
                name: f.name,
                size: f.size,
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
    ChecksumAlgo,
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
    Ok((
        key,
        s.lease.clone(),
        s.algo,
        s.active.clone(),
        s.last_used.clone(),
    ))
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
    let (_, lease, algo, active, last_used) = match session(state, id, query) {
        Ok(s) => s,
        Err((reason, msg)) => return refuse(reason, msg),
    };
    if names::validate_file_name(name).is_err() {
        return refuse(RejectReason::BadRequest, "bad file name".into());
    }
    let snap = lease.snapshot();
    let Some(index) = snap.files.iter().position(|f| f.name == name) else {
        return refuse(
            RejectReason::NotFound,
            format!("{name} not in the snapshot"),
        );
    };
    active.fetch_add(1, Ordering::SeqCst);
    let body = FileBody {
        pieces: snap.read_file(index, 0, algo),
        limiter: state.cfg.policy.write_limiter.clone(),
        stats: state.stats.clone(),
        start: (Instant::now(), wire.body_bytes.load(Ordering::Relaxed)),
        header_timeout: state.cfg.header_timeout,
        wire,
        _alive: Streaming {
            active,
            last_used,
            _lease: lease.clone(),
        },
    };
    // Chunked (no length), so the digest can follow the last byte as a trailer.
    let stream = futures_util::stream::unfold(Some(body), |body| async move {
        let mut body = body?;
        match body.next().await {
            Some(Ok(frame)) => Some((Ok(frame), Some(body))),
            // Nothing after an error or the trailer: hyper ends the response there.
            Some(Err(e)) => Some((Err(e), None)),
            None => None,
        }
    });
    let mut resp = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    // Announced, as HTTP/1.1 asks: hyper sends only the trailer fields named here.
    resp.headers_mut().insert(
        hyper::header::TRAILER,
        hyper::header::HeaderValue::from_static(DIGEST_TRAILER),
    );
    resp
}

/// One file's response body: its bytes as the snapshot's reader hands them out, paced and
/// counted, then its digest as a trailer.
struct FileBody {
    pieces: tokio::sync::mpsc::Receiver<std::io::Result<Piece>>,
    limiter: Arc<quicstrap::control::pacing::RateLimiter>,
    stats: Arc<HttpStats>,
    /// When the body began and the connection's body bytes then, for [`drains_within`].
    start: (Instant, u64),
    header_timeout: std::time::Duration,
    wire: Arc<Wire>,
    /// Keeps the session's count and the snapshot until the body ends.
    _alive: Streaming,
}

impl FileBody {
    async fn next(&mut self) -> Option<std::io::Result<Frame<Bytes>>> {
        let piece = match self.pieces.recv().await? {
            Ok(p) => p,
            Err(e) => return Some(Err(e)),
        };
        match piece {
            Piece::Data(chunk) => {
                let n = chunk.len() as u64;
                self.limiter.acquire(n).await;
                self.stats.bytes_sent.fetch_add(n, Ordering::Relaxed);
                self.wire.body_bytes.fetch_add(n, Ordering::Relaxed);
                Some(Ok(Frame::data(chunk)))
            }
            Piece::Digest(digest) => {
                // The trailer ends the body: hyper's header timeout for the next request
                // starts once the client can send it well within that timeout.
                drains_within(&self.wire, self.start, self.header_timeout / 4).await;
                let mut trailers = hyper::HeaderMap::new();
                let value = hyper::header::HeaderValue::from_str(&hex::encode(digest))
                    .map_err(std::io::Error::other);
                Some(value.map(|v| {
                    trailers.insert(DIGEST_TRAILER, v);
                    Frame::trailers(trailers)
                }))
            }
        }
    }
}

fn metadata(state: &State, id: &PartitionId, query: Option<&str>) -> Response<Body> {
    let (key, lease, _, _, _) = match session(state, id, query) {
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
