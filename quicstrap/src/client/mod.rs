//! The fetching side: try peers one by one, receive, validate, commit.
//!
//! A [`Fetcher`] owns one QUIC endpoint and keeps one connection per peer (`pool`), reused
//! by every partition fetched from it. Before a fetch it checks every candidate at once
//! ([`connectivity`]); then the fetch machine ([`crate::protocol::fetch`]) decides which
//! peer to ask, whether to resume and how long to pause (`attempts` carries its steps out),
//! each attempt driven by `transfer`: the protocol's client state machine fed from QUIC
//! streams, files received into a temp dir ([`workdir`]: owned by a lock, swept when nothing
//! can use it) and committed atomically ([`commit`]). Every failure names through
//! [`AttemptError::outcome`] the row of the machine's decision table it falls in.

pub mod attempts;
pub mod commit;
mod config;
pub mod connectivity;
pub mod error;
mod fetcher;
mod journal;
mod pool;
pub mod receive;
mod report;
pub mod resume;
pub mod sink;
pub mod space;
mod transfer;
pub mod workdir;

pub use commit::{Receipt, RECEIPT_FILE};
pub(crate) use config::CancelSwitch;
pub use config::FirstByte;
pub use config::{FetchConfig, FetchPolicy, FetchStats, Progress};
pub use error::{AttemptError, Fallback, FetchError, SetupError};
pub use fetcher::Fetcher;
pub use report::{Attempt, FetchReport, NextStep};
pub use transfer::MAX_CONTROL_FRAME;
