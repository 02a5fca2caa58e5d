//! `quicstrap demo`: the whole job on embedded defaults, with no flags and no services.
//!
//! Seeds a ~256 MB source partition, starts three peers on loopback like the reference
//! design's diagram — one busy, one serving the other table format, one good — fetches through
//! them in a shuffled order until one succeeds, verifies the result key by key against the
//! source, prints what happened, and deletes everything it made.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::client::{FetchConfig, FetchError, FetchReport, Fetcher, Progress};
use crate::ingest::kafka::{KafkaLog, KafkaWriter};
use crate::ingest::{self, local::LocalLog, CatchUpConfig, CatchUpReport, Until};
use crate::partition::{self, PartitionId, SeedSummary, StorageError, TableFormat};
use crate::peers::Peer;
use crate::server::{Server, ServerConfig, ServerError};
use crate::snapshot::DataDir;
use crate::tls::{AllowList, TlsError};

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

/// Records "produced after the snapshot" in the demo's embedded log.
const TAIL: u64 = 10_000;

/// Step 5 of the reference design on the embedded log: the node applies what was written
/// after the snapshot, from the snapshot's offset on, exactly as it would from Kafka.
async fn catch_up_tail(
    report: &FetchReport,
    id: &PartitionId,
    kafka: Option<&str>,
) -> Result<CatchUpReport, DemoError> {
    let next = report.meta.offset.map_or(0, |o| o + 1);
    // Overwrites of existing keys, and a delete every 10th record.
    let tail: Vec<(Vec<u8>, Option<Vec<u8>>)> = (0..TAIL)
        .map(|i| {
            let value =
                (i % 10 != 0).then(|| format!("updated after the snapshot #{i}").into_bytes());
            (partition::seed_key(i * 13), value)
        })
        .collect();
    let db = std::sync::Arc::new(partition::open(&report.dir, TableFormat::Block)?);
    let cfg = CatchUpConfig::default();
    let kafka_err = |e: crate::ingest::LogError| DemoError::Verify(format!("kafka: {e}"));
    let caught = match kafka {
        None => {
            let mut log = LocalLog::starting_at(next);
            for (k, v) in &tail {
                log.append(k, v.as_deref());
            }
            ingest::catch_up(&db, &mut log, Until::HighWatermark, &cfg).await
        }
        Some(brokers) => {
            let topic = ingest::topic(id);
            let writer = KafkaWriter::new(brokers).map_err(kafka_err)?;
            writer
                .send_all(&topic, id.partition, &tail)
                .await
                .map_err(kafka_err)?;
            let mut log = KafkaLog::new(brokers, &topic, id.partition).map_err(kafka_err)?;
            ingest::catch_up(&db, &mut log, Until::HighWatermark, &cfg).await
        }
    };
    let r = caught.map_err(|e| DemoError::Verify(format!("catch-up: {e}")))?;
    let updated = db
        .get(partition::seed_key(13))
        .map_err(StorageError::from)?;
    let deleted = db.get(partition::seed_key(0)).map_err(StorageError::from)?;
    if r.to_offset != Some(next + TAIL - 1)
        || updated.as_deref() != Some(&b"updated after the snapshot #1"[..])
        || deleted.is_some()
    {
        return Err(DemoError::Verify(format!("catch-up result wrong: {r:?}")));
    }
    Ok(r)
}

