//! The typed frames of the protocol. New variants go at the end of an enum: postcard encodes
//! the variant index, so reordering would change the wire format.

use serde::{Deserialize, Serialize};

use crate::types::{ChecksumAlgo, PartitionMeta, SnapshotId, TableFormat};

/// Frames on a control stream, in both directions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlFrame {
    /// Client → server: the partition wanted.
    Request(Request),
    /// Server → client: the transfer will happen; the manifest lists every file.
    Accept(Accept),
    /// Server → client: the transfer will not happen, and why (the client tries another peer).
    Reject(Reject),
    /// Server → client, after every file stream is finished: offset and version state. Up to
    /// version 2 only: since version 3 `Accept` carries them, and a client refuses this
    /// frame. Kept so the variants after it keep their wire index.
    Metadata(PartitionMeta),
    /// Server → client: nothing more will come for this transfer.
    Complete,
    /// Client → server: everything validated and committed; the snapshot can be released.
    Done,
    /// Client → server: the client gave up (validation failure, cancel); release everything.
    Abort {
        /// Human-readable reason, for the server's log.
        reason: String,
    },
    /// Server → client, before `Accept`, while the snapshot is made: "still working".
    /// Without it a slow checkpoint of a large partition on a busy disk would look like a
    /// dead peer, and a dead peer could only be told from a slow one by the partition timeout.
    Preparing,
    /// Client → server: the client stops this attempt but keeps what it received and will
    /// come back to resume it (a stall, a lost path): the server keeps the snapshot for its
    /// resume window instead of releasing it as after `Abort`. Since protocol version 2.
    Suspend {
        /// Human-readable reason, for the server's log.
        reason: String,
    },
}

impl ControlFrame {
    /// The variant's name, for logs and refusals (without the payload, which may be large).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Request(_) => "Request",
            Self::Accept(_) => "Accept",
            Self::Reject(_) => "Reject",
            Self::Metadata(_) => "Metadata",
            Self::Complete => "Complete",
            Self::Done => "Done",
            Self::Abort { .. } => "Abort",
            Self::Preparing => "Preparing",
            Self::Suspend { .. } => "Suspend",
        }
    }
}

/// The client's ask. `version` comes first so a future layout can still be recognised.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Protocol version spoken by the client ([`crate::PROTOCOL_VERSION`]).
    pub version: u16,
    /// Client-chosen id, unique on its connection, that file streams carry to find their
    /// transfer: chosen by the client so that a file stream arriving before `Accept` is
    /// still routed.
    pub transfer_id: u64,
    /// Store name.
    pub store: String,
    /// Store version.
    pub store_version: u32,
    /// Partition number.
    pub partition: u32,
    /// Table format the client can open.
    pub table_format: TableFormat,
    /// Checksum the client wants in the manifest.
    pub checksum: ChecksumAlgo,
    /// Set when the client holds part of an earlier transfer of this partition from this
    /// peer: only the listed files are wanted, each from its offset. Since version 2.
    pub resume: Option<Resume>,
}

/// What a client still needs of a snapshot it received part of.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resume {
    /// The snapshot the earlier transfer's `Accept` named; a server that no longer has it
    /// answers [`RejectReason::SnapshotGone`].
    pub snapshot: SnapshotId,
    /// The files still needed, by ascending manifest index, each with the bytes the client
    /// already holds (0 for a file never started). Every other file is already validated.
    pub files: Vec<FileStart>,
}

/// A manifest file and the byte its stream starts at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FileStart {
    /// Index into the `Accept` manifest.
    pub index: u32,
    /// Bytes of the file the client already has; the stream carries the rest.
    pub offset: u64,
}

/// A positive answer: the files that will arrive, each on its own stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accept {
    /// Every file of the snapshot (also when resuming: the client checks it is the manifest
    /// it holds part of).
    pub files: Vec<FileEntry>,
    /// The snapshot the files come from, for a later resume. Since version 2.
    pub snapshot: SnapshotId,
    /// The snapshot's offset and version state, known before any file is sent: a client
    /// whose log cannot continue from this offset says so before the first byte, not after
    /// the last. Since version 3.
    pub meta: PartitionMeta,
}

/// One file of a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Plain file name (no directories), checked by [`crate::names::validate_file_name`].
    pub name: String,
    /// Exact size in bytes.
    pub size: u64,
    /// Digest of the content with the requested algorithm, when the server already knows it
    /// (cached from an earlier snapshot of the same SST file, or computed while sending it
    /// before); empty when it does not, and the file's [`FileTrailer`] brings it. Waiting for
    /// every digest before `Accept` would hold the first byte back by a full read of the
    /// partition. On the wire raw bytes; in JSON (journals, reports, the HTTPS baseline) a
    /// hex string, not a list of numbers.
    #[serde(with = "digest_text")]
    pub digest: Vec<u8>,
}

impl FileEntry {
    /// True when the manifest already gave this file's digest.
    pub fn digest_known(&self) -> bool {
        !self.digest.is_empty()
    }
}

/// A digest as raw bytes in binary formats and as hex in human-readable ones. Reads the older
/// list of numbers too, so journals written before stay resumable.
mod digest_text {
    use serde::de::{Error, SeqAccess, Visitor};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub(super) fn serialize<S: Serializer>(digest: &Vec<u8>, s: S) -> Result<S::Ok, S::Error> {
        if !s.is_human_readable() {
            return digest.serialize(s);
        }
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        s.serialize_str(&hex)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        if !d.is_human_readable() {
            return Vec::<u8>::deserialize(d);
        }
        d.deserialize_any(Text)
    }

