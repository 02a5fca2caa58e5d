//! Broker and storage trouble during catch-up and following, against the real broker of
//! `scripts/kafka.sh`: these tests stop and restart the broker, so no other broker user runs
//! meanwhile ([`Needs::BrokerToItself`]), or starve RocksDB's process-wide background
//! threads, so nothing else runs meanwhile ([`Needs::Process`]).

use std::sync::Arc;
use std::time::Duration;

use crate::common::*;

use quicstrap::ingest::kafka::{KafkaLog, KafkaWriter};
use quicstrap::ingest::{self, CatchUpConfig, CatchUpError, Until};
use quicstrap::store::partition::{self, PartitionId, TableFormat};
use testkit::seed;

fn kafka(cmd: &str) {
    let script = testkit::workspace_root().join("scripts/kafka.sh");
    let st = std::process::Command::new("bash")
        .arg(script)
        .arg(cmd)
        .status()
        .unwrap();
    assert!(st.success(), "scripts/kafka.sh {cmd} failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_waits_out_a_broker_outage_and_resumes_after_giving_up() {
    let _turn = turn(Needs::BrokerToItself).await;
    let b = std::env::var("QUICSTRAP_KAFKA")
        .expect("QUICSTRAP_KAFKA is not set: run ./scripts/test.sh");
    let store = format!("kt_outage_{}", std::process::id());
    let id = PartitionId::new(&store, 1, 0).unwrap();
    let topic = ingest::topic(&id);
    let w = KafkaWriter::new(&b).unwrap();
    let records: Vec<(Vec<u8>, Option<Vec<u8>>)> = (0..50_000u64)
        .map(|i| (seed::seed_key(i), Some(seed::seed_value(i, 64))))
        .collect();
    assert_eq!(w.send_all(&topic, 0, &records).await.unwrap(), Some(49_999));
    drop(w);
    let root = tempfile::tempdir().unwrap();
    let db =
        std::sync::Arc::new(partition::open(&id.dir(root.path()), TableFormat::Block).unwrap());

    // Catch up the first part while the broker is up.
    let mut log = KafkaLog::new(&b, &topic, 0).unwrap();
    let first = log_read_some(&db, &mut log).await;
    assert!(first > 0);

    // Whatever happens below, the broker is brought back for the tests that follow.
    let _back = ResumeOnDrop;
    // Broker down: with a short deadline catch-up gives up with a clear error, and the
    // partition stays valid at the offset it had reached.
    kafka("stop");
    let short = CatchUpConfig {
        deadline: Duration::from_secs(3),
        batch: 1_000,
        ..Default::default()
    };
    let mut log = KafkaLog::new(&b, &topic, 0).unwrap();
    let err = ingest::catch_up(&db, &mut log, Until::HighWatermark, &short)
        .await
        .unwrap_err();
    let CatchUpError::Unavailable { applied, .. } = &err else {
        panic!("unexpected {err}")
    };
    assert_eq!(
        *applied,
        Some(first - 1),
        "the offset the partition is valid at"
    );
    assert_eq!(partition::read_meta(&db).unwrap().offset, Some(first - 1));
    assert!(
        err.to_string().contains("partition valid at offset"),
        "{err}"
    );

    // Broker down when catch-up starts, back a few seconds later: retries with backoff, then
    // completes from where the partition was.
    let patient = CatchUpConfig {
        deadline: Duration::from_secs(90),
        batch: 1_000,
        ..Default::default()
    };
    let back = std::sync::Arc::new(std::sync::Mutex::new(None));
    let restart = tokio::spawn({
        let back = back.clone();
        async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            *back.lock().unwrap() = Some(std::time::Instant::now());
            tokio::task::spawn_blocking(|| kafka("resume"))
                .await
                .unwrap();
        }
    });
    let mut log = KafkaLog::new(&b, &topic, 0).unwrap();
    let report = ingest::catch_up(&db, &mut log, Until::HighWatermark, &patient)
        .await
        .expect("catch-up completes once the broker is back");
    restart.await.unwrap();
    let caught_up = std::time::Instant::now();
    // An outage is transient: the same client rides it out, no client is thrown away.
    assert_eq!(
        log.reconnects(),
        0,
        "a transient outage replaced the client"
    );
    let back = back.lock().unwrap().expect("the broker was resumed");
    assert_eq!(report.from_offset, Some(first - 1));
    assert_eq!(report.to_offset, Some(49_999));
    assert_eq!(report.records, 50_000 - first);
    for i in [0u64, first, 49_999] {
        assert_eq!(
            db.get(seed::seed_key(i)).unwrap(),
            Some(seed::seed_value(i, 64))
        );
    }
    // For CHAOS.md (`scripts/chaos.sh`): from the broker's restart to caught up.
    println!(
        "CHAOS kafka_stopped_during_catch_up ok=true recover_ms={} bytes_lost=0",
        caught_up.saturating_duration_since(back).as_millis()
    );
}

