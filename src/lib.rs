//! quicstrap bootstraps a storage node's partition (a RocksDB instance) straight from a peer
//! that already holds it, over QUIC, validated and atomic — instead of replaying its whole
//! history from Kafka.
//!
//! # Layout
//!
//! The rules of a transfer live in [`protocol`] (the `quicstrap-proto` crate, sans-IO): typed
//! frames and their codec, and the transfer as two deterministic state machines
//! ([`protocol::transfer::ClientTransfer`], [`protocol::transfer::ServerTransfer`]) that take
//! events and `now` in and hand actions out. This crate drives them over QUIC and RocksDB.
//!
//! A fetch runs, in order:
//!
//! * discovery — [`peers`] (who to ask: static lists or DNS, shuffled);
//! * connectivity — [`client::connectivity`] (a handshake with every candidate at once, cached);
//! * request — [`client`]'s `transfer` module (the client machine's driver) over [`wire`]
//!   (frames on QUIC streams), on connections of [`transport`] tuned for long fat pipes with
//!   [`congestion`] control and [`tls`] (mutual TLS 1.3, the allow list);
//! * receive — `client::receive` (one task per file stream, digest while writing, paced by
//!   [`pacing`], buffered within [`budget`]);
//! * validate — sizes and [`checksum`]s against the manifest, the manifest against the
//!   protocol's rules;
//! * commit — [`client::commit`] (fsync, receipt, one atomic rename) of a [`partition`], whose
//!   offset lives inside the DB in the same batch as the data; an interrupted attempt instead
//!   keeps its files and a journal ([`client::resume`]) and the next asks the same peer for
//!   the rest;
//! * catch-up — [`ingest`] (the partition's change log, Kafka, from the snapshot's offset).
//!
//! [`bootstrap`] runs the whole job: peer transfer + catch-up, or Kafka alone, with the reason.
//!
//! The serving side: [`server`] (accept, request, push: the server machine's driver),
//! [`snapshot`] (checkpoints shared within a TTL, digests cached), [`throttle`] (adaptive rate
//! limits from signals of distress), [`metrics`] (Prometheus), and [`node`] (a serving node
//! assembled, what `quicstrap serve` runs). [`baseline`] is the HTTP/TCP baseline the
//! benchmarks compare against: the same snapshots and the same rules over HTTPS. [`demo`] is
//! `quicstrap demo` and the seed generator of test partitions; [`progress_bar`] draws a
//! fetch's progress; [`lock`] owns directories and takes mutexes.
//!
//! # Invariants
//!
//! `docs/design.md` states each with the tests that guard it; the code cites them by name:
//!
//! * *zero partial state* — a failed or cancelled fetch leaves no partition, no open handle,
//!   no temp dir but what resume keeps (with its journal, never trusted unchecked), and an
//!   existing partition is never touched;
//! * *metadata after files* — the offset is applied only after every manifest file arrived
//!   and passed its digest, and the partition appears by one rename or not at all;
//! * *offset never ahead of data* — the offset shipped with a snapshot is the one inside it;
//! * *catch-up always follows* — after a transfer, catch-up runs from the snapshot's offset;
//! * *bad input never crashes a peer* — malformed frames, wrong versions, oversize or hostile
//!   manifests get a typed refusal or error, never a panic.
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
