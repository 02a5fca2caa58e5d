//! quicstrap's wire protocol, sans-IO: typed frames and their encoding, with no sockets in
//! sight.
//!
//! Like `quinn-proto`, this crate only turns bytes into frames and frames into bytes, so it
//! can be fuzzed and unit-tested without a network (and without RocksDB). The QUIC glue that
//! moves these bytes lives in `quicstrap::wire`.
//!
//! # Streams of one partition transfer
//!
//! * **Control stream** (bidirectional, opened by the client): `Request` →
//!   `Accept { manifest }` or `Reject { reason }`; later, after every file stream has been
//!   finished, `Metadata` then `Complete`; the client answers `Done` or `Abort`.
//! * **File streams** (unidirectional, opened by the server, one per file): a [`FileHeader`]
//!   frame naming the transfer and the manifest entry, then the raw bytes of the file.
//!
//! Every frame is a 4-byte big-endian length followed by its postcard encoding, and the
//! decoder refuses lengths over a hard limit before buffering them.

#![warn(missing_docs)]

pub mod codec;
pub mod frame;
pub mod names;
pub mod types;

pub use codec::{encode, DecodeError, FrameDecoder};
pub use frame::*;
pub use types::{ChecksumAlgo, PartitionMeta, TableFormat, VersionState};

/// Version of the protocol this build speaks; carried as the first field of every `Request`.
pub const PROTOCOL_VERSION: u16 = 1;

/// ALPN identifier: peers that do not speak it fail the TLS handshake.
pub const ALPN: &[u8] = b"quicstrap/1";