/// Why the demo failed.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// Local storage trouble.
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    /// Certificates.
    #[error("tls: {0}")]
    Tls(#[from] TlsError),
    /// The fetching side could not be set up.
    #[error("client: {0}")]
    Client(#[from] crate::client::SetupError),
    /// A peer did not start.
    #[error("server: {0}")]
    Server(#[from] ServerError),
    /// The fetch failed.
    #[error("fetch: {0}")]
    Fetch(#[from] FetchError),
    /// The fetched partition differs from the source.
    #[error("verification failed: {0}")]
    Verify(String),
    /// Filesystem trouble.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// This build carries no development certificates to run the demo's peers with.
    #[error(
        "this build has no development PKI (its keys are public, so it is left out by \
         default): build with `--features dev-pki`, as ./scripts/demo.sh does"
    )]
    NoDevPki,
}

/// The demo's peer and client identities: the development PKI, when this build has it.
fn dev_identities() -> Result<(crate::tls::Identity, crate::tls::Identity), DemoError> {
    #[cfg(feature = "dev-pki")]
    return Ok((crate::tls::dev::server()?, crate::tls::dev::client()?));
    #[cfg(not(feature = "dev-pki"))]
    Err(DemoError::NoDevPki)
}

/// Runs the demo.
pub async fn run(opts: DemoOptions) -> Result<DemoSummary, DemoError> {
    let (server_id, client_id) = dev_identities()?;
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
            partition::seed(&dir, TableFormat::Block, records, value_size, per_sst)
        })
        .await
        .map_err(|e| DemoError::Verify(e.to_string()))??,
        Some(brokers) => seed_from_kafka(brokers, &id, &dir, records, value_size).await?,
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
    let bar = opts.progress.then(|| spawn_bar(progress.clone()));
    let peer_list: Vec<Peer> = peers.iter().map(|p| Peer::new(p.addr)).collect();
    let result = fetcher
        .fetch_with_progress(&id, &peer_list, &dest_root, &progress)
        .await;
    if let Some((stop, handle)) = bar {
        let _ = stop.send(());
        let _ = handle.await;
    }
    fetcher.close().await;
    for s in [busy, plain, good] {
        s.shutdown().await;
    }
    let report = result?;

    let src_dir = id.dir(&source_root);
    let dst_dir = report.dir.clone();
    let verified_keys = tokio::task::spawn_blocking(move || verify_equal(&src_dir, &dst_dir))
        .await
        .map_err(|e| DemoError::Verify(e.to_string()))??;
    if verified_keys != seed.records {
        return Err(DemoError::Verify(format!(
            "{verified_keys} keys verified, {} seeded",
            seed.records
        )));
    }
    let catch_up = catch_up_tail(&report, &id, opts.kafka.as_deref()).await?;
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

/// The source partition the real way: records produced to Kafka, then ingested from offset 0.
async fn seed_from_kafka(
    brokers: &str,
    id: &PartitionId,
    dir: &std::path::Path,
    records: u64,
    value_size: usize,
) -> Result<SeedSummary, DemoError> {
    let kafka = |e: crate::ingest::LogError| DemoError::Verify(format!("kafka: {e}"));
    let topic = ingest::topic(id);
    let writer = KafkaWriter::new(brokers).map_err(kafka)?;
    let mut i = 0;
    while i < records {
        let end = (i + 20_000).min(records);
        let batch: Vec<_> = (i..end)
            .map(|n| {
                (
                    partition::seed_key(n),
                    Some(partition::seed_value(n, value_size)),
                )
            })
            .collect();
        writer
            .send_all(&topic, id.partition, &batch)
            .await
            .map_err(kafka)?;
        i = end;
    }
    std::fs::create_dir_all(dir)?;
    {
        let db = std::sync::Arc::new(partition::open(dir, TableFormat::Block)?);
        partition::write_version_state(
            &db,
            &crate::partition::VersionState {
                table_format: TableFormat::Block,
                producer: "quicstrap demo (from Kafka)".into(),
            },
        )?;
        let mut log = KafkaLog::new(brokers, &topic, id.partition).map_err(kafka)?;
        ingest::catch_up(
            &db,
            &mut log,
            Until::HighWatermark,
            &CatchUpConfig::default(),
        )
        .await
        .map_err(|e| DemoError::Verify(format!("ingest: {e}")))?;
    }
    let (sst_files, bytes) = partition::dir_summary(dir)?;
    Ok(SeedSummary {
        records,
        last_offset: records.saturating_sub(1),
        sst_files,
        bytes,
    })
}

