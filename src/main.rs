//! `quicstrap`: a thin command-line front end over the library.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use quicstrap::baseline::{HttpFetchConfig, HttpFetcher, HttpServer, HttpServerConfig};
use quicstrap::checksum::ChecksumAlgo;
use quicstrap::client::{FetchConfig, Fetcher, Progress};
use quicstrap::ingest::kafka::KafkaConfig;
use quicstrap::ingest::{BadRecordPolicy, CatchUpConfig, TopicTemplate};
use quicstrap::partition::{self, PartitionId, TableFormat};
use quicstrap::peers::Peer;
use quicstrap::server::{Server, ServerConfig};
use quicstrap::snapshot::DataDir;
use quicstrap::tls::{AllowList, Identity};
use quicstrap::transport::Congestion;

#[derive(Parser)]
#[command(
    name = "quicstrap",
    version,
    about = "Bootstrap RocksDB partitions from peers over QUIC"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the partitions under a data directory to allowed peers.
    Serve(ServeArgs),
    /// Fetch one partition from the first peer that can serve it.
    Fetch(FetchArgs),
    /// Create a source partition of N records (several SST files).
    Seed(SeedArgs),
    /// Run the end-to-end demo on embedded defaults.
    Demo(DemoArgs),
}

#[derive(Args)]
struct TlsArgs {
    /// PEM certificate chain of this node.
    #[arg(long)]
    cert: PathBuf,
    /// PEM private key of this node.
    #[arg(long)]
    key: PathBuf,
    /// PEM CA bundle peers must chain to. Required: no CA is trusted by default, the
    /// development one (certs-dev/ca.crt) included.
    #[arg(long)]
    ca: PathBuf,
}

#[derive(Args)]
struct QuicArgs {
    /// Congestion controller: bbr, cubic or newreno. bbr, the default, keeps the rate on
    /// lossy long links where cubic collapses (BENCHMARKS.md).
    #[arg(long, default_value = "bbr")]
    congestion: Congestion,
    /// Per-stream flow-control window, bytes.
    #[arg(long, default_value_t = 24 << 20)]
    stream_window: u64,
    /// Per-connection flow-control window, bytes.
    #[arg(long, default_value_t = 96 << 20)]
    connection_window: u64,
    /// UDP socket buffer size, bytes.
    #[arg(long, default_value_t = 8 << 20)]
    socket_buffer: usize,
    /// UDP payload size connections start with: 1452 fits a 1500-byte path; use 1200 on
    /// paths with a smaller MTU (tunnels, WireGuard).
    #[arg(long, default_value_t = 1452)]
    initial_mtu: u16,
}

impl QuicArgs {
    fn apply(&self, t: &mut quicstrap::transport::TransportTuning) {
        t.congestion = self.congestion;
        t.stream_window = self.stream_window;
        t.connection_window = self.connection_window;
        t.socket_buffer = self.socket_buffer;
        t.initial_mtu = self.initial_mtu;
    }
}

#[derive(Args)]
struct KafkaOpts {
    /// librdkafka property of the change-log client, `KEY=VALUE` (repeatable): what a real
    /// cluster needs, such as security.protocol, ssl.ca.location, sasl.*, client.id or fetch
    /// sizes. Applied after quicstrap's own settings, so these win.
    #[arg(long = "kafka-config", value_parser = KafkaConfig::parse_property)]
    kafka_config: Vec<(String, String)>,
    /// Change-log topic of a store version; `{store}` and `{version}` are substituted, and
    /// the Kafka partition is the partition number.
    #[arg(long, default_value = "{store}_v{version}")]
    topic: TopicTemplate,
    /// A change-log record without a key: `skip` counts it
    /// (quicstrap_ingest_bad_records_total), logs where it is and goes on; `fail` stops
    /// ingestion right before it.
    #[arg(long, default_value = "skip")]
    on_bad_record: BadRecordPolicy,
    /// Following with no progress for this many seconds while records wait, or with the broker
    /// unreachable that long, is reported as stalled (logged once at WARN, and in metrics).
    #[arg(long, default_value_t = 30)]
    kafka_stall_secs: u64,
    /// serve --kafka: a partition whose following stopped (it does not open, a bad record
    /// under --on-bad-record fail, a retention gap) is tried again after this many seconds.
    #[arg(long, default_value_t = 60)]
    kafka_retry_secs: u64,
}

