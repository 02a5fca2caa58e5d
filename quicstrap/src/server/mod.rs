//! The serving peer: accepts QUIC connections, answers requests, streams snapshot files.
//!
//! `accept` admits connections (limits before any cryptography) and opens one transfer per
//! control stream; `request` drives the protocol's server state machine for it — validate
//! the `Request`, lease a snapshot, heartbeat while digesting, `Accept`, then `Metadata` and
//! `Complete` once the client acknowledged every byte, and wait for `Done`/`Abort` before
//! releasing the snapshot; `push` sends the files, each on its own stream, a bounded number
//! at once. Anything a client sends that is malformed gets a typed `Reject` and that stream is
//! closed; the connection and every other client carry on (docs/design.md, invariant *bad
//! input never crashes a peer*).

mod accept;
mod config;
mod endpoint;
mod live;
mod push;
mod request;
mod shared;
mod status;

pub use config::{ServePolicy, ServerConfig, ServerError, ServerStats};
pub use endpoint::Server;
pub use live::LivePolicy;
pub use request::MAX_REQUEST_FRAME;
pub use status::TransferStatus;
