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

use super::{Fetched, LogError, LogRecord, LogSource, TopicTemplate, Watermarks};
use crate::store::partition::PartitionId;

/// Timeout of one metadata or watermark request to the broker.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Queued transient errors one read drains at most.
const MAX_ERRORS_PER_READ: usize = 10_000;

/// Where and how to reach a Kafka cluster: the brokers, the librdkafka properties a real
/// cluster needs (`security.protocol`, `ssl.*`, `sasl.*`, `client.id`, fetch sizes), and how
/// topics are named.
#[derive(Clone, Debug)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `host:port,...`.
    pub brokers: String,
    /// librdkafka properties set after quicstrap's own defaults, so they win.
    pub properties: Vec<(String, String)>,
    /// Topic name of a store version.
    pub topics: TopicTemplate,
}

impl KafkaConfig {
    /// Plaintext brokers, default topic names.
    pub fn new(brokers: &str) -> Self {
        Self {
            brokers: brokers.to_owned(),
            properties: Vec::new(),
            topics: TopicTemplate::default(),
        }
    }

    /// Parses `KEY=VALUE` into a property.
    pub fn parse_property(s: &str) -> Result<(String, String), String> {
        match s.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
            _ => Err(format!("{s:?}: expected KEY=VALUE")),
        }
    }

    /// A reader of `id`'s partition of its topic.
    pub fn log(&self, id: &PartitionId) -> Result<KafkaLog, LogError> {
        KafkaLog::with_config(self, &self.topics.topic(id), id.partition)
    }

    /// Whether a broker answers a metadata request, with these properties (TLS, SASL).
    pub fn reachable(&self) -> bool {
        let consumer: Result<BaseConsumer, _> = consumer_config(self, "quicstrap-probe").create();
        consumer
            .map(|c| c.fetch_metadata(None, REQUEST_TIMEOUT).is_ok())
            .unwrap_or(false)
    }
}

/// Reads one partition of one topic.
pub struct KafkaLog {
    /// Always `Some` while the log is alive; taken on drop to close the client off the async
    /// workers.
    consumer: Option<Arc<StreamConsumer>>,
    cfg: KafkaConfig,
    topic: String,
    partition: i32,
    /// Offset the consumer is positioned at (next record it will return), if assigned.
    position: Option<u64>,
    reconnects: u64,
}

fn unavailable(e: KafkaError) -> LogError {
    LogError::Unavailable(e.to_string())
}

/// Consumer settings shared by readers: no group commits (offsets live in the DB), quick
/// reconnects, fail fast on a missing broker so retries are ours; then the user's properties.
fn consumer_config(cfg: &KafkaConfig, group: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.brokers)
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
        // Records fetched ahead and not yet read, per consumer: librdkafka's 64 MiB default
        // made a node recovering 20 partitions from Kafka at once peak at 1.1 GiB
        // (BENCHMARKS.md, cluster); 8 MiB is still seconds of catch-up per partition.
        .set("queued.max.messages.kbytes", "8192")
        // ...but a full queue then postpones the next fetch by librdkafka's 1 s default, which
        // held one partition's replay to ~20 MB/s (56 s for 1.1 GB against 15 s uncapped);
        // 10 ms keeps the cap without the stall.
        .set("fetch.queue.backoff.ms", "10")
        .set("log_level", "3");
    for (k, v) in &cfg.properties {
        c.set(k, v);
    }
    c
}

impl KafkaLog {
    /// A reader of `topic`/`partition` on plaintext `brokers` (comma-separated `host:port`).
    pub fn new(brokers: &str, topic: &str, partition: u32) -> Result<Self, LogError> {
        Self::with_config(&KafkaConfig::new(brokers), topic, partition)
    }

    /// A reader of `topic`/`partition` with `cfg`'s brokers and properties.
    pub fn with_config(cfg: &KafkaConfig, topic: &str, partition: u32) -> Result<Self, LogError> {
        Ok(Self {
            consumer: Some(Arc::new(Self::consumer(cfg, topic)?)),
            cfg: cfg.clone(),
            topic: topic.to_owned(),
            partition: i32::try_from(partition)
                .map_err(|_| LogError::Config(format!("partition {partition} out of range")))?,
            position: None,
            reconnects: 0,
        })
    }

    fn consumer(cfg: &KafkaConfig, topic: &str) -> Result<StreamConsumer, LogError> {
        // A client that cannot be made is a configuration fault (unknown property, bad
        // value): nothing a retry changes.
        consumer_config(cfg, &format!("quicstrap-{topic}"))
            .create()
            .map_err(|e| LogError::Config(e.to_string()))
    }

    /// How many times the client was replaced after a fatal error.
    pub fn reconnects(&self) -> u64 {
        self.reconnects
    }