impl KafkaOpts {
    fn config(&self, brokers: &str) -> KafkaConfig {
        KafkaConfig {
            brokers: brokers.to_owned(),
            properties: self.kafka_config.clone(),
            topics: self.topic.clone(),
        }
    }

    fn catch_up(&self) -> CatchUpConfig {
        CatchUpConfig {
            on_bad_record: self.on_bad_record,
            stall_after: Duration::from_secs(self.kafka_stall_secs.max(1)),
            ..Default::default()
        }
    }
}

/// `ADDR` or `ADDR@congestion`: a listener with its own congestion controller.
#[derive(Clone, Debug)]
struct ListenSpec {
    addr: SocketAddr,
    congestion: Option<String>,
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

#[derive(Args)]
struct ServeArgs {
    /// UDP address to listen on.
    #[arg(long, default_value = "0.0.0.0:7878")]
    listen: SocketAddr,
    /// More QUIC listeners over the same snapshots, `ADDR@cubic|bbr|newreno` (repeatable):
    /// lets one server offer several congestion controllers side by side.
    #[arg(long = "also-listen")]
    also_listen: Vec<ListenSpec>,
    /// HTTPS baseline listeners over the same snapshots, `ADDR` or `ADDR@<tcp cc>` such as
    /// `0.0.0.0:8443@bbr` (repeatable). See the `baseline` module for the URLs.
    #[arg(long = "http-listen")]
    http_listen: Vec<ListenSpec>,
    /// Root holding `<store>_v<version>/<partition>/` directories.
    #[arg(long)]
    data_dir: PathBuf,
    /// Table format of the partitions: block or plain.
    #[arg(long, default_value = "block")]
    format: TableFormat,
    /// Where snapshots are made (default: <data-dir>/.snapshots).
    #[arg(long)]
    snapshot_dir: Option<PathBuf>,
    /// Another serve owns --data-dir or the snapshot dir: wait up to this many seconds for
    /// it to exit instead of refusing at once (rolling restarts).
    #[arg(long, default_value_t = 0)]
    wait_for_lock: u64,
    /// Comma-separated client names allowed to fetch, matched exactly against the DNS names
    /// of a client's certificate (a wildcard certificate does not stand in for a specific
    /// name); `*` lets any client whose certificate chains to --ca fetch. Required: who may
    /// copy this node's data is a decision, not a default.
    #[arg(long)]
    allow: String,
    /// Reuse a snapshot younger than this many seconds.
    #[arg(long, default_value_t = 3600)]
    snapshot_ttl_secs: u64,
    /// Sweep stale snapshots every this many seconds.
    #[arg(long, default_value_t = 7200)]
    snapshot_cleanup_secs: u64,
    /// Concurrent transfers before answering Busy.
    #[arg(long, default_value_t = 30)]
    max_users: usize,
    /// Files of one transfer in flight at once.
    #[arg(long, default_value_t = 8)]
    files_in_flight: usize,
    /// Server-side limit for one partition transfer, seconds.
    #[arg(long, default_value_t = 3600)]
    partition_timeout_secs: u64,
    /// QUIC idle timeout, seconds.
    #[arg(long, default_value_t = 60)]
    idle_timeout_secs: u64,
    /// Write-rate limit for all transfers of this process, bytes/s (0 = unlimited).
    #[arg(long, default_value_t = quicstrap::pacing::DEFAULT_RATE)]
    write_limit: u64,
    /// Most bytes all QUIC transfers together may queue for sending (send windows plus file
    /// reads), whatever the number of clients and their paths: each connection's share
    /// follows its path, and file reads pause when it is full.
    #[arg(long, default_value_t = quicstrap::budget::DEFAULT_CAP)]
    max_send_buffer: u64,
    /// Kafka brokers (`host:port,...`): keep every partition under --data-dir following its
    /// topic while serving snapshots of it. A partition whose following stops (it cannot
    /// open, a bad record under --on-bad-record fail, a retention gap) is refused to peers as
    /// `stale` and retried every minute; the others are served meanwhile.
    #[arg(long)]
    kafka: Option<String>,
    #[command(flatten)]
    kafka_opts: KafkaOpts,
    /// Serve Prometheus metrics at `http://ADDR/metrics`.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// Adapt the write limit between 20 % and 200 % of --write-limit, in steps of 20 % per
    /// 1 s cycle: down when over half the requests of a cycle were answered Busy, up after
    /// 10 quiet cycles.
    #[arg(long)]
    adaptive_throttle: bool,
    #[command(flatten)]
    tls: TlsArgs,
    #[command(flatten)]
    quic: QuicArgs,
}

#[derive(Args)]
struct FetchArgs {
    /// A peer, `host:port` or `name@host:port`; repeat for more (none: Kafka only).
    #[arg(long = "peer", required_unless_present = "kafka")]
    peers: Vec<Peer>,
    /// Store name.
    #[arg(long)]
    store: String,
    /// Store version.
    #[arg(long)]
    version: u32,
    /// Partition number.
    #[arg(long)]
    partition: u32,
    /// Local root; the partition lands in `<data-dir>/<store>_v<version>/<partition>/`.
    #[arg(long)]
    data_dir: PathBuf,
    /// Table format this node opens: block or plain.
    #[arg(long, default_value = "block")]
    format: TableFormat,
    /// Digest for validation: md5 or blake3.
    #[arg(long, default_value = "md5")]
    checksum: ChecksumAlgo,
    /// Connect + handshake timeout, seconds.
    #[arg(long, default_value_t = 10)]
    connect_timeout_secs: u64,
    /// Give up on a peer after this many seconds without a byte.
    #[arg(long, default_value_t = 60)]
    idle_timeout_secs: u64,
    /// Give up on a peer after this many seconds for the partition.
    #[arg(long, default_value_t = 1200)]
    partition_timeout_secs: u64,
    /// Accept only a server whose certificate is valid for this name, whatever address a
    /// --peer resolved to (DNS answers are unauthenticated): every peer is verified against
    /// it instead of the host or `name@` it was given with.
    #[arg(long)]
    server_name: Option<String>,
    /// Try peers in the order given instead of shuffling.
    #[arg(long)]
    no_shuffle: bool,
    /// Print a machine-readable report on stdout.
    #[arg(long)]
    json: bool,
    /// Read-rate limit for this process, bytes/s (0 = unlimited).
    #[arg(long, default_value_t = quicstrap::pacing::DEFAULT_RATE)]
    read_limit: u64,
    /// Most bytes received data may occupy before it is read, all transfers together:
    /// each connection's receive window follows its path within this.
    #[arg(long, default_value_t = quicstrap::budget::DEFAULT_CAP)]
    max_recv_buffer: u64,
    /// Kafka brokers (`host:port,...`): do the whole bootstrap — transfer, then catch up from
    /// the snapshot's offset; Kafka alone when the lag is small or no peer can serve.
    #[arg(long)]
    kafka: Option<String>,
    /// With --kafka: keep consuming after catching up, until interrupted.
    #[arg(long, requires = "kafka")]
    follow: bool,
    /// With --kafka: replay instead of transferring below this lag, in offsets.
    #[arg(long, default_value_t = 100_000)]
    lag_threshold: u64,
    /// With --kafka: give up catch-up after the broker is unreachable this long, seconds
    /// (--follow waits an outage out instead, reporting it as a stall).
    #[arg(long, default_value_t = 120)]
    catchup_deadline_secs: u64,
    #[command(flatten)]
    kafka_opts: KafkaOpts,
    /// With --kafka: records per WriteBatch during catch-up.
    #[arg(long, default_value_t = 5_000)]
    catchup_batch: usize,
    /// Fetch over the HTTPS baseline instead of QUIC (peers are the servers' --http-listen
    /// addresses).
    #[arg(long, conflicts_with = "kafka")]
    http: bool,
    /// With --http: TCP connections pulling files in parallel (1 = one file after another).
    #[arg(long, default_value_t = 1, requires = "http")]
    http_connections: usize,
    /// With --http: TCP congestion controller of the client's sockets.
    #[arg(long, requires = "http")]
    tcp_congestion: Option<quicstrap::baseline::TcpCongestion>,
    /// Serve Prometheus metrics at `http://ADDR/metrics` while fetching.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// Adapt the read limit between 20 % and 200 % of --read-limit, in steps of 20 % per
    /// 1 s cycle: down when an fsync of a received file took over 500 ms, up after 10 quiet
    /// cycles.
    #[arg(long)]
    adaptive_throttle: bool,
    #[command(flatten)]
    tls: TlsArgs,
    #[command(flatten)]
    quic: QuicArgs,
}

#[derive(Args)]
struct SeedArgs {
    /// Root of the partition tree.
    #[arg(long)]
    data_dir: PathBuf,
    /// Store name.
    #[arg(long)]
    store: String,
    /// Store version.
    #[arg(long, default_value_t = 1)]
    version: u32,
    /// Partition number.
    #[arg(long, default_value_t = 0)]
    partition: u32,
    /// Records to write.
    #[arg(long)]
    records: u64,
    /// Bytes per value.
    #[arg(long, default_value_t = 1000)]
    value_size: usize,
    /// Records per SST file.
    #[arg(long, default_value_t = 16384)]
    records_per_sst: u64,
    /// Table format: block or plain.
    #[arg(long, default_value = "block")]
    format: TableFormat,
}

#[derive(Args)]
struct DemoArgs {
    /// Work here instead of a temp dir (kept afterwards).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
    /// Run the real path against these Kafka brokers: the source is built from Kafka and the
    /// fetched partition catches up from Kafka.
    #[arg(long)]
    kafka: Option<String>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // Quiet by default: a failed command says one line; RUST_LOG tells more.
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never into a log file.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => return fail(2, &format!("cannot start runtime: {e}")),
    };
    rt.block_on(async move {
        match cli.cmd {
            Cmd::Serve(a) => serve(a).await,
            Cmd::Fetch(a) => fetch(a).await,
            Cmd::Seed(a) => seed(a),
            Cmd::Demo(a) => demo(a).await,
        }
    })
}

