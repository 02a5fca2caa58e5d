//! `quicstrap fetch`: one partition from the first peer that can serve it — over QUIC, over
//! the HTTPS baseline, or as a whole bootstrap with Kafka — and its report.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use quicstrap::baseline::{HttpFetchConfig, HttpFetcher};
use quicstrap::bootstrap::{BootstrapConfig, BootstrapError};
use quicstrap::checksum::ChecksumAlgo;
use quicstrap::client::{FetchConfig, Fetcher, Progress};
use quicstrap::ingest::IngestStats;
use quicstrap::partition::{PartitionId, TableFormat};
use quicstrap::peers::Peer;
use quicstrap::throttle::{Signal, Throttler};
use quicstrap::{metrics, FetchError, FetchReport};

use crate::args::{KafkaOpts, QuicArgs, TlsArgs};
use crate::report::{print_fetch_failed, print_report, Bar};
use crate::CliError;

// The options of `quicstrap fetch`.
#[derive(Args)]
pub struct FetchArgs {
    /// A peer, `host:port` or `name@host:port`; repeat for more (none: Kafka only).
    #[arg(long = "peer", required_unless_present = "kafka")]
    pub peers: Vec<Peer>,
    /// Store name.
    #[arg(long)]
    pub store: String,
    /// Store version.
    #[arg(long)]
    pub version: u32,
    /// Partition number.
    #[arg(long)]
    pub partition: u32,
    /// Local root; the partition lands in `<data-dir>/<store>_v<version>/<partition>/`.
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
    /// Give up on a peer after this many seconds for the partition.
    #[arg(long, default_value_t = 1200)]
    pub partition_timeout_secs: u64,
    /// Accept only a server whose certificate is valid for this name, whatever address a
    /// --peer resolved to (DNS answers are unauthenticated): every peer is verified against
    /// it instead of the host or `name@` it was given with.
    #[arg(long)]
    pub server_name: Option<String>,
    /// Try peers in the order given instead of shuffling.
    #[arg(long)]
    pub no_shuffle: bool,
    /// Start every attempt from byte 0 and delete what an interrupted one received, instead
    /// of keeping it and asking the same peer for the rest.
    #[arg(long)]
    pub no_resume: bool,
    /// Print a machine-readable report on stdout.
    #[arg(long)]
    pub json: bool,
    /// Read-rate limit for this process, bytes/s (0 = unlimited).
    #[arg(long, default_value_t = quicstrap::pacing::DEFAULT_RATE)]
    pub read_limit: u64,
    /// Most bytes received data may occupy before it is read, all transfers together:
    /// each connection's receive window follows its path within this.
    #[arg(long, default_value_t = quicstrap::budget::DEFAULT_CAP)]
    pub max_recv_buffer: u64,
    /// Kafka brokers (`host:port,...`): do the whole bootstrap — transfer, then catch up from
    /// the snapshot's offset; Kafka alone when the lag is small or no peer can serve.
    #[arg(long)]
    pub kafka: Option<String>,
    /// With --kafka: keep consuming after catching up, until interrupted.
    #[arg(long, requires = "kafka")]
    pub follow: bool,
    /// With --kafka: replay instead of transferring below this lag, in offsets.
    #[arg(long, default_value_t = 100_000)]
    pub lag_threshold: u64,
    /// With --kafka: give up catch-up after the broker is unreachable this long, seconds
    /// (--follow waits an outage out instead, reporting it as a stall).
    #[arg(long, default_value_t = 120)]
    pub catchup_deadline_secs: u64,
    #[command(flatten)]
    pub kafka_opts: KafkaOpts,
    /// With --kafka: records per WriteBatch during catch-up.
    #[arg(long, default_value_t = 5_000)]
    pub catchup_batch: usize,
    /// Fetch over the HTTPS baseline instead of QUIC (peers are the servers' --http-listen
    /// addresses).
    #[arg(long, conflicts_with = "kafka")]
    pub http: bool,
    /// With --http: TCP connections pulling files in parallel (1 = one file after another).
    #[arg(long, default_value_t = 1, requires = "http")]
    pub http_connections: usize,
    /// With --http: TCP congestion controller of the client's sockets.
    #[arg(long, requires = "http")]
    pub tcp_congestion: Option<quicstrap::baseline::TcpCongestion>,
    /// Serve Prometheus metrics at `http://ADDR/metrics` while fetching.
    #[arg(long)]
    pub metrics_listen: Option<SocketAddr>,
    /// Adapt the read limit between 20 % and 200 % of --read-limit, in steps of 20 % per
    /// 1 s cycle: down when an fsync of a received file took over 500 ms, up after 10 quiet
    /// cycles.
    #[arg(long)]
    pub adaptive_throttle: bool,
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(flatten)]
    pub quic: QuicArgs,
}

