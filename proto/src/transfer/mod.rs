//! One partition transfer as two deterministic state machines, one per side.
//!
//! The rules of a transfer — which frame may come when, what a manifest must look like, how
//! long a side waits before it gives up, what the server sends in which order — live here and
//! nowhere else. The machines own no socket, no task and no clock: a driver (quicstrap's QUIC
//! client and server) feeds them events as its streams deliver them, with the `now` it read,
//! and carries out the actions they ask for. Like `quinn-proto`, that makes every rule testable
//! with simulated time and fuzzable with arbitrary event sequences.
//!
//! * [`ClientTransfer`]: request → `Accept` or `Reject` (skipping `Preparing` heartbeats) →
//!   one file stream per manifest entry, each ending in its digest trailer → `Complete` →
//!   commit → `Done` or `Abort`.
//! * [`ServerTransfer`]: request validation (with the version peek for requests it cannot
//!   decode) → lease → `Preparing` heartbeats while the snapshot is made → `Accept` → file
//!   pushes, digesting as they read → `Complete` once every byte is acknowledged → wait for
//!   `Done`.
//!
//! A transfer may resume an earlier one from the same peer ([`ResumeFrom`]): the request
//! names the snapshot and the files still needed, each from an offset; the server checks the
//! list ([`check_resume`]) and pushes only those ([`push_plan`]), or refuses with
//! `SnapshotGone` when the snapshot is no longer kept.
//!
//! Both pull style: after an event, drain [`ClientTransfer::poll_action`] (or the server's),
//! and wake for [`ClientTransfer::poll_timeout`] to call `handle_timeout`.

mod client;
mod manifest;
mod resume;
#[cfg(any(test, feature = "script"))]
pub mod script;
mod server;

pub use client::{
    ClientAction, ClientFailure, ClientLimits, ClientTransfer, MAX_FILES, MAX_FILES_IN_FLIGHT,
    MAX_PREPARE,
};
pub use manifest::{
    check_manifest, check_partition, check_request, expected_digest, merge_digests, same_files,
    ManifestError, TrailerError, RECEIPT_FILE,
};
pub use resume::{check_resume, push_plan, ResumeFrom};
pub use server::{heartbeat_interval, ServerAction, ServerEnd, ServerLimits, ServerTransfer};

#[cfg(test)]
mod tests;
