//! Accepting TLS connections under the connection caps, serving them with hyper, and
//! watching that responses keep draining.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use tokio::sync::watch;

use quicstrap::net::admission::PerIp;
use quicstrap::snapshot::ClientKey;

use super::drain::{write_stalled, Wire};
use super::handlers::{expire_sessions, handle};
use super::state::State;

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
            let certs = tls.get_ref().1.peer_certificates();
            let client = Arc::new(ClientKey::from_chain(certs, remote.ip()));
            // Checked against the allow list at every request: a reload applies to
            // connections already open, from their next request (each file is one).
            let cert = Arc::new(
                certs
                    .and_then(|c| c.first())
                    .map(|c| c.clone().into_owned()),
            );
            let service = {
                let (state, wire) = (state.clone(), wire.clone());
                hyper::service::service_fn(move |req| {
                    let who = (client.clone(), cert.clone());
                    handle(req, state.clone(), wire.clone(), who)
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
