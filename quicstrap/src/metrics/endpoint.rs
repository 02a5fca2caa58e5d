//! The HTTP endpoint behind `--metrics-listen` (`GET /metrics`) and `--admin-listen`, bounded
//! like every listener of a server (a cap on connections, a time limit on each).
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

/// One request as the tiny endpoint sees it: method, path, query string (no body: every
/// call of the metrics and admin endpoints fits in the request line).
#[derive(Clone, Copy, Debug)]
pub struct Call<'a> {
    /// `GET`, `POST`, ...
    pub method: &'a str,
    /// The path without the query string.
    pub path: &'a str,
    /// What follows `?`, or empty.
    pub query: &'a str,
    /// The header lines after the request line.
    pub headers: &'a str,
}

impl Call<'_> {
    /// The value of header `name` (case-insensitive), if sent.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// An answer: status line (`200 OK`), content type, body.
pub type Answer = (&'static str, &'static str, Vec<u8>);

/// What answers calls: the metrics, the admin view.
pub type Handler = Arc<dyn Fn(Call<'_>) -> Answer + Send + Sync>;

/// Serves `GET /metrics` on `addr` until the task is aborted; returns the bound address.
/// Bounded before anything else, like every listener of a server: at most
/// [`METRICS_MAX_CONNECTIONS`] at once, each for at most [`METRICS_CONNECTION_TIMEOUT`].
pub async fn serve(
    addr: SocketAddr,
    registry: Registry,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let handler: Handler = Arc::new(move |call: Call<'_>| match (call.method, call.path) {
        ("GET", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4",
            registry.render().into_bytes(),
        ),
        ("GET", _) => ("404 Not Found", "text/plain", b"see /metrics\n".to_vec()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            b"GET only\n".to_vec(),
        ),
    });
    serve_calls(addr, handler).await
}

/// Serves `handler` over HTTP/1.1 on `addr` until the task is aborted; returns the bound
/// address. At most [`METRICS_MAX_CONNECTIONS`] connections at once, each for at most
/// [`METRICS_CONNECTION_TIMEOUT`], one request each.
pub async fn serve_calls(
    addr: SocketAddr,
    handler: Handler,
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
                    tracing::warn!(error = %e, "http listener: accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            // Over the cap: the connection is dropped unserved (closed) at once.
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                continue;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let _slot = slot;
                // One call per connection, whole within the limit: a client that sends
                // nothing or reads nothing cannot hold a slot.
                let _ =
                    tokio::time::timeout(METRICS_CONNECTION_TIMEOUT, one_call(tcp, &handler)).await;
            });
        }
    });
    Ok((bound, task))
}

/// Longest request head read; a scrape's is a few hundred bytes.
const MAX_REQUEST_HEAD: usize = 8 << 10;

/// Reads one request head and answers it with `handler`; 400 for anything that is not a
/// request head within [`MAX_REQUEST_HEAD`].
async fn one_call(mut tcp: tokio::net::TcpStream, handler: &Handler) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tcp.read(&mut buf).await?;
        if n == 0 || head.len() + n > MAX_REQUEST_HEAD {
            return answer(&mut tcp, "400 Bad Request", "text/plain", b"bad request\n").await;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    let (line, headers) = text.split_once("\r\n").unwrap_or((&text, ""));
    let mut words = line.split(' ');
    let (method, target) = (
        words.next().unwrap_or_default(),
        words.next().unwrap_or_default(),
    );
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let (status, content_type, body) = handler(Call {
        method,
        path,
        query,
        headers,
    });
    answer(&mut tcp, status, content_type, &body).await
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
