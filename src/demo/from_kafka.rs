//! The demo's source partition the real way (`quicstrap demo --kafka`): the seed
//! generator's records produced to Kafka, then ingested from offset 0 as a node would.

use std::path::Path;

use quicstrap::ingest::kafka::{KafkaLog, KafkaWriter};
use quicstrap::ingest::{self, CatchUpConfig, Until};
use quicstrap::store::partition::{
    self, write_version_state, PartitionId, TableFormat, VersionState,
};
use testkit::seed::{seed_key, seed_value, summary, SeedSummary};

use super::error::DemoError;

/// The source partition the real way: records produced to Kafka, then ingested from offset 0.
pub(super) async fn seed_from_kafka(
    brokers: &str,
    id: &PartitionId,
    dir: &Path,
    records: u64,
    value_size: usize,
) -> Result<SeedSummary, DemoError> {
    let kafka = |e: quicstrap::ingest::LogError| DemoError::Verify(format!("kafka: {e}"));
    let topic = ingest::topic(id);
    let writer = KafkaWriter::new(brokers).map_err(kafka)?;
    let mut i = 0;
    while i < records {
        let end = (i + 20_000).min(records);
        let batch: Vec<_> = (i..end)
            .map(|n| (seed_key(n), Some(seed_value(n, value_size))))
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
        write_version_state(
            &db,
            &VersionState {
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
    Ok(summary(dir, records)?)
}
