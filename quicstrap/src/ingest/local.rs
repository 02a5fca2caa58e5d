//! An embedded, in-memory log behind the same [`LogSource`] trait as Kafka: lets the demo show
//! catch-up with no broker, and lets catch-up be tested without one.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Fetched, LogError, LogRecord, LogSource, Watermarks};
use crate::store::lock::unpoisoned as lock;

/// An append-only log shared between a writer and any number of readers.
#[derive(Clone, Debug, Default)]
pub struct LocalLog {
    records: Arc<Mutex<Vec<LogRecord>>>,
    base: u64,
}

impl LocalLog {
    /// An empty log starting at offset 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty log whose first record gets offset `base`: the tail of a longer history
    /// whose head was compacted away (as after Kafka retention), e.g. everything after a
    /// snapshot.
    pub fn starting_at(base: u64) -> Self {
        Self {
            records: Arc::default(),
            base,
        }
    }

    /// Appends a put (`Some`) or a delete (`None`); returns its offset.
    pub fn append(&self, key: &[u8], value: Option<&[u8]>) -> u64 {
        let mut r = lock(&self.records);
        let offset = self.base + r.len() as u64;
        r.push(LogRecord {
            offset,
            key: Some(key.to_vec()),
            value: value.map(<[u8]>::to_vec),
        });
        offset
    }
}

impl LogSource for LocalLog {
    async fn watermarks(&mut self) -> Result<Watermarks, LogError> {
        Ok(Watermarks {
            low: self.base,
            high: self.base + lock(&self.records).len() as u64,
        })
    }

    async fn read(&mut self, from: u64, max: usize, _wait: Duration) -> Fetched {
        if from < self.base {
            // Like Kafka after retention: the head is gone.
            return Err(LogError::OffsetOutOfRange {
                from,
                earliest: self.base,
            })
            .into();
        }
        let r = lock(&self.records);
        let start = usize::try_from(from - self.base)
            .unwrap_or(usize::MAX)
            .min(r.len());
        let end = start.saturating_add(max).min(r.len());
        Ok(r[start..end].to_vec()).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::{catch_up, CatchUpConfig, Until};
    use crate::store::partition::{self, TableFormat};

    #[tokio::test]
    async fn catch_up_applies_puts_and_deletes_and_resumes_from_the_stored_offset() {
        let tmp = tempfile::tempdir().unwrap();
        let db = std::sync::Arc::new(partition::open(tmp.path(), TableFormat::Block).unwrap());
        let mut log = LocalLog::new();
        for i in 0..10u32 {
            log.append(&i.to_be_bytes(), Some(b"v1"));
        }
        log.append(&3u32.to_be_bytes(), None);
        log.append(&4u32.to_be_bytes(), Some(b"v2"));
        let cfg = CatchUpConfig {
            batch: 4,
            ..Default::default()
        };
        let r = catch_up(&db, &mut log, Until::HighWatermark, &cfg)
            .await
            .unwrap();
        assert_eq!(
            (r.from_offset, r.to_offset, r.records),
            (None, Some(11), 12)
        );
        assert_eq!(r.batches, 3);
        assert_eq!(db.get(3u32.to_be_bytes()).unwrap(), None);
        assert_eq!(
            db.get(4u32.to_be_bytes()).unwrap().as_deref(),
            Some(&b"v2"[..])
        );
        // More records later: the next run starts right after offset 11, applying only those.
        log.append(&4u32.to_be_bytes(), None);
        let r = catch_up(&db, &mut log, Until::HighWatermark, &cfg)
            .await
            .unwrap();
        assert_eq!(
            (r.from_offset, r.to_offset, r.records),
            (Some(11), Some(12), 1)
        );
        assert_eq!(db.get(4u32.to_be_bytes()).unwrap(), None);
        assert_eq!(partition::read_meta(&db).unwrap().offset, Some(12));
    }
}
