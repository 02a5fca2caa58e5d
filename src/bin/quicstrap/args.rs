//! The option groups several subcommands share: TLS material, QUIC tuning, the Kafka
//! change-log client, and the `ADDR@congestion` listener spec.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use quicstrap::ingest::kafka::KafkaConfig;
use quicstrap::ingest::{BadRecordPolicy, CatchUpConfig, TopicTemplate};
use quicstrap::tls::{Identity, TlsError};
use quicstrap::transport::{Congestion, TransportTuning};

// Who this node is and whom it trusts (serve, fetch).
#[derive(Args)]
pub struct TlsArgs {
    /// PEM certificate chain of this node.
    #[arg(long)]
    pub cert: PathBuf,
    /// PEM private key of this node.
    #[arg(long)]
    pub key: PathBuf,
    /// PEM CA bundle peers must chain to. Required: no CA is trusted by default, the
    /// development one (certs-dev/ca.crt) included.
    #[arg(long)]
    pub ca: PathBuf,
}

// QUIC tuning, the same knobs on both ends (serve, fetch).
#[derive(Args)]
pub struct QuicArgs {
    /// Congestion controller: bbr, cubic or newreno. bbr, the default, keeps the rate on
    /// lossy long links where cubic collapses (BENCHMARKS.md).
    #[arg(long, default_value = "bbr")]
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
    /// This node's certificate, key and trusted CA, loaded and checked.
    pub fn identity(&self) -> Result<Identity, TlsError> {
        Identity::load(&self.cert, &self.key, &self.ca)
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
