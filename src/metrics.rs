//! Prometheus metrics: a tiny registry of named readings, rendered in the text exposition
//! format, and the HTTP endpoint behind `--metrics-listen`.
//!
//! Each metric is a closure over counters the code keeps anyway (server stats, throttle
//! factors, snapshot users), so reading a metric costs nothing until it is scraped and there
//! is no second bookkeeping to drift out of sync.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use crate::baseline::{HttpServer, HttpStats};
use crate::budget::BufferBudget;
use crate::client::{FetchStats, Fetcher};
use crate::ingest::{IngestState, IngestStats};
use crate::server::{Server, ServerStats};
use crate::throttle::Throttler;

type Reading = Box<dyn Fn() -> f64 + Send + Sync>;
/// Picks one counter out of a stats struct.
type Pick<S> = fn(&S) -> &AtomicU64;

/// Whether a metric only grows (counter) or goes up and down (gauge).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Monotonic since the process started.
    Counter,
    /// A current value.
    Gauge,
}

struct Metric {
    name: String,
    help: String,
    kind: Kind,
    labels: Vec<(String, String)>,
    read: Reading,
}

/// Named readings, rendered on scrape.
#[derive(Clone, Default)]
pub struct Registry {
    metrics: Arc<Mutex<Vec<Metric>>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a reading; `labels` distinguish series of one metric name (e.g. an outcome).
    pub fn register(
        &self,
        name: &str,
        help: &str,
        kind: Kind,
        labels: &[(&str, &str)],
        read: impl Fn() -> f64 + Send + Sync + 'static,
    ) {
        self.metrics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Metric {
                name: name.to_owned(),
                help: help.to_owned(),
                kind,
                labels: labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
                read: Box::new(read),
            });
    }

    /// The Prometheus text exposition of every metric, `# HELP`/`# TYPE` once per name.
    pub fn render(&self) -> String {
        let metrics = self.metrics.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        let mut described = std::collections::HashSet::new();
        for m in metrics.iter() {
            if described.insert(m.name.as_str()) {
                let kind = match m.kind {
                    Kind::Counter => "counter",
                    Kind::Gauge => "gauge",
                };
                let _ = writeln!(out, "# HELP {} {}", m.name, m.help);
                let _ = writeln!(out, "# TYPE {} {kind}", m.name);
            }
            let labels = if m.labels.is_empty() {
                String::new()
            } else {
                let inner: Vec<String> = m
                    .labels
                    .iter()
                    .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                    .collect();
                format!("{{{}}}", inner.join(","))
            };
            let _ = writeln!(out, "{}{labels} {}", m.name, (m.read)());
        }
        out
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Reads one counter of a shared stats struct: the reading of a counter metric.
fn counter<S: Send + Sync + 'static>(
    stats: &Arc<S>,
    pick: Pick<S>,
) -> impl Fn() -> f64 + Send + Sync + 'static {
    let stats = stats.clone();
    move || pick(&stats).load(Ordering::Relaxed) as f64
}

/// One series of counter `name` per outcome, each with `labels` plus its `outcome` label.
fn register_outcomes<S: Send + Sync + 'static>(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[(&str, &str)],
    stats: &Arc<S>,
    outcomes: &[(&str, Pick<S>)],
) {
    for &(outcome, pick) in outcomes {
        let mut l = labels.to_vec();
        l.push(("outcome", outcome));
        r.register(name, help, Kind::Counter, &l, counter(stats, pick));
    }
}

/// The adaptive throttle factor of one direction (100 when there is no throttler).
fn register_throttle(r: &Registry, direction: &str, throttler: Option<&Throttler>) {
    let factor = throttler.map(|t| t.percent_cell());
    r.register(
        "quicstrap_throttle_factor_percent",
        "Adaptive throttle factor in percent of the base rate (100 without throttling).",
        Kind::Gauge,
        &[("direction", direction)],
        move || {
            factor
                .as_ref()
                .map_or(100.0, |f| f.load(Ordering::Relaxed) as f64)
        },
    );
}

/// The serving side's metrics: bytes, transfers by outcome, snapshots, the throttle factor.
pub fn register_server(r: &Registry, server: &Server, throttler: Option<&Throttler>) {
    let stats = server.stats();
    r.register(
        "quicstrap_bytes_sent_total",
        "File payload bytes written to QUIC streams.",
        Kind::Counter,
        &[],
        counter(&stats, |s| &s.bytes_sent),
    );
    let outcomes: &[(&str, Pick<ServerStats>)] = &[
        ("accepted", |s| &s.accepted),
        ("completed", |s| &s.completed),
        ("failed", |s| &s.failed),
        ("rejected", |s| &s.rejected),
        ("busy", |s| &s.busy),
    ];
    register_outcomes(
        r,
        "quicstrap_server_transfers_total",
        "Requests served, by outcome (busy is also counted in rejected).",
        &[],
        &stats,
        outcomes,
    );
    r.register(
        "quicstrap_connections_total",
        "QUIC connections that completed the handshake.",
        Kind::Counter,
        &[],
        counter(&stats, |s| &s.connections),
    );
    let snaps = server.snapshots().clone();
    r.register(
        "quicstrap_snapshot_users",
        "Transfers holding a snapshot right now.",
        Kind::Gauge,
        &[],
        move || snaps.users() as f64,
    );
    let snaps = server.snapshots().clone();
    r.register(
        "quicstrap_snapshots_created_total",
        "Checkpoints made.",
        Kind::Counter,
        &[],
        move || snaps.created() as f64,
    );
    register_throttle(r, "write", throttler);
    register_budget(
        r,
        "quicstrap_send_buffer",
        "queue for sending (send windows granted to connections with a transfer, plus \
         their file reads)",
        server.send_budget(),
    );
}

