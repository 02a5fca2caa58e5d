//! Server-side snapshots: one RocksDB checkpoint per partition, shared and reused.
//!
//! A checkpoint is cheap (hard links) but its digests are not, so a snapshot is reused by every
//! request younger than the TTL and its digests are computed once, on first need, per
//! algorithm. A lease counts users; a snapshot that went stale is deleted when its last user
//! leaves, and a periodic sweep deletes stale snapshots nobody uses. The timing rules are pure
//! functions of `now` ([`policy`]) so they are tested without sleeping.
//!
//! # Layout
//!
//! * `manager` — [`SnapshotManager`]: one current snapshot per partition, leased to transfers.
//! * `checkpoint` — one [`Snapshot`]: making the checkpoint, its files and its offset.
//! * `digest` — a snapshot's digests: computed once, shared, cancelled when nobody waits.
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
mod share;
mod source;
#[cfg(test)]
mod tests;

pub use checkpoint::{Snapshot, SnapshotFile};
pub use cleanup::RootError;
pub use manager::{AcquireError, SnapshotConfig, SnapshotLease, SnapshotManager};
pub use share::ClientKey;
pub use source::{DataDir, PartitionSource};
