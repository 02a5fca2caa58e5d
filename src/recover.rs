//! `quicstrap recover`: every partition a node is assigned, restored concurrently — peers from
//! --peer and --discover, then Kafka catch-up, or Kafka alone — with one progress view on
//! stderr and, under --json, one report line per partition on stdout as each ends.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;

use crate::progress_bar::Redraw;
use quicstrap::client::Fetcher;
use quicstrap::control::stores::StoreTable;
use quicstrap::jobs::recover::{
    recover, PartitionRecovery, RecoverConfig, RecoverCounts, RecoverProgress, Sources,
};
use quicstrap::store::partition::PartitionId;

use crate::args::{CatchUpArgs, PeerArgs, StoreArgs, TransferArgs};
use crate::error::CliError;
use crate::stop::AbortOnDrop;

// The options of `quicstrap recover`.
#[derive(Args)]
pub struct RecoverArgs {
    #[command(flatten)]
    pub peer: PeerArgs,
    #[command(flatten)]
    pub store: StoreArgs,
    /// The partitions this node is assigned: `0-63`, `0,4,8-11`, or `@FILE` holding such a
    /// list (separated by commas, spaces or lines).
    #[arg(long, value_parser = parse_partitions)]
    pub partitions: Partitions,
    #[command(flatten)]
    pub transfer: TransferArgs,
    /// Kafka brokers (`host:port,...`) of the change logs every partition catches up from.
    #[arg(long)]
    pub kafka: String,
    #[command(flatten)]
    pub catch_up: CatchUpArgs,
    /// Partitions bootstrapping at once, each with its own Kafka consumer.
    #[arg(long, default_value_t = 20)]
    pub parallel: usize,
    /// Partitions receiving from peers at once (connections are one per peer either way).
    #[arg(long, default_value_t = 20)]
    pub max_receiving: usize,
    /// Print one JSON report per partition on stdout, a line each, as it ends.
    #[arg(long)]
    pub json: bool,
    /// Serve Prometheus metrics at `http://ADDR/metrics` while recovering (bytes, attempts,
    /// and per store the path each partition took).
    #[arg(long)]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Configuration file (TOML): its [recover] section holds any of these flags (flags
    /// given here win), [stores.NAME] the store's policy (fetch from peers or not, read
    /// limit, lag threshold, checksum).
    #[arg(long, value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
}

/// A set of partition numbers, in the order given, each once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partitions(pub Vec<u32>);

/// More partitions than one node holds by any measure: a typo, not an assignment.
const MAX_PARTITIONS: usize = 1 << 20;

/// `0-63`, `0,4,8-11` or `@FILE`.
fn parse_partitions(s: &str) -> Result<Partitions, String> {
    let text = match s.strip_prefix('@') {
        Some(file) => std::fs::read_to_string(file).map_err(|e| format!("{file}: {e}"))?,
        None => s.to_owned(),
    };
    let (mut out, mut seen) = (Vec::new(), std::collections::HashSet::new());
    for item in text.split(|c: char| c == ',' || c.is_whitespace()) {
        if item.is_empty() {
            continue;
        }
        let number = |n: &str| {
            n.parse::<u32>()
                .map_err(|_| format!("{item:?} is not a partition number or range"))
        };
        let (lo, hi) = match item.split_once('-') {
            Some((lo, hi)) => (number(lo)?, number(hi)?),
            None => (number(item)?, number(item)?),
        };
        if lo > hi {
            return Err(format!("{item:?}: the range runs backwards"));
        }
        if (hi - lo) as usize >= MAX_PARTITIONS {
            return Err(format!("{item:?}: over a million partitions"));
        }
        for p in lo..=hi {
            if seen.insert(p) {
                out.push(p);
            }
        }
        if out.len() > MAX_PARTITIONS {
            return Err("over a million partitions".into());
        }
    }
    if out.is_empty() {
        return Err("no partitions given".into());
    }
    Ok(Partitions(out))
}

