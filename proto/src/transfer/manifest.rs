//! The checks both ends apply to what the other sent before acting on it: a manifest a client
//! will write files from, a request a server will lease a snapshot for. Shared by the QUIC
//! machines and the HTTPS baseline, so the rules exist once.

use std::collections::HashSet;

use crate::frame::{FileEntry, RejectReason, Request};
use crate::names;
use crate::types::{ChecksumAlgo, TableFormat};

/// The file a receiver writes beside the data to record where a partition came from. A
/// manifest naming it would overwrite that record, so no manifest may.
pub const RECEIPT_FILE: &str = "QUICSTRAP-RECEIPT.json";

/// Why a manifest is refused. Each one is a protocol violation by the sender.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// More files than a receiver will track.
    #[error("manifest lists {0} files")]
    TooManyFiles(usize),
    /// A name that could escape the directory, hide, or is otherwise unsafe.
    #[error("manifest file name: {0}")]
    BadName(names::NameError),
    /// The receiver's own file.
    #[error("manifest names {RECEIPT_FILE}")]
    Reserved,
    /// The same name twice: the second would overwrite the first.
    #[error("{0} listed twice")]
    Duplicate(String),
    /// Sizes that add up past `u64`: no real partition, and progress would overflow.
    #[error("manifest sizes overflow")]
    SizeOverflow,
    /// No `CURRENT`: RocksDB could not open the result.
    #[error("manifest has no CURRENT file")]
    NoCurrent,
    /// A digest whose length is not the algorithm's.
    #[error("digest of {file} is {len} bytes, not the {want} of the requested algorithm")]
    DigestLength {
        /// File name.
        file: String,
        /// Length sent.
        len: usize,
        /// Length of the algorithm's digests.
        want: usize,
    },
}

/// A manifest a receiver will act on: at most `max_files` files, safe unique names, digests
/// of `checksum`'s length where given (an empty one comes in the file's trailer), sizes that
/// add up, and a `CURRENT` file.
pub fn check_manifest(
    files: &[FileEntry],
    max_files: usize,
    checksum: ChecksumAlgo,
) -> Result<(), ManifestError> {
    if files.len() > max_files {
        return Err(ManifestError::TooManyFiles(files.len()));
    }
    let mut seen = HashSet::new();
    for f in files {
        names::validate_file_name(&f.name).map_err(ManifestError::BadName)?;
        if f.digest_known() && f.digest.len() != checksum.digest_len() {
            return Err(ManifestError::DigestLength {
                file: f.name.clone(),
                len: f.digest.len(),
                want: checksum.digest_len(),
            });
        }
        if f.name == RECEIPT_FILE {
            return Err(ManifestError::Reserved);
        }
        if !seen.insert(f.name.as_str()) {
            return Err(ManifestError::Duplicate(f.name.clone()));
        }
    }
    if files
        .iter()
        .try_fold(0u64, |a, f| a.checked_add(f.size))
        .is_none()
    {
        return Err(ManifestError::SizeOverflow);
    }
    if !files.iter().any(|f| f.name == "CURRENT") {
        return Err(ManifestError::NoCurrent);
    }
    Ok(())
}

/// Why a file's trailer cannot be believed. Each one is a protocol violation by the sender.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TrailerError {
    /// A digest whose length is not the algorithm's.
    #[error("trailer of {file} is {len} bytes, not the {want} of the requested algorithm")]
    Length {
        /// File name.
        file: String,
        /// Length sent.
        len: usize,
        /// Length of the algorithm's digests.
        want: usize,
    },
    /// The manifest gave one digest and the trailer another: the server contradicts itself.
    #[error("trailer of {0} contradicts its manifest digest")]
    Contradicts(String),
}

/// The digest a received file must match: the manifest's when it gave one, else the
/// trailer's. Both come from the server; the receiver's own digest of the bytes it wrote is
/// compared with the result, so a file is committed only when the two agree.
pub fn expected_digest<'a>(
    entry: &'a FileEntry,
    trailer: &'a [u8],
    checksum: ChecksumAlgo,
) -> Result<&'a [u8], TrailerError> {
    if trailer.len() != checksum.digest_len() {
        return Err(TrailerError::Length {
            file: entry.name.clone(),
            len: trailer.len(),
            want: checksum.digest_len(),
        });
    }
    if entry.digest_known() && entry.digest != trailer {
        return Err(TrailerError::Contradicts(entry.name.clone()));
    }
    Ok(trailer)
}

/// True when `later` lists the same files as `earlier` (names and sizes, in order) and no
/// digest known to both differs: what a resumed transfer's `Accept` must be of the manifest
/// the client holds part of. The server may know more digests the second time (it computed
/// them while sending the first), never other ones.
pub fn same_files(earlier: &[FileEntry], later: &[FileEntry]) -> bool {
    earlier.len() == later.len()
        && earlier.iter().zip(later).all(|(a, b)| {
            a.name == b.name
                && a.size == b.size
                && (!a.digest_known() || !b.digest_known() || a.digest == b.digest)
        })
}

/// What the client holds after a resumed `Accept`: `later`'s entries, with `earlier`'s
/// digests where only `earlier` knew them. Call only after [`same_files`].
pub fn merge_digests(earlier: &[FileEntry], mut later: Vec<FileEntry>) -> Vec<FileEntry> {
    for (a, b) in earlier.iter().zip(later.iter_mut()) {
        if !b.digest_known() {
            b.digest = a.digest.clone();
        }
    }
    later
}

/// A decoded request a server will lease a snapshot for: this protocol version, a safe store
/// name, the table format served here. `Err` is the typed refusal to send.
pub fn check_request(req: &Request, serves: TableFormat) -> Result<(), (RejectReason, String)> {
    if req.version != crate::PROTOCOL_VERSION {
        return Err(unsupported(req.version));
    }
    check_partition(&req.store, req.table_format, serves)
}

/// The part of [`check_request`] that does not depend on the wire: a store name a path can be
/// made of, and the table format served here. The HTTPS baseline, whose requests are URLs,
/// applies it too.
pub fn check_partition(
    store: &str,
    format: TableFormat,
    serves: TableFormat,
) -> Result<(), (RejectReason, String)> {
    if let Err(e) = names::validate_store(store) {
        return Err((RejectReason::BadRequest, format!("store name: {e}")));
    }
    if format != serves {
        return Err((
            RejectReason::FormatMismatch,
            format!("requested {format} but this peer serves {serves}"),
        ));
    }
    Ok(())
}

/// The refusal of a request in another protocol version.
pub(crate) fn unsupported(version: u16) -> (RejectReason, String) {
    (
        RejectReason::UnsupportedVersion,
        format!(
            "protocol version {version} not supported (this peer speaks {})",
            crate::PROTOCOL_VERSION
        ),
    )
}
