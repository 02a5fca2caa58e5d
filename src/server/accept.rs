//! Admission and the accept loop: connections are refused, or asked to prove their address,
//! before any cryptography; each admitted connection's control streams become transfers.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;

use crate::admission::{PerIp, PerIpLimit};
use crate::lock::unpoisoned as lock;

use super::Shared;

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

async fn serve_connection(conn: quinn::Connection, shared: Arc<Shared>) {
    let remote = conn.remote_address();
    shared.stats.connections.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(%remote, "connection up");
    lock(&shared.conns).insert(conn.stable_id(), conn.clone());
    let ids: Arc<Mutex<HashSet<u64>>> = Arc::default();
    loop {
        let (send, recv) = match conn.accept_bi().await {
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
        tokio::spawn(async move {
            let _tokens = tokens;
            super::request::serve_control(conn, send, recv, shared, ids).await;
        });
    }
}
