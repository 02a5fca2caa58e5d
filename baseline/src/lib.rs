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
mod http;
pub mod metrics;
pub mod server;
mod tcp;

pub use client::{HttpFetchConfig, HttpFetcher};
pub use http::{Manifest, ManifestFile, DIGEST_TRAILER, REJECT_HEADER};
pub use server::{HttpServer, HttpServerConfig, HttpStats};
pub use tcp::{set_tcp_congestion, TcpCongestion};
