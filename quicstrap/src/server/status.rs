//! The transfers a server runs right now, for an operator's live view: which partition, to
//! whom, how far, how fast, how long still. Every listener of a node writes into one
//! [`TransferTable`], so one read shows them all.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;

use crate::store::lock::unpoisoned as lock;
use crate::store::partition::PartitionId;

/// One running transfer as an operator sees it.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct TransferStatus {
    /// Store name.
    pub store: String,
    /// Store version.
    pub version: u32,
    /// Partition number.
    pub partition: u32,
    /// The client's address now (it may move).
    pub peer: String,
    /// The first DNS name of the client's certificate.
    pub client: String,
    /// Whether this transfer resumes an interrupted one.
    pub resume: bool,
    /// Payload bytes sent so far.
    pub bytes_sent: u64,
    /// Payload bytes this transfer sends in all (0 until the manifest is out).
    pub bytes_total: u64,
    /// Seconds since the snapshot was leased for it (digests of files not yet known are
    /// computed after that, while it is listed).
    pub elapsed_secs: f64,
    /// Mean rate since it was listed, bytes/s.
    pub rate_bytes_per_sec: f64,
    /// Seconds still to go at that rate (`None`: no rate yet).
    pub eta_secs: Option<f64>,
}

struct Entry {
    id: PartitionId,
    conn: quinn::Connection,
    client: String,
    resume: bool,
    started: Instant,
    sent: Arc<AtomicU64>,
    total: Arc<AtomicU64>,
}

/// The running transfers of every listener of a node.
#[derive(Default)]
pub(crate) struct TransferTable {
    next: AtomicU64,
    live: Mutex<HashMap<u64, Entry>>,
}

/// A transfer's place in the table, removed when dropped.
pub(crate) struct Listed<'a> {
    table: &'a TransferTable,
    key: u64,
    /// Bytes sent, counted by the pushers.
    pub sent: Arc<AtomicU64>,
    /// Bytes to send, set once the plan is known.
    pub total: Arc<AtomicU64>,
}

impl TransferTable {
    /// Lists a transfer of `id` to `client` over `conn`.
    pub(crate) fn list(
        &self,
        id: &PartitionId,
        conn: &quinn::Connection,
        client: String,
        resume: bool,
    ) -> Listed<'_> {
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        let (sent, total) = (Arc::default(), Arc::<AtomicU64>::default());
        lock(&self.live).insert(
            key,
            Entry {
                id: id.clone(),
                conn: conn.clone(),
                client,
                resume,
                started: Instant::now(),
                sent: Arc::clone(&sent),
                total: Arc::clone(&total),
            },
        );
        Listed {
            table: self,
            key,
            sent,
            total,
        }
    }

    /// How many transfers run.
    pub(crate) fn len(&self) -> usize {
        lock(&self.live).len()
    }

    /// Every running transfer, oldest first.
    pub(crate) fn statuses(&self) -> Vec<TransferStatus> {
        let live = lock(&self.live);
        let mut all: Vec<(&u64, &Entry)> = live.iter().collect();
        all.sort_by_key(|(k, _)| **k);
        all.into_iter()
            .map(|(_, e)| {
                let elapsed = e.started.elapsed().as_secs_f64();
                let sent = e.sent.load(Ordering::Relaxed);
                let total = e.total.load(Ordering::Relaxed);
                let rate = if elapsed > 0.0 {
                    sent as f64 / elapsed
                } else {
                    0.0
                };
                TransferStatus {
                    store: e.id.store.clone(),
                    version: e.id.version,
                    partition: e.id.partition,
                    peer: e.conn.remote_address().to_string(),
                    client: e.client.clone(),
                    resume: e.resume,
                    bytes_sent: sent,
                    bytes_total: total,
                    elapsed_secs: elapsed,
                    rate_bytes_per_sec: rate,
                    eta_secs: (rate > 0.0 && total > 0)
                        .then(|| total.saturating_sub(sent) as f64 / rate),
                }
            })
            .collect()
    }
}

impl Drop for Listed<'_> {
    fn drop(&mut self) {
        lock(&self.table.live).remove(&self.key);
    }
}
