//! Bootstrap against a real Apache Kafka broker (started by `scripts/kafka.sh`, address in
//! `QUICSTRAP_KAFKA`): peer transfer + catch-up, Kafka alone when peers fail or the lag is
//! small, and crash-safe resumption of ingestion.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use quicstrap::bootstrap::{bootstrap, BootstrapConfig, BootstrapPath};
use quicstrap::client::Progress;
use quicstrap::ingest::kafka::{KafkaLog, KafkaWriter};
use quicstrap::ingest::{self, CatchUpConfig, Until};
use quicstrap::partition::{self, PartitionId, TableFormat};

/// The broker under test; these tests need a real one and say so loudly.
pub fn brokers() -> String {
    std::env::var("QUICSTRAP_KAFKA").expect(
        "QUICSTRAP_KAFKA is not set: run ./scripts/test.sh, or start a broker with \
         scripts/kafka.sh start and export QUICSTRAP_KAFKA=127.0.0.1:19092",
    )
}

/// A store name no other test (or earlier run) uses: topics are never reused.
fn unique_store(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("kt_{tag}_{}_{nanos}", std::process::id())
}

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

/// Produces `n` records: puts over a key space smaller than `n` (so keys are overwritten) and
/// a delete every 7th record; applies the same to `model`.
async fn produce(w: &KafkaWriter, id: &PartitionId, start: u64, n: u64, model: &mut Model) -> u64 {
    let keys = 50_000u64;
    let mut batch = Vec::with_capacity(n as usize);
    for i in start..start + n {
        let key = format!("k{:08}", (i * 7919) % keys).into_bytes();
        if i % 7 == 3 {
            model.remove(&key);
            batch.push((key, None));
        } else {
            let value = partition::seed_value(i, 100);
            model.insert(key.clone(), value.clone());
            batch.push((key, Some(value)));
        }
    }
    w.send_all(&ingest::topic(id), id.partition, &batch)
        .await
        .unwrap()
        .expect("records were produced")
}

/// The partition's content (default column family) as a map.
fn content(dir: &std::path::Path) -> Model {
    let db = partition::open_read_only(dir, TableFormat::Block).unwrap();
    db.iterator(rocksdb::IteratorMode::Start)
        .map(|kv| {
            let (k, v) = kv.unwrap();
            (k.to_vec(), v.to_vec())
        })
        .collect()
}

fn offset(dir: &std::path::Path) -> Option<u64> {
    let db = partition::open_read_only(dir, TableFormat::Block).unwrap();
    partition::read_meta(&db).unwrap().offset
}

/// The stored offset of a partition another process may be creating or writing right now
/// (`None` while it cannot be opened yet).
fn live_offset(dir: &std::path::Path) -> Option<u64> {
    let db = partition::open_read_only(dir, TableFormat::Block).ok()?;
    partition::read_meta(&db).ok()?.offset
}

fn cfg(threshold: u64) -> BootstrapConfig {
    BootstrapConfig {
        lag_threshold: threshold,
        catch_up: CatchUpConfig {
            deadline: Duration::from_secs(60),
            ..Default::default()
        },
        table_format: TableFormat::Block,
    }
}

/// A fresh topic with `n` records produced: its id, the broker, a producer and the model.
async fn topic_with(tag: &str, version: u32, n: u64) -> (PartitionId, String, KafkaWriter, Model) {
    let b = brokers();
    let id = PartitionId::new(&unique_store(tag), version, 0).unwrap();
    let w = KafkaWriter::new(&b).unwrap();
    let mut model = Model::new();
    produce(&w, &id, 0, n, &mut model).await;
    (id, b, w, model)
}

