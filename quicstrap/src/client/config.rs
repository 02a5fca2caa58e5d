//! What a fetch is told and what it tells back: its configuration, its live progress (and
//! cancel switch), its counters and its report.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::control::pacing::RateLimiter;
use crate::control::throttle::LatencySignal;
use crate::net::tls::Identity;
use crate::net::transport::TransportTuning;
use crate::peers::order::{PeerOrder, Placement, ZoneClass};
use crate::peers::Peer;
use crate::store::checksum::ChecksumAlgo;
use crate::store::partition::TableFormat;

/// What a fetch asks for and how patiently it waits, whatever the transport: the QUIC
/// [`FetchConfig`] and the HTTPS baseline's config both hold one, so the two transports are
/// set up — and compared — on the same terms.
#[derive(Clone, Debug)]
pub struct FetchPolicy {
    /// This node's certificate, key and trusted CA.
    pub identity: Identity,
    /// Table format this node opens.
    pub table_format: TableFormat,
    /// Digest asked for in manifests.
    pub checksum: ChecksumAlgo,
    /// Connect + handshake timeout (10 s).
    pub connect_timeout: Duration,
    /// Give up on a peer after this long without a byte (60 s).
    pub idle_timeout: Duration,
    /// The slow-peer floor, bytes/s (32 KiB/s): an attempt that receives less than this over
    /// a whole [`Self::rate_window`] ends as `too_slow` — what arrived is kept, another peer is
    /// asked if there is one. 0 turns it off. There is no wall-clock limit on a partition: a
    /// transfer that still moves is never thrown away for being slow.
    pub min_rate: u64,
    /// The window the floor is measured over (2 min).
    pub rate_window: Duration,
    /// Read-rate limit shared by every transfer of this process (default
    /// [`crate::control::pacing::DEFAULT_RATE`]).
    pub read_limiter: Arc<RateLimiter>,
    /// This node's zone (datacenter, region); `None`: no zones in play, every peer is local.
    pub zone: Option<String>,
    /// A second read limit that bytes from peers of other zones pay as well as
    /// [`Self::read_limiter`]: cross-datacenter links are narrower and paid per byte
    /// (unlimited by default).
    pub remote_read_limiter: Arc<RateLimiter>,
    /// Told how long each received file's fsync took, for a throttle that slows reads when
    /// the disk falls behind ([`crate::control::throttle::fsync_latency`]); `None`: nobody
    /// listens.
    pub fsync_latency: Option<Arc<LatencySignal>>,
    /// Write received files straight to the disk (`O_DIRECT`) where the filesystem takes it
    /// (on by default; [`crate::client::sink`] says why). A disk slower than the link then
    /// holds reads back write by write, through flow control, rather than at each file's
    /// fsync.
    pub direct_io: bool,
}

impl FetchPolicy {
    /// Defaults around an identity.
    pub fn new(identity: Identity) -> Self {
        Self {
            identity,
            table_format: TableFormat::Block,
            checksum: ChecksumAlgo::Md5,
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            min_rate: 32 * 1024,
            rate_window: Duration::from_secs(120),
            read_limiter: RateLimiter::new(crate::control::pacing::DEFAULT_RATE),
            zone: None,
            remote_read_limiter: RateLimiter::unlimited(),
            fsync_latency: None,
            direct_io: true,
        }
    }

    /// Whether `peer`'s bytes cross zones, seen from this node.
    pub fn class(&self, peer: &Peer) -> ZoneClass {
        ZoneClass::of(self.zone.as_deref(), peer.zone.as_deref())
    }
}

/// Knobs of the fetching side.
#[derive(Clone, Debug)]
pub struct FetchConfig {
    /// What to ask for, how long to wait, how fast to read.
    pub policy: FetchPolicy,
    /// QUIC knobs.
    pub tuning: TransportTuning,
    /// Local UDP address (port 0 picks one).
    pub bind: SocketAddr,
    /// The order peers are asked in ([`PeerOrder::Locality`] by default: own zone first,
    /// tiers in order, the better measured peer preferred; tests list a fixed order).
    pub order: PeerOrder,
    /// Partitions received at once (20); further fetches wait their turn, so a node
    /// recovering hundreds of partitions neither opens hundreds of temp dirs nor asks every
    /// peer at once.
    pub max_partitions: usize,
    /// Handshakes of the connectivity check running at once (16).
    pub check_concurrency: usize,
    /// Longest the whole connectivity check may take (60 s); peers not checked by then count
    /// as unreachable for this fetch.
    pub check_timeout: Duration,
    /// How long a connectivity verdict (good or bad) is trusted (30 s).
    pub check_freshness: Duration,
    /// Most bytes all partitions this fetcher receives at once may hold unread (default
    /// 256 MiB): the receive windows quinn grants plus the receive buffers. Each connection's
    /// window follows its path within that (`budget`).
    pub max_recv_buffer: u64,
    /// Keep what an interrupted attempt received and ask the same peer for the rest only
    /// (on by default). Off: every attempt starts from byte 0 and leaves nothing behind.
    pub resume: bool,
    /// How old a kept transfer's journal may be and still be resumed (10 min, the servers'
    /// default window); older ones are deleted.
    pub resume_window: Duration,
    /// Attempts at the peer holding kept files, in a row without a byte arriving, before
    /// moving on to the next peer (10); with the pauses below they outlast an outage of about
    /// four minutes.
    pub max_resumes: u32,
    /// First pause before asking that peer again (1 s); doubles up to [`Self::backoff_max`].
    pub backoff_first: Duration,
    /// Longest pause between two attempts at the same peer (30 s).
    pub backoff_max: Duration,
}

