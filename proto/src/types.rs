//! Plain types shared by the frames and by both ends: what a partition is made of and how
//! it is checked.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// RocksDB table format of a partition. Peers only exchange partitions of the same format,
/// because SST files of one format cannot be opened with the other's options.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TableFormat {
    /// `BLOCK_BASED_TABLE`, RocksDB's default.
    Block,
    /// `PLAIN_TABLE`, mmap-friendly, for in-memory workloads.
    Plain,
}

impl FromStr for TableFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "block" | "block_based_table" => Ok(Self::Block),
            "plain" | "plain_table" => Ok(Self::Plain),
            other => Err(format!(
                "unknown table format {other:?} (use block or plain)"
            )),
        }
    }
}

impl fmt::Display for TableFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Block => "block",
            Self::Plain => "plain",
        })
    }
}

/// What a store version looks like, stored beside the offset so a receiver knows what it got.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionState {
    /// Table format of every SST in the partition.
    pub table_format: TableFormat,
    /// Free-form producer tag (who wrote the partition), for operators.
    pub producer: String,
}

/// The offset record and store-version state read out of a partition (or a checkpoint of it).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionMeta {
    /// Last Kafka offset whose effect is in the data; `None` when the DB was made by a tool
    /// that does not keep one (such a DB is still served; catch-up then starts at 0).
    pub offset: Option<u64>,
    /// Store-version state, when present.
    pub version_state: Option<VersionState>,
}

/// Digest algorithm for a transfer's manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ChecksumAlgo {
    /// MD5: the reference design's choice; 16-byte digests.
    Md5,
    /// BLAKE3: several times faster per core; 32-byte digests.
    Blake3,
}

impl ChecksumAlgo {
    /// Bytes of one digest. A manifest entry whose digest has another length is refused, so a
    /// peer cannot make a receiver hold (and journal) digests of any size it likes.
    pub const fn digest_len(self) -> usize {
        match self {
            Self::Md5 => 16,
            Self::Blake3 => 32,
        }
    }
}

impl FromStr for ChecksumAlgo {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "md5" => Ok(Self::Md5),
            "blake3" => Ok(Self::Blake3),
            o => Err(format!("unknown checksum {o:?} (use md5 or blake3)")),
        }
    }
}

impl fmt::Display for ChecksumAlgo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Md5 => "md5",
            Self::Blake3 => "blake3",
        })
    }
}

/// Which snapshot a transfer's files come from. A server gives every snapshot it makes a new
/// id (a random per-process part, so a restarted server never reuses one, and a digest of the
/// checkpoint's sequence number and files), and a client resumes only from the very snapshot
/// its files were cut from: files of two snapshots, even of one partition, differ.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SnapshotId(pub [u8; 16]);

impl fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}