/// How a fetch failed. Under --json a script gets a report on stdout for every failure of the
/// fetch itself, also one before any attempt; a few are only said on stderr: the HTTPS
/// fetch's set-up, a report that cannot be printed, following after the report is out.
enum Failure {
    /// Reported on stdout under --json as well.
    Reported {
        /// The line on stderr and the exit code.
        error: CliError,
        /// `error_kind` in the report: a stable label of what failed.
        kind: &'static str,
        /// Merged into the report: the attempts, the bootstrap so far.
        details: Option<serde_json::Value>,
    },
    /// Said on stderr only.
    Plain(CliError),
}

impl From<CliError> for Failure {
    fn from(e: CliError) -> Self {
        Self::Plain(e)
    }
}

/// Unusable input, found before any attempt (exit 2), reported as `usage`.
fn usage(msg: impl std::fmt::Display) -> Failure {
    Failure::Reported {
        error: CliError::unusable(msg),
        kind: "usage",
        details: None,
    }
}

/// Fetches (or bootstraps) and reports; a failure is reported under --json too.
pub async fn run(a: FetchArgs) -> Result<(), CliError> {
    let (json, partition) = (
        a.json,
        format!("{}_v{}/{}", a.store, a.version, a.partition),
    );
    fetch(a).await.map_err(|f| match f {
        Failure::Reported {
            error,
            kind,
            details,
        } => {
            if json {
                print_fetch_failed(&partition, error.message(), kind, details);
            }
            error
        }
        Failure::Plain(error) => error,
    })
}

async fn fetch(mut a: FetchArgs) -> Result<(), Failure> {
    if let Some(name) = &a.server_name {
        if rustls_pki_types::ServerName::try_from(name.as_str()).is_err() {
            return Err(usage(format!(
                "--server-name {name:?} is not a DNS name or address"
            )));
        }
        for p in &mut a.peers {
            p.server_name = name.clone();
        }
    }
    let id = PartitionId::new(&a.store, a.version, a.partition)
        .map_err(|e| usage(format!("store name: {e}")))?;
    let cfg = fetch_config(&a, a.tls.identity().map_err(usage)?);
    if a.http {
        return fetch_http(&a, &id, cfg).await;
    }
    let read_limiter = cfg.policy.read_limiter.clone();
    let fetcher = Arc::new(Fetcher::new(cfg).map_err(usage)?);
    let throttler = a.adaptive_throttle.then(|| {
        let fsync = quicstrap::throttle::fsync_latency() as Arc<dyn Signal>;
        Throttler::adaptive(read_limiter, a.read_limit, vec![fsync])
    });
    let ingest_stats = Arc::new(IngestStats::default());
    let _metrics = match a.metrics_listen {
        Some(addr) => {
            let registry = metrics::Registry::new();
            metrics::register_client(&registry, &fetcher, throttler.as_ref());
            metrics::register_process(&registry);
            if a.kafka.is_some() {
                metrics::register_ingest(&registry, &[(id.to_string(), ingest_stats.clone())]);
            }
            let (bound, task) = metrics::serve(addr, registry)
                .await
                .map_err(|e| usage(format!("metrics listener {addr}: {e}")))?;
            eprintln!("quicstrap: metrics on http://{bound}/metrics");
            Some(AbortOnDrop(task))
        }
        None => None,
    };
    let progress = Arc::new(Progress::default());
    let bar = Bar::on_terminal(&progress);
    if let Some(brokers) = &a.kafka {
        let result = bootstrap(&a, &id, &fetcher, &progress, brokers, ingest_stats, bar).await;
        fetcher.close().await;
        return result;
    }
    let result = fetcher
        .fetch_with_progress(&id, &a.peers, &a.data_dir, &progress)
        .await;
    bar.finish().await;
    fetcher.close().await;
    report_fetch(&a, result)
}

