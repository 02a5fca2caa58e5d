//! Server-side snapshots: one RocksDB checkpoint per partition, shared and reused.
//!
//! A checkpoint is cheap (hard links) and its digests are computed while its files are sent,
//! once per file and algorithm; a snapshot is reused by every request younger than the TTL,
//! and the SST digests outlive it in the digest cache. A lease counts users; a snapshot that went stale is deleted when its last user
//! leaves, and a periodic sweep deletes stale snapshots nobody uses. The timing rules are pure
//! functions of `now` ([`policy`]) so they are tested without sleeping.
//!
//! # Layout
//!
//! * `manager` — [`SnapshotManager`]: one current snapshot per partition, leased to transfers.
//! * `checkpoint` — one [`Snapshot`]: making the checkpoint, its files and its offset.
//! * `digest` — a snapshot's digests: known ones in the manifest, the rest learned while sent.
//! * `read` — reading a file to send it, digesting it in the same pass ([`Piece`]).
//! * `digest_cache` — SST digests kept across snapshots and restarts (SST files never change).
//! * `cleanup` — taking the root at start, retiring stale snapshots, the periodic sweep.
//! * `source` — where live partitions come from ([`PartitionSource`], [`DataDir`]).
//! * `share` — who a request is from, for the per-client share of users ([`ClientKey`]).
//! * [`policy`] — reuse and collection as pure functions of time.

mod checkpoint;
mod cleanup;
mod digest;
mod digest_cache;
mod manager;
pub mod policy;
mod read;
mod share;
mod source;
#[cfg(test)]
mod tests;

pub use checkpoint::{Snapshot, SnapshotFile};
pub use cleanup::RootError;
pub use manager::{AcquireError, SnapshotConfig, SnapshotLease, SnapshotManager};
pub use read::{Piece, CHUNK, HELD_PER_FILE};
pub use share::ClientKey;
pub use source::{DataDir, Freshness, PartitionSource};
