//! The real log: one Kafka partition read through rdkafka, positioned by explicit offsets.
//!
//! Offsets come from the partition's own RocksDB, never from Kafka's consumer-group commits:
//! the DB is the single source of truth, so data and offset move together.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::Message;
use rdkafka::producer::future_producer::OwnedDeliveryResult;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use super::{LogError, LogRecord, LogSource};

/// Timeout of one metadata or watermark request to the broker.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads one partition of one topic.
pub struct KafkaLog {
    /// Always `Some` while the log is alive; taken on drop to close the client off the async
    /// workers.
    consumer: Option<Arc<StreamConsumer>>,
    brokers: String,
    topic: String,
    partition: i32,
    /// Offset the consumer is positioned at (next record it will return), if assigned.
    position: Option<u64>,
}

fn unavailable(e: KafkaError) -> LogError {
    LogError::Unavailable(e.to_string())
}

/// Consumer settings shared by readers: no group commits (offsets live in the DB), quick
/// reconnects, fail fast on a missing broker so retries are ours.
fn consumer_config(brokers: &str, group: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        // Never jump silently: an offset that retention has removed must be an error, not a
        // quiet skip to the oldest record (which would lose every record in between).
        .set("auto.offset.reset", "error")
        .set("socket.timeout.ms", "5000")
        .set("reconnect.backoff.ms", "100")
        .set("reconnect.backoff.max.ms", "1000")
        .set("fetch.wait.max.ms", "100")
        .set("log_level", "3");
    c
}

impl KafkaLog {
    /// A reader of `topic`/`partition` on `brokers` (comma-separated `host:port`).
    pub fn new(brokers: &str, topic: &str, partition: u32) -> Result<Self, LogError> {
        Ok(Self {
            consumer: Some(Arc::new(Self::consumer(brokers, topic)?)),
            brokers: brokers.to_owned(),
            topic: topic.to_owned(),
            partition: i32::try_from(partition).map_err(|_| {
                LogError::Unavailable(format!("partition {partition} out of range"))
            })?,
            position: None,
        })
    }

    fn consumer(brokers: &str, topic: &str) -> Result<StreamConsumer, LogError> {
        consumer_config(brokers, &format!("quicstrap-{topic}"))
            .create()
            .map_err(unavailable)
    }

    /// Starts over with a fresh client: after an outage librdkafka can keep handing out the
    /// errors it queued meanwhile, and a new client reconnects cleanly.
    fn reconnect(&mut self) {
        match Self::consumer(&self.brokers, &self.topic) {
            Ok(c) => {
                let old = self.consumer.replace(Arc::new(c));
                // Closing a librdkafka client blocks (it drains its queues): not on a worker.
                tokio::task::spawn_blocking(move || drop(old));
            }
            Err(e) => tracing::warn!(error = %e, "cannot recreate the Kafka client"),
        }
        self.position = None;
    }

    fn client(&self) -> Result<&Arc<StreamConsumer>, LogError> {
        self.consumer
            .as_ref()
            .ok_or_else(|| LogError::Unavailable("Kafka client closed".into()))
    }

    fn seek(&mut self, from: u64) -> Result<(), LogError> {
        let offset = i64::try_from(from)
            .map_err(|_| LogError::Unavailable(format!("offset {from} out of range")))?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, self.partition, Offset::Offset(offset))
            .map_err(unavailable)?;
        self.client()?.assign(&tpl).map_err(unavailable)?;
        self.position = Some(from);
        Ok(())
    }
}

impl Drop for KafkaLog {
    fn drop(&mut self) {
        // As in `reconnect`: closing the client blocks, so it happens off the async workers
        // when a runtime is there to take it.
        let consumer = self.consumer.take();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn_blocking(move || drop(consumer));
        }
    }
}

impl LogSource for KafkaLog {
    fn position(&mut self) -> Option<u64> {
        let tpl = self.client().ok()?.position().ok()?;
        match tpl.find_partition(&self.topic, self.partition)?.offset() {
            Offset::Offset(o) if o >= 0 => Some(o as u64),
            _ => None,
        }
    }

    async fn high_watermark(&mut self) -> Result<u64, LogError> {
        let consumer = self.client()?.clone();
        let (topic, partition) = (self.topic.clone(), self.partition);
        // A blocking call into librdkafka: off the async workers.
        let (_, high) = tokio::task::spawn_blocking(move || {
            consumer.fetch_watermarks(&topic, partition, REQUEST_TIMEOUT)
        })
        .await
        .map_err(|e| LogError::Unavailable(e.to_string()))?
        .map_err(unavailable)?;
        Ok(high.max(0) as u64)
    }

