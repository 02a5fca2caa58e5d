//! A running server: its QUIC endpoint and accept task, started alone or beside another over
//! the same snapshots, and its graceful shutdown.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::control::budget::{BufferBudget, Direction};
use crate::net::tls;
use crate::net::transport;
use crate::protocol::codes;
use crate::snapshot::{PartitionSource, SnapshotManager};

use super::shared::Common;
use crate::store::lock::unpoisoned as lock;

use super::shared::Shared;
use super::{accept, ServerConfig, ServerError, ServerStats};

/// A running server. Dropping it without [`Server::shutdown`] leaves its tasks running until the
/// runtime ends.
pub struct Server {
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    shutdown_tx: watch::Sender<bool>,
    accept_task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Binds, prepares the snapshot directory and starts accepting.
    pub async fn start(
        cfg: ServerConfig,
        source: Arc<dyn PartitionSource>,
    ) -> Result<Self, ServerError> {
        Self::start_inner(cfg, source, None).await
    }

    /// Another endpoint over the snapshots of a running server (same checkpoints, same cached
    /// digests), e.g. with another congestion controller in `cfg.tuning`; `cfg.snapshots` is
    /// ignored.
    pub async fn start_sharing(cfg: ServerConfig, with: &Server) -> Result<Self, ServerError> {
        let source = with.shared.source.clone();
        let common = Common {
            snapshots: with.shared.snapshots.clone(),
            budget: with.shared.budget.clone(),
            table: with.shared.table.clone(),
            store_metrics: with.shared.store_metrics.clone(),
        };
        Self::start_inner(cfg, source, Some(common)).await
    }

    async fn start_inner(
        cfg: ServerConfig,
        source: Arc<dyn PartitionSource>,
        shared_with: Option<Common>,
    ) -> Result<Self, ServerError> {
        let rustls_cfg = tls::server_config(&cfg.policy.identity, cfg.policy.live.clone())?;
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(rustls_cfg)
            .map_err(|e| ServerError::Tls(tls::TlsError::Verifier(e.to_string())))?;
        let mut qcfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        qcfg.transport_config(Arc::new(
            cfg.tuning.transport_config(transport::Side::Server),
        ));
        qcfg.migration(true);
        let endpoint = transport::endpoint(cfg.listen, &cfg.tuning, Some(qcfg))?;
        let (shutdown_tx, shutdown) = watch::channel(false);
        let owns_snapshots = shared_with.is_none();
        let common = match shared_with {
            Some(c) => c,
            None => {
                let (snap_cfg, src) = (cfg.snapshots.clone(), source.clone());
                // Waits for the root's lock and wipes leftovers: file system work.
                let s = tokio::task::spawn_blocking(move || SnapshotManager::new(snap_cfg, src))
                    .await
                    .map_err(|e| ServerError::Io(std::io::Error::other(e)))??;
                s.spawn_cleanup(shutdown.clone());
                let budget = BufferBudget::new(
                    Direction::Send,
                    cfg.max_send_buffer,
                    transport::MIN_SEND_WINDOW,
                    cfg.tuning.connection_window,
                    transport::CONTROL_WINDOW,
                );
                Common {
                    snapshots: s,
                    budget,
                    table: Arc::default(),
                    store_metrics: crate::control::store_counts::StoreMetrics::serving(
                        &cfg.policy.live.stores(),
                    ),
                }
            }
        };
        let shared = Arc::new(Shared {
            cfg,
            source,
            owns_snapshots,
            snapshots: common.snapshots,
            stats: Arc::new(ServerStats::default()),
            shutdown,
            tasks: Arc::new(()),
            transfers: Arc::new(()),
            conns: Mutex::default(),
            budget: common.budget,
            table: common.table,
            store_metrics: common.store_metrics,
        });
        let accept_task = tokio::spawn(accept::accept_loop(endpoint.clone(), shared.clone()));
        Ok(Self {
            endpoint,
            shared,
            shutdown_tx,
            accept_task,
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Live counters.
    pub fn stats(&self) -> Arc<ServerStats> {
        self.shared.stats.clone()
    }

    /// Connections open right now (handshake done), for metrics and tests.
    pub fn open_connections(&self) -> usize {
        lock(&self.shared.conns).len()
    }

    /// The snapshot manager (for inspection and tests).
    pub fn snapshots(&self) -> &SnapshotManager {
        &self.shared.snapshots
    }

    /// The budget bounding what this server's transfers queue for sending (shared with the
    /// servers started with [`Server::start_sharing`]), for metrics and tests.
    pub fn send_budget(&self) -> &Arc<BufferBudget> {
        &self.shared.budget
    }

    /// The transfers running right now on this server and those sharing its snapshots,
    /// oldest first.
    pub fn transfers(&self) -> Vec<super::TransferStatus> {
        self.shared.table.statuses()
    }

    pub(crate) fn table(&self) -> Arc<super::status::TransferTable> {
        self.shared.table.clone()
    }

    /// How many transfers run right now on this server and those sharing its snapshots.
    pub fn running(&self) -> usize {
        self.shared.table.len()
    }

    /// What changes while the server runs: allow list, per-store policy, draining.
    pub fn live(&self) -> &Arc<super::LivePolicy> {
        &self.shared.cfg.policy.live
    }

    /// Transfers per store, for metrics.
    pub fn store_metrics(&self) -> &Arc<crate::control::store_counts::StoreMetrics> {
        &self.shared.store_metrics
    }

    /// Graceful shutdown: stop accepting, end every transfer with a typed `SHUTTING_DOWN`
    /// so in-flight clients move on at once, close every connection with the same code, wait
    /// (bounded) for tasks to end, and delete every snapshot.
    ///
    /// The order works around quinn-rs/quinn#2785 (fixed upstream by #2787, in no release
    /// up to quinn-proto 0.11.19): a CONNECTION_CLOSE is gated on the congestion window while
    /// stream data is still queued, and after `close()` nothing drains that window, so under
    /// a full window (bbr keeps it full) the close was never sent and clients waited out
    /// their idle timeout. So transfers first reset their streams with `SHUTTING_DOWN` — the
    /// client learns the reason from the resets alone — queued data is dropped, and the bytes
    /// already in flight get about two round trips (capped) to be acknowledged before the
    /// close, which then leaves at once. Drop this ordering's reason, not the resets, once a
    /// quinn release carries the fix.
    pub async fn shutdown(self) {
        let _ = self.shutdown_tx.send(true);
        self.endpoint.set_server_config(None);
        self.accept_task.abort();
        // Transfers see the signal and reset their streams (see `run_transfer`).
        let deadline = Instant::now() + Duration::from_secs(2);
        while Arc::strong_count(&self.shared.transfers) > 1 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let rtt = lock(&self.shared.conns)
            .values()
            .map(quinn::Connection::rtt)
            .max()
            .unwrap_or_default();
        tokio::time::sleep((rtt * 2).min(CLOSE_DRAIN_CAP)).await;
        self.endpoint
            .close(codes::SHUTTING_DOWN.into(), b"server shutting down");
        lock(&self.shared.conns).clear();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Arc::strong_count(&self.shared.tasks) > 1 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if self.shared.owns_snapshots {
            self.shared.snapshots.retire_all().await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
    }
}

/// Longest [`Server::shutdown`] lets bytes in flight drain before closing connections.
const CLOSE_DRAIN_CAP: Duration = Duration::from_secs(1);
