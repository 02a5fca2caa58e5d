//! `quicstrap fetch`: one partition from the first peer that can serve it — over QUIC, over
//! the HTTPS baseline, or as a whole bootstrap with Kafka — and its report.

use std::net::SocketAddr;
use std::sync::Arc;

use clap::Args;

use quicstrap::client::{FetchConfig, Fetcher, Progress};
use quicstrap::control::stores::{StorePolicy, StoreTable};
use quicstrap::control::throttle::{Signal, Throttler};
use quicstrap::ingest::IngestStats;
use quicstrap::jobs::bootstrap::BootstrapError;
use quicstrap::peers::Peer;
use quicstrap::store::partition::PartitionId;
use quicstrap::{metrics, FetchError, FetchReport};
use quicstrap_baseline::{HttpFetchConfig, HttpFetcher};

use crate::args::{CatchUpArgs, PeerArgs, StoreArgs, TransferArgs};
use crate::error::CliError;
use crate::report::{print_fetch_failed, print_report, Bar};
use crate::stop::AbortOnDrop;

// The options of `quicstrap fetch`.
#[derive(Args)]
pub struct FetchArgs {
    #[command(flatten)]
    pub peer: PeerArgs,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Partition number.
    #[arg(long)]
    pub partition: u32,
    #[command(flatten)]
    pub transfer: TransferArgs,
    /// Print a machine-readable report on stdout.
    #[arg(long)]
    pub json: bool,
    /// Kafka brokers (`host:port,...`): do the whole bootstrap — transfer, then catch up from
    /// the snapshot's offset; Kafka alone when the lag is small or no peer can serve.
    #[arg(long)]
    pub kafka: Option<String>,
    /// With --kafka: keep consuming after catching up, until interrupted.
    #[arg(long, requires = "kafka")]
    pub follow: bool,
    #[command(flatten)]
    pub catch_up: CatchUpArgs,
    /// Fetch over the HTTPS baseline instead of QUIC (peers are the servers' --http-listen
    /// addresses).
    #[arg(long, conflicts_with_all = ["kafka", "discover"])]
    pub http: bool,
    /// With --http: TCP connections pulling files in parallel (1 = one file after another).
    #[arg(long, default_value_t = 1, requires = "http")]
    pub http_connections: usize,
    /// With --http: TCP congestion controller of the client's sockets.
    #[arg(long, requires = "http")]
    pub tcp_congestion: Option<quicstrap_baseline::TcpCongestion>,
    /// Serve Prometheus metrics at `http://ADDR/metrics` while fetching.
    #[arg(long)]
    pub metrics_listen: Option<SocketAddr>,
    /// Adapt the read limit between 20 % and 200 % of --read-limit, in steps of 20 % per
    /// 1 s cycle: down when an fsync of a received file took over 500 ms, up after 10 quiet
    /// cycles.
    #[arg(long)]
    pub adaptive_throttle: bool,
    /// Configuration file (TOML): its [fetch] section holds any of these flags (flags given
    /// here win), [stores.NAME] the store's policy (fetch from peers or not, read limit,
    /// lag threshold, checksum).
    #[arg(long, value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
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

/// Fetches (or bootstraps) and reports; a failure is reported under --json too. `stores` is
/// the per-store policy of the --config file.
pub async fn run(a: FetchArgs, stores: StoreTable) -> Result<(), CliError> {
    let (json, partition) = (
        a.json,
        format!("{}_v{}/{}", a.store.name, a.store.version, a.partition),
    );
    let report_kind = if a.kafka.is_some() {
        "bootstrap"
    } else {
        "fetch"
    };
    fetch(a, &stores).await.map_err(|f| match f {
        Failure::Reported {
            error,
            kind,
            details,
        } => {
            if json {
                print_fetch_failed(report_kind, &partition, error.message(), kind, details);
            }
            error
        }
        Failure::Plain(error) => error,
    })
}

async fn fetch(a: FetchArgs, stores: &StoreTable) -> Result<(), Failure> {
    let store = stores.get(&a.store.name);
    let discovery = a.peer.discovery().map_err(usage)?;
    let id = PartitionId::new(&a.store.name, a.store.version, a.partition)
        .map_err(|e| usage(format!("store name: {e}")))?;
    if !store.fetch && a.kafka.is_none() {
        return Err(usage(format!(
            "fetching store {} from peers is turned off ([stores.{}] fetch = false); \
             add --kafka to rebuild it from its change log",
            id.store, id.store
        )));
    }
    let ask_peers = store.fetch && (!a.peer.peers.is_empty() || a.peer.discover.is_some());
    if !ask_peers && !a.transfer.tls.given() {
        if let Some(brokers) = &a.kafka {
            if a.metrics_listen.is_some() || a.adaptive_throttle {
                return Err(usage(
                    "--metrics-listen and --adaptive-throttle watch transfers from peers: a \
                     rebuild from the change log alone has none",
                ));
            }
            // A rebuild from the change log alone: no peer to authenticate to.
            let progress = Arc::new(Progress::default());
            let _stop = AbortOnDrop(tokio::spawn({
                let progress = progress.clone();
                crate::stop::suspend_on_signal("fetch", move || progress.cancel())
            }));
            let bar = Bar::on_terminal(&progress);
            let stats = Arc::new(IngestStats::default());
            let source = Source::LogOnly;
            let per_store = metrics::StoreMetrics::fetching(stores);
            let ctx = (&store, &*per_store);
            return bootstrap(&a, ctx, source, &id, &progress, brokers, stats, bar).await;
        }
    }
    // Bad certificates are said before any DNS wait.
    let mut cfg = a.transfer.fetch_config(
        a.transfer
            .tls
            .identity("fetching from peers")
            .map_err(usage)?,
    );
    a.transfer.apply_store(&mut cfg, &store);
    let peers = match discovery.peers(&id).await {
        Ok(_) if !ask_peers => Vec::new(),
        Ok(peers) => peers,
        // Kafka builds the partition alone.
        Err(e) if a.kafka.is_some() => {
            tracing::warn!(partition = %id, error = %e, "no peers discovered; Kafka alone");
            Vec::new()
        }
        Err(e) => {
            return Err(Failure::Reported {
                kind: e.label(),
                error: CliError::failed(&e),
                details: None,
            })
        }
    };
    if a.http {
        return fetch_http(&a, &peers, &id, cfg).await;
    }
    let read_limiter = cfg.policy.read_limiter.clone();
    let fsync = a
        .adaptive_throttle
        .then(quicstrap::control::throttle::fsync_latency);
    cfg.policy.fsync_latency = fsync.clone();
    let fetcher = Arc::new(Fetcher::new(cfg).map_err(usage)?);
    let throttler = fsync.map(|fsync| {
        let fsync = fsync as Arc<dyn Signal>;
        // Around the rate in force, the store's own limit included.
        let base = read_limiter.rate();
        Throttler::adaptive(read_limiter, base, vec![fsync])
    });
    let ingest_stats = Arc::new(IngestStats::default());
    let per_store = metrics::StoreMetrics::fetching(stores);
    let _metrics = match a.metrics_listen {
        Some(addr) => {
            let registry = metrics::Registry::new();
            metrics::register_client(&registry, &fetcher, throttler.as_ref());
            per_store.register(&registry);
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
    let _stop = AbortOnDrop(tokio::spawn({
        let progress = progress.clone();
        crate::stop::suspend_on_signal("fetch", move || progress.cancel())
    }));
    let bar = Bar::on_terminal(&progress);
    if let Some(brokers) = &a.kafka {
        let source = Source::Peers(&fetcher, &peers);
        let result = bootstrap(
            &a,
            (&store, &per_store),
            source,
            &id,
            &progress,
            brokers,
            ingest_stats,
            bar,
        )
        .await;
        fetcher.close().await;
        return result;
    }
    let started = std::time::Instant::now();
    let result = fetcher
        .fetch_with_progress(&id, &peers, &a.transfer.data_dir, &progress)
        .await;
    let (path, bytes) = match &result {
        Ok(r) => ("peer_transfer", r.bytes),
        Err(_) => ("failed", 0),
    };
    per_store.record(&id.store, path, bytes, Some(started.elapsed()));
    bar.finish().await;
    fetcher.close().await;
    report_fetch(&a, result)
}

/// `fetch --http`: the same fetch over the HTTPS baseline.
async fn fetch_http(
    a: &FetchArgs,
    peers: &[Peer],
    id: &PartitionId,
    quic: FetchConfig,
) -> Result<(), Failure> {
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
    let _stop = AbortOnDrop(tokio::spawn({
        let progress = progress.clone();
        crate::stop::suspend_on_signal("fetch", move || progress.cancel())
    }));
    let bar = Bar::on_terminal(&progress);
    let result = fetcher
        .fetch(id, peers, &a.transfer.data_dir, &progress)
        .await;
    bar.finish().await;
    report_fetch(a, result)
}

/// Prints the outcome of a fetch (human or JSON).
fn report_fetch(a: &FetchArgs, result: Result<FetchReport, FetchError>) -> Result<(), Failure> {
    let report = result.map_err(|e| Failure::Reported {
        error: fetch_failed(&e),
        kind: e.label(),
        details: Some(serde_json::json!({
            "fallback": format!("{:?}", e.fallback()),
            "attempts": e.attempts(),
        })),
    })?;
    print_report(a.json, "fetch", &report, || {
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

/// The one line a failed fetch says: a suspended one says what a rerun does.
fn fetch_failed(e: &FetchError) -> CliError {
    match e {
        FetchError::GaveUp {
            error: quicstrap::client::AttemptError::Cancelled,
            attempts,
            ..
        } => {
            let kept: u64 = attempts
                .last()
                .map_or(0, |a| a.bytes.saturating_add(a.resumed_bytes));
            CliError::Suspended(format!(
                "suspended: {kept} bytes kept for a rerun, which resumes them"
            ))
        }
        FetchError::GaveUp {
            error: quicstrap::client::AttemptError::InsufficientSpace(_),
            ..
        } => CliError::NoSpace(format!(
            "{e}; what arrived is kept, and a rerun once space is freed resumes it"
        )),
        e => CliError::failed(e),
    }
}

/// Where a bootstrap's partition may come from besides the change log.
enum Source<'a> {
    /// These peers, through this fetcher.
    Peers(&'a Fetcher, &'a [Peer]),
    /// The log alone (no peer to ask, no certificates).
    LogOnly,
}

/// `fetch --kafka`: the whole bootstrap, then optionally follow until interrupted.
#[allow(clippy::too_many_arguments)]
async fn bootstrap(
    a: &FetchArgs,
    (store, per_store): (&StorePolicy, &metrics::StoreMetrics),
    source: Source<'_>,
    id: &PartitionId,
    progress: &Progress,
    brokers: &str,
    stats: Arc<IngestStats>,
    bar: Bar,
) -> Result<(), Failure> {
    let mut cfg = a.catch_up.bootstrap_config(a.transfer.format);
    cfg.catch_up.stats = stats;
    if let Some(lag) = store.lag_threshold {
        cfg.lag_threshold = lag;
    }
    let root = &a.transfer.data_dir;
    let outcome = match a.catch_up.kafka_opts.config(brokers).log(id) {
        Ok(mut log) => {
            let result = match source {
                Source::Peers(fetcher, peers) => {
                    quicstrap::jobs::bootstrap::bootstrap(
                        fetcher, peers, root, id, &mut log, &cfg, progress,
                    )
                    .await
                }
                Source::LogOnly => {
                    quicstrap::jobs::bootstrap::bootstrap_from_log(
                        root, id, &mut log, &cfg, progress,
                    )
                    .await
                }
            };
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
    let (path, bytes) = match &result {
        Ok(r) => (r.path.label(), r.transfer.as_ref().map_or(0, |t| t.bytes)),
        Err(_) => ("failed", 0),
    };
    per_store.record(
        &id.store,
        path,
        bytes,
        result
            .as_ref()
            .ok()
            .map(|r| std::time::Duration::from_secs_f64(r.seconds)),
    );
    let report = result.map_err(bootstrap_failed)?;
    print_report(a.json, "bootstrap", &report, || {
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
        let follow = quicstrap::jobs::bootstrap::follow(
            &a.transfer.data_dir,
            id,
            a.transfer.format,
            &mut log,
            &cfg.catch_up,
        );
        tokio::select! {
            r = follow => { r.map_err(CliError::failed)?; }
            _ = crate::stop::signalled() => {}
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
    let error = match &e {
        BootstrapError::Fetch(f) => fetch_failed(f),
        e => CliError::failed(e),
    };
    Failure::Reported {
        error,
        kind: e.label(),
        details,
    }
}
