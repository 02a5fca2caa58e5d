//! `quicstrap serve`: a serving node from the command line — options in, the library's
//! [`Node`] run until SIGTERM or Ctrl-C, its addresses printed for scripts and tests to read.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use quicstrap::ingest::follow::FollowConfig;
use quicstrap::jobs::node::{Node, NodeConfig};
use quicstrap::net::tls::{AllowList, Identity};
use quicstrap::server::ServerConfig;
use quicstrap::store::partition::TableFormat;
use quicstrap_baseline::{HttpServer, HttpServerConfig, TcpCongestion};

use crate::args::{KafkaOpts, ListenSpec, QuicArgs, TlsArgs};
use crate::error::CliError;

// The options of `quicstrap serve`.
#[derive(Args)]
pub struct ServeArgs {
    /// UDP address to listen on.
    #[arg(long, default_value = "0.0.0.0:7878")]
    pub listen: SocketAddr,
    /// More QUIC listeners over the same snapshots, `ADDR@cubic|bbr|newreno` (repeatable):
    /// lets one server offer several congestion controllers side by side.
    #[arg(long = "also-listen")]
    pub also_listen: Vec<ListenSpec>,
    /// HTTPS baseline listeners over the same snapshots, `ADDR` or `ADDR@<tcp cc>` such as
    /// `0.0.0.0:8443@bbr` (repeatable). See the `baseline` module for the URLs.
    #[arg(long = "http-listen")]
    pub http_listen: Vec<ListenSpec>,
    /// Root holding `<store>_v<version>/<partition>/` directories.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Table format of the partitions: block or plain.
    #[arg(long, default_value = "block")]
    pub format: TableFormat,
    /// Where snapshots are made (default: <data-dir>/.snapshots).
    #[arg(long)]
    pub snapshot_dir: Option<PathBuf>,
    /// Another serve owns --data-dir or the snapshot dir: wait up to this many seconds for
    /// it to exit instead of refusing at once (rolling restarts).
    #[arg(long, default_value_t = 0)]
    pub wait_for_lock: u64,
    /// Comma-separated client names allowed to fetch, matched exactly against the DNS names
    /// of a client's certificate (a wildcard certificate does not stand in for a specific
    /// name); `*` lets any client whose certificate chains to --ca fetch. Required: who may
    /// copy this node's data is a decision, not a default.
    #[arg(long)]
    pub allow: String,
    /// Reuse a snapshot younger than this many seconds.
    #[arg(long, default_value_t = 3600)]
    pub snapshot_ttl_secs: u64,
    /// How long after an interrupted transfer its client may resume it, in seconds (never
    /// past the snapshot TTL). An `Abort` from the client ends it at once.
    #[arg(long, default_value_t = 600)]
    pub resume_window_secs: u64,
    /// Sweep stale snapshots every this many seconds.
    #[arg(long, default_value_t = 7200)]
    pub snapshot_cleanup_secs: u64,
    /// Concurrent transfers before answering Busy.
    #[arg(long, default_value_t = 30)]
    pub max_users: usize,
    /// Concurrent transfers of one client (its certificate at its host: an IPv4 address or an
    /// IPv6 /64) before answering it Busy, while others are still served. The default is the
    /// most partitions one fetcher receives at once, so a node restoring itself from this peer
    /// alone is not refused; below the default --max-users, so one client that asks for many
    /// partitions and reads them slowly cannot hold every slot.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_users_per_client: u64,
    /// Close a QUIC connection that has carried no transfer for this many seconds, so idle
    /// connections cannot hold the connection cap. Fetchers close their own idle connections
    /// after 30 s, before this.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_connection_secs: u64,
    /// Files of one transfer in flight at once (1 to 16: a fetcher reads at most 16 file
    /// streams of a transfer at once).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=16))]
    pub files_in_flight: u64,
    /// Server-side limit for one partition transfer, seconds.
    #[arg(long, default_value_t = 3600)]
    pub partition_timeout_secs: u64,
    /// QUIC idle timeout, seconds.
    #[arg(long, default_value_t = 60)]
    pub idle_timeout_secs: u64,
    /// Write-rate limit for all transfers of this process, bytes/s (0 = unlimited).
    #[arg(long, default_value_t = quicstrap::control::pacing::DEFAULT_RATE)]
    pub write_limit: u64,
    /// Most bytes all QUIC transfers together may queue for sending (send windows plus file
    /// reads), whatever the number of clients and their paths: each connection's share
    /// follows its path, and file reads pause when it is full.
    #[arg(long, default_value_t = quicstrap::control::budget::DEFAULT_CAP)]
    pub max_send_buffer: u64,
    /// Kafka brokers (`host:port,...`): keep every partition under --data-dir following its
    /// topic while serving snapshots of it. A partition whose following stops (it cannot
    /// open, a bad record under --on-bad-record fail, a retention gap) is refused to peers as
    /// `stale` and retried every minute; the others are served meanwhile.
    #[arg(long)]
    pub kafka: Option<String>,
    #[command(flatten)]
    pub kafka_opts: KafkaOpts,
    /// Serve Prometheus metrics at `http://ADDR/metrics`.
    #[arg(long)]
    pub metrics_listen: Option<SocketAddr>,
    /// Adapt the write limit between 20 % and 200 % of --write-limit, in steps of 20 % per
    /// 1 s cycle: down when over half the requests of a cycle were answered Busy, up after
    /// 10 quiet cycles.
    #[arg(long)]
    pub adaptive_throttle: bool,
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(flatten)]
    pub quic: QuicArgs,
}

