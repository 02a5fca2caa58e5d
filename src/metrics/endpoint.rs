//! The HTTP endpoint behind `--metrics-listen`: `GET /metrics`, bounded like every listener
//! of a server (a cap on connections, a time limit on each).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use super::Registry;

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
