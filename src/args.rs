//! The option groups several subcommands share: TLS material, QUIC tuning, whom to ask and how
//! a transfer behaves (fetch, recover), the Kafka change-log client and catch-up, and the
//! `ADDR@congestion` listener spec.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use quicstrap::client::FetchConfig;
use quicstrap::control::stores::StorePolicy;
use quicstrap::ingest::kafka::KafkaConfig;
use quicstrap::ingest::{BadRecordPolicy, CatchUpConfig, TopicTemplate};
use quicstrap::jobs::bootstrap::BootstrapConfig;
use quicstrap::net::tls::{Identity, TlsError};
use quicstrap::net::transport::{Congestion, TransportTuning};
use quicstrap::peers::dns::{self, DnsSrv};
use quicstrap::peers::order::PeerOrder;
use quicstrap::peers::{AnyOf, Discovery, Peer, PeersFuture, StaticPeers};
use quicstrap::store::checksum::ChecksumAlgo;
use quicstrap::store::partition::{PartitionId, TableFormat};

/// How long one DNS query of `--discover` may take (it is tried twice).
const DNS_TIMEOUT: Duration = Duration::from_secs(3);

// Which store version (fetch, recover).
#[derive(Args)]
pub struct StoreArgs {
    /// Store name.
    #[arg(long = "store", value_name = "STORE")]
    pub name: String,
    /// Store version.
    #[arg(long)]
    pub version: u32,
}

// Whom to ask for a partition (fetch, recover).
#[derive(Args)]
pub struct PeerArgs {
    /// A peer, `host:port` or `name@host:port`, optionally in a zone: `ZONE/host:port`;
    /// repeat for more (none: Kafka only).
    #[arg(long = "peer", required_unless_present_any = ["kafka", "discover"])]
    pub peers: Vec<Peer>,
    /// Find each partition's peers in DNS: `srv:DOMAIN` asks for the SRV records
    /// `_quicstrap._udp.p<partition>.<store>-v<version>.DOMAIN`, and each record's target is
    /// the name the peer's certificate must carry. Combines with --peer.
    #[arg(long, value_name = "srv:DOMAIN", value_parser = parse_discover)]
    pub discover: Option<String>,
    /// DNS server --discover asks, `IP:PORT` (repeatable) [default: the nameservers of
    /// /etc/resolv.conf].
    #[arg(long = "dns-server", requires = "discover")]
    pub dns_servers: Vec<SocketAddr>,
    /// Read each SRV target's zone from this label of its name (0-based): with 1,
    /// `peer3.dc2.cluster.example` is in zone `dc2`.
    #[arg(long, value_name = "N", requires = "discover")]
    pub zone_label: Option<usize>,
    /// Accept only a server whose certificate is valid for this name, whatever address a
    /// peer resolved to (DNS answers are unauthenticated): every peer is verified against
    /// it instead of the host, `name@` or SRV target it was given with.
    #[arg(long)]
    pub server_name: Option<String>,
}

/// `srv:DOMAIN` → `DOMAIN`.
fn parse_discover(s: &str) -> Result<String, String> {
    match s.split_once(':') {
        Some(("srv", domain)) if !domain.trim_end_matches('.').is_empty() => Ok(domain.to_owned()),
        _ => Err(format!("{s:?}: expected srv:DOMAIN")),
    }
}

impl PeerArgs {
    /// Who to ask, as one discovery: the --peer list and DNS together, every name replaced
    /// by --server-name when given. An unusable --server-name or resolver is the error.
    pub fn discovery(&self) -> Result<Box<dyn Discovery>, String> {
        if let Some(name) = &self.server_name {
            if rustls_pki_types::ServerName::try_from(name.as_str()).is_err() {
                return Err(format!(
                    "--server-name {name:?} is not a DNS name or address"
                ));
            }
        }
        let mut all: Vec<Box<dyn Discovery>> = vec![Box::new(StaticPeers(self.peers.clone()))];
        if let Some(domain) = &self.discover {
            let servers = if self.dns_servers.is_empty() {
                dns::system_name_servers()
                    .map_err(|e| format!("--discover: /etc/resolv.conf: {e}; give --dns-server"))?
            } else {
                self.dns_servers.clone()
            };
            if servers.is_empty() {
                return Err(
                    "--discover: no nameserver in /etc/resolv.conf; give --dns-server".into(),
                );
            }
            let srv = DnsSrv::new(&servers, domain, DNS_TIMEOUT);
            all.push(Box::new(match self.zone_label {
                Some(n) => srv.with_zone_label(n),
                None => srv,
            }));
        }
        Ok(Box::new(Renamed {
            inner: AnyOf(all),
            name: self.server_name.clone(),
        }))
    }
}