/// Compares two partitions key by key (both column families); returns the keys compared.
pub fn verify_equal(a: &std::path::Path, b: &std::path::Path) -> Result<u64, DemoError> {
    let da = partition::open_read_only(a, TableFormat::Block)?;
    let db = partition::open_read_only(b, TableFormat::Block)?;
    let mut n = 0u64;
    let mut ia = da.iterator(rocksdb::IteratorMode::Start);
    let mut ib = db.iterator(rocksdb::IteratorMode::Start);
    loop {
        match (ia.next(), ib.next()) {
            (None, None) => break,
            (Some(x), Some(y)) => {
                let (ka, va) = x.map_err(StorageError::from)?;
                let (kb, vb) = y.map_err(StorageError::from)?;
                if ka != kb || va != vb {
                    return Err(DemoError::Verify(format!(
                        "first difference at key {}",
                        String::from_utf8_lossy(&ka)
                    )));
                }
                n += 1;
            }
            _ => return Err(DemoError::Verify("different key counts".into())),
        }
    }
    let (ma, mb) = (partition::read_meta(&da)?, partition::read_meta(&db)?);
    if ma != mb {
        return Err(DemoError::Verify(format!(
            "metadata differs: {ma:?} vs {mb:?}"
        )));
    }
    Ok(n)
}

fn spawn_bar(
    progress: Arc<Progress>,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, mut rx) = tokio::sync::oneshot::channel();
    let handle = tokio::spawn(async move {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} attempt {msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        loop {
            bar.set_length(progress.total.load(Ordering::Relaxed));
            bar.set_position(progress.received.load(Ordering::Relaxed));
            bar.set_message(progress.attempts.load(Ordering::Relaxed).to_string());
            tokio::select! {
                _ = &mut rx => break,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
        bar.finish_and_clear();
    });
    (tx, handle)
}

/// Draws a progress bar for a fetch until the returned sender is used or dropped.
pub fn progress_bar(
    progress: Arc<Progress>,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    spawn_bar(progress)
}

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

/// Human summary of a demo run.
pub fn render(s: &DemoSummary) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let mb = |b: u64| b as f64 / 1e6;
    let _ = writeln!(
        out,
        "source: {} records, {} SST files, {:.1} MB (seeded in {:.1} s)",
        s.seed.records,
        s.seed.sst_files,
        mb(s.seed.bytes),
        s.seed_seconds
    );
    for p in &s.peers {
        let _ = writeln!(out, "peer {}  {}", p.addr, p.role);
    }
    let _ = writeln!(out, "attempts (shuffled order):");
    for (i, a) in s.report.attempts.iter().enumerate() {
        let _ = writeln!(
            out,
            "  {}. {:<21} {:<16} {:>9.1} MB {:>7.3} s{}",
            i + 1,
            a.peer,
            a.outcome,
            mb(a.bytes),
            a.seconds,
            a.error
                .as_ref()
                .map(|e| format!("  ({e})"))
                .unwrap_or_default()
        );
    }
    let _ = writeln!(
        out,
        "fetched {} from {}: {} files, {:.1} MB in {:.2} s = {:.0} MB/s; snapshot offset {:?}",
        s.report.partition,
        s.report.peer,
        s.report.files,
        mb(s.report.bytes),
        s.report.seconds,
        mb(s.report.bytes) / s.report.seconds.max(1e-9),
        s.report.meta.offset
    );
    let _ = writeln!(
        out,
        "verified: {} keys equal to the source, metadata equal",
        s.verified_keys
    );
    let _ = writeln!(
        out,
        "caught up: {} records written after the snapshot applied, offset {:?} -> {:?} \
         ({})",
        s.catch_up.records,
        s.catch_up.from_offset,
        s.catch_up.to_offset,
        if s.kafka {
            "from Kafka"
        } else {
            "embedded log; with --kafka, from Kafka"
        }
    );
    out
}
