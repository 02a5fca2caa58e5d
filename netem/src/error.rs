//! The crate's one error type, so a harness can match on what went wrong (not supported
//! here, bad parameters, a failing `ip` command, an I/O error) without parsing strings.

use std::io;

/// Everything that can go wrong while setting up, running or tearing down the emulator.
#[derive(Debug, thiserror::Error)]
pub enum NetemError {
    /// This machine cannot run the emulator (not root, no `/dev/net/tun`, no `ip netns`).
    #[error("link emulation not supported here: {0}")]
    NotSupported(String),
    /// A parameter, prefix or unit string was rejected before anything was changed.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// A namespace the emulator wanted to create already exists (a leftover, or another
    /// emulator using the same prefix); `cleanup` removes leftovers.
    #[error(
        "network namespace {0} already exists (leftover? run cleanup / `quicstrap-netem down`)"
    )]
    NamespaceExists(String),
    /// An external command (`ip ...`) failed.
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Command {
        /// The command line, for the log.
        cmd: String,
        /// Exit status as printed by the OS.
        status: String,
        /// What the command said on stderr.
        stderr: String,
    },
    /// A system call failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A relay thread stopped because of an error; the link no longer carries packets.
    #[error("relay failed: {0}")]
    Relay(String),
}

impl NetemError {
    /// Wraps the current `errno` with what was being attempted.
    pub(crate) fn last_os(context: impl Into<String>) -> Self {
        NetemError::Io {
            context: context.into(),
            source: io::Error::last_os_error(),
        }
    }

    /// Wraps an I/O error with what was being attempted.
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        NetemError::Io {
            context: context.into(),
            source,
        }
    }
}
