//! Bootstrap against a real Apache Kafka broker (started by `scripts/kafka.sh`, address in
//! `QUICSTRAP_KAFKA`, its TLS listener in `QUICSTRAP_KAFKA_TLS`): peer transfer + catch-up,
//! Kafka alone when peers fail or the lag is small, crash-safe resumption of ingestion, and
//! the faults around it: retention gaps, bad records, impossible offsets, Kafka down while
//! peers are up, a serving node whose following stops, TLS to the broker.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use quicstrap::client::Progress;
use quicstrap::ingest::kafka::{KafkaLog, KafkaWriter};
use quicstrap::ingest::{
    self, BadRecordPolicy, CatchUpConfig, CatchUpError, IngestState, IngestStats, LogError,
    LogSource, Until,
};
use quicstrap::jobs::bootstrap::BootstrapError;
use quicstrap::jobs::bootstrap::{bootstrap, BootstrapConfig, BootstrapPath, LostRange};
use quicstrap::store::partition::{self, PartitionId, TableFormat};
use testkit::seed;

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

/// Records `start..start + n`: puts over a key space smaller than `n` (so keys are
/// overwritten) and a delete every 7th record.
fn records(start: u64, n: u64) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    let keys = 50_000u64;
    (start..start + n)
        .map(|i| {
            let key = format!("k{:08}", (i * 7919) % keys).into_bytes();
            (key, (i % 7 != 3).then(|| seed::seed_value(i, 100)))
        })
        .collect()
}

/// Applies `batch` to `model` as ingestion would.
fn apply(model: &mut Model, batch: &[(Vec<u8>, Option<Vec<u8>>)]) {
    for (k, v) in batch {
        match v {
            Some(v) => model.insert(k.clone(), v.clone()),
            None => model.remove(k),
        };
    }
}

/// Produces [`records`]`(start, n)` to `id`'s topic and applies them to `model`; returns the
/// last offset.
async fn produce(w: &KafkaWriter, id: &PartitionId, start: u64, n: u64, model: &mut Model) -> u64 {
    let batch = records(start, n);
    apply(model, &batch);
    w.send_all(&ingest::topic(id), id.partition, &batch)
        .await
        .unwrap()
        .expect("records were produced")
}

/// The partition's content (default column family) as a map.
pub fn content(dir: &std::path::Path) -> Model {
    content_in(dir, TableFormat::Block)
}

