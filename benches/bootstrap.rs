//! Time to bootstrap one partition: peer transfer + Kafka catch-up versus Kafka replay alone,
//! side by side in one run, against the real broker of `scripts/kafka.sh`. The peer path runs
//! twice: a first node while the serving node digests each file as it sends it, then a second
//! one once the serving node knows every digest.
//!
//! Run: `scripts/kafka.sh start && QUICSTRAP_KAFKA=127.0.0.1:19092 cargo bench --bench bootstrap`
//! Size: `QUICSTRAP_BENCH_RECORDS` (default 1 100 000) values of `QUICSTRAP_BENCH_VALUE`
//! bytes (default 1000): ≥ 1 GiB of values; `QUICSTRAP_BENCH_CHECKSUM` md5 (default) or
//! blake3. Under `cargo test` (no `--bench` argument) it runs a 20 000-record smoke version so
//! the code path stays exercised.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quicstrap::client::{FetchConfig, Fetcher, Progress};
use quicstrap::control::pacing::RateLimiter;
use quicstrap::ingest::kafka::{KafkaLog, KafkaWriter};
use quicstrap::ingest::{self, CatchUpConfig};
use quicstrap::jobs::bootstrap::{bootstrap, BootstrapConfig, BootstrapPath, BootstrapReport};
use quicstrap::net::tls::{self, AllowList};
use quicstrap::peers::Peer;
use quicstrap::server::{Server, ServerConfig};
use quicstrap::snapshot::DataDir;
use quicstrap::store::partition::{self, PartitionId, TableFormat};
use testkit::seed;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let Ok(brokers) = std::env::var("QUICSTRAP_KAFKA") else {
        if bench {
            eprintln!("bootstrap bench: set QUICSTRAP_KAFKA (scripts/kafka.sh start)");
            std::process::exit(2);
        }
        // `cargo test --benches` without a broker: nothing to measure against.
        eprintln!("bootstrap bench: QUICSTRAP_KAFKA not set, smoke run skipped");
        return;
    };
    let records = if bench {
        env_u64("QUICSTRAP_BENCH_RECORDS", 1_100_000)
    } else {
        20_000
    };
    let value = env_u64("QUICSTRAP_BENCH_VALUE", 1000) as usize;
    let tail = (records / 100).max(1_000);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let id = PartitionId::new(&format!("bench_{nanos}"), 1, 0).expect("valid store name");
    let topic = ingest::topic(&id);
    let work = tempfile::tempdir().expect("temp dir");
    let writer = KafkaWriter::new(&brokers).expect("producer");

    eprintln!(
        "producing {records} records of {value} B ({:.2} GiB of values) to {topic} ...",
        (records * value as u64) as f64 / (1u64 << 30) as f64
    );
    let t = Instant::now();
    let chunk = 50_000;
    let mut i = 0;
    while i < records {
        let end = (i + chunk).min(records);
        let batch: Vec<_> = (i..end)
            .map(|n| (seed::seed_key(n), Some(seed::seed_value(n, value))))
            .collect();
        writer.send_all(&topic, 0, &batch).await.expect("produce");
        i = end;
    }
    eprintln!("produced in {:.1} s", t.elapsed().as_secs_f64());

    let cfg = BootstrapConfig {
        lag_threshold: 0,
        catch_up: CatchUpConfig {
            deadline: Duration::from_secs(120),
            batch: 10_000,
            ..Default::default()
        },
        table_format: TableFormat::Block,
    };
    let mut fetch_cfg = FetchConfig::new(tls::dev::client().expect("cert"));
    // The default 150 MB/s rate limits protect a live node's traffic; Kafka replay has no
    // such limit, so the engines are compared without them.
    fetch_cfg.policy.read_limiter = RateLimiter::new(0);
    if let Ok(algo) = std::env::var("QUICSTRAP_BENCH_CHECKSUM") {
        fetch_cfg.policy.checksum = algo.parse().expect("md5 or blake3");
    }
    let checksum = fetch_cfg.policy.checksum;
    let fetcher = Fetcher::new(fetch_cfg).expect("client");

    // Kafka replay alone: node A builds the partition from offset 0.
    let a_root = work.path().join("a");
    let mut log = KafkaLog::new(&brokers, &topic, 0).expect("consumer");
    let replay = bootstrap(
        &fetcher,
        &[],
        &a_root,
        &id,
        &mut log,
        &cfg,
        &Progress::default(),
    )
    .await
    .expect("kafka replay");
    assert_eq!(replay.path, BootstrapPath::KafkaNoPeers);
    let kafka_secs = replay.seconds;

    // More records arrive after A's snapshot will be taken.
    let batch: Vec<_> = (records..records + tail)
        .map(|n| (seed::seed_key(n), Some(seed::seed_value(n, value))))
        .collect();
    writer
        .send_all(&topic, 0, &batch)
        .await
        .expect("produce tail");

    // Peer transfer + catch-up: node B from A.
    let a_db = Arc::new(partition::open(&id.dir(&a_root), TableFormat::Block).expect("open A"));
    let source = Arc::new(DataDir::new(&a_root, TableFormat::Block));
    source.insert(id.clone(), a_db);
    let mut server_cfg = ServerConfig::new(
        "127.0.0.1:0".parse().expect("addr"),
        tls::dev::server().expect("cert"),
        AllowList::parse(tls::dev::ALLOW),
        TableFormat::Block,
        work.path().join("snapshots"),
    );
    server_cfg.policy.write_limiter = RateLimiter::new(0);
    let server = Server::start(server_cfg, source).await.expect("server");
    let peer = Peer::new(server.local_addr().expect("addr"));
    // Node B: the first request of A's snapshot, so A digests each file as it sends it. Node
    // C, the same partition again: A now knows every digest (kept across snapshots), so only
    // the receiving side digests; what a partition served before costs.
    let mut runs = Vec::new();
    for node in ["b", "c"] {
        let root = work.path().join(node);
        runs.push(via_peer(&fetcher, &peer, &root, &id, &brokers, &topic, &cfg).await);
    }
    let (cold, warm) = (&runs[0], &runs[1]);
    for run in &runs {
        assert_eq!(run.path, BootstrapPath::PeerTransfer);
        assert_eq!(run.catch_up.to_offset, Some(records + tail - 1));
    }
    server.shutdown().await;

    let row = |run: &BootstrapReport| {
        let transfer = run.transfer.as_ref().expect("transfer report");
        format!(
            "peer transfer {:.1} s ({} MB, {} files) + catch-up of {} records = {:.1} s | \
             speed-up {:.1}x",
            transfer.seconds,
            transfer.bytes / 1_000_000,
            transfer.files,
            run.catch_up.records,
            run.seconds,
            kafka_secs / run.seconds.max(1e-9)
        )
    };
    println!(
        "bootstrap of {records} records x {value} B (+{tail} after the snapshot), {checksum}: \
         kafka replay {kafka_secs:.1} s | server digesting: {} | server's digests known: {}",
        row(cold),
        row(warm)
    );
}

/// Bootstraps the partition into `root` from `peer` (transfer + catch-up of the tail).
async fn via_peer(
    fetcher: &Fetcher,
    peer: &Peer,
    root: &Path,
    id: &PartitionId,
    brokers: &str,
    topic: &str,
    cfg: &BootstrapConfig,
) -> BootstrapReport {
    let mut log = KafkaLog::new(brokers, topic, 0).expect("consumer");
    bootstrap(
        fetcher,
        std::slice::from_ref(peer),
        root,
        id,
        &mut log,
        cfg,
        &Progress::default(),
    )
    .await
    .expect("peer bootstrap")
}