/// The bound a [`BufferBudget`] keeps (`<prefix>_bytes`) and its cap (`<prefix>_limit_bytes`).
fn register_budget(r: &Registry, prefix: &str, what: &str, budget: &Arc<BufferBudget>) {
    let b = budget.clone();
    r.register(
        &format!("{prefix}_bytes"),
        &format!("Most bytes the transfers of this process may {what} right now."),
        Kind::Gauge,
        &[],
        move || b.granted() as f64,
    );
    let cap = budget.cap() as f64;
    r.register(
        &format!("{prefix}_limit_bytes"),
        &format!("Process-wide cap on the bytes transfers may {what}."),
        Kind::Gauge,
        &[],
        move || cap,
    );
}

/// The process's resident memory and its peak, read at every scrape (Linux `/proc`); register
/// once per registry.
pub fn register_process(r: &Registry) {
    r.register(
        "quicstrap_process_resident_memory_bytes",
        "Resident memory of this process (VmRSS), sampled at scrape time.",
        Kind::Gauge,
        &[],
        || crate::budget::process_rss(None).map_or(f64::NAN, |(rss, _)| rss as f64),
    );
    r.register(
        "quicstrap_process_peak_resident_memory_bytes",
        "Peak resident memory of this process since it started (VmHWM).",
        Kind::Gauge,
        &[],
        || crate::budget::process_rss(None).map_or(f64::NAN, |(_, peak)| peak as f64),
    );
}

/// Ingestion health of each followed partition, labelled with it: a follower that stops
/// making progress must show on a dashboard, not only in a log line.
pub fn register_ingest(r: &Registry, partitions: &[(String, Arc<IngestStats>)]) {
    for (id, stats) in partitions {
        let l = [("partition", id.as_str())];
        let s = stats.clone();
        r.register(
            "quicstrap_ingest_lag_records",
            "Records between the applied offset and the high watermark at the last probe.",
            Kind::Gauge,
            &l,
            move || s.lag() as f64,
        );
        let s = stats.clone();
        r.register(
            "quicstrap_ingest_offset",
            "Last offset applied to the partition (NaN: none yet).",
            Kind::Gauge,
            &l,
            move || s.offset().map_or(f64::NAN, |o| o as f64),
        );
        let s = stats.clone();
        r.register(
            "quicstrap_ingest_last_progress_timestamp_seconds",
            "Unix time ingestion last applied records or was found caught up.",
            Kind::Gauge,
            &l,
            move || s.last_progress_secs(),
        );
        let s = stats.clone();
        r.register(
            "quicstrap_ingest_bad_records_total",
            "Records skipped because they cannot become a RocksDB entry (no key).",
            Kind::Counter,
            &l,
            move || s.bad_records() as f64,
        );
        for state in IngestState::ALL {
            let s = stats.clone();
            r.register(
                "quicstrap_ingest_state",
                "1 for the state ingestion is in: following, stalled, or stopped (not offered to peers).",
                Kind::Gauge,
                &[("partition", id.as_str()), ("state", state.name())],
                move || f64::from(u8::from(s.state() == state)),
            );
        }
    }
}

/// An HTTPS baseline listener's metrics, labelled with its address: a server may run one
/// listener per TCP congestion controller, and comparing transports needs each apart.
pub fn register_https(r: &Registry, server: &HttpServer) {
    let stats = server.stats();
    let addr = server.local_addr().to_string();
    r.register(
        "quicstrap_https_bytes_sent_total",
        "File payload bytes written into HTTPS response bodies.",
        Kind::Counter,
        &[("listener", &addr)],
        counter(&stats, |s| &s.bytes_sent),
    );
    let outcomes: &[(&str, Pick<HttpStats>)] = &[
        ("started", |s| &s.started),
        ("completed", |s| &s.completed),
        ("rejected", |s| &s.rejected),
        ("handshake_refused", |s| &s.handshakes_refused),
    ];
    register_outcomes(
        r,
        "quicstrap_https_transfers_total",
        "HTTPS baseline transfers by outcome (started: manifest served; completed: \
             metadata served; rejected: requests refused).",
        &[("listener", &addr)],
        &stats,
        outcomes,
    );
}