/// Serves until told to stop; every failure to start is exit 2.
pub async fn run(a: ServeArgs) -> Result<(), CliError> {
    let identity = a.tls.identity().map_err(CliError::unusable)?;
    let cfg = node_config(&a, identity)?;
    // Checked before anything starts, like the QUIC listeners' controllers.
    let https_specs: Vec<(SocketAddr, Option<TcpCongestion>)> = listeners(&a.http_listen)?;
    let policy = cfg.server.policy.clone();
    let prepared = Node::prepare(cfg).await.map_err(CliError::unusable)?;
    for f in prepared.followed() {
        if let Some(e) = &f.open_error {
            // Serving the others beats serving none; this one is refused as `stale` and
            // retried.
            eprintln!(
                "quicstrap: partition {} does not open, not served until it does: {e}",
                f.id
            );
        }
    }
    let mut node = prepared.start().await.map_err(CliError::unusable)?;
    // Tests and scripts read this line to learn the port.
    let addr = node.server().local_addr().map_err(CliError::unusable)?;
    println!("listening on {addr}");
    for s in node.extra() {
        if let Ok(addr) = s.local_addr() {
            println!("also listening on {addr}");
        }
    }
    // The HTTPS baseline over the node's own snapshots.
    let mut https = Vec::new();
    for (addr, congestion) in https_specs {
        let mut h = HttpServerConfig::with_policy(addr, policy.clone());
        h.congestion = congestion;
        match HttpServer::start(h, node.server().snapshots().clone()).await {
            Ok(server) => https.push(server),
            Err(e) => {
                node.shutdown().await;
                return Err(CliError::unusable(e));
            }
        }
    }
    for h in &https {
        println!("https listening on {}", h.local_addr());
    }
    if let Some(addr) = a.metrics_listen {
        let registry = node.registry();
        for h in &https {
            quicstrap_baseline::metrics::register(&registry, h);
        }
        let bound = node
            .serve_metrics(addr, registry)
            .await
            .map_err(|e| CliError::Unusable(format!("metrics listener {addr}: {e}")))?;
        println!("metrics on http://{bound}/metrics");
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(CliError::unusable)?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    eprintln!("quicstrap: shutting down");
    // Every listener at once, so every client hears the shutdown without waiting for the
    // other listeners' grace periods.
    let https = https.into_iter().map(HttpServer::shutdown);
    tokio::join!(futures_util::future::join_all(https), node.shutdown());
    Ok(())
}

/// The node the options describe. A congestion controller a listener names is checked here,
/// before anything starts.
fn node_config(a: &ServeArgs, identity: Identity) -> Result<NodeConfig, CliError> {
    let snaps = a
        .snapshot_dir
        .clone()
        .unwrap_or_else(|| a.data_dir.join(".snapshots"));
    let mut server = ServerConfig::new(
        a.listen,
        identity,
        AllowList::parse(&a.allow),
        a.format,
        snaps,
    );
    server.snapshots.ttl = Duration::from_secs(a.snapshot_ttl_secs);
    server.snapshots.cleanup_interval = Duration::from_secs(a.snapshot_cleanup_secs.max(1));
    server.snapshots.resume_window = Duration::from_secs(a.resume_window_secs);
    server.snapshots.max_users = a.max_users;
    server.snapshots.max_users_per_client =
        usize::try_from(a.max_users_per_client).unwrap_or(usize::MAX);
    server.connection_idle = Duration::from_secs(a.idle_connection_secs);
    server.snapshots.lock_wait = Duration::from_secs(a.wait_for_lock);
    server.files_in_flight = a.files_in_flight as usize;
    server.partition_timeout = Duration::from_secs(a.partition_timeout_secs);
    server.tuning.idle_timeout = Duration::from_secs(a.idle_timeout_secs);
    server.policy.idle_timeout = server.tuning.idle_timeout;
    server.policy.write_limiter = quicstrap::control::pacing::RateLimiter::new(a.write_limit);
    server.max_send_buffer = a.max_send_buffer;
    a.quic.apply(&mut server.tuning);
    let follow = a.kafka.as_deref().map(|brokers| {
        let mut fc = FollowConfig::new(a.kafka_opts.config(brokers));
        fc.catch_up = a.kafka_opts.catch_up();
        fc.catch_up.deadline = Duration::MAX;
        fc.retry_stopped = Duration::from_secs(a.kafka_opts.kafka_retry_secs.max(1));
        fc
    });
    Ok(NodeConfig {
        server,
        data_dir: a.data_dir.clone(),
        follow,
        also_listen: listeners(&a.also_listen)?,
        adaptive_throttle: a.adaptive_throttle,
    })
}

/// Listeners with the congestion controller each names, as QUIC's or TCP's (`T`).
fn listeners<T: std::str::FromStr<Err = String>>(
    specs: &[ListenSpec],
) -> Result<Vec<(SocketAddr, Option<T>)>, CliError> {
    specs
        .iter()
        .map(|s| Ok((s.addr, s.parse_congestion()?)))
        .collect::<Result<_, String>>()
        .map_err(CliError::Unusable)
}