/// Peers of another discovery, each verified against one pinned name.
struct Renamed {
    inner: AnyOf,
    name: Option<String>,
}

impl Discovery for Renamed {
    fn peers<'a>(&'a self, id: &'a PartitionId) -> PeersFuture<'a> {
        Box::pin(async move {
            let mut peers = self.inner.peers(id).await?;
            if let Some(n) = &self.name {
                // One pinned name: an address named twice (by --peer and DNS) is one peer.
                let mut seen = std::collections::HashSet::new();
                peers.retain(|p| seen.insert(p.addr));
                for p in &mut peers {
                    p.server_name = n.clone();
                }
            }
            Ok(peers)
        })
    }
}

// How a transfer behaves (fetch, recover).
#[derive(Args)]
pub struct TransferArgs {
    /// Local root; a partition lands in `<data-dir>/<store>_v<version>/<partition>/`.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Table format this node opens: block or plain.
    #[arg(long, default_value = "block")]
    pub format: TableFormat,
    /// Digest for validation: md5 or blake3.
    #[arg(long, default_value = "md5")]
    pub checksum: ChecksumAlgo,
    /// Connect + handshake timeout, seconds.
    #[arg(long, default_value_t = 10)]
    pub connect_timeout_secs: u64,
    /// Give up on a peer after this many seconds without a byte.
    #[arg(long, default_value_t = 60)]
    pub idle_timeout_secs: u64,
    /// Slow-peer floor, bytes/s: an attempt that receives less over a whole
    /// --rate-window-secs ends as too_slow, keeps what arrived, and another peer is asked if
    /// there is one (0 = off). There is no wall-clock limit per partition.
    #[arg(long, default_value_t = 32 * 1024)]
    pub min_rate: u64,
    /// The window the slow-peer floor is measured over, seconds.
    #[arg(long, default_value_t = 120)]
    pub rate_window_secs: u64,
    /// Attempts at the peer holding kept files, in a row without a byte arriving, before
    /// moving on to the next peer; pauses between them double from 1 s to 30 s.
    #[arg(long, default_value_t = 10)]
    pub max_resumes: u32,
    /// How old kept files may be and still be resumed, seconds (the servers' window).
    #[arg(long, default_value_t = 600)]
    pub resume_window_secs: u64,
    /// This node's zone (datacenter, region): peers of the same zone are asked first, and
    /// bytes from others count as remote (and pay --remote-read-limit).
    #[arg(long)]
    pub zone: Option<String>,
    /// The order peers are asked in: `locality` (own zone first, then by SRV priority, each
    /// tier weighted by SRV weight and measured RTT and rate), `shuffle` (uniform, zones and
    /// tiers ignored) or `listed` (as given).
    #[arg(long, default_value = "locality", value_name = "ORDER")]
    pub peer_order: PeerOrder,
    /// Same as --peer-order listed.
    #[arg(long, conflicts_with = "peer_order")]
    pub no_shuffle: bool,
    /// Read-rate limit for bytes from peers of other zones, bytes/s, on top of --read-limit
    /// (0 = none beyond it).
    #[arg(long, default_value_t = 0, requires = "zone")]
    pub remote_read_limit: u64,
    /// Start every attempt from byte 0 and delete what an interrupted one received, instead
    /// of keeping it and asking the same peer for the rest.
    #[arg(long)]
    pub no_resume: bool,
    /// Read-rate limit for this process, bytes/s (0 = unlimited).
    #[arg(long, default_value_t = quicstrap::control::pacing::DEFAULT_RATE)]
    pub read_limit: u64,
    /// Write received files through the page cache, not straight to the disk (O_DIRECT is
    /// used by default where the filesystem takes it).
    #[arg(long)]
    pub buffered_writes: bool,
    /// Most bytes received data may occupy before it is read, all transfers together:
    /// each connection's receive window follows its path within this.
    #[arg(long, default_value_t = quicstrap::control::budget::DEFAULT_CAP)]
    pub max_recv_buffer: u64,
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(flatten)]
    pub quic: QuicArgs,
}