    async fn read(
        &mut self,
        from: u64,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<LogRecord>, LogError> {
        if self.position != Some(from) {
            self.seek(from)?;
        }
        let mut out = Vec::new();
        let mut budget = wait;
        while out.len() < max {
            let consumer = self.client()?.clone();
            let msg = match tokio::time::timeout(budget, consumer.recv()).await {
                Err(_) => break,
                Ok(Err(e)) => {
                    // Position is unknown after an error: reconnect and seek next time.
                    self.reconnect();
                    if out.is_empty() {
                        return Err(unavailable(e));
                    }
                    break;
                }
                Ok(Ok(m)) => m,
            };
            let offset = msg.offset().max(0) as u64;
            let key = msg.key().ok_or(LogError::NoKey(offset))?.to_vec();
            out.push(LogRecord {
                offset,
                key,
                value: msg.payload().map(<[u8]>::to_vec),
            });
            self.position = Some(offset + 1);
            // After the first record, take only what is already there.
            budget = Duration::from_millis(5);
        }
        Ok(out)
    }
}

/// Writes records to Kafka: the tests' and the benchmark's producer, and a way to feed a
/// store by hand.
pub struct KafkaWriter {
    producer: FutureProducer,
}

impl KafkaWriter {
    /// A producer on `brokers`, tuned for bulk loading (idempotent, batched).
    pub fn new(brokers: &str) -> Result<Self, LogError> {
        let producer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("enable.idempotence", "true")
            .set("linger.ms", "20")
            .set("batch.size", "1000000")
            .set("queue.buffering.max.kbytes", "1048576")
            .set("message.timeout.ms", "60000")
            .create()
            .map_err(unavailable)?;
        Ok(Self { producer })
    }

    /// Sends one record (`None` value: a tombstone) and waits for its offset.
    pub async fn send(
        &self,
        topic: &str,
        partition: u32,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> Result<u64, LogError> {
        let mut rec: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(topic).partition(partition as i32).key(key);
        if let Some(v) = value {
            rec = rec.payload(v);
        }
        let delivery = self
            .producer
            .send(rec, Duration::from_secs(60))
            .await
            .map_err(|(e, _)| unavailable(e))?;
        Ok(delivery.offset.max(0) as u64)
    }

    /// Sends many records, pipelined (enqueued without waiting for each delivery), and waits
    /// for all; returns the last offset.
    pub async fn send_all(
        &self,
        topic: &str,
        partition: u32,
        records: &[(Vec<u8>, Option<Vec<u8>>)],
    ) -> Result<Option<u64>, LogError> {
        let mut pending: std::collections::VecDeque<DeliveryFuture> = Default::default();
        let mut last: Option<u64> = None;
        for (k, v) in records {
            let mut rec: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic)
                .partition(partition as i32)
                .key(k.as_slice());
            if let Some(v) = v {
                rec = rec.payload(v.as_slice());
            }
            loop {
                match self.producer.send_result(rec) {
                    Ok(f) => {
                        pending.push_back(f);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        // The local queue is full: wait for the oldest delivery, then retry.
                        rec = back;
                        match pending.pop_front() {
                            Some(f) => settle(f.await, &mut last)?,
                            None => tokio::time::sleep(Duration::from_millis(10)).await,
                        }
                    }
                    Err((e, _)) => return Err(unavailable(e)),
                }
            }
        }
        while let Some(f) = pending.pop_front() {
            settle(f.await, &mut last)?;
        }
        Ok(last)
    }
}

/// Records one delivery's offset, or its failure.
fn settle<E>(r: Result<OwnedDeliveryResult, E>, last: &mut Option<u64>) -> Result<(), LogError> {
    let d = r
        .map_err(|_| LogError::Unavailable("producer dropped a delivery".into()))?
        .map_err(|(e, _)| unavailable(e))?;
    let off = d.offset.max(0) as u64;
    *last = Some(last.map_or(off, |l| l.max(off)));
    Ok(())
}

/// Asks the broker for its metadata: is it there at all.
pub fn broker_reachable(brokers: &str) -> bool {
    let consumer: Result<BaseConsumer, _> = consumer_config(brokers, "quicstrap-probe").create();
    consumer
        .map(|c| c.fetch_metadata(None, REQUEST_TIMEOUT).is_ok())
        .unwrap_or(false)
}