/// The fetch the options describe.
fn fetch_config(a: &FetchArgs, identity: quicstrap::tls::Identity) -> FetchConfig {
    let mut cfg = FetchConfig::new(identity);
    let policy = &mut cfg.policy;
    policy.table_format = a.format;
    policy.checksum = a.checksum;
    policy.connect_timeout = Duration::from_secs(a.connect_timeout_secs);
    policy.idle_timeout = Duration::from_secs(a.idle_timeout_secs);
    policy.partition_timeout = Duration::from_secs(a.partition_timeout_secs);
    policy.read_limiter = quicstrap::pacing::RateLimiter::new(a.read_limit);
    cfg.shuffle = !a.no_shuffle;
    cfg.resume = !a.no_resume;
    cfg.tuning.idle_timeout = cfg.policy.idle_timeout;
    cfg.max_recv_buffer = a.max_recv_buffer;
    a.quic.apply(&mut cfg.tuning);
    cfg
}

/// Aborts a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `fetch --http`: the same fetch over the HTTPS baseline.
async fn fetch_http(a: &FetchArgs, id: &PartitionId, quic: FetchConfig) -> Result<(), Failure> {
    if a.metrics_listen.is_some() {
        return Err(CliError::unusable(
            "--metrics-listen is for QUIC fetches: the HTTPS baseline's counters are on its \
             serving side (serve --metrics-listen)",
        )
        .into());
    }
    let mut cfg = HttpFetchConfig::with_policy(quic.policy);
    cfg.connections = a.http_connections.max(1);
    cfg.congestion = a.tcp_congestion.clone();
    let fetcher = HttpFetcher::new(cfg).map_err(CliError::unusable)?;
    let progress = Arc::new(Progress::default());
    let bar = Bar::on_terminal(&progress);
    let result = fetcher.fetch(id, &a.peers, &a.data_dir, &progress).await;
    bar.finish().await;
    report_fetch(a, result)
}

/// Prints the outcome of a fetch (human or JSON).
fn report_fetch(a: &FetchArgs, result: Result<FetchReport, FetchError>) -> Result<(), Failure> {
    let report = result.map_err(|e| Failure::Reported {
        error: CliError::failed(&e),
        kind: e.label(),
        details: Some(serde_json::json!({
            "fallback": format!("{:?}", e.fallback()),
            "attempts": e.attempts(),
        })),
    })?;
    print_report(a.json, &report, || {
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
    })?;
    Ok(())
}

/// `fetch --kafka`: the whole bootstrap, then optionally follow until interrupted.
async fn bootstrap(
    a: &FetchArgs,
    id: &PartitionId,
    fetcher: &Fetcher,
    progress: &Progress,
    brokers: &str,
    stats: Arc<IngestStats>,
    bar: Bar,
) -> Result<(), Failure> {
    let mut catch_up = a.kafka_opts.catch_up();
    catch_up.deadline = Duration::from_secs(a.catchup_deadline_secs);
    catch_up.batch = a.catchup_batch.max(1);
    catch_up.stats = stats;
    let cfg = BootstrapConfig {
        lag_threshold: a.lag_threshold,
        catch_up,
        table_format: a.format,
    };
    let outcome = match a.kafka_opts.config(brokers).log(id) {
        Ok(mut log) => {
            let result = quicstrap::bootstrap::bootstrap(
                fetcher,
                &a.peers,
                &a.data_dir,
                id,
                &mut log,
                &cfg,
                progress,
            )
            .await;
            Ok((result, log))
        }
        Err(e) => Err(e),
    };
    bar.finish().await;
    let (result, mut log) = outcome.map_err(|e| Failure::Reported {
        error: CliError::Unusable(format!("kafka: {e}")),
        kind: "log_config",
        details: None,
    })?;
    let report = result.map_err(bootstrap_failed)?;
    print_report(a.json, &report, || {
        format!(
            "bootstrapped {} via {:?}: {} records caught up, offset {:?}, {:.2} s\n",
            report.partition,
            report.path,
            report.catch_up.records,
            report.catch_up.to_offset,
            report.seconds
        )
    })?;
    if a.follow {
        let follow =
            quicstrap::bootstrap::follow(&a.data_dir, id, a.format, &mut log, &cfg.catch_up);
        tokio::select! {
            r = follow => { r.map_err(CliError::failed)?; }
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    Ok(())
}

/// A bootstrap that failed (exit 1), reported with what it did before.
fn bootstrap_failed(e: BootstrapError) -> Failure {
    let details = e
        .report()
        .and_then(|r| serde_json::to_value(r).ok())
        .or_else(|| match &e {
            BootstrapError::Fetch(f) => Some(serde_json::json!({ "attempts": f.attempts() })),
            _ => None,
        });
    Failure::Reported {
        error: CliError::failed(&e),
        kind: e.label(),
        details,
    }
}
