//! Admission and the accept loop: connections are refused, or asked to prove their address,
//! before any cryptography; each admitted connection's control streams become transfers.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use tokio::sync::{watch, Semaphore};

use crate::net::admission::{PerIp, PerIpLimit};
use crate::net::tls;
use crate::protocol::codes;
use crate::snapshot::ClientKey;
use crate::store::lock::unpoisoned as lock;

use super::shared::{Client, Shared};

/// Accepts connections until the endpoint closes or the server shuts down.
pub(super) async fn accept_loop(endpoint: quinn::Endpoint, shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.clone();
    // Held by each connection (handshake included) and by each handshake in progress.
    let connections = Arc::new(Semaphore::new(shared.cfg.max_connections.max(1)));
    let handshakes = Arc::new(Semaphore::new(shared.cfg.max_handshakes.max(1)));
    let per_ip_handshakes = Arc::new(PerIpLimit::new(shared.cfg.max_handshakes_per_ip));
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => match i { Some(i) => i, None => break },
            _ = shutdown.changed() => break,
        };
        let stats = &shared.stats;
        let in_progress = shared.cfg.max_handshakes.max(1) - handshakes.available_permits();
        let admitted = (
            connections.clone().try_acquire_owned(),
            handshakes.clone().try_acquire_owned(),
        );
        let per_ip = PerIp::enter(&per_ip_handshakes, incoming.remote_address().ip());
        let (Ok(conn_slot), Ok(handshake_slot), Some(per_ip)) = (admitted.0, admitted.1, per_ip)
        else {
            // Before any cryptography: refusing costs one small packet.
            stats.refused.fetch_add(1, Ordering::Relaxed);
            if connections.available_permits() > 0 && handshakes.available_permits() > 0 {
                // Only the host's own cap stood in the way.
                stats.refused_per_host.fetch_add(1, Ordering::Relaxed);
            }
            incoming.refuse();
            continue;
        };
        if in_progress >= shared.cfg.retry_above && !incoming.remote_address_validated() {
            stats.retried.fetch_add(1, Ordering::Relaxed);
            // A stateless Retry: only a client that receives it at its claimed address
            // comes back (validated) and gets a handshake.
            if let Err(e) = incoming.retry() {
                e.into_incoming().ignore();
            }
            continue;
        }
        let shared = shared.clone();
        let token = shared.tasks.clone();
        tokio::spawn(async move {
            let _token = token;
            let _conn_slot = conn_slot;
            let remote = incoming.remote_address();
            let handshake = tokio::time::timeout(shared.cfg.policy.handshake_timeout, async {
                incoming.accept()?.await
            })
            .await;
            drop((handshake_slot, per_ip));
            match handshake {
                Ok(Ok(conn)) => serve_connection(conn, shared).await,
                Ok(Err(e)) => {
                    shared
                        .stats
                        .handshakes_failed
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::info!(%remote, error = %e, "handshake refused");
                }
                Err(_) => {
                    shared
                        .stats
                        .handshakes_failed
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::info!(%remote, "handshake timed out");
                }
            }
        });
    }
}

