//! The demo's step 5: the records written after the snapshot, applied to the fetched
//! partition from the snapshot's offset on — from the embedded log, or from Kafka when the
//! demo runs against a broker — and checked.

use std::sync::Arc;

use super::error::DemoError;
use quicstrap::client::FetchReport;
use quicstrap::ingest::kafka::{KafkaLog, KafkaWriter};
use quicstrap::ingest::{self, local::LocalLog, CatchUpConfig, CatchUpReport, Until};
use quicstrap::store::partition::{self, PartitionId, StorageError, TableFormat};
use testkit::seed::seed_key;

/// Records "produced after the snapshot" in the demo's embedded log.
const TAIL: u64 = 10_000;

/// Step 5 of the reference design on the embedded log: the node applies what was written
/// after the snapshot, from the snapshot's offset on, exactly as it would from Kafka.
pub(super) async fn catch_up_tail(
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
            (seed_key(i * 13), value)
        })
        .collect();
    let db = Arc::new(partition::open(&report.dir, TableFormat::Block)?);
    let cfg = CatchUpConfig::default();
    let kafka_err = |e: quicstrap::ingest::LogError| DemoError::Verify(format!("kafka: {e}"));
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
    let updated = db.get(seed_key(13)).map_err(StorageError::from)?;
    let deleted = db.get(seed_key(0)).map_err(StorageError::from)?;
    if r.to_offset != Some(next + TAIL - 1)
        || updated.as_deref() != Some(&b"updated after the snapshot #1"[..])
        || deleted.is_some()
    {
        return Err(DemoError::Verify(format!("catch-up result wrong: {r:?}")));
    }
    Ok(r)
}
