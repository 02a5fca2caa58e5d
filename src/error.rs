//! How a command ends when it does not succeed: the exit code and the one line on stderr.

use std::fmt;
use std::process::ExitCode;

use crate::stop;

/// Why a command did not succeed; the variant is the exit code, the text the one line on
/// stderr.
#[derive(Debug)]
pub enum CliError {
    /// Bad arguments, or input or surroundings the command cannot work with (certificates,
    /// a store name, a port in use, a data dir another process serves): exit 2.
    Unusable(String),
    /// The work was tried and did not succeed (every peer failed, catch-up stopped, the
    /// demo's result differs): exit 1.
    Failed(String),
    /// Stopped by a signal with the work kept: a rerun resumes it (exit [`stop::SUSPENDED`]).
    Suspended(String),
    /// The partition does not fit on the disk; what arrived is kept, and a rerun once space
    /// is freed resumes it (exit [`NO_SPACE`]).
    NoSpace(String),
}

/// Exit code of a fetch that stopped for lack of disk space (sysexits' `EX_CANTCREAT`): no
/// retry helps until someone frees space, unlike an ordinary failure.
pub const NO_SPACE: u8 = 73;

impl CliError {
    /// For `map_err`: an error that means the command cannot run as asked.
    pub fn unusable(e: impl fmt::Display) -> Self {
        Self::Unusable(e.to_string())
    }

    /// For `map_err`: an error that means the work failed.
    pub fn failed(e: impl fmt::Display) -> Self {
        Self::Failed(e.to_string())
    }

    /// The line said on stderr (after `quicstrap: `).
    pub fn message(&self) -> &str {
        match self {
            Self::Unusable(m) | Self::Failed(m) | Self::Suspended(m) | Self::NoSpace(m) => m,
        }
    }

    /// The process exit status it stands for.
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(match self {
            Self::Unusable(_) => 2,
            Self::Failed(_) => 1,
            Self::Suspended(_) => stop::SUSPENDED,
            Self::NoSpace(_) => NO_SPACE,
        })
    }
}