/// Restarts the broker (on its data) if a failed assertion left it stopped.
struct ResumeOnDrop;

impl Drop for ResumeOnDrop {
    fn drop(&mut self) {
        let script = testkit::workspace_root().join("scripts/kafka.sh");
        let _ = std::process::Command::new("bash")
            .arg(script)
            .arg("resume")
            .status();
    }
}

/// Applies one batch of 10 000 records; returns the next offset to read.
async fn log_read_some(db: &rocksdb::DB, log: &mut KafkaLog) -> u64 {
    use quicstrap::ingest::LogSource;
    let fetched = log.read(0, 10_000, Duration::from_secs(10)).await;
    assert!(fetched.error.is_none(), "{:?}", fetched.error);
    let recs = fetched.records;
    let last = recs.last().unwrap().offset;
    partition::apply_batch(
        db,
        recs.iter()
            .map(|r| (r.key.as_deref().unwrap(), r.value.as_deref())),
        last,
    )
    .unwrap();
    last + 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn following_reports_a_stopped_broker_as_a_stall_once_and_recovers() {
    let _turn = turn(Needs::BrokerToItself).await;
    let b = std::env::var("QUICSTRAP_KAFKA").unwrap();
    let store = format!("kt_follow_{}", std::process::id());
    let id = PartitionId::new(&store, 1, 0).unwrap();
    let topic = ingest::topic(&id);
    let batch = |from: u64| -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        (from..from + 1_000)
            .map(|i| (seed::seed_key(i), Some(seed::seed_value(i, 64))))
            .collect()
    };
    KafkaWriter::new(&b)
        .unwrap()
        .send_all(&topic, 0, &batch(0))
        .await
        .unwrap();
    let root = tempfile::tempdir().unwrap();
    let log_path = root.path().join("fetch.log");
    let mut child = fetch_command(root.path(), &store, 1, 0)
        .args(["--kafka", &b, "--follow", "--kafka-stall-secs", "2"])
        .args(["--metrics-listen", "127.0.0.1:0"])
        .env("RUST_LOG", "quicstrap=warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let mut url = String::new();
    wait_for("the metrics address", Duration::from_secs(30), || {
        url = log()
            .lines()
            .find_map(|l| l.strip_prefix("quicstrap: metrics on "))
            .unwrap_or_default()
            .to_owned();
        !url.is_empty()
    })
    .await;
    let metrics = || scrape(&url);
    let series = |name: &str, state: Option<&str>| match state {
        Some(s) => format!("{name}{{partition=\"{id}\",state=\"{s}\"}}"),
        None => format!("{name}{{partition=\"{id}\"}}"),
    };
    let offset_is =
        |m: &str, o: f64| metric(m, &series("quicstrap_ingest_offset", None)) == Some(o);
    let state_is =
        |m: &str, s: &str| metric(m, &series("quicstrap_ingest_state", Some(s))) == Some(1.0);
    wait_for("caught up and following", Duration::from_secs(60), || {
        let m = metrics();
        offset_is(&m, 999.0) && state_is(&m, "following")
    })
    .await;

    let _back = ResumeOnDrop;
    // Only what the outage logs: on a slow host the first connection may already have
    // counted as a (short) stall.
    let before_outage = log().len();
    kafka("stop");
    wait_for("the stall is reported", Duration::from_secs(60), || {
        state_is(&metrics(), "stalled")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    // One WARN for the whole outage, however long it lasts.
    let outage_log = log().split_off(before_outage);
    assert!(outage_log.contains("broker unreachable"), "{outage_log}");
    assert_eq!(
        outage_log.matches("ingestion stalled").count(),
        1,
        "one WARN per stall: {outage_log}"
    );
    let resumed = std::time::Instant::now();
    kafka("resume");
    KafkaWriter::new(&b)
        .unwrap()
        .send_all(&topic, 0, &batch(1_000))
        .await
        .unwrap();
    wait_for(
        "following again after the outage",
        Duration::from_secs(90),
        || {
            let m = metrics();
            offset_is(&m, 1_999.0) && state_is(&m, "following")
        },
    )
    .await;
    let recovered = resumed.elapsed();
    let _ = child.kill();
    let _ = child.wait();
    // A broker just back can take seconds to hand out new records, which may count as a
    // second, short stall; the outage's own was reported once (above) and ended.
    let text = log().split_off(before_outage);
    assert!(text.contains("recovered from a stall"), "{text}");
    println!(
        "CHAOS kafka_stopped_during_follow ok=true recover_ms={} bytes_lost=0",
        recovered.as_millis()
    );
}

/// A RocksDB write stall in ingestion (no background thread may flush, so writes stop once
/// both memtables are full) leaves the server of the same process, on a single-threaded
/// runtime, free to serve a transfer.
#[tokio::test(flavor = "current_thread")]
async fn a_write_stall_in_ingestion_does_not_hold_up_serving() {
    let _turn = turn(Needs::Process).await;
    let b = std::env::var("QUICSTRAP_KAFKA").unwrap();
    let store = format!("kt_stall_{}", std::process::id());
    let id = PartitionId::new(&store, 1, 0).unwrap();
    let topic = ingest::topic(&id);
    let batch = |from: u64| -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        (from..from + 20_000)
            .map(|i| (seed::seed_key(i), Some(seed::seed_value(i, 1_000))))
            .collect()
    };
    let w = KafkaWriter::new(&b).unwrap();
    w.send_all(&topic, 0, &batch(0)).await.unwrap();
    let root = tempfile::tempdir().unwrap();
    // The process-wide default Env: this test has the process to itself.
    let mut env = rocksdb::Env::new().unwrap();
    let db = Arc::new(
        partition::open_with(&id.dir(root.path()), TableFormat::Block, |o| {
            o.set_env(&env);
            o.set_write_buffer_size(256 << 10);
            o.set_max_write_buffer_number(2);
        })
        .unwrap(),
    );
    let cfg = CatchUpConfig::default();
    let mut log = KafkaLog::new(&b, &topic, 0).unwrap();
    let r = ingest::catch_up(&db, &mut log, Until::HighWatermark, &cfg)
        .await
        .unwrap();
    assert_eq!(r.to_offset, Some(19_999));
    let source = Arc::new(quicstrap::snapshot::DataDir::new(
        root.path(),
        TableFormat::Block,
    ));
    source.insert(id.clone(), db.clone());
    let server = quicstrap::Server::start(
        server_config(root.path(), &root.path().join(".snaps"), TableFormat::Block),
        source,
    )
    .await
    .unwrap();
    let addr = server.local_addr().unwrap().to_string();
    let fetch = |dst: &std::path::Path| {
        let mut cmd = fetch_command(dst, &store, 1, 0);
        cmd.args(["--peer", &addr, "--idle-timeout-secs", "10", "--json"]);
        cmd
    };
    // The first fetch makes the snapshot (a checkpoint flushes, so it comes before the stall);
    // the second reuses it.
    let first = tempfile::tempdir().unwrap();
    let mut cmd = fetch(first.path());
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    env.set_background_threads(0);
    env.set_high_priority_background_threads(0);
    w.send_all(&topic, 0, &batch(20_000)).await.unwrap();
    // The second fetch runs on a thread of its own once ingestion's writes have stopped, and
    // lifts the stall when it is done: should a stalled write hold this runtime, the test
    // ends in a failed fetch, not a hang.
    let second = tempfile::tempdir().unwrap();
    let mut cmd = fetch(second.path());
    let (db2, mut env2) = (db.clone(), env.clone());
    let stopped = |db: &rocksdb::DB| {
        db.property_int_value(rocksdb::properties::IS_WRITE_STOPPED)
            .unwrap()
            == Some(1)
    };
    let fetched = std::thread::spawn(move || {
        let t0 = std::time::Instant::now();
        while !stopped(&db2) && t0.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(10));
        }
        let stopped_before = stopped(&db2);
        let out = cmd.output().unwrap();
        let stopped_after = stopped(&db2);
        env2.set_background_threads(1);
        env2.set_high_priority_background_threads(1);
        (out, stopped_before && stopped_after)
    });
    let follower = {
        let db = db.clone();
        tokio::spawn(async move {
            ingest::catch_up(&db, &mut log, Until::Follow, &CatchUpConfig::default()).await
        })
    };
    let (out, stalled_throughout) = tokio::task::spawn_blocking(move || fetched.join().unwrap())
        .await
        .unwrap();
    assert!(
        stalled_throughout,
        "writes were stopped for the whole transfer"
    );
    assert!(
        out.status.success(),
        "the transfer stalled with ingestion: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Released, ingestion completes.
    wait_for("ingestion completes", Duration::from_secs(120), || {
        partition::read_meta(&db).unwrap().offset == Some(39_999)
    })
    .await;
    follower.abort();
    server.shutdown().await;
}
