//! The demo itself: seed, start three peers, fetch through them, verify, catch up, clean up.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use crate::progress_bar::ProgressBar;
use quicstrap::client::{FetchConfig, FetchReport, Fetcher, Progress};
use quicstrap::ingest::CatchUpReport;
use quicstrap::net::tls::AllowList;
use quicstrap::peers::Peer;
use quicstrap::server::{Server, ServerConfig};
use quicstrap::snapshot::DataDir;
use quicstrap::store::partition::{self, PartitionId, TableFormat};
use testkit::seed::{self, SeedSummary};

use super::error::DemoError;
use super::{from_kafka, tail};

/// What the demo does; the defaults are the demo.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Where to work; a fresh temp dir (deleted afterwards) when `None`.
    pub work_dir: Option<PathBuf>,
    /// Records in the source partition.
    pub records: u64,
    /// Bytes per value.
    pub value_size: usize,
    /// Records per SST file.
    pub records_per_sst: u64,
    /// Draw a progress bar on stderr.
    pub progress: bool,
    /// Kafka brokers: run the real path (source built from Kafka, catch-up from Kafka)
    /// instead of the embedded log.
    pub kafka: Option<String>,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            work_dir: None,
            records: 256 * 1024,
            value_size: 1000,
            records_per_sst: 16 * 1024,
            progress: false,
            kafka: None,
        }
    }
}

/// One of the demo's peers.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DemoPeer {
    /// Its role in the demo.
    pub role: &'static str,
    /// Its address.
    pub addr: SocketAddr,
}

/// What the demo did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DemoSummary {
    /// The source partition.
    pub seed: SeedSummary,
    /// The three peers.
    pub peers: Vec<DemoPeer>,
    /// The fetch, attempt by attempt.
    pub report: FetchReport,
    /// Keys compared equal between source and result.
    pub verified_keys: u64,
    /// Seconds spent seeding.
    pub seed_seconds: f64,
    /// Catch-up of the records written after the snapshot (embedded log; Kafka in a node).
    pub catch_up: CatchUpReport,
    /// Whether the real Kafka path ran.
    pub kafka: bool,
}

/// Runs the demo.
pub async fn run(opts: DemoOptions) -> Result<DemoSummary, DemoError> {
    let (server_id, client_id) = quicstrap::net::tls::dev_pair().ok_or(DemoError::NoDevPki)??;
    let _scratch;
    let work = match &opts.work_dir {
        Some(d) => d.clone(),
        None => {
            let t = TempScratch::new()?;
            let p = t.0.clone();
            _scratch = t;
            p
        }
    };
    let source_root = work.join("source");
    let empty_root = work.join("empty");
    let dest_root = work.join("dest");
    std::fs::create_dir_all(&empty_root)?;
    // With Kafka the topic must be new: a rerun must not find the last run's records.
    let store = match &opts.kafka {
        None => "demo_store".to_owned(),
        Some(_) => format!(
            "demo_{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0)
        ),
    };
    let id = PartitionId::new(&store, 1, 0).map_err(|e| DemoError::Verify(e.to_string()))?;

    let t0 = Instant::now();
    let dir = id.dir(&source_root);
    let (records, value_size, per_sst) = (opts.records, opts.value_size, opts.records_per_sst);
    let seed = match &opts.kafka {
        None => tokio::task::spawn_blocking(move || {
            seed::seed(&dir, TableFormat::Block, records, value_size, per_sst)
        })
        .await
        .map_err(|e| DemoError::Verify(e.to_string()))??,
        Some(brokers) => {
            from_kafka::seed_from_kafka(brokers, &id, &dir, records, value_size).await?
        }
    };
    let seed_seconds = t0.elapsed().as_secs_f64();

    let allow = AllowList::parse("client.quicstrap.test");
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let mk = |root: &PathBuf, format, snaps: &str| {
        let cfg = ServerConfig::new(
            loopback,
            server_id.clone(),
            allow.clone(),
            format,
            work.join(snaps),
        );
        (cfg, root.clone())
    };
    // Busy: every snapshot slot taken (limit 0), so it answers Busy like Venice's 429.
    let (mut busy_cfg, busy_root) = mk(&source_root, TableFormat::Block, "snap-busy");
    busy_cfg.snapshots.max_users = 0;
    let (plain_cfg, plain_root) = mk(&empty_root, TableFormat::Plain, "snap-plain");
    let (good_cfg, good_root) = mk(&source_root, TableFormat::Block, "snap-good");
    let busy = Server::start(
        busy_cfg,
        Arc::new(DataDir::new(busy_root, TableFormat::Block)),
    )
    .await?;
    let plain = Server::start(
        plain_cfg,
        Arc::new(DataDir::new(plain_root, TableFormat::Plain)),
    )
    .await?;
    let good = Server::start(
        good_cfg,
        Arc::new(DataDir::new(good_root, TableFormat::Block)),
    )
    .await?;
    let peers = vec![
        DemoPeer {
            role: "busy (no free snapshot slot)",
            addr: busy.local_addr()?,
        },
        DemoPeer {
            role: "serves PLAIN_TABLE (format mismatch)",
            addr: plain.local_addr()?,
        },
        DemoPeer {
            role: "good",
            addr: good.local_addr()?,
        },
    ];

    let fetcher = Fetcher::new(FetchConfig::new(client_id))?;
    let progress = Arc::new(Progress::default());
    let bar = opts.progress.then(|| ProgressBar::spawn(progress.clone()));
    let peer_list: Vec<Peer> = peers.iter().map(|p| Peer::new(p.addr)).collect();
    let result = fetcher
        .fetch_with_progress(&id, &peer_list, &dest_root, &progress)
        .await;
    if let Some(bar) = bar {
        bar.finish().await;
    }
    fetcher.close().await;
    for s in [busy, plain, good] {
        s.shutdown().await;
    }
    let report = result?;

    let src_dir = id.dir(&source_root);
    let dst_dir = report.dir.clone();
    let verified_keys =
        tokio::task::spawn_blocking(move || partition::verify_equal(&src_dir, &dst_dir))
            .await
            .map_err(|e| DemoError::Verify(e.to_string()))??;
    if verified_keys != seed.records {
        return Err(DemoError::Verify(format!(
            "{verified_keys} keys verified, {} seeded",
            seed.records
        )));
    }
    let catch_up = tail::catch_up_tail(&report, &id, opts.kafka.as_deref()).await?;
    Ok(DemoSummary {
        seed,
        peers,
        report,
        verified_keys,
        seed_seconds,
        catch_up,
        kafka: opts.kafka.is_some(),
    })
}

/// The demo's work dir when none is given: fresh, and deleted with everything in it.
struct TempScratch(PathBuf);

impl TempScratch {
    fn new() -> std::io::Result<Self> {
        let p = std::env::temp_dir().join(format!("quicstrap-demo-{}", std::process::id()));
        if p.exists() {
            std::fs::remove_dir_all(&p)?;
        }
        std::fs::create_dir_all(&p)?;
        Ok(Self(p))
    }
}

impl Drop for TempScratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
