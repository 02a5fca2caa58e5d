//! The three requests of a baseline transfer: the manifest (which leases the snapshot and opens
//! a session), each file, and the metadata (which ends the session).

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};

use crate::checksum::ChecksumAlgo;
use crate::partition::PartitionId;
use crate::protocol::transfer::check_partition;
use crate::protocol::{names, RejectReason};
use crate::snapshot::{AcquireError, ClientKey, SnapshotLease};

use super::{query_pairs, Manifest, ManifestFile, REJECT_HEADER};
use crate::lock::unpoisoned as lock;

use super::accept::{drained, Wire};
use super::*;

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
        RejectReason::Busy | RejectReason::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
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
    client: Arc<ClientKey>,
) -> Result<Response<Body>, Infallible> {
    let (what, resp) = answer(&req, &state, wire, &client).await;
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
    let limiter = state.cfg.policy.write_limiter.clone();
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
