//! Why the demo failed.

use quicstrap::net::tls::TlsError;
use quicstrap::server::ServerError;
use quicstrap::store::partition::{CompareError, StorageError};
use quicstrap::FetchError;

/// Why the demo failed.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// Local storage trouble.
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    /// Certificates.
    #[error("tls: {0}")]
    Tls(#[from] TlsError),
    /// The fetching side could not be set up.
    #[error("client: {0}")]
    Client(#[from] quicstrap::client::SetupError),
    /// A peer did not start.
    #[error("server: {0}")]
    Server(#[from] ServerError),
    /// The fetch failed.
    #[error("fetch: {0}")]
    Fetch(#[from] FetchError),
    /// The fetched partition differs from the source.
    #[error("verification failed: {0}")]
    Verify(String),
    /// Filesystem trouble.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// This build carries no development certificates to run the demo's peers with.
    #[error(
        "this build has no development PKI (its keys are public, so it is left out by \
         default): build with `--features dev-pki`, as ./scripts/demo.sh does"
    )]
    NoDevPki,
}

impl From<CompareError> for DemoError {
    fn from(e: CompareError) -> Self {
        match e {
            CompareError::Storage(e) => Self::Storage(e),
            differs => Self::Verify(differs.to_string()),
        }
    }
}
