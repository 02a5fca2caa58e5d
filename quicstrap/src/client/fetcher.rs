//! The [`Fetcher`]: one QUIC endpoint, one connection per peer reused by every partition
//! fetched from it, the connectivity check before a fetch, and the fetch itself run through
//! the attempt skeleton ([`super::attempts`]) with QUIC attempts ([`super::transfer`]).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::control::budget::{BufferBudget, Direction};
use crate::net::tls;
use crate::net::transport;
use crate::peers::Peer;
use crate::protocol::codes;
use crate::protocol::fetch::PeerId;
use crate::store::lock::unpoisoned as lock;
use crate::store::partition::PartitionId;

use super::{
    attempts, connectivity, pool, resume, transfer, workdir, AttemptError, FetchConfig, FetchError,
    FetchReport, FetchStats, Progress, SetupError,
};

/// Fewest bytes a transfer must move for its rate to count as the peer's measured rate.
const RATE_SAMPLE_MIN: u64 = 4 << 20;

/// Fetches partitions from peers. Cheap to share behind an `Arc`; one per process is typical.
pub struct Fetcher {
    /// The endpoint, its connections and what every QUIC attempt shares.
    quic: transfer::Quic,
    /// One permit per partition being received (`max_partitions`).
    partitions: Arc<tokio::sync::Semaphore>,
    /// Recent handshake verdicts per peer.
    connectivity: connectivity::ConnectivityCache,
    stats: Arc<FetchStats>,
}