/// Prints `report` as pretty JSON when asked, else the human line; a report that cannot be
/// serialised is an error (exit 2).
fn print_report<T: serde::Serialize>(
    json: bool,
    report: &T,
    human: impl FnOnce() -> String,
) -> ExitCode {
    if json {
        match serde_json::to_string_pretty(report) {
            Ok(s) => println!("{s}"),
            Err(e) => return fail(2, &e.to_string()),
        }
    } else {
        print!("{}", human());
    }
    ExitCode::SUCCESS
}

fn fail(code: u8, msg: &str) -> ExitCode {
    eprintln!("quicstrap: {msg}");
    ExitCode::from(code)
}

async fn serve(a: ServeArgs) -> ExitCode {
    let identity = match Identity::load(&a.tls.cert, &a.tls.key, &a.tls.ca) {
        Ok(i) => i,
        Err(e) => return fail(2, &e.to_string()),
    };
    // One serve per data dir: a second one would open the same RocksDB instances and,
    // with the default snapshot dir, wipe the first one's live snapshots.
    let lock_wait = Duration::from_secs(a.wait_for_lock);
    let data_dir = a.data_dir.clone();
    let _data_lock = match tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&data_dir)
            .map_err(|e| format!("data dir {}: {e}", data_dir.display()))?;
        quicstrap::lock::DirLock::acquire(&data_dir.join(".quicstrap-serve.lock"), lock_wait)
            .map_err(|e| e.to_string())
    })
    .await
    {
        Ok(Ok(l)) => l,
        Ok(Err(e)) => return fail(2, &e),
        Err(e) => return fail(2, &e.to_string()),
    };
    let snaps = a
        .snapshot_dir
        .clone()
        .unwrap_or_else(|| a.data_dir.join(".snapshots"));
    let mut cfg = ServerConfig::new(
        a.listen,
        identity,
        AllowList::parse(&a.allow),
        a.format,
        snaps,
    );
    cfg.snapshots.ttl = Duration::from_secs(a.snapshot_ttl_secs);
    cfg.snapshots.cleanup_interval = Duration::from_secs(a.snapshot_cleanup_secs.max(1));
    cfg.snapshots.max_users = a.max_users;
    cfg.snapshots.lock_wait = lock_wait;
    cfg.files_in_flight = a.files_in_flight;
    cfg.partition_timeout = Duration::from_secs(a.partition_timeout_secs);
    cfg.tuning.idle_timeout = Duration::from_secs(a.idle_timeout_secs);
    cfg.idle_timeout = cfg.tuning.idle_timeout;
    cfg.write_limiter = quicstrap::pacing::RateLimiter::new(a.write_limit);
    cfg.max_send_buffer = a.max_send_buffer;
    a.quic.apply(&mut cfg.tuning);
    let source = Arc::new(DataDir::new(a.data_dir.clone(), a.format));
    let mut followed = Vec::new();
    if let Some(brokers) = &a.kafka {
        let mut fc = quicstrap::ingest::follow::FollowConfig::new(a.kafka_opts.config(brokers));
        fc.catch_up = a.kafka_opts.catch_up();
        fc.catch_up.deadline = Duration::MAX;
        fc.retry_stopped = Duration::from_secs(a.kafka_opts.kafka_retry_secs.max(1));
        match quicstrap::ingest::follow::follow_all(&a.data_dir, a.format, &fc, &source).await {
            Ok(f) => followed = f,
            Err(e) => return fail(2, &format!("data dir {}: {e}", a.data_dir.display())),
        }
        for f in &followed {
            if let Some(e) = &f.open_error {
                // Serving the others beats serving none; this one is refused as `stale` and
                // retried.
                eprintln!(
                    "quicstrap: partition {} does not open, not served until it does: {e}",
                    f.id
                );
            }
        }
    }
    let http_cfg = |spec: &ListenSpec| -> Result<HttpServerConfig, String> {
        let mut h = HttpServerConfig::new(
            spec.addr,
            cfg.identity.clone(),
            cfg.allow.clone(),
            cfg.table_format,
        );
        h.congestion = spec.congestion.as_deref().map(str::parse).transpose()?;
        h.idle_timeout = cfg.idle_timeout;
        h.write_limiter = cfg.write_limiter.clone();
        Ok(h)
    };
    let http_cfgs = match a
        .http_listen
        .iter()
        .map(http_cfg)
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(c) => c,
        Err(e) => return fail(2, &e),
    };
    let mut extra_cfgs = Vec::new();
    for spec in &a.also_listen {
        let mut c = cfg.clone();
        c.listen = spec.addr;
        if let Some(cc) = &spec.congestion {
            match cc.parse() {
                Ok(cc) => c.tuning.congestion = cc,
                Err(e) => return fail(2, &e),
            }
        }
        extra_cfgs.push(c);
    }
    let write_limiter = cfg.write_limiter.clone();
    let server = match Server::start(cfg, source).await {
        Ok(s) => s,
        Err(e) => return fail(2, &e.to_string()),
    };
    let throttler = a.adaptive_throttle.then(|| {
        let (stats, all) = (server.stats(), server.stats());
        let busy = quicstrap::throttle::CounterRatioSignal::new(
            "busy_ratio",
            0.5,
            move || stats.busy.load(std::sync::atomic::Ordering::Relaxed),
            move || {
                all.accepted.load(std::sync::atomic::Ordering::Relaxed)
                    + all.rejected.load(std::sync::atomic::Ordering::Relaxed)
            },
        );
        quicstrap::throttle::Throttler::spawn(
            write_limiter.clone(),
            a.write_limit,
            vec![busy as Arc<dyn quicstrap::throttle::Signal>],
            Duration::from_secs(1),
            10,
        )
    });
    let mut extra = Vec::new();
    for c in extra_cfgs {
        match Server::start_sharing(c, &server).await {
            Ok(s) => extra.push(s),
            Err(e) => return fail(2, &e.to_string()),
        }
    }
    let mut https = Vec::new();
    for h in http_cfgs {
        match HttpServer::start(h, server.snapshots().clone()).await {
            Ok(s) => https.push(s),
            Err(e) => return fail(2, &e.to_string()),
        }
    }
    match server.local_addr() {
        // Tests and scripts read this line to learn the port.
        Ok(addr) => println!("listening on {addr}"),
        Err(e) => return fail(2, &e.to_string()),
    }
    for s in &extra {
        if let Ok(addr) = s.local_addr() {
            println!("also listening on {addr}");
        }
    }
    for h in &https {
        println!("https listening on {}", h.local_addr());
    }
    let _metrics = match a.metrics_listen {
        Some(addr) => {
            let registry = quicstrap::metrics::Registry::new();
            quicstrap::metrics::register_server(&registry, &server, throttler.as_ref());
            quicstrap::metrics::register_process(&registry);
            let ingest: Vec<_> = followed
                .iter()
                .map(|f| (f.id.to_string(), f.stats.clone()))
                .collect();
            quicstrap::metrics::register_ingest(&registry, &ingest);
            for h in &https {
                quicstrap::metrics::register_https(&registry, h);
            }
            match quicstrap::metrics::serve(addr, registry).await {
                Ok((bound, task)) => {
                    println!("metrics on http://{bound}/metrics");
                    Some(AbortOnDrop(task))
                }
                Err(e) => return fail(2, &format!("metrics listener {addr}: {e}")),
            }
        }
        None => None,
    };
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => return fail(2, &e.to_string()),
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    eprintln!("quicstrap: shutting down");
    // All listeners at once: every client hears `shutting_down` without waiting for the
    // other listeners' grace periods.
    tokio::join!(
        futures_util::future::join_all(https.into_iter().map(HttpServer::shutdown)),
        futures_util::future::join_all(extra.into_iter().map(Server::shutdown)),
        server.shutdown(),
    );
    ExitCode::SUCCESS
}

