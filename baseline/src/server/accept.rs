//! Accepting TLS connections under the connection caps, serving them with hyper, and
//! watching that responses keep draining.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use tokio::sync::watch;

use quicstrap::net::admission::PerIp;
use quicstrap::snapshot::ClientKey;

use super::handlers::{expire_sessions, handle};
use super::*;

pub(super) async fn accept_loop(
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
        let room = state.connections.load(Ordering::SeqCst) < state.cfg.max_connections;
        let (true, Some(per_ip)) = (room, per_ip) else {
            state
                .stats
                .connections_refused
                .fetch_add(1, Ordering::Relaxed);
            if room {
                // Only the host's own cap stood in the way.
                state
                    .stats
                    .connections_refused_per_host
                    .fetch_add(1, Ordering::Relaxed);
            }
            drop(tcp);
            continue;
        };
        if let Some(cc) = &state.cfg.congestion {
            if let Err(e) = crate::set_tcp_congestion(&tcp, cc) {
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
            let limit = state.cfg.policy.handshake_timeout;
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
            // Who this connection's requests are from, for the per-client share.
            let client = Arc::new(ClientKey::from_chain(
                tls.get_ref().1.peer_certificates(),
                remote.ip(),
            ));
            let service = {
                let (state, wire) = (state.clone(), wire.clone());
                hyper::service::service_fn(move |req| {
                    handle(req, state.clone(), wire.clone(), client.clone())
                })
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
pub(super) struct Wire {
    /// The socket (valid while its connection is served).
    fd: std::os::fd::RawFd,
    /// Body bytes handed to hyper on this connection.
    pub(super) body_bytes: AtomicU64,
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

/// Waits until what is left in the socket's send queue would leave within `limit` at the rate
/// this response's bytes have left so far (`start`: when it began and the connection's body
/// bytes then). A body ends — and hyper's header timeout for the next request starts — only
/// once the client can send that request well within the timeout, however slow its link; on a
/// fast link the end follows the last byte at once, costing no round trip.
pub(super) async fn drains_within(wire: &Wire, start: (Instant, u64), limit: Duration) {
    loop {
        let queued = wire.unacked();
        let body = wire.body_bytes.load(Ordering::Relaxed);
        let left = body.saturating_sub(start.1).saturating_sub(queued);
        let rate = left as f64 / start.0.elapsed().as_secs_f64().max(1e-3);
        if queued == 0 || queued as f64 <= rate * limit.as_secs_f64() {
            return;
        }
        tokio::time::sleep(WIRE_POLL).await;
    }
}