impl Fetcher {
    /// Binds the client endpoint.
    pub fn new(cfg: FetchConfig) -> Result<Self, SetupError> {
        let rustls_cfg = tls::client_config(&cfg.policy.identity)?;
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(rustls_cfg)
            .map_err(|e| tls::TlsError::Verifier(e.to_string()))?;
        let mut client_cfg = quinn::ClientConfig::new(Arc::new(crypto));
        client_cfg.transport_config(Arc::new(
            cfg.tuning.transport_config(transport::Side::Client),
        ));
        let endpoint =
            transport::endpoint(cfg.bind, &cfg.tuning, None).map_err(SetupError::Bind)?;
        let cfg_partitions = cfg.max_partitions.max(1);
        let freshness = cfg.check_freshness;
        let budget = BufferBudget::new(
            Direction::Receive,
            cfg.max_recv_buffer,
            transport::MIN_RECV_WINDOW,
            cfg.tuning.connection_window,
            transport::CONTROL_WINDOW,
        );
        Ok(Self {
            quic: transfer::Quic {
                pool: pool::Pool::new(
                    endpoint,
                    client_cfg,
                    cfg.policy.connect_timeout,
                    cfg.tuning.pool_idle,
                ),
                cfg,
                next_transfer: AtomicU64::new(1),
                lingering: Mutex::default(),
                budget,
            },
            partitions: Arc::new(tokio::sync::Semaphore::new(cfg_partitions)),
            connectivity: connectivity::ConnectivityCache::new(freshness),
            stats: Arc::default(),
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &FetchConfig {
        &self.quic.cfg
    }

    /// Local UDP address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.quic.pool.endpoint.local_addr()
    }

    /// Moves the endpoint to a new UDP socket bound to `addr`; live connections migrate to it
    /// (QUIC connection migration), transfers in flight carry on.
    pub fn rebind(&self, addr: SocketAddr) -> std::io::Result<()> {
        let socket = transport::bind_udp(addr, self.quic.cfg.tuning.socket_buffer)?;
        self.quic.pool.endpoint.rebind(socket)
    }

    /// Closes every connection.
    pub async fn close(&self) {
        let lingering = std::mem::take(&mut *lock(&self.quic.lingering));
        for task in lingering {
            let _ = task.await;
        }
        self.quic.pool.endpoint.close(codes::OK.into(), b"bye");
        let _ =
            tokio::time::timeout(Duration::from_secs(2), self.quic.pool.endpoint.wait_idle()).await;
    }

    /// The connectivity check: a verdict per peer (in `peers` order), from the cache when
    /// fresh, else from a QUIC handshake — all peers at once, `check_concurrency` at a time,
    /// `check_timeout` in all. A good handshake leaves its connection warm for the transfer.
    pub async fn check_peers(&self, peers: &[Peer]) -> Vec<Result<(), AttemptError>> {
        let now = Instant::now();
        self.connectivity.purge(now);
        let verdicts: Vec<Mutex<Option<Result<(), AttemptError>>>> = peers
            .iter()
            .map(|p| Mutex::new(self.connectivity.get(p, now)))
            .collect();
        let limit = tokio::sync::Semaphore::new(self.quic.cfg.check_concurrency.max(1));
        let checks = peers
            .iter()
            .enumerate()
            .filter(|(i, _)| lock(&verdicts[*i]).is_none())
            .map(|(i, p)| {
                let (limit, verdicts) = (&limit, &verdicts);
                async move {
                    let _permit = limit.acquire().await;
                    let verdict = self.quic.pool.connection(p).await.map(|pc| {
                        self.connectivity.note_rtt(p, pc.conn.rtt(), Instant::now());
                    });
                    self.connectivity.record(p, verdict.clone(), Instant::now());
                    *lock(&verdicts[i]) = Some(verdict);
                }
            });
        let all = futures_util::future::join_all(checks);
        let _ = tokio::time::timeout(self.quic.cfg.check_timeout, all).await;
        verdicts
            .into_iter()
            .map(|v| {
                v.into_inner()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .unwrap_or(Err(AttemptError::ConnectTimeout))
            })
            .collect()
    }

    /// Live counters.
    pub fn stats(&self) -> Arc<FetchStats> {
        self.stats.clone()
    }

    /// The budget bounding what this fetcher's transfers hold unread, for metrics and tests.
    pub fn recv_budget(&self) -> &Arc<BufferBudget> {
        &self.quic.budget
    }

    /// Peers with a cached connectivity verdict (for metrics).
    pub fn connectivity_cache_len(&self) -> usize {
        self.connectivity.len()
    }

    /// Fetches `id` into `<root>/<store>_v<version>/<partition>/` from the first of `peers`
    /// (in the configured order: [`crate::peers::order`]) that can serve it.
    pub async fn fetch(
        &self,
        id: &PartitionId,
        peers: &[Peer],
        root: &Path,
    ) -> Result<FetchReport, FetchError> {
        self.fetch_with_progress(id, peers, root, &Progress::default())
            .await
    }

    /// [`Self::fetch`], reporting progress into `progress`.
    pub async fn fetch_with_progress(
        &self,
        id: &PartitionId,
        peers: &[Peer],
        root: &Path,
        progress: &Progress,
    ) -> Result<FetchReport, FetchError> {
        self.fetch_within(id, peers, root, progress, None).await
    }

    /// [`Self::fetch_with_progress`] of a partition the log `log` will catch up: a snapshot
    /// whose offset that log cannot continue from (a peer that stopped following and fell
    /// behind retention, or one ahead of the log: another cluster, a recreated topic) is
    /// refused as [`AttemptError::StaleSnapshot`] before it is committed, and the next peer
    /// is asked.
    pub async fn fetch_within(
        &self,
        id: &PartitionId,
        peers: &[Peer],
        root: &Path,
        progress: &Progress,
        log: Option<crate::ingest::Watermarks>,
    ) -> Result<FetchReport, FetchError> {
        // Whatever builds the partition next, temp dirs nothing can use go first (also those
        // of this partition when it turns out to be present already).
        workdir::sweep(root, self.quic.cfg.resume_window);
        let target = attempts::check_target(id, root, peers)?;
        let cancelled = || FetchError::GaveUp {
            peer: String::new(),
            error: AttemptError::Cancelled,
            attempts: Vec::new(),
        };
        // Wait for a turn (a cancel while queued ends the fetch with nothing done).
        let _turn = tokio::select! {
            // A cancel already made wins over a free slot.
            biased;
            _ = progress.cancelled() => return Err(cancelled()),
            p = self.partitions.clone().acquire_owned() => p.ok(),
        };
        let parent = attempts::prepare_parent(id, root)?;
        // A transfer of this partition kept by an earlier run, claimed for this one.
        let kept = Mutex::new(self.adopt(id, &parent));
        let holder = lock(&kept)
            .as_ref()
            .map(|k| PeerId::new(k.journal.peer.clone()));
        // Handshake with every candidate at once; known-dead peers then fail in no time, and
        // the live ones' RTTs are known before they are put in order.
        let verdicts = tokio::select! {
            // Cached verdicts are ready at once; a cancel already made still wins.
            biased;
            _ = progress.cancelled() => {
                Self::park(&kept);
                return Err(cancelled());
            }
            v = self.check_peers(peers) => v,
        };
        // In the configured order, over what the check and earlier transfers measured.
        let candidates = peers
            .iter()
            .zip(verdicts)
            .map(|(p, v)| attempts::Candidate::new(&self.quic.cfg.policy, p.clone(), v))
            .collect();
        let order = self.quic.cfg.placement().order_by(
            candidates,
            |c| &c.peer,
            |p| self.connectivity.measure(p),
            &mut rand::rng(),
        );
        let (parent, target_dir, kept_ref) = (&parent, &target, &kept);
        let result = attempts::try_peers(
            id,
            target.clone(),
            order,
            holder,
            self.quic.cfg.rules(),
            progress,
            &self.stats,
            |peer, resume| async move {
                let span = tracing::info_span!(
                    "fetch",
                    store = %id.store,
                    version = id.version,
                    partition = id.partition,
                    peer = %peer
                );
                let t0 = Instant::now();
                let result = tracing::Instrument::instrument(
                    self.quic.attempt(
                        id,
                        &peer,
                        transfer::Terms { resume, log },
                        (parent, target_dir),
                        progress,
                        kept_ref,
                    ),
                    span,
                )
                .await;
                match &result {
                    Err(e @ (AttemptError::Connect(_) | AttemptError::ConnectTimeout)) => {
                        self.connectivity
                            .record(&peer, Err(e.clone()), Instant::now());
                    }
                    Ok(_) => {
                        let bytes = progress.received.load(std::sync::atomic::Ordering::Relaxed);
                        let secs = t0.elapsed().as_secs_f64();
                        // Too small a transfer says more about its start than its rate.
                        if bytes >= RATE_SAMPLE_MIN && secs > 0.0 {
                            self.connectivity
                                .note_rate(&peer, bytes as f64 / secs, Instant::now());
                        }
                    }
                    Err(_) => {}
                }
                result
            },
            || {
                lock(kept_ref)
                    .as_ref()
                    .map(|k| PeerId::new(k.journal.peer.clone()))
            },
        )
        .await;
        // Kept files of a fetch that did not commit stay for the next fetch of the partition.
        Self::park(&kept);
        result
    }

    /// Leaves what `kept` holds on disk, unowned, for a later fetch to adopt.
    fn park(kept: &Mutex<Option<resume::Kept>>) {
        if let Some(k) = lock(kept).take() {
            k.dir.park();
        }
    }

    /// Claims what an earlier fetch of `id` kept in `parent` for a resume, if resume is on.
    fn adopt(&self, id: &PartitionId, parent: &Path) -> Option<resume::Kept> {
        if !self.quic.cfg.resume {
            return None;
        }
        resume::adopt(
            parent,
            id,
            self.quic.cfg.policy.checksum,
            self.quic.cfg.policy.table_format,
            self.quic.cfg.resume_window,
        )
    }
}