async fn fetch(mut a: FetchArgs) -> ExitCode {
    // Under --json every outcome prints a report, also a failure before any attempt.
    let fail_early = |a: &FetchArgs, msg: String| fetch_failed(a, 2, &msg, "usage", None);
    if let Some(name) = &a.server_name {
        if rustls_pki_types::ServerName::try_from(name.as_str()).is_err() {
            let msg = format!("--server-name {name:?} is not a DNS name or address");
            return fail_early(&a, msg);
        }
        for p in &mut a.peers {
            p.server_name = name.clone();
        }
    }
    let id = match PartitionId::new(&a.store, a.version, a.partition) {
        Ok(id) => id,
        Err(e) => return fail_early(&a, format!("store name: {e}")),
    };
    let identity = match Identity::load(&a.tls.cert, &a.tls.key, &a.tls.ca) {
        Ok(i) => i,
        Err(e) => return fail_early(&a, e.to_string()),
    };
    let mut cfg = FetchConfig::new(identity);
    cfg.table_format = a.format;
    cfg.checksum = a.checksum;
    cfg.connect_timeout = Duration::from_secs(a.connect_timeout_secs);
    cfg.idle_timeout = Duration::from_secs(a.idle_timeout_secs);
    cfg.partition_timeout = Duration::from_secs(a.partition_timeout_secs);
    cfg.shuffle = !a.no_shuffle;
    cfg.tuning.idle_timeout = cfg.idle_timeout;
    cfg.read_limiter = quicstrap::pacing::RateLimiter::new(a.read_limit);
    cfg.max_recv_buffer = a.max_recv_buffer;
    a.quic.apply(&mut cfg.tuning);
    if a.http {
        return fetch_http(&a, &id, cfg).await;
    }
    let read_limiter = cfg.read_limiter.clone();
    let fetcher = match Fetcher::new(cfg) {
        Ok(f) => Arc::new(f),
        Err(e) => return fail_early(&a, e.to_string()),
    };
    let throttler = a.adaptive_throttle.then(|| {
        quicstrap::throttle::Throttler::spawn(
            read_limiter.clone(),
            a.read_limit,
            vec![quicstrap::throttle::fsync_latency() as Arc<dyn quicstrap::throttle::Signal>],
            Duration::from_secs(1),
            10,
        )
    });
    let ingest_stats = Arc::new(quicstrap::ingest::IngestStats::default());
    let _metrics = match a.metrics_listen {
        Some(addr) => {
            let registry = quicstrap::metrics::Registry::new();
            quicstrap::metrics::register_client(&registry, &fetcher, throttler.as_ref());
            quicstrap::metrics::register_process(&registry);
            if a.kafka.is_some() {
                quicstrap::metrics::register_ingest(
                    &registry,
                    &[(id.to_string(), ingest_stats.clone())],
                );
            }
            match quicstrap::metrics::serve(addr, registry).await {
                Ok((bound, task)) => {
                    eprintln!("quicstrap: metrics on http://{bound}/metrics");
                    Some(AbortOnDrop(task))
                }
                Err(e) => return fail_early(&a, format!("metrics listener {addr}: {e}")),
            }
        }
        None => None,
    };
    let progress = Arc::new(Progress::default());
    let bar = std::io::stderr()
        .is_terminal()
        .then(|| quicstrap::progress_bar::ProgressBar::spawn(progress.clone()));
    let stop_bar = || async {
        if let Some(bar) = bar {
            bar.finish().await;
        }
    };
    if let Some(brokers) = a.kafka.clone() {
        let code = bootstrap(
            &a,
            &id,
            &fetcher,
            &progress,
            &brokers,
            ingest_stats,
            stop_bar(),
        )
        .await;
        fetcher.close().await;
        return code;
    }
    let result = fetcher
        .fetch_with_progress(&id, &a.peers, &a.data_dir, &progress)
        .await;
    stop_bar().await;
    fetcher.close().await;
    report_fetch(&a, result)
}

