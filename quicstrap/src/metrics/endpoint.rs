//! The HTTP endpoint behind `--metrics-listen`: `GET /metrics`, bounded like every listener
//! of a server (a cap on connections, a time limit on each).
//!
//! A scrape is one request line and one answer, so the endpoint speaks that much HTTP/1.1
//! itself (one request per connection, `Connection: close`) instead of pulling an HTTP
//! stack into every build of the engine.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
                // One scrape per connection, whole within the limit: a client that sends
                // nothing or reads nothing cannot hold a slot.
                let _ =
                    tokio::time::timeout(METRICS_CONNECTION_TIMEOUT, scrape(tcp, &registry)).await;
            });
        }
    });
    Ok((bound, task))
}

/// Longest request head read; a scrape's is a few hundred bytes.
const MAX_REQUEST_HEAD: usize = 8 << 10;

/// Reads one request head and answers it: the metrics for `GET /metrics`, 404 for another
/// path, 400 for anything that is not a request head within [`MAX_REQUEST_HEAD`].
async fn scrape(mut tcp: tokio::net::TcpStream, registry: &Registry) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tcp.read(&mut buf).await?;
        if n == 0 || head.len() + n > MAX_REQUEST_HEAD {
            return answer(&mut tcp, "400 Bad Request", "text/plain", b"bad request\n").await;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut words = line.split(|&b| b == b' ');
    let (method, path) = (words.next(), words.next().unwrap_or_default());
    // The path without a query string, as a scraper may add one.
    let path = path.split(|&b| b == b'?').next().unwrap_or_default();
    match (method, path) {
        (Some(b"GET"), b"/metrics") => {
            let body = registry.render();
            answer(
                &mut tcp,
                "200 OK",
                "text/plain; version=0.0.4",
                body.as_bytes(),
            )
            .await
        }
        (Some(b"GET"), _) => {
            answer(&mut tcp, "404 Not Found", "text/plain", b"see /metrics\n").await
        }
        _ => {
            answer(
                &mut tcp,
                "405 Method Not Allowed",
                "text/plain",
                b"GET only\n",
            )
            .await
        }
    }
}

/// Writes one whole answer and closes the sending side.
async fn answer(
    tcp: &mut tokio::net::TcpStream,
    status: &str,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes()).await?;
    tcp.write_all(body).await?;
    tcp.shutdown().await
}