    /// Starts over with a fresh client: a fatal error leaves librdkafka's client unusable.
    /// Transient errors (broker down, timeouts) never come here: the same client reconnects
    /// on its own and keeps its position.
    fn reconnect(&mut self) {
        match Self::consumer(&self.cfg, &self.topic) {
            Ok(c) => {
                let old = self.consumer.replace(Arc::new(c));
                // Closing a librdkafka client blocks (it drains its queues): not on a worker.
                tokio::task::spawn_blocking(move || drop(old));
                self.reconnects += 1;
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
            .map_err(|_| LogError::Config(format!("offset {from} out of range")))?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, self.partition, Offset::Offset(offset))
            .map_err(unavailable)?;
        self.client()?.assign(&tpl).map_err(unavailable)?;
        self.position = Some(from);
        Ok(())
    }

    /// Classifies a consumer error: fatal ones replace the client, a removed offset becomes
    /// [`LogError::OffsetOutOfRange`] with the log's first offset, the rest are transient.
    async fn classify(&mut self, e: KafkaError, from: u64) -> LogError {
        match &e {
            KafkaError::MessageConsumptionFatal(_) => {
                self.reconnect();
                LogError::Fatal(e.to_string())
            }
            _ if matches!(
                e.rdkafka_error_code(),
                Some(RDKafkaErrorCode::OffsetOutOfRange | RDKafkaErrorCode::AutoOffsetReset)
            ) =>
            {
                // The consumer stops fetching this partition: position it again next time.
                self.position = None;
                match self.watermarks().await {
                    Ok(wm) if wm.low > from => LogError::OffsetOutOfRange {
                        from,
                        earliest: wm.low,
                    },
                    Ok(_) => LogError::Unavailable(e.to_string()),
                    Err(w) => w,
                }
            }
            _ => unavailable(e),
        }
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

    fn describe(&self) -> String {
        format!("{}/{}", self.topic, self.partition)
    }

    async fn watermarks(&mut self) -> Result<Watermarks, LogError> {
        let consumer = self.client()?.clone();
        let (topic, partition) = (self.topic.clone(), self.partition);
        // A blocking call into librdkafka: off the async workers.
        let (low, high) = tokio::task::spawn_blocking(move || {
            consumer.fetch_watermarks(&topic, partition, REQUEST_TIMEOUT)
        })
        .await
        .map_err(|e| LogError::Unavailable(e.to_string()))?
        .map_err(unavailable)?;
        Ok(Watermarks {
            low: low.max(0) as u64,
            high: high.max(0) as u64,
        })
    }

    async fn read(&mut self, from: u64, max: usize, wait: Duration) -> Fetched {
        if self.position != Some(from) {
            if let Err(e) = self.seek(from) {
                return Err(e).into();
            }
        }
        let mut out = Fetched::default();
        let mut budget = wait;
        let mut errors = 0;
        while out.records.len() < max {
            let consumer = match self.client() {
                Ok(c) => c.clone(),
                Err(e) => {
                    out.error = Some(e);
                    break;
                }
            };
            let msg = match tokio::time::timeout(budget, consumer.recv()).await {
                Err(_) => break,
                Ok(Err(e)) => {
                    let at = self.position.unwrap_or(from);
                    let e = self.classify(e, at).await;
                    let transient = matches!(e, LogError::Unavailable(_));
                    out.error = Some(e);
                    // librdkafka queues an error per failed reconnect while the broker is
                    // down and hands them out after it is back: drain what is queued now,
                    // or a reader pacing itself by backoff would never get past them.
                    errors += 1;
                    if !transient || errors >= MAX_ERRORS_PER_READ {
                        break;
                    }
                    budget = Duration::from_millis(5);
                    continue;
                }
                Ok(Ok(m)) => m,
            };
            let Ok(offset) = u64::try_from(msg.offset()) else {
                continue;
            };
            out.records.push(LogRecord {
                offset,
                key: msg.key().map(<[u8]>::to_vec),
                value: msg.payload().map(<[u8]>::to_vec),
            });
            self.position = Some(offset.saturating_add(1));
            // After the first record, take only what is already there.
            budget = Duration::from_millis(5);
        }
        out
    }
}

/// Writes records to Kafka: the tests' and the benchmark's producer, and a way to feed a
/// store by hand.
pub struct KafkaWriter {
    producer: FutureProducer,
    brokers: String,
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
        Ok(Self {
            producer,
            brokers: brokers.to_owned(),
        })
    }

    /// Creates `topic` with `partitions` partitions (replication factor 1), as a store's
    /// writers would before producing: a broker's auto-created topics have one partition.
    pub async fn create_topic(&self, topic: &str, partitions: u32) -> Result<(), LogError> {
        use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
        use rdkafka::client::DefaultClientContext;
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .create()
            .map_err(unavailable)?;
        let count = i32::try_from(partitions)
            .map_err(|_| LogError::Config(format!("{partitions} partitions")))?;
        let new = NewTopic::new(topic, count, TopicReplication::Fixed(1));
        for created in admin
            .create_topics(&[new], &AdminOptions::new())
            .await
            .map_err(unavailable)?
        {
            created.map_err(|(t, e)| LogError::Unavailable(format!("create topic {t}: {e}")))?;
        }
        Ok(())
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
        self.deliver(rec).await
    }

    /// Sends a record without a key: what a misbehaving producer writes, which ingestion
    /// must skip (or stop at) rather than apply.
    pub async fn send_without_key(
        &self,
        topic: &str,
        partition: u32,
        value: &[u8],
    ) -> Result<u64, LogError> {
        let rec: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic)
            .partition(partition as i32)
            .payload(value);
        self.deliver(rec).await
    }

    async fn deliver(&self, rec: FutureRecord<'_, [u8], [u8]>) -> Result<u64, LogError> {
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
    KafkaConfig::new(brokers).reachable()
}