/// A fetch that failed: the message on stderr, exit `code`, and under --json a report on
/// stdout that says what failed (`error_kind`) and carries `details` (attempts, the
/// bootstrap so far).
fn fetch_failed(
    a: &FetchArgs,
    code: u8,
    error: &str,
    kind: &str,
    details: Option<serde_json::Value>,
) -> ExitCode {
    if a.json {
        let mut v = serde_json::json!({
            "partition": format!("{}_v{}/{}", a.store, a.version, a.partition),
            "ok": false,
            "error": error,
            "error_kind": kind,
        });
        if let (Some(serde_json::Value::Object(d)), Some(obj)) = (details, v.as_object_mut()) {
            for (k, val) in d {
                obj.entry(k).or_insert(val);
            }
        }
        println!("{v:#}");
    }
    fail(code, error)
}

/// Aborts a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `fetch --http`: the same fetch over the HTTPS baseline.
async fn fetch_http(a: &FetchArgs, id: &PartitionId, quic: FetchConfig) -> ExitCode {
    if a.metrics_listen.is_some() {
        return fail(
            2,
            "--metrics-listen is for QUIC fetches: the HTTPS baseline's counters are on its \
             serving side (serve --metrics-listen)",
        );
    }
    let mut cfg = HttpFetchConfig::new(quic.identity);
    cfg.table_format = quic.table_format;
    cfg.checksum = quic.checksum;
    cfg.connect_timeout = quic.connect_timeout;
    cfg.idle_timeout = quic.idle_timeout;
    cfg.partition_timeout = quic.partition_timeout;
    cfg.read_limiter = quic.read_limiter;
    cfg.connections = a.http_connections.max(1);
    cfg.congestion = a.tcp_congestion.clone();
    let fetcher = match HttpFetcher::new(cfg) {
        Ok(f) => f,
        Err(e) => return fail(2, &e.to_string()),
    };
    let progress = Arc::new(Progress::default());
    let bar = std::io::stderr()
        .is_terminal()
        .then(|| quicstrap::progress_bar::ProgressBar::spawn(progress.clone()));
    let result = fetcher.fetch(id, &a.peers, &a.data_dir, &progress).await;
    if let Some(bar) = bar {
        bar.finish().await;
    }
    report_fetch(a, result)
}

