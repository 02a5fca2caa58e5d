//! quicstrap bootstraps a storage node's partition (a RocksDB instance) straight from a peer
//! that already holds it, over QUIC, validated and atomic — instead of replaying its whole
//! history from Kafka.
//!
//! # Layout
//!
//! The modules follow the pipeline a fetch runs, bottom to top:
//!
//! * [`protocol`] — the wire format, sans-IO (its own crate, `quicstrap-proto`, so it can be
//!   fuzzed without the rest): typed frames, length-prefixed postcard, versioned.
//! * [`partition`] — a partition on disk; its offset lives inside the DB, in the same batch as
//!   the data, so a checkpoint carries exactly its own offset.
//! * [`checksum`] — MD5 / BLAKE3, computed while bytes arrive.
//! * [`tls`] — mutual TLS 1.3 and the allow list of who may fetch.
//! * [`transport`] — QUIC endpoints tuned for long fat pipes.
//! * [`congestion`] — the default controller: BBR, guarded against real congestion.
//! * [`budget`] — how much transfer data a process buffers: windows sized to each path,
//!   all of them under one cap.
//! * [`wire`] — frames over QUIC streams.
//! * [`pacing`] — the byte-rate limiter shared by every transfer of a process.
//! * [`throttle`] — adaptive throttling of those limiters from signals of distress.
//! * [`metrics`] — the Prometheus endpoint.
//! * [`snapshot`] — server-side checkpoints: shared, reused within a TTL, digests cached.
//! * [`server`] — the serving peer.
//! * [`peers`] — who to ask, in which order (discovery → selection).
//! * [`client`] — request → receive → validate → commit, peer after peer.
//! * [`ingest`] — catch-up from the partition's change log (Kafka) after a transfer, or from
//!   the beginning when no peer could serve.
//! * [`baseline`] — the HTTP/TCP baseline the benchmark compares against: the same snapshots
//!   and validation over HTTPS.
//! * [`bootstrap`] — the whole job: peer transfer + catch-up, or Kafka alone, with the reason.
//! * [`node`] — a serving node assembled: data dir claimed, partitions following Kafka, QUIC
//!   and HTTPS listeners, adaptive throttle, metrics — what `quicstrap serve` runs.
//! * [`demo`] — the end-to-end demonstration behind `quicstrap demo`, and the seed generator
//!   of test and benchmark partitions ([`demo::seed`]).
//! * [`progress_bar`] — a fetch's progress drawn on a terminal.
//!
//! # Example
//!
//! `examples/embedded.rs` runs a server and fetches a partition in one process.

#![warn(missing_docs)]

pub(crate) mod admission;
pub mod baseline;
pub mod bootstrap;
pub mod budget;
pub mod checksum;
pub mod client;
pub mod congestion;
pub mod demo;
pub mod ingest;
pub mod lock;
pub mod metrics;
pub mod node;
pub mod pacing;
pub mod partition;
pub mod peers;
pub mod progress_bar;
pub mod server;
pub mod snapshot;
pub mod throttle;
pub mod tls;
pub mod transport;
pub mod wire;

pub use quicstrap_proto as protocol;

pub use client::{FetchConfig, FetchError, FetchReport, Fetcher};
pub use partition::{PartitionId, TableFormat};
pub use peers::Peer;
pub use server::{Server, ServerConfig};