/// Recovers, reports, and exits 1 when any partition did not end valid and caught up.
pub async fn run(a: RecoverArgs, stores: StoreTable) -> Result<(), CliError> {
    let store = stores.get(&a.store.name);
    let discovery: Box<dyn quicstrap::peers::Discovery> = if store.fetch {
        a.peer.discovery().map_err(CliError::Unusable)?
    } else {
        // Transfer is off for this store: every partition is rebuilt from its change log.
        Box::new(quicstrap::peers::StaticPeers(Vec::new()))
    };
    let ids = a
        .partitions
        .0
        .iter()
        .map(|&p| PartitionId::new(&a.store.name, a.store.version, p))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CliError::unusable(format!("store name: {e}")))?;
    let mut fetch = a.transfer.fetch_config(
        a.transfer
            .tls
            .identity("recover")
            .map_err(CliError::Unusable)?,
    );
    a.transfer.apply_store(&mut fetch, &store);
    fetch.max_partitions = a.max_receiving.max(1);
    let fetcher = Arc::new(Fetcher::new(fetch).map_err(CliError::unusable)?);
    let per_store = quicstrap::metrics::StoreMetrics::fetching(&stores);
    let _metrics = match a.metrics_listen {
        Some(addr) => {
            use quicstrap::metrics;
            let registry = metrics::Registry::new();
            metrics::register_client(&registry, &fetcher, None);
            per_store.register(&registry);
            metrics::register_process(&registry);
            let (bound, task) = metrics::serve(addr, registry)
                .await
                .map_err(|e| CliError::Unusable(format!("metrics listener {addr}: {e}")))?;
            eprintln!("quicstrap: metrics on http://{bound}/metrics");
            Some(AbortOnDrop(task))
        }
        None => None,
    };
    let kafka = a.catch_up.kafka_opts.config(&a.kafka);
    let mut bootstrap = a.catch_up.bootstrap_config(a.transfer.format);
    if let Some(lag) = store.lag_threshold {
        bootstrap.lag_threshold = lag;
    }
    let cfg = RecoverConfig {
        bootstrap,
        parallel: a.parallel.max(1),
        ..Default::default()
    };
    let progress = Arc::new(RecoverProgress::default());
    let view = view(progress.clone());
    // Ctrl-C or SIGTERM suspends: transfers keep what arrived, Kafka work stops within the
    // grace, and a rerun picks up the partitions not valid yet.
    let stop = tokio::spawn({
        let progress = progress.clone();
        crate::stop::suspend_on_signal("recovery", move || progress.cancel())
    });
    let json = a.json;
    let mut stdout_gone = false;
    let sources = Sources {
        fetcher: &fetcher,
        discovery: &*discovery,
        open_log: |id: &PartitionId| kafka.log(id),
    };
    let report = recover(
        &sources,
        &a.transfer.data_dir,
        &ids,
        &cfg,
        &progress,
        |one| {
            let (path, bytes) = match &one.outcome {
                Ok(r) => (r.path.label(), r.transfer.as_ref().map_or(0, |t| t.bytes)),
                Err(_) => ("failed", 0),
            };
            let took = Duration::from_secs_f64(one.seconds.max(0.0));
            per_store.record(&a.store.name, path, bytes, Some(took));
            // A reader that went away (`| head`) ends the report, not the recovery.
            if json && !stdout_gone {
                use std::io::Write;
                if let Err(e) = writeln!(std::io::stdout().lock(), "{}", line(one)) {
                    eprintln!("quicstrap: report lines stop here: stdout: {e}");
                    stdout_gone = true;
                }
            }
        },
    )
    .await;
    stop.abort();
    view.finish().await;
    fetcher.close().await;
    let counts = progress.snapshot();
    let from_peers = report
        .partitions
        .iter()
        .filter(|p| matches!(&p.outcome, Ok(r) if r.transfer.is_some()))
        .count();
    eprintln!(
        "quicstrap: recovered {}/{} partitions of {}_v{} under {} in {:.1} s: {} from peers, \
         {} bytes received, {} records caught up",
        counts.valid,
        counts.total,
        a.store.name,
        a.store.version,
        a.transfer.data_dir.display(),
        report.seconds,
        from_peers,
        counts.bytes,
        counts.records
    );
    let mut failed = report.failed();
    match failed.next() {
        None => Ok(()),
        Some(_) if progress.is_cancelled() => Err(CliError::Suspended(format!(
            "suspended: {} of {} partitions not recovered yet; what arrived is kept and a rerun \
             resumes them",
            counts.total - counts.valid,
            counts.total
        ))),
        Some(first) => Err(CliError::Failed(format!(
            "{} of {} partitions not recovered (a rerun resumes them); first: {}: {}",
            counts.total - counts.valid,
            counts.total,
            first.partition,
            first
                .outcome
                .as_ref()
                .err()
                .map_or_else(String::new, ToString::to_string)
        ))),
    }
}

