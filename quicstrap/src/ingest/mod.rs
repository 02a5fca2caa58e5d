//! Catch-up: applying a partition's change log (Kafka) to its RocksDB, from its own offset.
//!
//! Records are applied in batches, each batch together with its last offset in **one**
//! `WriteBatch` ([`crate::store::partition::apply_batch`]), so the data and the offset can never
//! disagree, not even across a crash: a restart resumes right after the stored offset, and no
//! record is lost or applied twice in effect. Every RocksDB call runs on the blocking pool: a
//! write stall holds up ingestion, never the QUIC tasks of the same process.
//!
//! Broker faults are classified, because each calls for something different: a transient one
//! is retried with backoff until the deadline, a retention gap is reported at once (waiting
//! cannot bring deleted records back), an impossible offset is reported at once, and a record
//! that cannot become a RocksDB entry is skipped and counted, or stops ingestion, by policy.
//! The log is a trait so the demo can run the same code over an embedded log;
//! [`kafka::KafkaLog`] is the real one.
//!
//! # Layout
//!
//! * `log` — the [`LogSource`] trait, its records, watermarks and read errors.
//! * `position` — where a partition may resume: retention gaps and impossible offsets.
//! * `catch_up` — the loop that reads and applies batches, with `backoff` timing its retries.
//! * `config`, `error` — what a catch-up is told, what it reports, and why it stops short.
//! * `topic` — how a store version's change-log topic is named.
//! * [`kafka`], [`local`] — the real log and the demo's embedded one.
//! * [`health`], [`follow`] — the state of followed partitions, and following them all.

mod backoff;
mod catch_up;
mod config;
mod error;
pub mod follow;
pub mod health;
pub mod kafka;
pub mod local;
mod log;
mod position;
#[cfg(test)]
mod tests;
mod topic;

pub use backoff::Backoff;
pub use catch_up::{blocking, catch_up, catch_up_into, stored_offset, Until};
pub use config::{BadRecordPolicy, CatchUpConfig, CatchUpReport};
pub use error::CatchUpError;
pub use health::{IngestState, IngestStats};
pub use log::{Fetched, LogError, LogRecord, LogSource, Watermarks};
pub use position::{check_position, next_offset};
pub use topic::{topic, TopicTemplate};