/// [`content`] of a partition of `format`.
fn content_in(dir: &std::path::Path, format: TableFormat) -> Model {
    let db = partition::open_read_only(dir, format).unwrap();
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
) -> quicstrap::jobs::bootstrap::BootstrapReport {
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
    let _turn = turn(Needs::Broker).await;
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
    assert_eq!(r.high_watermark, Some(220_000));
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
    let _turn = turn(Needs::Broker).await;
    let (id, _, _, model) = topic_with("fallback", 2, 30_000).await;
    let empty = tempfile::tempdir().unwrap();
    let missing = server(empty.path(), |_| {}).await;
    let dead = quicstrap::Peer::new("127.0.0.1:9".parse().unwrap());
    let root = tempfile::tempdir().unwrap();
    let f = fetcher(|c| c.policy.connect_timeout = Duration::from_millis(500));
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
async fn what_a_killed_fetch_kept_goes_once_kafka_builds_the_partition() {
    let _turn = turn(Needs::Broker).await;
    let (id, _, _, model) = topic_with("killed", 1, 5_000).await;
    // A peer that held the partition, slow enough to kill its fetch mid-transfer.
    let src = tempfile::tempdir().unwrap();
    crate::common::seed(src.path(), &id, 20_000, 1000, 2_000);
    let slow = server(src.path(), |c| {
        c.policy.write_limiter = quicstrap::control::pacing::RateLimiter::new(5_000_000);
    })
    .await;
    let root = tempfile::tempdir().unwrap();
    let mut cmd = testkit::fetch_command_in(None, root.path(), &id.store, id.version, 0);
    cmd.args([
        "--peer",
        &format!("localhost@{}", slow.local_addr().unwrap()),
    ])
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().unwrap();
    wait_for("bytes to arrive", Duration::from_secs(60), || {
        received(root.path()) > 4_000_000
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(temp_dirs(root.path()).len(), 1);
    slow.shutdown().await;
    // That peer is gone for good: Kafka builds the partition, and the kept files go with it.
    let dead = quicstrap::Peer::new("127.0.0.1:9".parse().unwrap());
    let f = fetcher(|c| c.policy.connect_timeout = Duration::from_millis(500));
    let r = boot(&f, &[dead], root.path(), &id, 1_000).await;
    assert_eq!(r.path, BootstrapPath::KafkaAllPeersFailed);
    assert_eq!(content(&id.dir(root.path())), model);
    assert!(
        temp_dirs(root.path()).is_empty(),
        "{:?}",
        temp_dirs(root.path())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_lag_skips_the_peer_transfer() {
    let _turn = turn(Needs::Broker).await;
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
    let _turn = turn(Needs::Broker).await;
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
    // Kill the ingesting process (SIGKILL: no cleanup, no flush) part-way, up to three
    // times: a run that finished before the kill (a fast host) ends the killing.
    let mut killed_at = Vec::new();
    for _ in 0..3 {
        let before = live_offset(&dir);
        let mut child = run();
        let mut finished = false;
        wait_for(
            "progress past the last kill",
            Duration::from_secs(60),
            || {
                finished = child.try_wait().unwrap().is_some();
                finished || live_offset(&dir) > before.or(Some(0))
            },
        )
        .await;
        child.kill().unwrap_or_default();
        child.wait().unwrap();
        if finished {
            break;
        }
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
    let _turn = turn(Needs::Broker).await;
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
    let _turn = turn_blocking(Needs::Broker);
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

/// The broker's TLS listener (certificate from `certs-dev/`).
fn tls_brokers() -> String {
    std::env::var("QUICSTRAP_KAFKA_TLS").unwrap_or_else(|_| "127.0.0.1:19094".into())
}

/// Deletes the records of `id`'s topic before `offset`, as retention would.
async fn delete_before(id: &PartitionId, offset: u64) {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(
        &ingest::topic(id),
        id.partition as i32,
        rdkafka::Offset::Offset(offset as i64),
    )
    .unwrap();
    let done = admin
        .delete_records(&tpl, &AdminOptions::new())
        .await
        .unwrap();
    for e in done.elements() {
        assert!(e.error().is_ok(), "delete records: {:?}", e.error());
    }
    let mut log = KafkaLog::new(&brokers(), &ingest::topic(id), id.partition).unwrap();
    assert_eq!(log.watermarks().await.unwrap().low, offset);
}

/// A partition under `root` holding exactly `batch`, at offset `last`, as a node that
/// ingested them would.
fn partition_with(
    root: &std::path::Path,
    id: &PartitionId,
    batch: &[(Vec<u8>, Option<Vec<u8>>)],
    last: u64,
) {
    let db = partition::open(&id.dir(root), TableFormat::Block).unwrap();
    partition::apply_batch(
        &db,
        batch.iter().map(|(k, v)| (k.as_slice(), v.as_deref())),
        last,
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retention_gap_is_reported_at_once_not_after_the_deadline() {
    let _turn = turn(Needs::Broker).await;
    let (id, b, _, _) = topic_with("gap", 1, 1_000).await;
    delete_before(&id, 500).await;
    let root = tempfile::tempdir().unwrap();
    partition_with(root.path(), &id, &records(0, 100), 99);
    let db = Arc::new(partition::open(&id.dir(root.path()), TableFormat::Block).unwrap());
    // A deadline far past the test's patience: only a gap detected up front ends in time.
    for until in [Until::HighWatermark, Until::Follow] {
        let stats = Arc::new(IngestStats::default());
        let cfg = CatchUpConfig {
            deadline: Duration::from_secs(3_600),
            stats: stats.clone(),
            ..Default::default()
        };
        let mut log = KafkaLog::new(&b, &ingest::topic(&id), 0).unwrap();
        let err = tokio::time::timeout(
            Duration::from_secs(120),
            ingest::catch_up(&db, &mut log, until, &cfg),
        )
        .await
        .expect("a retention gap is reported at once, not retried")
        .unwrap_err();
        assert!(
            matches!(
                err,
                CatchUpError::OffsetOutOfRange {
                    have: Some(99),
                    earliest: 500
                }
            ),
            "{until:?}: {err}"
        );
        assert_eq!(stats.state(), IngestState::Stopped, "{until:?}");
    }
    assert_eq!(partition::read_meta(&db).unwrap().offset, Some(99));
    // A reader sent to a removed offset gets the typed error too, with the log's start.
    let mut log = KafkaLog::new(&b, &ingest::topic(&id), 0).unwrap();
    let fetched = log.read(100, 10, Duration::from_secs(30)).await;
    assert!(fetched.records.is_empty());
    assert!(
        matches!(
            fetched.error,
            Some(LogError::OffsetOutOfRange {
                from: 100,
                earliest: 500
            })
        ),
        "{:?}",
        fetched.error
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_behind_retention_is_replaced_by_a_peer_or_rebuilt_from_the_earliest() {
    let _turn = turn(Needs::Broker).await;
    let b = brokers();
    let id = PartitionId::new(&unique_store("behind"), 1, 0).unwrap();
    let w = KafkaWriter::new(&b).unwrap();
    let (mut all, mut tail) = (Model::new(), Model::new());
    produce(&w, &id, 0, 2_000, &mut all).await;
    let last = produce(&w, &id, 2_000, 1_000, &mut all).await;
    assert_eq!(last, 2_999);
    apply(&mut tail, &records(2_000, 1_000));
    // Node A follows the whole log and serves it.
    let a_root = tempfile::tempdir().unwrap();
    let f = fetcher(|_| {});
    assert_eq!(
        boot(&f, &[], a_root.path(), &id, 0).await.path,
        BootstrapPath::KafkaNoPeers
    );
    let a = server(a_root.path(), |_| {}).await;
    // Retention removes everything before 2 000; nodes B and C stopped at 99 long ago.
    delete_before(&id, 2_000).await;
    let (b_root, c_root) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for root in [&b_root, &c_root] {
        partition_with(root.path(), &id, &records(0, 100), 99);
    }

    let started = std::time::Instant::now();
    let r = boot(&f, &[peer(&a)], b_root.path(), &id, 100_000).await;
    let recovered = started.elapsed();
    assert_eq!(
        r.path,
        BootstrapPath::PeerTransferAfterGap {
            have: Some(99),
            earliest: 2_000
        }
    );
    assert_eq!(content(&id.dir(b_root.path())), all);
    assert_eq!(offset(&id.dir(b_root.path())), Some(2_999));
    assert!(
        temp_dirs(b_root.path()).is_empty(),
        "the old partition is gone"
    );
    // For CHAOS.md: from the bootstrap's start to a complete partition past the gap.
    chaos_outcome("kafka_retention_gap", true, recovered, 0);

    let r = boot(&f, &[], c_root.path(), &id, 100_000).await;
    assert_eq!(
        r.path,
        BootstrapPath::KafkaFromEarliest {
            have: Some(99),
            earliest: 2_000,
            lost: LostRange {
                first: 100,
                last: 1_999
            }
        }
    );
    assert_eq!(r.catch_up.from_offset, Some(1_999));
    // Its own data is kept and the log replayed onto it: only offsets 100..=1 999 are lost.
    let mut kept = Model::new();
    apply(&mut kept, &records(0, 100));
    apply(&mut kept, &records(2_000, 1_000));
    assert_eq!(
        content(&id.dir(c_root.path())),
        kept,
        "the partition's own records, then the records the log kept"
    );
    assert!(temp_dirs(c_root.path()).is_empty());

    // A fresh node: with a peer it is the usual transfer; without, a rebuild from 2 000.
    let (d_root, e_root) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let r = boot(&f, &[peer(&a)], d_root.path(), &id, 100_000).await;
    assert_eq!(r.path, BootstrapPath::PeerTransfer);
    assert_eq!(content(&id.dir(d_root.path())), all);
    let r = boot(&f, &[], e_root.path(), &id, 100_000).await;
    assert_eq!(
        r.path,
        BootstrapPath::KafkaFromEarliest {
            have: None,
            earliest: 2_000,
            lost: LostRange {
                first: 0,
                last: 1_999
            }
        }
    );
    assert_eq!(content(&id.dir(e_root.path())), tail);
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_the_log_cannot_continue_is_skipped_for_a_good_peer_and_never_wedges() {
    let _turn = turn(Needs::Broker).await;
    let b = brokers();
    let id = PartitionId::new(&unique_store("stale"), 1, 0).unwrap();
    let w = KafkaWriter::new(&b).unwrap();
    let mut all = Model::new();
    produce(&w, &id, 0, 3_000, &mut all).await;
    let mut tail = Model::new();
    apply(&mut tail, &records(2_000, 1_000));
    // A good peer follows the whole log.
    let good_root = tempfile::tempdir().unwrap();
    let f = fetcher(|_| {});
    boot(&f, &[], good_root.path(), &id, 0).await;
    let good = server(good_root.path(), |_| {}).await;
    delete_before(&id, 2_000).await;
    // One peer stopped following at 99, long before retention's 2 000; another holds offsets
    // this log never reached (another cluster, a recreated topic).
    let (behind_root, ahead_root) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    partition_with(behind_root.path(), &id, &records(0, 100), 99);
    partition_with(ahead_root.path(), &id, &records(0, 100), 10_000);
    let behind = server(behind_root.path(), |_| {}).await;
    let ahead = server(ahead_root.path(), |_| {}).await;

    // Stale peers first: each is refused before its snapshot is committed, the good one serves.
    let root = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let r = boot(
        &f,
        &[peer(&behind), peer(&ahead), peer(&good)],
        root.path(),
        &id,
        0,
    )
    .await;
    let took = started.elapsed();
    assert_eq!(r.path, BootstrapPath::PeerTransfer);
    let outcomes: Vec<&str> = r.attempts.iter().map(|a| a.outcome.as_str()).collect();
    assert_eq!(outcomes, ["stale_snapshot", "stale_snapshot", "ok"]);
    assert_eq!(content(&id.dir(root.path())), all);
    assert!(temp_dirs(root.path()).is_empty(), "stale files deleted");
    chaos_outcome("stale_peers_then_a_good_one", true, took, 0);

    // Only stale peers: not wedged. The log is replayed from its start, and the report says why.
    let root = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let r = boot(&f, &[peer(&behind), peer(&ahead)], root.path(), &id, 0).await;
    let took = started.elapsed();
    assert!(
        matches!(
            r.path,
            BootstrapPath::KafkaFromEarliest {
                have: None,
                earliest: 2_000,
                ..
            }
        ),
        "{:?}",
        r.path
    );
    let outcomes: Vec<&str> = r.attempts.iter().map(|a| a.outcome.as_str()).collect();
    assert_eq!(outcomes, ["stale_snapshot", "stale_snapshot"]);
    assert!(r.attempts[0]
        .error
        .as_deref()
        .unwrap_or("")
        .contains("offset Some(99)"));
    assert_eq!(content(&id.dir(root.path())), tail);
    assert_eq!(offset(&id.dir(root.path())), Some(2_999));
    chaos_outcome("only_stale_peers", true, took, 0);
    // A rerun finds a partition it can catch up: nothing to refuse, nothing wedged.
    let r = boot(&f, &[peer(&ahead)], root.path(), &id, 0).await;
    assert_eq!(r.path, BootstrapPath::LocalResume);
    for s in [good, behind, ahead] {
        s.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_records_are_skipped_and_counted_or_stop_ingestion_by_policy() {
    let _turn = turn(Needs::Broker).await;
    let b = brokers();
    let id = PartitionId::new(&unique_store("bad"), 1, 0).unwrap();
    let topic = ingest::topic(&id);
    let w = KafkaWriter::new(&b).unwrap();
    let mut model = Model::new();
    produce(&w, &id, 0, 10, &mut model).await;
    assert_eq!(w.send_without_key(&topic, 0, b"no key").await.unwrap(), 10);
    let batch = records(11, 10);
    apply(&mut model, &batch);
    assert_eq!(w.send_all(&topic, 0, &batch).await.unwrap(), Some(20));

    for policy in [BadRecordPolicy::Skip, BadRecordPolicy::Fail] {
        let root = tempfile::tempdir().unwrap();
        let db = Arc::new(partition::open(&id.dir(root.path()), TableFormat::Block).unwrap());
        let stats = Arc::new(IngestStats::default());
        let cfg = CatchUpConfig {
            on_bad_record: policy,
            stats: stats.clone(),
            deadline: Duration::from_secs(60),
            ..Default::default()
        };
        let mut log = KafkaLog::new(&b, &topic, 0).unwrap();
        let started = std::time::Instant::now();
        let r = ingest::catch_up(&db, &mut log, Until::HighWatermark, &cfg).await;
        match policy {
            BadRecordPolicy::Skip => {
                let r = r.unwrap();
                assert_eq!((r.to_offset, r.records, r.bad_records), (Some(20), 20, 1));
                assert_eq!(stats.bad_records(), 1);
                assert_eq!(stats.state(), IngestState::Following);
                drop(db);
                assert_eq!(content(&id.dir(root.path())), model);
                chaos_outcome("kafka_bad_record_skipped", true, started.elapsed(), 0);
            }
            BadRecordPolicy::Fail => {
                let err = r.unwrap_err();
                assert!(
                    matches!(err, CatchUpError::BadRecord { offset: 10, .. }),
                    "{err}"
                );
                assert_eq!(partition::read_meta(&db).unwrap().offset, Some(9));
                assert_eq!(stats.state(), IngestState::Stopped);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_no_log_can_reach_are_typed_errors() {
    let _turn = turn(Needs::Broker).await;
    let (id, b, _, _) = topic_with("ahead", 1, 10).await;
    // A peer whose partition claims offset 999 of a log that ends at 9: refused before commit
    // (`stale_snapshot`), and the partition is built from the log instead.
    let src = tempfile::tempdir().unwrap();
    seed(src.path(), &id, 1_000, 10, 1_000);
    let s = server(src.path(), |_| {}).await;
    let root = tempfile::tempdir().unwrap();
    let mut log = KafkaLog::new(&b, &ingest::topic(&id), 0).unwrap();
    let r = bootstrap(
        &fetcher(|_| {}),
        &[peer(&s)],
        root.path(),
        &id,
        &mut log,
        &cfg(0),
        &Progress::default(),
    )
    .await
    .unwrap();
    assert_eq!(r.path, BootstrapPath::KafkaAllPeersFailed);
    let outcomes: Vec<&str> = r.attempts.iter().map(|a| a.outcome.as_str()).collect();
    assert_eq!(outcomes, ["stale_snapshot"]);
    assert_eq!(offset(&id.dir(root.path())), Some(9));
    s.shutdown().await;

    // A partition already here that claims offsets the log never reached (written before
    // snapshots were vetted, or the topic was recreated since) is a typed error, not a replay.
    let err = bootstrap(
        &fetcher(|_| {}),
        &[],
        src.path(),
        &id,
        &mut log,
        &cfg(0),
        &Progress::default(),
    )
    .await
    .unwrap_err();
    let BootstrapError::CatchUp { error, report } = &err else {
        panic!("unexpected {err}");
    };
    assert!(
        matches!(
            error,
            CatchUpError::ImpossibleOffset {
                have: 999,
                high_watermark: Some(10)
            }
        ),
        "{error}"
    );
    assert_eq!(report.path, BootstrapPath::LocalResume);

    // A stored offset no Kafka offset can follow: checked, not wrapped.
    let other = tempfile::tempdir().unwrap();
    partition_with(other.path(), &id, &[], u64::MAX);
    let db = Arc::new(partition::open(&id.dir(other.path()), TableFormat::Block).unwrap());
    let err = ingest::catch_up(
        &db,
        &mut log,
        Until::HighWatermark,
        &CatchUpConfig::default(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, CatchUpError::ImpossibleOffset { have: u64::MAX, .. }),
        "{err}"
    );
}

#[test]
fn with_kafka_down_a_peer_still_bootstraps_and_the_json_reports_both_steps() {
    let _turn = turn_blocking(Needs::Broker);
    let src = tempfile::tempdir().unwrap();
    let store = unique_store("down");
    let id = PartitionId::new(&store, 1, 0).unwrap();
    seed(src.path(), &id, 2_000, 100, 500);
    let server = ServeProcess::start(src.path(), &[]);
    let root = tempfile::tempdir().unwrap();
    // Nothing listens on port 1: the broker is down.
    let started = std::time::Instant::now();
    let out = fetch_command(root.path(), &store, 1, 0)
        .args(["--peer", &server.addr.to_string(), "--kafka", "127.0.0.1:1"])
        .args(["--catchup-deadline-secs", "3", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains('\x1b'),
        "colour codes in a log file: {stderr}"
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "--json printed no report ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    assert_eq!(v["ok"], false);
    assert_eq!(
        (&v["schema"], &v["kind"]),
        (&1.into(), &"bootstrap".into()),
        "{v:#}"
    );
    assert_eq!(v["error_kind"], "log_unavailable", "{v:#}");
    assert_eq!(v["path"]["path"], "peer_transfer", "{v:#}");
    // Attempts are listed once, at the top, not again under the transfer.
    assert_eq!(v["attempts"].as_array().unwrap().len(), 1, "{v:#}");
    assert!(v["transfer"].get("attempts").is_none(), "{v:#}");
    assert_eq!(v["transfer"]["meta"]["offset"], 1_999, "{v:#}");
    assert!(v["high_watermark"].is_null(), "{v:#}");
    assert_eq!(v["catch_up"]["from_offset"], 1_999, "{v:#}");
    // The partition is there, valid at the snapshot's offset.
    assert_eq!(offset(&id.dir(root.path())), Some(1_999));
    assert_same(&id.dir(src.path()), &id.dir(root.path()));
    chaos_outcome("kafka_down_peers_up", true, started.elapsed(), 0);

    // A failure before any attempt still prints a report.
    let other = tempfile::tempdir().unwrap();
    let out = fetch_command(other.path(), &store, 1, 0)
        .args([
            "--kafka",
            &brokers(),
            "--kafka-config",
            "no.such.property=1",
            "--json",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error_kind"], "log_config", "{v:#}");
    assert!(
        v["error"].as_str().unwrap().contains("no.such.property"),
        "{v:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_built_from_kafka_in_plain_format_is_served_by_a_plain_peer() {
    let _turn = turn(Needs::Broker).await;
    let (id, b, _, model) = topic_with("plain", 1, 3_000).await;
    let a_root = tempfile::tempdir().unwrap();
    let out = output_ok(
        fetch_command(a_root.path(), &id.store, 1, 0)
            .args(["--kafka", &b, "--format", "plain", "--json"]),
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["path"]["path"], "kafka_lag_below_threshold");
    let server = ServeProcess::start(a_root.path(), &["--format", "plain"]);
    let b_root = tempfile::tempdir().unwrap();
    let out = output_ok(fetch_command(b_root.path(), &id.store, 1, 0).args([
        "--peer",
        &server.addr.to_string(),
        "--format",
        "plain",
        "--json",
    ]));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["meta"]["version_state"]["table_format"], "Plain", "{v:#}");
    assert_eq!(
        content_in(&id.dir(b_root.path()), TableFormat::Plain),
        model
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_runs_over_tls_with_passed_through_properties_and_a_topic_template() {
    let _turn = turn(Needs::Broker).await;
    let b = brokers();
    let store = unique_store("tls");
    let id = PartitionId::new(&store, 4, 0).unwrap();
    let mut model = Model::new();
    let batch = records(0, 2_000);
    apply(&mut model, &batch);
    let w = KafkaWriter::new(&b).unwrap();
    w.send_all(&format!("changes.{store}.v4"), 0, &batch)
        .await
        .unwrap();
    let ca = |dir: &str| {
        format!(
            "ssl.ca.location={}",
            certs().join(dir).join("ca.crt").display()
        )
    };
    let run = |root: &std::path::Path, ca: String| {
        fetch_command(root, &store, 4, 0)
            .args([
                "--kafka",
                &tls_brokers(),
                "--topic",
                "changes.{store}.v{version}",
            ])
            .args([
                "--kafka-config",
                "security.protocol=ssl",
                "--kafka-config",
                &ca,
            ])
            .args(["--catchup-deadline-secs", "5", "--json"])
            .output()
            .unwrap()
    };
    let root = tempfile::tempdir().unwrap();
    let out = run(root.path(), ca(""));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["catch_up"]["to_offset"], 1_999, "{v:#}");
    assert_eq!(content(&id.dir(root.path())), model);
    // The broker's certificate is verified: a CA it does not chain to gets nothing.
    let other = tempfile::tempdir().unwrap();
    let out = run(other.path(), ca("other-ca"));
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error_kind"], "log_unavailable", "{v:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serving_node_refuses_a_partition_whose_following_stopped_and_serves_the_rest() {
    let _turn = turn(Needs::Broker).await;
    let (id, b, w, _) = topic_with("stale", 1, 1_000).await;
    let (good, _, _, _) = topic_with("stale_other", 1, 1_000).await;
    // Node A holds both partitions, built from Kafka; `good` is broken before A starts.
    let a_root = tempfile::tempdir().unwrap();
    for p in [&id, &good] {
        output_ok(fetch_command(a_root.path(), &p.store, 1, 0).args(["--kafka", &b]));
    }
    let good_dir = good.dir(a_root.path());
    let kept = a_root.path().join("kept");
    std::fs::rename(&good_dir, &kept).unwrap();
    std::fs::create_dir_all(&good_dir).unwrap();
    std::fs::write(good_dir.join("CURRENT"), "MANIFEST-999999\n").unwrap();
    // A record without a key reaches `id`'s topic.
    w.send_without_key(&ingest::topic(&id), 0, b"no key")
        .await
        .unwrap();
    let stderr = a_root.path().join("serve.log");
    let mut cmd = serve_command_in(None, a_root.path(), "127.0.0.1:0");
    cmd.args([
        "--kafka",
        &b,
        "--on-bad-record",
        "fail",
        "--kafka-retry-secs",
        "1",
    ])
    .args(["--metrics-listen", "127.0.0.1:0"])
    .stderr(std::fs::File::create(&stderr).unwrap());
    let mut a = ServeProcess::spawn(cmd);
    let metrics_url = a.next_line("metrics on ");
    let metrics = || scrape(&metrics_url);
    let stopped =
        |p: &PartitionId| format!("quicstrap_ingest_state{{partition=\"{p}\",state=\"stopped\"}}");
    wait_for("both partitions stopped", Duration::from_secs(60), || {
        let m = metrics();
        metric(&m, &stopped(&id)) == Some(1.0) && metric(&m, &stopped(&good)) == Some(1.0)
    })
    .await;
    let log = std::fs::read_to_string(&stderr).unwrap();
    assert!(
        log.contains(&format!("partition {good} does not open")),
        "{log}"
    );

    // Node B is another peer of `id`.
    let b_root = tempfile::tempdir().unwrap();
    output_ok(fetch_command(b_root.path(), &id.store, 1, 0).args(["--kafka", &b]));
    let other = ServeProcess::start(b_root.path(), &[]);
    let dst = tempfile::tempdir().unwrap();
    let out = output_ok(
        fetch_command(dst.path(), &id.store, 1, 0)
            .args([
                "--peer",
                &a.addr.to_string(),
                "--peer",
                &other.addr.to_string(),
            ])
            .args(["--no-shuffle", "--json"]),
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["attempts"][0]["outcome"], "stale", "{v:#}");
    assert_eq!(v["peer"], other.addr.to_string(), "{v:#}");

    // The partition that did not open is refused too, until it opens.
    let fetch_good = |dst: &std::path::Path| {
        fetch_command(dst, &good.store, 1, 0)
            .args(["--peer", &a.addr.to_string(), "--json"])
            .output()
            .unwrap()
    };
    let dst = tempfile::tempdir().unwrap();
    let out = fetch_good(dst.path());
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["attempts"][0]["outcome"], "stale", "{v:#}");
    // Repaired, it opens on the next retry, follows, and is offered again.
    std::fs::remove_dir_all(&good_dir).unwrap();
    std::fs::rename(&kept, &good_dir).unwrap();
    wait_for(
        "the repaired partition follows",
        Duration::from_secs(60),
        || {
            let m = metrics();
            metric(
                &m,
                &format!("quicstrap_ingest_state{{partition=\"{good}\",state=\"following\"}}"),
            ) == Some(1.0)
        },
    )
    .await;
    let dst = tempfile::tempdir().unwrap();
    let out = fetch_good(dst.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let m = metrics();
    assert_eq!(
        metric(
            &m,
            &format!("quicstrap_ingest_offset{{partition=\"{good}\"}}")
        ),
        Some(999.0)
    );
    assert_eq!(
        metric(
            &m,
            &format!("quicstrap_ingest_lag_records{{partition=\"{id}\"}}")
        ),
        Some(1.0),
        "the bad record waits"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_only_rebuild_needs_no_certificates_and_a_store_turned_off_uses_the_log() {
    let _turn = turn(Needs::Broker).await;
    let (id, b, _, model) = topic_with("nocert", 1, 3_000).await;
    // No --cert/--key/--ca, no peer: the change log alone.
    let root = tempfile::tempdir().unwrap();
    // `fetch` of partition 0 into `root`, without --cert/--key/--ca.
    let no_certs = |root: &std::path::Path| {
        let mut cmd = std::process::Command::new(bin());
        cmd.args(["fetch", "--store", &id.store, "--version", "1"])
            .args(["--partition", "0", "--data-dir"])
            .arg(root);
        cmd
    };
    let out = output_ok(no_certs(root.path()).args(["--kafka", &b, "--json"]));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (&v["schema"], &v["kind"], &v["ok"]),
        (&1.into(), &"bootstrap".into(), &true.into()),
        "{v:#}"
    );
    assert_eq!(v["path"]["path"], "kafka_lag_below_threshold", "{v:#}");
    assert_eq!(content(&id.dir(root.path())), model);
    // Asking a peer still needs them, and says so.
    let out = no_certs(root.path())
        .args(["--peer", "127.0.0.1:9", "--kafka", &b])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("needs --cert, --key and --ca"), "{err}");

    // With transfer turned off for the store by the config file, a listed peer is not asked
    // (it does not even exist here) and the log builds the partition.
    let conf = tempfile::tempdir().unwrap();
    let path = conf.path().join("q.toml");
    std::fs::write(
        &path,
        format!(
            "[fetch]\nkafka = \"{b}\"\n\n[stores.{}]\nfetch = false\n",
            id.store
        ),
    )
    .unwrap();
    let other = tempfile::tempdir().unwrap();
    let out = output_ok(
        fetch_command(other.path(), &id.store, 1, 0)
            .args(["--peer", "127.0.0.1:9", "--json", "--config"])
            .arg(&path),
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true, "{v:#}");
    assert_eq!(v["attempts"].as_array().unwrap().len(), 0, "{v:#}");
    assert_eq!(content(&id.dir(other.path())), model);
}
