//! quicstrap's wire protocol, sans-IO: typed frames and their encoding, with no sockets in
//! sight.
//!
//! Like `quinn-proto`, this crate holds the protocol without any I/O: the frames and their
//! encoding, and the rules of a transfer as two deterministic state machines
//! ([`transfer::ClientTransfer`], [`transfer::ServerTransfer`]) that take events and `now` in
//! and hand actions out. It can be fuzzed and unit-tested without a network, a clock or
//! RocksDB. The drivers that feed the machines from QUIC streams live in `quicstrap::client`
//! and `quicstrap::server`; the frame I/O over streams in `quicstrap::wire`.
//!
//! # Streams of one partition transfer
//!
//! * **Control stream** (bidirectional, opened by the client): `Request` →
//!   `Accept { manifest, metadata }` or `Reject { reason }`; later, after every file stream
//!   has been finished, `Complete`; the client answers `Done` or `Abort`.
//! * **File streams** (unidirectional, opened by the server, one per file): a [`FileHeader`]
//!   frame naming the transfer and the manifest entry, the raw bytes of the file, then a
//!   [`FileTrailer`] frame with the file's digest, computed by the server in the same read
//!   that sent the bytes.
//!
//! Every frame is a 4-byte big-endian length followed by its postcard encoding, and the
//! decoder refuses lengths over a hard limit before buffering them.

#![warn(missing_docs)]
#![warn(unreachable_pub)]
#![warn(clippy::use_self)]
#![forbid(unsafe_code)]

pub mod codec;
pub mod fetch;
pub mod frame;
pub mod names;
pub mod transfer;
pub mod types;

pub use codec::{encode, DecodeError, FrameDecoder};
pub use frame::*;
pub use types::{ChecksumAlgo, PartitionMeta, SnapshotId, TableFormat, VersionState};

/// Version of the protocol this build speaks; carried as the first field of every `Request`.
///
/// * 1 — the first.
/// * 2 — resume: `Request::resume`, `Accept::snapshot`, `FileHeader::offset`, the `Suspend`
///   frame and the `SnapshotGone` reason. Each side refuses the other version with a typed
///   `UnsupportedVersion` (a version-1 server reads a version-2 request's version and refuses
///   it; a version-2 server peeks at a version-1 request's version and refuses it).
/// * 3 — digest while sending: `Accept` lists digests only where the server already knows
///   them (empty otherwise) and carries the partition's metadata, so a snapshot the log
///   cannot continue is refused before its first byte; every file stream ends with a
///   [`FileTrailer`]; the `Metadata` frame is no longer sent. The `Request` layout is
///   version 2's, so each side reads the other's version and refuses it typed.
pub const PROTOCOL_VERSION: u16 = 3;

/// ALPN identifier: peers that do not speak it fail the TLS handshake.
pub const ALPN: &[u8] = b"quicstrap/1";
