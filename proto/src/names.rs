//! Validation of every name that comes off the wire and ends up in a path.
//!
//! A store name becomes a directory and a file name becomes a file: both are checked against
//! a safe character set and length, so `../`, absolute paths, NUL bytes and the like never
//! reach the filesystem.

/// Longest store name accepted.
pub const MAX_STORE_LEN: usize = 128;
/// Longest file name accepted.
pub const MAX_FILE_NAME_LEN: usize = 255;

/// Most characters of a peer's free text (a reject reason, an abort reason) kept for logs and
/// reports.
pub const MAX_PEER_TEXT: usize = 200;

/// A peer's free text as it may be logged and reported: control and other unprintable
/// characters escaped, cut after [`MAX_PEER_TEXT`] characters with the length it had. A peer
/// cannot forge log lines or fill a report.
pub fn peer_text(text: &str) -> String {
    let mut out = String::new();
    for (n, c) in text.chars().enumerate() {
        if n == MAX_PEER_TEXT {
            out.push_str(&format!("… ({} bytes)", text.len()));
            break;
        }
        if c.is_control() || c == '\\' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Empty name.
    #[error("empty name")]
    Empty,
    /// Longer than allowed.
    #[error("name of {len} bytes is longer than {max}")]
    TooLong {
        /// Length seen.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// A character outside the safe set (path separators among them).
    #[error("name {0:?} has a character outside [A-Za-z0-9._-]")]
    BadChar(String),
    /// `.` or `..`, or a name starting with a dot.
    #[error("name {0:?} is a relative path component or hidden")]
    Dotted(String),
}

fn check(name: &str, max: usize) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > max {
        return Err(NameError::TooLong {
            len: name.len(),
            max,
        });
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(NameError::BadChar(name.chars().take(64).collect()));
    }
    if name.starts_with('.') {
        return Err(NameError::Dotted(name.to_owned()));
    }
    Ok(())
}

/// A store name: `[A-Za-z0-9._-]`, not starting with a dot, at most [`MAX_STORE_LEN`].
pub fn validate_store(name: &str) -> Result<(), NameError> {
    check(name, MAX_STORE_LEN)
}

/// A file name inside a partition: a single path component from the same safe set.
/// RocksDB's own names (`000012.sst`, `MANIFEST-000005`, `OPTIONS-000007`, `CURRENT`) pass.
pub fn validate_file_name(name: &str) -> Result<(), NameError> {
    check(name, MAX_FILE_NAME_LEN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_text_is_escaped_and_cut() {
        assert_eq!(peer_text("busy"), "busy");
        assert_eq!(
            peer_text("a\nfake line\x1b[31m"),
            "a\\nfake line\\u{1b}[31m"
        );
        let long = "é".repeat(100_000);
        let shown = peer_text(&long);
        assert_eq!(
            shown.chars().count(),
            MAX_PEER_TEXT + " (200000 bytes)".len() + 1
        );
        assert!(shown.ends_with("… (200000 bytes)"), "{shown}");
    }

    #[test]
    fn rocksdb_names_pass() {
        for n in [
            "000012.sst",
            "MANIFEST-000005",
            "OPTIONS-000007",
            "CURRENT",
            "LOG",
        ] {
            validate_file_name(n).unwrap();
        }
        validate_store("user_profiles-2").unwrap();
    }

    #[test]
    fn path_tricks_are_refused() {
        for n in [
            "..",
            ".",
            "../x",
            "a/b",
            "/etc/passwd",
            "a\\b",
            ".hidden",
            "",
            "a\0b",
            "ünï",
        ] {
            assert!(validate_file_name(n).is_err(), "{n:?} accepted");
            assert!(validate_store(n).is_err(), "{n:?} accepted");
        }
        assert!(matches!(
            validate_store(&"x".repeat(MAX_STORE_LEN + 1)),
            Err(NameError::TooLong { .. })
        ));
    }
}
