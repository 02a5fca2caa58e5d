//! The HTTPS side of the baseline: leases snapshots from the shared manager and streams their
//! files, one request per file, with the kernel's congestion control chosen per listener.
//!
//! `listener` runs one; `accept` admits TCP connections (limits before TLS); `drain`
//! watches each response leave the socket; `handlers` answers the manifest, file and
//! metadata requests; `state` is what they share.

mod accept;
mod drain;
mod handlers;
mod listener;
mod state;

pub use listener::HttpServer;
pub use state::{HttpServerConfig, HttpStats};