/// The fetching side's metrics: bytes received, fetches and attempts by outcome, the
/// connectivity cache, the read throttle factor.
pub fn register_client(r: &Registry, fetcher: &Arc<Fetcher>, throttler: Option<&Throttler>) {
    let stats = fetcher.stats();
    r.register(
        "quicstrap_bytes_received_total",
        "File payload bytes received (validated or not).",
        Kind::Counter,
        &[],
        counter(&stats, |s| &s.bytes_received),
    );
    let outcomes: &[(&str, Pick<FetchStats>)] = &[
        ("fetched", |s| &s.fetched),
        ("failed", |s| &s.failed),
        ("attempt_failed", |s| &s.attempts_failed),
    ];
    register_outcomes(
        r,
        "quicstrap_client_transfers_total",
        "Fetches by outcome, and failed attempts (each moved on to the next peer or gave up).",
        &[],
        &stats,
        outcomes,
    );
    let f = fetcher.clone();
    r.register(
        "quicstrap_connectivity_cache_size",
        "Peers with a fresh connectivity verdict.",
        Kind::Gauge,
        &[],
        move || f.connectivity_cache_len() as f64,
    );
    register_throttle(r, "read", throttler);
    register_budget(
        r,
        "quicstrap_recv_buffer",
        "hold received but unread (receive windows granted to connections with a \
         transfer, plus their receive buffers)",
        fetcher.recv_budget(),
    );
}

/// Scrapes served at once; more connections are closed unserved.
pub const METRICS_MAX_CONNECTIONS: usize = 32;
/// Longest one scrape connection may live, from accept to the last byte of the answer.
pub const METRICS_CONNECTION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Pause after a failed `accept` (EMFILE and the like) before the next.
pub(crate) const ACCEPT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(100);

/// Serves `GET /metrics` on `addr` until the task is aborted; returns the bound address.
/// Bounded before anything else, like every listener of a server: at most
/// [`METRICS_MAX_CONNECTIONS`] at once, each for at most [`METRICS_CONNECTION_TIMEOUT`].
pub async fn serve(
    addr: SocketAddr,
    registry: Registry,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let slots = Arc::new(tokio::sync::Semaphore::new(METRICS_MAX_CONNECTIONS));
    let task = tokio::spawn(async move {
        loop {
            let tcp = match listener.accept().await {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of file descriptors (EMFILE) and the like: retrying at once would
                    // spin a core while nothing can change.
                    tracing::warn!(error = %e, "metrics listener: accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            // Over the cap: the connection is dropped unserved (closed) at once.
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                continue;
            };
            let registry = registry.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let service =
                    hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let registry = registry.clone();
                        async move {
                            let resp = if req.uri().path() == "/metrics" {
                                let mut r =
                                    Response::new(Full::new(Bytes::from(registry.render())));
                                r.headers_mut().insert(
                                    hyper::header::CONTENT_TYPE,
                                    hyper::header::HeaderValue::from_static(
                                        "text/plain; version=0.0.4",
                                    ),
                                );
                                r
                            } else {
                                let mut r =
                                    Response::new(Full::new(Bytes::from_static(b"see /metrics\n")));
                                *r.status_mut() = StatusCode::NOT_FOUND;
                                r
                            };
                            Ok::<_, Infallible>(resp)
                        }
                    });
                // One scrape per connection, whole within the limit: a client that sends
                // nothing or reads nothing cannot hold a slot.
                let conn = hyper::server::conn::http1::Builder::new()
                    .keep_alive(false)
                    .serve_connection(TokioIo::new(tcp), service);
                let _ = tokio::time::timeout(METRICS_CONNECTION_TIMEOUT, conn).await;
            });
        }
    });
    Ok((bound, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_text_format() {
        let r = Registry::new();
        let n = Arc::new(AtomicU64::new(7));
        let m = n.clone();
        r.register(
            "qs_bytes_sent_total",
            "Payload bytes sent.",
            Kind::Counter,
            &[],
            move || m.load(Ordering::Relaxed) as f64,
        );
        r.register(
            "qs_transfers_total",
            "Transfers by outcome.",
            Kind::Counter,
            &[("outcome", "ok")],
            || 3.0,
        );
        r.register(
            "qs_transfers_total",
            "Transfers by outcome.",
            Kind::Counter,
            &[("outcome", "busy")],
            || 1.0,
        );
        n.store(9, Ordering::Relaxed);
        let text = r.render();
        assert_eq!(
            text,
            "# HELP qs_bytes_sent_total Payload bytes sent.\n\
             # TYPE qs_bytes_sent_total counter\n\
             qs_bytes_sent_total 9\n\
             # HELP qs_transfers_total Transfers by outcome.\n\
             # TYPE qs_transfers_total counter\n\
             qs_transfers_total{outcome=\"ok\"} 3\n\
             qs_transfers_total{outcome=\"busy\"} 1\n"
        );
    }

    #[tokio::test]
    async fn the_endpoint_serves_it() {
        let r = Registry::new();
        r.register("qs_up", "Always 1.", Kind::Gauge, &[], || 1.0);
        let (addr, task) = serve("127.0.0.1:0".parse().unwrap(), r).await.unwrap();
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        let resp = sender
            .send_request(
                Request::get("/metrics")
                    .header("host", "x")
                    .body(http_body_util::Empty::<Bytes>::new())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes();
        assert!(String::from_utf8_lossy(&body).contains("qs_up 1\n"));
        task.abort();
    }
}
