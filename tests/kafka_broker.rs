//! Broker trouble during catch-up, against the real broker of `scripts/kafka.sh`: this test
//! stops and restarts it, so it lives in its own test binary (binaries run one at a time).

use std::time::Duration;

use quicstrap::ingest::kafka::{KafkaLog, KafkaWriter};
use quicstrap::ingest::{self, CatchUpConfig, CatchUpError, Until};
use quicstrap::partition::{self, PartitionId, TableFormat};

fn kafka(cmd: &str) {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka.sh");
    let st = std::process::Command::new("bash")
        .arg(script)
        .arg(cmd)
        .status()
        .unwrap();
    assert!(st.success(), "scripts/kafka.sh {cmd} failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_waits_out_a_broker_outage_and_resumes_after_giving_up() {
    let b = std::env::var("QUICSTRAP_KAFKA")
        .expect("QUICSTRAP_KAFKA is not set: run ./scripts/test.sh");
    let store = format!("kt_outage_{}", std::process::id());
    let id = PartitionId::new(&store, 1, 0).unwrap();
    let topic = ingest::topic(&id);
    let w = KafkaWriter::new(&b).unwrap();
    let records: Vec<(Vec<u8>, Option<Vec<u8>>)> = (0..50_000u64)
        .map(|i| (partition::seed_key(i), Some(partition::seed_value(i, 64))))
        .collect();
    assert_eq!(w.send_all(&topic, 0, &records).await.unwrap(), Some(49_999));
    drop(w);
    let root = tempfile::tempdir().unwrap();
    let db = partition::open(&id.dir(root.path()), TableFormat::Block).unwrap();

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
    let back = back.lock().unwrap().expect("the broker was resumed");
    assert_eq!(report.from_offset, Some(first - 1));
    assert_eq!(report.to_offset, Some(49_999));
    assert_eq!(report.records, 50_000 - first);
    for i in [0u64, first, 49_999] {
        assert_eq!(
            db.get(partition::seed_key(i)).unwrap(),
            Some(partition::seed_value(i, 64))
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
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka.sh");
        let _ = std::process::Command::new("bash")
            .arg(script)
            .arg("resume")
            .status();
    }
}

/// Applies one batch of 10 000 records; returns the next offset to read.
async fn log_read_some(db: &rocksdb::DB, log: &mut KafkaLog) -> u64 {
    use quicstrap::ingest::LogSource;
    let recs = log.read(0, 10_000, Duration::from_secs(10)).await.unwrap();
    let last = recs.last().unwrap().offset;
    partition::apply_batch(
        db,
        recs.iter().map(|r| (r.key.as_slice(), r.value.as_deref())),
        last,
    )
    .unwrap();
    last + 1
}