/// Prints the outcome of a fetch (human or JSON) and picks the exit code.
fn report_fetch(
    a: &FetchArgs,
    result: Result<quicstrap::FetchReport, quicstrap::FetchError>,
) -> ExitCode {
    match result {
        Ok(report) => print_report(a.json, &report, || {
            format!(
                "fetched {} from {} into {}: {} files, {} bytes in {:.2} s ({} attempts)\n",
                report.partition,
                report.peer,
                report.dir.display(),
                report.files,
                report.bytes,
                report.seconds,
                report.attempts.len()
            )
        }),
        Err(e) => fetch_failed(
            a,
            1,
            &e.to_string(),
            e.label(),
            Some(serde_json::json!({
                "fallback": format!("{:?}", e.fallback()),
                "attempts": e.attempts(),
            })),
        ),
    }
}

/// `fetch --kafka`: the whole bootstrap, then optionally follow.
async fn bootstrap(
    a: &FetchArgs,
    id: &PartitionId,
    fetcher: &Fetcher,
    progress: &Progress,
    brokers: &str,
    stats: Arc<quicstrap::ingest::IngestStats>,
    stop_bar: impl std::future::Future<Output = ()>,
) -> ExitCode {
    use quicstrap::bootstrap::{bootstrap, BootstrapConfig};
    use quicstrap::ingest::{self, Until};
    let kafka = a.kafka_opts.config(brokers);
    let mut log = match kafka.log(id) {
        Ok(l) => l,
        Err(e) => {
            stop_bar.await;
            return fetch_failed(a, 2, &format!("kafka: {e}"), "log_config", None);
        }
    };
    let mut catch_up = a.kafka_opts.catch_up();
    catch_up.deadline = Duration::from_secs(a.catchup_deadline_secs);
    catch_up.batch = a.catchup_batch.max(1);
    catch_up.stats = stats;
    let cfg = BootstrapConfig {
        lag_threshold: a.lag_threshold,
        catch_up,
        table_format: a.format,
    };
    let result = bootstrap(fetcher, &a.peers, &a.data_dir, id, &mut log, &cfg, progress).await;
    stop_bar.await;
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            let details = e
                .report()
                .and_then(|r| serde_json::to_value(r).ok())
                .or_else(|| match &e {
                    quicstrap::bootstrap::BootstrapError::Fetch(f) => {
                        Some(serde_json::json!({ "attempts": f.attempts() }))
                    }
                    _ => None,
                });
            return fetch_failed(a, 1, &e.to_string(), e.label(), details);
        }
    };
    let printed = print_report(a.json, &report, || {
        format!(
            "bootstrapped {} via {:?}: {} records caught up, offset {:?}, {:.2} s\n",
            report.partition,
            report.path,
            report.catch_up.records,
            report.catch_up.to_offset,
            report.seconds
        )
    });
    if printed != ExitCode::SUCCESS {
        return printed;
    }
    if a.follow {
        let (dir, format) = (id.dir(&a.data_dir), a.format);
        let db = match ingest::blocking(move || partition::open(&dir, format)).await {
            Ok(db) => Arc::new(db),
            Err(e) => return fail(1, &e.to_string()),
        };
        let follow = ingest::catch_up(&db, &mut log, Until::Follow, &cfg.catch_up);
        tokio::select! {
            r = follow => if let Err(e) = r { return fail(1, &e.to_string()) },
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    ExitCode::SUCCESS
}

fn seed(a: SeedArgs) -> ExitCode {
    let id = match PartitionId::new(&a.store, a.version, a.partition) {
        Ok(id) => id,
        Err(e) => return fail(2, &format!("store name: {e}")),
    };
    let dir = id.dir(&a.data_dir);
    if dir.exists() {
        return fail(2, &format!("{} already exists", dir.display()));
    }
    match quicstrap::demo::seed::seed(&dir, a.format, a.records, a.value_size, a.records_per_sst) {
        Ok(s) => {
            println!(
                "seeded {} at {}: {} records, {} SST files, {} bytes, last offset {}",
                id,
                dir.display(),
                s.records,
                s.sst_files,
                s.bytes,
                s.last_offset
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(1, &e.to_string()),
    }
}

async fn demo(a: DemoArgs) -> ExitCode {
    let opts = quicstrap::demo::DemoOptions {
        work_dir: a.work_dir,
        progress: std::io::stderr().is_terminal(),
        kafka: a.kafka,
        ..Default::default()
    };
    eprintln!("quicstrap demo: seeding a ~256 MB partition, starting 3 peers on loopback ...");
    match quicstrap::demo::run(opts).await {
        Ok(s) => print_report(a.json, &s, || quicstrap::demo::render(&s)),
        Err(e) => fail(1, &e.to_string()),
    }
}