/// Bootstraps `id` under `root` from `peers` and the broker, with `threshold` as lag limit.
async fn boot(
    f: &quicstrap::Fetcher,
    peers: &[quicstrap::Peer],
    root: &std::path::Path,
    id: &PartitionId,
    threshold: u64,
) -> quicstrap::bootstrap::BootstrapReport {
    let mut log = KafkaLog::new(&brokers(), &ingest::topic(id), id.partition).unwrap();
    bootstrap(
        f,
        peers,
        root,
        id,
        &mut log,
        &cfg(threshold),
        &Progress::default(),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_transfer_is_caught_up_to_the_high_watermark() {
    let (id, b, w, mut model) = topic_with("main", 1, 200_000).await;

    // Node A: built from Kafka (no peers), then serving while it keeps following.
    let a_root = tempfile::tempdir().unwrap();
    let fetcher = fetcher(|_| {});
    let r = boot(&fetcher, &[], a_root.path(), &id, 100_000).await;
    assert_eq!(r.path, BootstrapPath::KafkaNoPeers);
    assert_eq!(r.catch_up.to_offset, Some(199_999));
    let a_db = Arc::new(partition::open(&id.dir(a_root.path()), TableFormat::Block).unwrap());
    let source = Arc::new(quicstrap::snapshot::DataDir::new(
        a_root.path(),
        TableFormat::Block,
    ));
    source.insert(id.clone(), a_db.clone());
    let mut snaps_cfg = server_config(
        a_root.path(),
        &a_root.path().join(".snaps"),
        TableFormat::Block,
    );
    snaps_cfg.snapshots.max_users = 30;
    let server = quicstrap::Server::start(snaps_cfg, source).await.unwrap();
    let follower = {
        let (db, b, id) = (a_db.clone(), b.clone(), id.clone());
        tokio::spawn(async move {
            let mut log = KafkaLog::new(&b, &ingest::topic(&id), 0).unwrap();
            ingest::catch_up(&db, &mut log, Until::Follow, &CatchUpConfig::default()).await
        })
    };

    // More records after A's snapshot will be taken.
    let last = produce(&w, &id, 200_000, 20_000, &mut model).await;
    assert_eq!(last, 219_999);

    // Node B: transfer from A, then catch up to the high watermark.
    let b_root = tempfile::tempdir().unwrap();
    let r = boot(&fetcher, &[peer(&server)], b_root.path(), &id, 100_000).await;
    assert_eq!(r.path, BootstrapPath::PeerTransfer);
    let snap_offset = r.transfer.as_ref().unwrap().meta.offset.unwrap();
    assert!(snap_offset >= 199_999, "snapshot offset {snap_offset}");
    assert_eq!(r.catch_up.from_offset, Some(snap_offset));
    assert_eq!(r.catch_up.to_offset, Some(219_999));
    assert_eq!(r.catch_up.records, 219_999 - snap_offset);
    assert_eq!(r.high_watermark, 220_000);
    let b_dir = id.dir(b_root.path());
    assert_eq!(offset(&b_dir), Some(219_999));
    assert_eq!(content(&b_dir), model, "B differs from the expected model");

    // A, once it has caught up to the same offset, holds the same content.
    wait_for("A follows to the end", Duration::from_secs(60), || {
        partition::read_meta(&a_db).unwrap().offset == Some(219_999)
    })
    .await;
    follower.abort();
    assert_eq!(
        content(&id.dir(a_root.path())),
        model,
        "A differs from the model"
    );
    assert_eq!(server.stats().accepted.load(Ordering::Relaxed), 1);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_peer_fails_kafka_alone_builds_the_partition() {
    let (id, _, _, model) = topic_with("fallback", 2, 30_000).await;
    let empty = tempfile::tempdir().unwrap();
    let missing = server(empty.path(), |_| {}).await;
    let dead = quicstrap::Peer::new("127.0.0.1:9".parse().unwrap());
    let root = tempfile::tempdir().unwrap();
    let f = fetcher(|c| c.connect_timeout = Duration::from_millis(500));
    let r = boot(&f, &[peer(&missing), dead], root.path(), &id, 1_000).await;
    assert_eq!(r.path, BootstrapPath::KafkaAllPeersFailed);
    assert_eq!(r.attempts.len(), 2);
    assert_eq!(r.attempts[0].outcome, "not_found");
    assert_eq!(r.catch_up.from_offset, None);
    assert_eq!(r.catch_up.to_offset, Some(29_999));
    assert_eq!(content(&id.dir(root.path())), model);
    missing.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_lag_skips_the_peer_transfer() {
    let (id, _, _, model) = topic_with("lag", 1, 5_000).await;
    // A peer that could serve (it holds some partition under this id) is not even asked.
    let src = tempfile::tempdir().unwrap();
    seed(src.path(), &id, 1_000, 10, 1_000);
    let server = server(src.path(), |_| {}).await;
    let root = tempfile::tempdir().unwrap();
    let r = boot(
        &fetcher(|_| {}),
        &[peer(&server)],
        root.path(),
        &id,
        100_000,
    )
    .await;
    assert_eq!(r.path, BootstrapPath::KafkaLagBelowThreshold { lag: 5_000 });
    assert!(r.transfer.is_none() && r.attempts.is_empty());
    assert_eq!(server.stats().connections.load(Ordering::Relaxed), 0);
    assert_eq!(content(&id.dir(root.path())), model);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingestion_killed_mid_way_resumes_without_loss_or_double_apply() {
    let (id, b, _, model) = topic_with("crash", 1, 200_000).await;
    let root = tempfile::tempdir().unwrap();
    let dir = id.dir(root.path());
    let run = || {
        fetch_command(root.path(), &id.store, 1, 0)
            .args(["--kafka", &b, "--json", "--catchup-batch", "500"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    // Kill the ingesting process (SIGKILL: no cleanup, no flush) part-way, three times.
    let mut killed_at = Vec::new();
    for _ in 0..3 {
        let before = live_offset(&dir);
        let mut child = run();
        wait_for(
            "progress past the last kill",
            Duration::from_secs(60),
            || live_offset(&dir) > before.or(Some(0)),
        )
        .await;
        child.kill().unwrap();
        child.wait().unwrap();
        killed_at.push(live_offset(&dir));
    }
    let out = run().wait_with_output().unwrap();
    assert!(out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["path"]["path"], "local_resume");
    assert_eq!(report["catch_up"]["to_offset"], 199_999);
    assert!(
        killed_at.iter().any(|o| o.is_some_and(|o| o < 199_999)),
        "no kill landed mid-way: {killed_at:?}"
    );
    assert_eq!(offset(&dir), Some(199_999));
    assert_eq!(content(&dir), model, "records lost or applied twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serving_node_keeps_ingesting_and_its_snapshots_carry_the_new_offset() {
    let (id, b, w, mut model) = topic_with("serve", 1, 30_000).await;
    // Node A's partition, built by the CLI from Kafka alone.
    let a_root = tempfile::tempdir().unwrap();
    let out =
        output_ok(fetch_command(a_root.path(), &id.store, 1, 0).args(["--kafka", &b, "--json"]));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["path"]["path"], "kafka_lag_below_threshold");
    // A serves and follows its topic; more records arrive.
    let server = ServeProcess::start(a_root.path(), &["--kafka", &b]);
    produce(&w, &id, 30_000, 5_000, &mut model).await;
    let a_dir = id.dir(a_root.path());
    wait_for("A ingests the new records", Duration::from_secs(60), || {
        live_offset(&a_dir) == Some(34_999)
    })
    .await;
    // A snapshot taken now carries the new offset and exactly its data.
    let dst = tempfile::tempdir().unwrap();
    let r = fetcher(|_| {})
        .fetch(&id, &[quicstrap::Peer::new(server.addr)], dst.path())
        .await
        .unwrap();
    assert_eq!(r.meta.offset, Some(34_999));
    assert_eq!(content(&id.dir(dst.path())), model);
}

#[test]
fn the_demo_runs_the_real_kafka_path() {
    let out = output_ok(std::process::Command::new(bin()).args([
        "demo",
        "--json",
        "--kafka",
        &brokers(),
    ]));
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["kafka"], true);
    assert_eq!(s["verified_keys"], 262_144);
    assert_eq!(s["catch_up"]["from_offset"], 262_143);
    assert_eq!(s["catch_up"]["to_offset"], 272_143);
    let last = s["report"]["attempts"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["outcome"], "ok");
}
