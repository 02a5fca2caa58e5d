//! The HTTP/TCP baseline: the same snapshots, served and validated the same way, over
//! HTTPS (HTTP/1.1 on TCP, mutual TLS) — the transport quicstrap has to beat.
//!
//! Venice's way: a manifest, then each file one after another on one keep-alive connection,
//! then the metadata. The server shares the QUIC server's [`SnapshotManager`] (same
//! checkpoints, same digests: known ones in the manifest, the rest computed in the read that
//! sends the file and sent after it, as QUIC's trailer) and the client feeds the bodies through the very same
//! receive → validate → commit path as QUIC, so the benchmark compares transports and
//! nothing else. Two knobs come from the TCP world: the kernel's congestion control per socket
//! (`TCP_CONGESTION`: cubic, bbr) and N parallel connections pulling files from one queue
//! (WDT's way).
//!
//! The URLs, fetchable with curl (`--cert`, `--key`, `--cacert` of an allowed client):
//!
//! * `GET /v1/<store>/<version>/<partition>/manifest?checksum=md5|blake3&format=block|plain`
//!   leases a snapshot and answers JSON `{session, files: [{name, size, digest}]}` (hex
//!   digests; empty where the server does not know it yet);
//! * `GET /v1/<store>/<version>/<partition>/files/<name>?session=<session>` is one file, sent
//!   chunked with its hex digest in the [`DIGEST_TRAILER`] trailer field (ask with
//!   `TE: trailers`, as HTTP/1.1 requires; curl: `--raw` shows it);
//! * `GET /v1/<store>/<version>/<partition>/metadata?session=<session>` is the offset and
//!   version state (JSON) and ends the session; an abandoned session ends after the idle
//!   timeout.
//!
//! A refusal is an HTTP status plus an `x-quicstrap-reject` header naming the
//! [`RejectReason`](quicstrap::protocol::RejectReason), so the client maps it onto the same typed
//! errors as QUIC's `Reject`.
//!
//! It is a crate of its own so the engine builds without an HTTP stack: it runs only on
//! what the engine exposes to any transport, the attempt skeleton of
//! [`quicstrap::client::attempts`] and [`quicstrap::snapshot::Snapshot::manifest`]. The CLI
//! assembles it (`serve --http-listen`, `fetch --http`) and [`metrics::register`] adds its
//! counters to a node's registry.
//!
//! [`SnapshotManager`]: quicstrap::snapshot::SnapshotManager

pub mod client;
pub mod metrics;
pub mod server;

use serde::{Deserialize, Serialize};

pub use client::{HttpFetchConfig, HttpFetcher};
pub use server::{HttpServer, HttpServerConfig, HttpStats};

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

/// A TCP congestion controller known to the kernel (`cubic`, `bbr`, ...), set per socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpCongestion(pub String);

impl std::str::FromStr for TcpCongestion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() || s.len() > 15 || !s.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(format!("bad TCP congestion controller name {s:?}"));
        }
        Ok(Self(s.to_owned()))
    }
}

impl std::fmt::Display for TcpCongestion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Sets `TCP_CONGESTION` on a socket: the sender's controller is the one that matters, so
/// the server sets it on every accepted connection.
pub fn set_tcp_congestion(
    sock: &impl std::os::fd::AsRawFd,
    cc: &TcpCongestion,
) -> std::io::Result<()> {
    let name = cc.0.as_bytes();
    // SAFETY: the fd is a live socket owned by `sock`; the buffer outlives the call and its
    // length is passed.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_CONGESTION,
            name.as_ptr().cast(),
            name.len() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
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
    fn congestion_names_are_checked() {
        assert!("bbr".parse::<TcpCongestion>().is_ok());
        assert!("".parse::<TcpCongestion>().is_err());
        assert!("cu/bic".parse::<TcpCongestion>().is_err());
        assert!("a-very-long-congestion-name"
            .parse::<TcpCongestion>()
            .is_err());
    }

    #[test]
    fn query_strings_split() {
        let v: Vec<_> = query_pairs(Some("a=1&b=&c")).collect();
        assert_eq!(v, vec![("a", "1"), ("b", ""), ("c", "")]);
        assert_eq!(query_pairs(None).count(), 0);
    }
}