impl TransferArgs {
    /// The fetch these options describe.
    pub fn fetch_config(&self, identity: Identity) -> FetchConfig {
        let mut cfg = FetchConfig::new(identity);
        let policy = &mut cfg.policy;
        policy.table_format = self.format;
        policy.checksum = self.checksum;
        policy.connect_timeout = Duration::from_secs(self.connect_timeout_secs);
        policy.idle_timeout = Duration::from_secs(self.idle_timeout_secs);
        policy.min_rate = self.min_rate;
        policy.rate_window = Duration::from_secs(self.rate_window_secs);
        cfg.max_resumes = self.max_resumes;
        cfg.resume_window = Duration::from_secs(self.resume_window_secs);
        policy.read_limiter = quicstrap::control::pacing::RateLimiter::new(self.read_limit);
        policy.direct_io = !self.buffered_writes;
        policy.zone = self.zone.clone();
        policy.remote_read_limiter =
            quicstrap::control::pacing::RateLimiter::new(self.remote_read_limit);
        cfg.order = if self.no_shuffle {
            PeerOrder::Listed
        } else {
            self.peer_order
        };
        cfg.resume = !self.no_resume;
        cfg.tuning.idle_timeout = cfg.policy.idle_timeout;
        cfg.max_recv_buffer = self.max_recv_buffer;
        self.quic.apply(&mut cfg.tuning);
        cfg
    }
}

impl TransferArgs {
    /// Applies a store's own policy: its checksum, and its read limit within the process's.
    pub fn apply_store(&self, cfg: &mut FetchConfig, store: &StorePolicy) {
        if let Some(c) = store.checksum {
            cfg.policy.checksum = c;
        }
        if let Some(r) = store.read_limit.filter(|r| *r > 0) {
            let rate = match self.read_limit {
                0 => r,
                p => p.min(r),
            };
            cfg.policy.read_limiter = quicstrap::control::pacing::RateLimiter::new(rate);
        }
    }
}

// How a bootstrap catches up from Kafka (fetch --kafka, recover).
#[derive(Args)]
pub struct CatchUpArgs {
    /// With --kafka: replay instead of transferring below this lag, in offsets.
    #[arg(long, default_value_t = 100_000)]
    pub lag_threshold: u64,
    /// With --kafka: give up catch-up after the broker is unreachable this long, seconds
    /// (--follow waits an outage out instead, reporting it as a stall).
    #[arg(long, default_value_t = 120)]
    pub catchup_deadline_secs: u64,
    /// With --kafka: records per WriteBatch during catch-up.
    #[arg(long, default_value_t = 5_000)]
    pub catchup_batch: usize,
    #[command(flatten)]
    pub kafka_opts: KafkaOpts,
}

impl CatchUpArgs {
    /// The bootstrap these options describe, for partitions of `format`.
    pub fn bootstrap_config(&self, format: TableFormat) -> BootstrapConfig {
        let mut catch_up = self.kafka_opts.catch_up();
        catch_up.deadline = Duration::from_secs(self.catchup_deadline_secs);
        catch_up.batch = self.catchup_batch.max(1);
        BootstrapConfig {
            lag_threshold: self.lag_threshold,
            catch_up,
            table_format: format,
        }
    }
}

// Who this node is and whom it trusts (serve, fetch).
#[derive(Args)]
pub struct TlsArgs {
    /// PEM certificate chain of this node (required to serve or to ask peers).
    #[arg(long)]
    pub cert: Option<PathBuf>,
    /// PEM private key of this node (required with --cert).
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// PEM CA bundle peers must chain to (required with --cert): no CA is trusted by
    /// default, the development one (certs-dev/ca.crt) included.
    #[arg(long)]
    pub ca: Option<PathBuf>,
}

// QUIC tuning, the same knobs on both ends (serve, fetch).
#[derive(Args)]
pub struct QuicArgs {
    /// Congestion controller: paced, bbr, cubic or newreno. paced, the default, keeps the
    /// rate on lossy long links where cubic collapses, without the queue overflow of quinn's
    /// bbr (BENCHMARKS.md).
    #[arg(long, default_value = "paced")]
    pub congestion: Congestion,
    /// Per-stream flow-control window, bytes.
    #[arg(long, default_value_t = 24 << 20)]
    pub stream_window: u64,
    /// Per-connection flow-control window, bytes.
    #[arg(long, default_value_t = 96 << 20)]
    pub connection_window: u64,
    /// UDP socket buffer size, bytes.
    #[arg(long, default_value_t = 8 << 20)]
    pub socket_buffer: usize,
    /// UDP payload size connections start with: 1452 fits a 1500-byte path; use 1200 on
    /// paths with a smaller MTU (tunnels, WireGuard).
    #[arg(long, default_value_t = 1452)]
    pub initial_mtu: u16,
    /// Largest UDP payload path MTU discovery probes up to [default: 6500 bytes; each path
    /// settles at its own MTU]. 1452 keeps every packet within a 1500-byte Ethernet frame.
    #[arg(long)]
    pub max_mtu: Option<u16>,
}

