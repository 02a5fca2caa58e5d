//! The state every task of a running server shares.

use std::sync::{Arc, Mutex};

use rustls_pki_types::CertificateDer;

use tokio::sync::watch;

use super::status::TransferTable;
use super::{ServerConfig, ServerStats};
use crate::control::budget::BufferBudget;
use crate::control::store_counts::StoreMetrics;
use crate::snapshot::{ClientKey, PartitionSource, SnapshotManager};

/// What every task of a running server shares: its configuration, its snapshots, its
/// counters, the shutdown signal and the counts shutdown waits on.
pub(crate) struct Shared {
    pub(super) cfg: ServerConfig,
    pub(super) source: Arc<dyn PartitionSource>,
    /// False for [`Server::start_sharing`]: only the owner retires the snapshots.
    pub(super) owns_snapshots: bool,
    pub(super) snapshots: SnapshotManager,
    pub(super) stats: Arc<ServerStats>,
    pub(super) shutdown: watch::Receiver<bool>,
    /// One clone per live task, so shutdown can wait for all of them.
    pub(super) tasks: Arc<()>,
    /// One clone per live transfer (control stream) task.
    pub(super) transfers: Arc<()>,
    /// Live connections by `stable_id`, so shutdown can size its drain by their RTTs.
    pub(super) conns: Mutex<std::collections::HashMap<usize, quinn::Connection>>,
    /// Send windows and read buffers of every transfer, bounded together.
    pub(super) budget: Arc<BufferBudget>,
    /// Transfers running, for the operator's view (shared by every listener of a node).
    pub(super) table: Arc<TransferTable>,
    /// Transfers per store (shared by every listener of a node).
    pub(super) store_metrics: Arc<StoreMetrics>,
}

/// What the listeners of one node share beyond the partitions: snapshots, the send budget,
/// the table of running transfers and the per-store metrics.
#[derive(Clone)]
pub(crate) struct Common {
    pub(super) snapshots: SnapshotManager,
    pub(super) budget: Arc<BufferBudget>,
    pub(super) table: Arc<TransferTable>,
    pub(super) store_metrics: Arc<StoreMetrics>,
}

impl Shared {
    /// Files of one transfer sent at once: the configured number, within what a client reads
    /// at once.
    pub(crate) fn files_in_flight(&self) -> usize {
        self.cfg
            .files_in_flight
            .clamp(1, crate::protocol::transfer::MAX_FILES_IN_FLIGHT)
    }
}

/// Who sent a request: the key of its per-client share, the name an operator sees, and
/// whether the allow list dropped it since.
pub(crate) struct Client {
    pub(super) key: Arc<ClientKey>,
    pub(super) name: String,
    /// The end-entity certificate it presented, checked against the allow list at every
    /// request.
    pub(super) cert: Option<CertificateDer<'static>>,
    pub(super) revoked: watch::Receiver<bool>,
}