/// One partition's report line: where it is, how it was built, or why it is not.
fn line(one: &PartitionRecovery) -> serde_json::Value {
    let mut v = crate::report::envelope(
        "recover",
        one.is_ok(),
        serde_json::json!({
            "partition": one.partition,
            "dir": one.dir,
            "peers": one.peers,
            "discovery": one.discovery.as_ref().map(ToString::to_string),
            "seconds": one.seconds,
            "finished_at": one.finished_at,
        }),
    );
    let (report, error) = match &one.outcome {
        Ok(r) => (Some(r), None),
        Err(e) => (
            match e {
                quicstrap::jobs::recover::RecoverError::Bootstrap(b) => b.report(),
                _ => None,
            },
            Some(e),
        ),
    };
    if let Some(obj) = v.as_object_mut() {
        if let Some(r) = report.and_then(|r| serde_json::to_value(r).ok()) {
            obj.insert("path".into(), r["path"]["path"].clone());
            obj.insert("report".into(), r);
        }
        if let Some(e) = error {
            obj.insert("error".into(), e.to_string().into());
            obj.insert("error_kind".into(), e.label().into());
        }
    }
    v
}

/// The progress view on stderr: redrawn in place for a person at a terminal, a line every
/// 10 s into a log.
fn view(progress: Arc<RecoverProgress>) -> Redraw {
    let terminal = std::io::stderr().is_terminal();
    let every = Duration::from_millis(if terminal { 200 } else { 10_000 });
    let t0 = Instant::now();
    Redraw::spawn(every, move |last| {
        if last {
            if terminal {
                eprint!("\r\x1b[K");
            }
            return;
        }
        // A log gets its first line after one interval, not an empty one at the start.
        if !terminal && t0.elapsed() < every {
            return;
        }
        let text = describe(progress.snapshot(), t0.elapsed());
        if terminal {
            eprint!("\r\x1b[K{text}");
        } else {
            eprintln!("quicstrap: {text}");
        }
    })
}

/// `12/36 valid, 1 failed, 5 receiving · 1.2 GB at 95.3 MB/s · ETA 40 s`: the ETA assumes
/// the partitions left take as long on average as the ones done.
fn describe(c: RecoverCounts, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64().max(1e-3);
    let ended = c.valid + c.failed;
    let eta = if ended == 0 {
        "ETA ?".to_owned()
    } else {
        format!(
            "ETA {:.0} s",
            secs * (c.total - ended) as f64 / ended as f64
        )
    };
    format!(
        "recover: {}/{} valid, {} failed, {} receiving · {:.1} MB at {:.1} MB/s · {}",
        c.valid,
        c.total,
        c.failed,
        c.receiving,
        c.bytes as f64 / 1e6,
        c.bytes as f64 / 1e6 / secs,
        eta
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_sets_parse_ranges_lists_and_files() {
        assert_eq!(parse_partitions("0-3").unwrap().0, vec![0, 1, 2, 3]);
        assert_eq!(parse_partitions("5, 1,2-3 2").unwrap().0, vec![5, 1, 2, 3]);
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), "0\n7-8\n\n").unwrap();
        let arg = format!("@{}", f.path().display());
        assert_eq!(parse_partitions(&arg).unwrap().0, vec![0, 7, 8]);
        for bad in [
            "",
            "3-1",
            "x",
            "1-",
            "-2",
            "@/nonexistent/file",
            "0-4294967295",
        ] {
            assert!(parse_partitions(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn the_view_estimates_from_the_partitions_done() {
        let c = RecoverCounts {
            total: 4,
            valid: 1,
            failed: 1,
            receiving: 2,
            bytes: 50_000_000,
            records: 0,
        };
        assert_eq!(
            describe(c, Duration::from_secs(10)),
            "recover: 1/4 valid, 1 failed, 2 receiving · 50.0 MB at 5.0 MB/s · ETA 10 s"
        );
        assert!(describe(RecoverCounts::default(), Duration::ZERO).ends_with("ETA ?"));
    }
}