impl TlsArgs {
    /// Whether any of --cert, --key, --ca was given.
    pub fn given(&self) -> bool {
        self.cert.is_some() || self.key.is_some() || self.ca.is_some()
    }

    /// This node's certificate, key and trusted CA, loaded and checked; `why` says what
    /// needs them when one is missing.
    pub fn identity(&self, why: &str) -> Result<Identity, String> {
        match (&self.cert, &self.key, &self.ca) {
            (Some(cert), Some(key), Some(ca)) => {
                Identity::load(cert, key, ca).map_err(|e: TlsError| e.to_string())
            }
            _ => Err(format!("{why} needs --cert, --key and --ca")),
        }
    }
}

impl QuicArgs {
    /// Sets these knobs in `t`, leaving the ones the command line does not offer alone.
    pub fn apply(&self, t: &mut TransportTuning) {
        t.congestion = self.congestion;
        t.stream_window = self.stream_window;
        t.connection_window = self.connection_window;
        t.socket_buffer = self.socket_buffer;
        t.initial_mtu = self.initial_mtu;
        if let Some(max) = self.max_mtu {
            t.max_mtu = max;
        }
    }
}

// The change-log client: serve --kafka follows with it, fetch --kafka bootstraps with it.
#[derive(Args)]
pub struct KafkaOpts {
    /// librdkafka property of the change-log client, `KEY=VALUE` (repeatable): what a real
    /// cluster needs, such as security.protocol, ssl.ca.location, sasl.*, client.id or fetch
    /// sizes. Applied after quicstrap's own settings, so these win.
    #[arg(long = "kafka-config", value_parser = KafkaConfig::parse_property)]
    pub kafka_config: Vec<(String, String)>,
    /// Change-log topic of a store version; `{store}` and `{version}` are substituted, and
    /// the Kafka partition is the partition number.
    #[arg(long, default_value = "{store}_v{version}")]
    pub topic: TopicTemplate,
    /// A change-log record without a key: `skip` counts it
    /// (quicstrap_ingest_bad_records_total), logs where it is and goes on; `fail` stops
    /// ingestion right before it.
    #[arg(long, default_value = "skip")]
    pub on_bad_record: BadRecordPolicy,
    /// Following with no progress for this many seconds while records wait, or with the broker
    /// unreachable that long, is reported as stalled (logged once at WARN, and in metrics).
    #[arg(long, default_value_t = 30)]
    pub kafka_stall_secs: u64,
    /// serve --kafka: a partition whose following stopped (it does not open, a bad record
    /// under --on-bad-record fail, a retention gap) is tried again after this many seconds.
    #[arg(long, default_value_t = 60)]
    pub kafka_retry_secs: u64,
}

impl KafkaOpts {
    /// The client of the cluster at `brokers`.
    pub fn config(&self, brokers: &str) -> KafkaConfig {
        KafkaConfig {
            brokers: brokers.to_owned(),
            properties: self.kafka_config.clone(),
            topics: self.topic.clone(),
        }
    }

    /// Catch-up knobs from these options; the caller adds its own deadline and batch size.
    pub fn catch_up(&self) -> CatchUpConfig {
        CatchUpConfig {
            on_bad_record: self.on_bad_record,
            stall_after: Duration::from_secs(self.kafka_stall_secs.max(1)),
            ..Default::default()
        }
    }
}

/// `ADDR` or `ADDR@congestion`: a listener with its own congestion controller.
#[derive(Clone, Debug)]
pub struct ListenSpec {
    /// Where to listen.
    pub addr: SocketAddr,
    /// The controller named after `@`, unparsed: QUIC and TCP know different names.
    pub congestion: Option<String>,
}

impl ListenSpec {
    /// The controller named after `@`, as QUIC's or TCP's (`T`); an unknown name is the
    /// error to show.
    pub fn parse_congestion<T: std::str::FromStr<Err = String>>(
        &self,
    ) -> Result<Option<T>, String> {
        self.congestion.as_deref().map(str::parse).transpose()
    }
}

impl std::str::FromStr for ListenSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, cc) = match s.split_once('@') {
            Some((a, c)) => (a, Some(c.to_owned())),
            None => (s, None),
        };
        Ok(Self {
            addr: addr.parse().map_err(|e| format!("{addr}: {e}"))?,
            congestion: cc,
        })
    }
}
