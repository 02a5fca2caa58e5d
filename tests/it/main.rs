//! The integration tests of quicstrap, in one binary: real RocksDB partitions, real QUIC
//! and HTTPS servers on loopback, real processes, a real Kafka broker, an emulated link.
//!
//! One module per subject; `common` holds what they share, including the turns every test
//! takes, since all of them run in this one process at once (see `common` for the rule).

mod common;

mod admission;
mod baseline;
mod bounds;
mod chaos;
mod cli;
mod connectivity;
mod disk;
mod dns;
mod failures;
mod fleet;
mod hostile;
mod kafka;
mod kafka_broker;
mod layout;
mod lifecycle;
mod limits;
mod locality;
mod metrics;
mod migration;
mod ownership;
mod pacing;
mod real_databases;
mod recover;
mod resume;
mod scale;
mod security;
mod transfer;