impl FetchConfig {
    /// Defaults around an identity.
    pub fn new(identity: Identity) -> Self {
        Self {
            policy: FetchPolicy::new(identity),
            tuning: TransportTuning::default(),
            bind: SocketAddr::from(([0, 0, 0, 0], 0)),
            order: PeerOrder::default(),
            max_partitions: 20,
            check_concurrency: 16,
            check_timeout: Duration::from_secs(60),
            check_freshness: Duration::from_secs(30),
            max_recv_buffer: crate::control::budget::DEFAULT_CAP,
            resume: true,
            resume_window: Duration::from_secs(10 * 60),
            max_resumes: 10,
            backoff_first: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
        }
    }

    /// Where this node is and how it orders peers.
    pub fn placement(&self) -> Placement {
        Placement {
            zone: self.policy.zone.clone(),
            order: self.order,
        }
    }

    /// The fetch machine's rules these knobs describe.
    pub fn rules(&self) -> crate::protocol::fetch::FetchRules {
        crate::protocol::fetch::FetchRules {
            max_resumes: if self.resume { self.max_resumes } else { 0 },
            backoff_first: self.backoff_first,
            backoff_max: self.backoff_max,
            resume_window: self.resume_window,
        }
    }
}

/// Live progress of a fetch, and its cancel switch: poll it from another task for a progress
/// bar; call [`Progress::cancel`] to suspend the fetch — every file handle closed, what arrived
/// kept with its journal for a rerun to resume (dropping the fetch future also stops it, but
/// cannot wait for file handles to close).
#[derive(Debug, Default)]
pub struct Progress {
    /// Bytes of the current attempt's manifest.
    pub total: AtomicU64,
    /// Bytes received in the current attempt.
    pub received: Arc<AtomicU64>,
    /// Attempts started so far.
    pub attempts: AtomicU64,
    /// Bytes of the current attempt's manifest already held from an earlier attempt.
    pub resumed: AtomicU64,
    /// Bytes held from an earlier attempt that the current one discarded.
    pub resent: AtomicU64,
    /// When the current attempt's first file byte arrived.
    pub first_byte: FirstByte,
    /// How long the current attempt's commit took.
    pub(crate) commit: Mutex<Option<Duration>>,
    switch: CancelSwitch,
}

/// When an attempt's first file byte arrived, shared with the tasks that receive its files.
#[derive(Clone, Debug, Default)]
pub struct FirstByte(Arc<Mutex<Option<Instant>>>);

impl FirstByte {
    /// A file's bytes are arriving: the first call of an attempt sets the time.
    pub fn mark(&self) {
        crate::store::lock::unpoisoned(&self.0).get_or_insert_with(Instant::now);
    }

    /// The time set since the last call, if any, and forgets it (a new attempt starts).
    pub fn take(&self) -> Option<Instant> {
        crate::store::lock::unpoisoned(&self.0).take()
    }
}

impl Progress {
    /// Asks the fetch to stop: the attempt in flight ends, keeps what arrived for a resume and
    /// tells the peer `Suspend`, and the fetch ends with [`super::AttemptError::Cancelled`]
    /// (no Kafka fallback; a rerun resumes).
    pub fn cancel(&self) {
        self.switch.cancel();
    }

    /// True once [`Self::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.switch.is_cancelled()
    }

    /// Resolves once [`Self::cancel`] is called: a transport selects on it to stop an
    /// attempt at once.
    pub async fn cancelled(&self) {
        self.switch.cancelled().await;
    }
}

/// A flag set once that tasks can also wait for: the cancel of a fetch, and of a recovery.
#[derive(Debug, Default)]
pub(crate) struct CancelSwitch {
    cancelled: AtomicBool,
    notify: tokio::sync::Notify,
}

impl CancelSwitch {
    /// Sets the flag and wakes every waiter.
    pub(crate) fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    /// True once [`Self::cancel`] was called.
    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    /// Returns once [`Self::cancel`] was called (at once if it was already).
    pub(crate) async fn cancelled(&self) {
        loop {
            let notified = self.notify.notified();
            if self.is_cancelled() {
                return;
            }
            notified.await;
        }
    }
}

/// Counters of a [`super::Fetcher`], for metrics.
#[derive(Debug, Default)]
pub struct FetchStats {
    /// File payload bytes received, in every attempt.
    pub bytes_received: AtomicU64,
    /// Of those, bytes from peers of this node's zone (all of them when no zone is set).
    pub bytes_local: AtomicU64,
    /// Of those, bytes from peers of other zones.
    pub bytes_remote: AtomicU64,
    /// Fetches that ended with the partition in place.
    pub fetched: AtomicU64,
    /// Fetches that ended without it.
    pub failed: AtomicU64,
    /// Attempts that failed (each moved on to the next peer or gave up).
    pub attempts_failed: AtomicU64,
    /// Attempts that ended because the partition did not fit on the local disk.
    pub insufficient_space: AtomicU64,
    /// Attempts whose snapshot the log could not continue (refused before commit).
    pub stale_snapshot: AtomicU64,
    /// Attempts that ended on a peer breaking the protocol or a bound (a manifest or frame
    /// over its limit, a digest of the wrong length, a lie about a file).
    pub protocol_violation: AtomicU64,
    /// Attempts that ended with the peer still preparing after the prepare limit.
    pub not_ready: AtomicU64,
}