    struct Text;

    impl<'de> Visitor<'de> for Text {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a hex digest")
        }

        fn visit_str<E: Error>(self, v: &str) -> Result<Vec<u8>, E> {
            if v.len() % 2 != 0 {
                return Err(E::custom("odd hex length"));
            }
            (0..v.len())
                .step_by(2)
                .map(|i| {
                    v.get(i..i + 2)
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                        .ok_or_else(|| E::custom("not hex"))
                })
                .collect()
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let mut out = Vec::new();
            while let Some(b) = seq.next_element::<u8>()? {
                out.push(b);
            }
            Ok(out)
        }
    }
}

/// A refusal, typed so the client knows what to do next (every reason means "next peer").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reject {
    /// Why.
    pub reason: RejectReason,
    /// Detail for logs.
    pub message: String,
}

/// Why a server refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RejectReason {
    /// The server has no such partition.
    NotFound,
    /// Over the concurrent transfer limit (Venice's 429).
    Busy,
    /// The server's partitions use another table format.
    FormatMismatch,
    /// The server speaks another protocol version.
    UnsupportedVersion,
    /// The request is malformed (bad names, duplicate transfer id, ...).
    BadRequest,
    /// The server is shutting down.
    ShuttingDown,
    /// The snapshot could not be made (disk trouble on the server).
    ServerError,
    /// The server holds the partition but its ingestion has stopped (storage error, bad
    /// record, retention gap): its data no longer moves, so another peer is a better source.
    /// Added in protocol version 1 without a bump: an older client cannot decode it and moves
    /// to the next peer, which is what the reason asks for anyway.
    Stale,
    /// A resume asked for a snapshot this server no longer keeps (its resume window passed,
    /// the client gave it up, or the server restarted): the client discards what it kept and
    /// starts afresh. Since version 2.
    SnapshotGone,
    /// The server's operator turned serving this store off: the client asks another peer.
    /// Added in version 3 without a bump, like `Stale`: an older client cannot decode it and
    /// moves to the next peer, which is what the reason asks for anyway.
    Disabled,
    /// The server is draining (finishing the transfers it runs before it stops): it starts
    /// no new one; the client asks another peer and may come back later. Added like
    /// `Disabled`.
    Draining,
    /// The client's certificate is no longer on the server's allow list (the list changed
    /// while the connection stood): another peer may still allow it. Added like `Disabled`.
    NotAllowed,
}

impl RejectReason {
    /// Every reason.
    pub const ALL: [Self; 12] = [
        Self::NotFound,
        Self::Busy,
        Self::FormatMismatch,
        Self::UnsupportedVersion,
        Self::BadRequest,
        Self::ShuttingDown,
        Self::ServerError,
        Self::Stale,
        Self::SnapshotGone,
        Self::Disabled,
        Self::Draining,
        Self::NotAllowed,
    ];

    /// The stable lowercase name, used in reports, metrics and the HTTPS baseline's header.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotFound => "not_found",
            Self::Busy => "busy",
            Self::FormatMismatch => "format_mismatch",
            Self::UnsupportedVersion => "unsupported_version",
            Self::BadRequest => "bad_request",
            Self::ShuttingDown => "shutting_down",
            Self::ServerError => "server_error",
            Self::Stale => "stale",
            Self::SnapshotGone => "snapshot_gone",
            Self::Disabled => "disabled",
            Self::Draining => "draining",
            Self::NotAllowed => "not_allowed",
        }
    }
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not one of [`RejectReason::as_str`]'s.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown reject reason {0:?}")]
pub struct UnknownReason(pub String);

impl std::str::FromStr for RejectReason {
    type Err = UnknownReason;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownReason(s.to_owned()))
    }
}

/// First frame of a file stream: which transfer and which manifest entry the bytes belong to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileHeader {
    /// The `transfer_id` of the request.
    pub transfer_id: u64,
    /// Index into the `Accept` manifest.
    pub index: u32,
    /// Where in the file the stream's bytes start: 0, or the offset a resume asked for.
    /// Since version 2.
    pub offset: u64,
}

/// Last frame of a file stream, after the file's last byte: the digest of the whole file
/// (from byte 0, also when the stream started at a resume offset), as the server read it while
/// sending. Since version 3.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileTrailer {
    /// Digest with the requested algorithm.
    pub digest: Vec<u8>,
}

/// Largest [`FileTrailer`] frame payload a receiver reads: a 32-byte digest and its length
/// fit with room to spare; anything longer is bytes past the file's announced end.
pub const MAX_TRAILER: usize = 64;

/// Application error codes used to close connections and reset streams.
pub mod codes {
    /// Normal close.
    pub const OK: u32 = 0;
    /// The transfer was aborted; bytes on the stream are no longer wanted.
    pub const ABORTED: u32 = 1;
    /// The peer sent something that does not decode or breaks the protocol.
    pub const PROTOCOL: u32 = 2;
    /// The server is shutting down.
    pub const SHUTTING_DOWN: u32 = 3;
    /// The client was removed from the server's allow list: the connection is closed and every
    /// transfer on it ends.
    pub const REVOKED: u32 = 4;
}