/// Serves the control streams of one connection, each a transfer, until it ends; closes it
/// once it has carried no transfer for the configured idle time (`OK`, reason `idle`), so
/// connections kept open without use cannot hold the connection cap; and closes it with
/// `REVOKED` once the allow list no longer names its client, after its transfers ended.
async fn serve_connection(conn: quinn::Connection, shared: Arc<Shared>) {
    let remote = conn.remote_address();
    shared.stats.connections.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(%remote, "connection up");
    lock(&shared.conns).insert(conn.stable_id(), conn.clone());
    // Who this connection's requests are from, for the per-client share: fixed at the
    // handshake, so a client that moves to another address stays the same client.
    let chain = peer_chain(&conn);
    let client = Arc::new(ClientKey::from_chain(chain.as_deref(), remote.ip()));
    let cert = chain.and_then(|c| c.first().cloned());
    let name = cert
        .as_ref()
        .and_then(tls::first_dns_name)
        .unwrap_or_default();
    let ids: Arc<Mutex<HashSet<u64>>> = Arc::default();
    // Control streams of this connection being served right now.
    let live = Arc::new(watch::Sender::new(0usize));
    let policy = shared.cfg.policy.live.clone();
    let mut allow_changed = policy.changed();
    // A reload between the handshake (which read the list) and this subscription would
    // otherwise go unseen: check once at the start.
    allow_changed.mark_changed();
    let revoked = watch::Sender::new(false);
    loop {
        let accepted = tokio::select! {
            a = conn.accept_bi() => a,
            () = idle_for(&live, shared.cfg.connection_idle) => {
                shared.stats.idle_closed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%remote, "idle connection closed");
                conn.close(codes::OK.into(), IDLE_REASON);
                lock(&shared.conns).remove(&conn.stable_id());
                return;
            }
            Ok(()) = allow_changed.changed() => {
                if cert.as_ref().map_or(true, |c| policy.permits(c)) {
                    continue;
                }
                revoke(&conn, &shared, &live, &revoked, &name).await;
                return;
            }
        };
        let (send, recv) = match accepted {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(%remote, error = %e, "connection ended");
                lock(&shared.conns).remove(&conn.stable_id());
                return;
            }
        };
        let shared = shared.clone();
        let tokens = (shared.tasks.clone(), shared.transfers.clone());
        let conn = conn.clone();
        let ids = ids.clone();
        let who = Client {
            key: client.clone(),
            name: name.clone(),
            cert: cert.clone(),
            revoked: revoked.subscribe(),
        };
        // Counted here, before the next turn of the loop starts its idle clock.
        let stream = LiveStream::new(&live);
        tokio::spawn(async move {
            let _tokens = tokens;
            let _stream = stream;
            super::request::serve_control(conn, send, recv, shared, ids, who).await;
        });
    }
}

/// Ends every transfer of a client taken off the allow list and closes its connection.
///
/// The transfers reset their streams with `REVOKED` first — the client learns why from the
/// resets alone — and the close follows once the bytes in flight had about two round trips
/// to drain: like [`super::Server::shutdown`], around quinn-rs/quinn#2785 (a close queued
/// behind stream data under a full congestion window is never sent).
async fn revoke(
    conn: &quinn::Connection,
    shared: &Shared,
    live: &watch::Sender<usize>,
    revoked: &watch::Sender<bool>,
    name: &str,
) {
    tracing::warn!(remote = %conn.remote_address(), client = name, "client no longer allowed: closing its connection");
    shared.stats.revoked.fetch_add(1, Ordering::Relaxed);
    revoked.send_replace(true);
    let mut streams = live.subscribe();
    let _ = tokio::time::timeout(Duration::from_secs(2), streams.wait_for(|n| *n == 0)).await;
    tokio::time::sleep((conn.rtt() * 2).min(Duration::from_secs(1))).await;
    conn.close(codes::REVOKED.into(), b"client no longer allowed");
    lock(&shared.conns).remove(&conn.stable_id());
}

/// The reason an idle connection is closed with (code `OK`).
pub(crate) const IDLE_REASON: &[u8] = b"idle";

/// The certificate chain `conn`'s client presented (end-entity first).
fn peer_chain(conn: &quinn::Connection) -> Option<Vec<CertificateDer<'static>>> {
    conn.peer_identity()
        .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok())
        .map(|chain| *chain)
}

/// One control stream being served, counted in its connection's `live` until dropped.
struct LiveStream(Arc<watch::Sender<usize>>);

impl LiveStream {
    fn new(live: &Arc<watch::Sender<usize>>) -> Self {
        live.send_modify(|n| *n += 1);
        Self(live.clone())
    }
}

impl Drop for LiveStream {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

/// Resolves once no control stream has been live for `limit` without a break.
async fn idle_for(live: &watch::Sender<usize>, limit: Duration) {
    let mut rx = live.subscribe();
    loop {
        if rx.wait_for(|n| *n == 0).await.is_err() {
            // Cannot happen while the caller holds the sender; never idle then.
            std::future::pending::<()>().await;
        }
        // Any change restarts the clock: a stream came (and maybe went) meanwhile.
        if tokio::time::timeout(limit, rx.changed()).await.is_err() {
            return;
        }
    }
}
