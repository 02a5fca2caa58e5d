//! quicstrap bootstraps a storage node's partition (a RocksDB instance) straight from a peer
//! that already holds it, over QUIC, validated and atomic — instead of replaying its whole
//! history from Kafka.
//!
//! # Layout
//!
//! The rules of a transfer live in [`protocol`] (the `quicstrap-proto` crate, sans-IO): typed
//! frames and their codec, and the transfer as two deterministic state machines
//! ([`protocol::transfer::ClientTransfer`], [`protocol::transfer::ServerTransfer`]) that take
//! events and `now` in and hand actions out. This crate drives them over QUIC and RocksDB,
//! grouped by level, each level using only those below it (no file or folder imports one that
//! imports it back):
//!
//! * [`net`] — QUIC endpoints tuned for long fat pipes ([`net::transport`]) with their
//!   [`net::congestion`] control, mutual TLS 1.3 and the allow list ([`net::tls`]), frames on
//!   streams ([`net::wire`]), admission before authentication;
//! * [`store`] — partitions on disk ([`store::partition`], the offset inside the DB in the same
//!   batch as the data), [`store::checksum`]s, the filesystem ([`store::disk`]), and who owns a
//!   directory or a mutex ([`store::lock`]);
//! * [`control`] — how fast and how much: [`control::pacing`], [`control::budget`],
//!   [`control::throttle`] (adaptive rate limits from signals of distress);
//! * the pipeline, below;
//! * [`jobs`] — whole jobs: [`jobs::bootstrap`] (peer transfer + catch-up, or Kafka alone, with
//!   the reason), [`jobs::recover`] (every partition a node is assigned, concurrently, one
//!   progress view and a cancel switch), [`jobs::node`] (a serving node, what `quicstrap serve`
//!   runs).
//!
//! A fetch runs, in order:
//!
//! * discovery — [`peers`] (who to ask: static lists or DNS, ordered by zone, tier and measured speed);
//! * connectivity — [`client::connectivity`] (a handshake with every candidate at once, cached);
//! * request — [`client`]'s `transfer` module (the client machine's driver over QUIC);
//! * receive — [`client::receive`] (one task per file stream, digest while writing, paced,
//!   buffered within the budget);
//! * validate — sizes and digests against the manifest, the manifest against the protocol's
//!   rules;
//! * commit — [`client::commit`] (fsync, receipt, one atomic rename); an interrupted attempt
//!   instead keeps its files and a journal ([`client::resume`]) and the next asks the same peer
//!   for the rest;
//! * catch-up — [`ingest`] (the partition's change log, Kafka, from the snapshot's offset).
//!
//! [`client::attempts`] is the part of a fetch no transport owns — temp dir, receive from any
//! byte source, validate, commit, the fetch machine over the peers — public so that another
//! transport runs on it: the HTTPS baseline the benchmarks compare against is such a crate
//! (`quicstrap-baseline`), which is why this one builds without an HTTP stack.
//!
//! The serving side: [`server`] (accept, request, push: the server machine's driver) over
//! [`snapshot`] (checkpoints shared within a TTL, digests cached), and [`metrics`]
//! (Prometheus). The CLI, the demo and the seed generator of test partitions are crates of
//! their own (`quicstrap-cli`, `testkit`).
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
//! # Embedding in a storage node
//!
//! A node that embeds quicstrap restores its partitions from peers on start, serves them to
//! the peers that need them, and follows Kafka meanwhile. `examples/node.rs` runs steps 1–3
//! and the outcome handling of step 5 against a real broker and a real DNS server (CI runs
//! it); `examples/embedded.rs` is the smallest serve-and-fetch.
//!
//! **1. Keep each partition's offset inside its data.** Keep the layout
//! `<root>/<store>_v<version>/<partition>/` ([`PartitionId::dir`]), open partitions with
//! [`store::partition::open`] (it creates the metadata column family) and apply the change log with
//! [`store::partition::apply_batch`], which writes the records and the offset of the last one in one
//! `WriteBatch`. A snapshot then always carries exactly the offset of the data in it, and a
//! node that crashes mid-batch resumes from an offset that matches what it holds. The catch-up
//! of [`ingest`] does this for Kafka; a node with its own ingestion calls `apply_batch`.
//! RocksDB allows one open handle per partition per process, so open each once and share the
//! `Arc<DB>`.
//!
//! **2. Recover on start, before opening anything.** [`jobs::recover::recover`] takes the
//! partitions the node is assigned, a [`peers::Discovery`] ([`peers::dns::DnsSrv`] for SRV
//! records, or the cluster's own metadata behind the trait) and a function that opens each
//! change log ([`ingest::kafka::KafkaConfig::log`]). It opens and closes each partition itself:
//! one already here is only caught up; one whose transfer was interrupted resumes from the
//! peer it came from; the rest are transferred and caught up, or built from Kafka when the lag
//! is small or no peer can serve. Serve and take reads only once it returns, and publish a
//! partition in discovery only once it is valid, so peers never send others to a partition
//! still recovering. Across datacenters, set the node's zone (`policy.zone` of the
//! [`client::FetchConfig`]) and each peer's ([`peers::Peer::in_zone`], or SRV priorities and
//! [`peers::dns::DnsSrv::with_zone_label`]): peers of the node's zone are asked first
//! ([`peers::order`]), and bytes from other zones pay `policy.remote_read_limiter` too.
//!
//! **3. Then serve and follow.** Open each partition once, keep it following its log
//! ([`ingest::catch_up`] with `Until::Follow`), and hand the same handle to the server through
//! a [`snapshot::PartitionSource`]: [`snapshot::DataDir::insert`] takes DBs the node has open
//! (a `DataDir` also opens directories under its root on demand, which is why it must not run
//! over partitions still being recovered). Implement `PartitionSource` yourself when partitions
//! live elsewhere; return a reason from `stale` for a partition whose ingestion stopped, and
//! peers get a typed refusal instead of old data. [`jobs::node::Node`] does all of this as
//! `quicstrap serve` runs it (following included), and claims the data dir so a second
//! serving process cannot.
//!
//! **4. Metrics, throttling and cancel.** [`jobs::recover::RecoverProgress`] is the live view (valid,
//! failed, receiving, bytes) and the cancel switch: after `cancel()` transfers in flight suspend
//! — what they received stays, journaled, and the peer is told `Suspend` — no Kafka fallback
//! starts, and Kafka work stops within `RecoverConfig::cancel_grace`; every partition is then
//! valid (possibly at an older offset) or absent with its kept files, and a later run resumes
//! them. Call it on SIGTERM: that is what `quicstrap fetch` and `recover` do. `on_done` hears each partition as it ends.
//! Register the fetcher, the server and ingestion with [`metrics`] for Prometheus. Throttle
//! with the fetcher's `policy.read_limiter` and the server's write limiter
//! ([`control::pacing::RateLimiter`], shared by every transfer), or let [`control::throttle::Throttler`] move
//! them with disk and busy signals; `max_partitions` and the buffer caps bound memory whatever
//! the peers do.
//!
//! **5. What each outcome asks of the node.** A single fetch ([`Fetcher::fetch`]) fails with a
//! [`client::Fallback`]: `KafkaFromStart` means no peer could serve — build the partition from
//! Kafka from the beginning (what [`jobs::bootstrap`] does by itself); `None` means no peer or
//! Kafka build helps — the node cancelled, the partition is already there (untouched), or the
//! local disk failed (`FetchError::Local`, or a `local_io` attempt: fix the disk, then retry).
//! Through [`jobs::recover`], a partition's `Err` says the rest: `Bootstrap(CatchUp { .. })` leaves
//! it valid at an older offset (rerun, or follow, once the broker is back); `Log` is a
//! configuration to fix; `Cancelled` is picked up by the next run. A
//! [`jobs::bootstrap::BootstrapPath`] of `KafkaFromEarliest` means retention had removed records
//! the partition needed and no peer could stand in: it lacks whatever only those wrote, and
//! the node should say so to whoever owns the store.
//!
//! # Example
//!
//! `examples/embedded.rs` runs a server and fetches a partition in one process;
//! `examples/node.rs` is the guide above, end to end.

#![warn(missing_docs)]

pub mod client;
pub mod control;
pub mod ingest;
pub mod jobs;
pub mod metrics;
pub mod net;
pub mod peers;
pub mod server;
pub mod snapshot;
pub mod store;

pub use quicstrap_proto as protocol;

pub use client::{FetchConfig, FetchError, FetchReport, Fetcher};
pub use peers::Peer;
pub use server::{Server, ServerConfig};
pub use store::partition::{PartitionId, TableFormat};
