//! What both ends of the baseline agree on over HTTP: the manifest's JSON, the header of a
//! refusal, the trailer of a file's digest, and how query strings split.

use serde::{Deserialize, Serialize};

/// Header carrying the typed reason of a refusal.
pub const REJECT_HEADER: &str = "x-quicstrap-reject";

/// Trailer field carrying a file's hex digest after its body: the HTTPS form of the QUIC
/// file stream's digest trailer.
pub const DIGEST_TRAILER: &str = "x-quicstrap-digest";

/// The manifest as JSON: what curl users and the client see.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    /// Names the leased snapshot in the file and metadata URLs.
    pub session: String,
    /// Every file, with its size and hex digest.
    pub files: Vec<ManifestFile>,
}

/// One file of a [`Manifest`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ManifestFile {
    /// File name inside the snapshot.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Hex digest in the requested algorithm; empty when it comes in the file's trailer.
    pub digest: String,
}

/// Splits a query string into pairs; no percent-decoding is needed for the values used here
/// (names are validated to a safe set).
pub(crate) fn query_pairs(q: Option<&str>) -> impl Iterator<Item = (&str, &str)> {
    q.unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_split() {
        let v: Vec<_> = query_pairs(Some("a=1&b=&c")).collect();
        assert_eq!(v, vec![("a", "1"), ("b", ""), ("c", "")]);
        assert_eq!(query_pairs(None).count(), 0);
    }
}
