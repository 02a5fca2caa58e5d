//! Room on the disk a partition lands on: checked against the manifest before the first byte,
//! and recognised when the disk fills up anyway (another writer) while bytes arrive.
//!
//! A fetch that cannot fit fails with [`AttemptError::InsufficientSpace`], which keeps what
//! arrived (a resume finishes it once space is freed) and calls for no Kafka fallback: a
//! rebuild from the log would fill the same disk.

use std::path::Path;

use super::error::AttemptError;
use crate::store::disk::available;

/// Least free space left beyond a partition's declared bytes (64 MiB): RocksDB writes a WAL,
/// a LOG and a new MANIFEST when the partition is opened, and catch-up writes memtables and
/// SSTs of its own.
pub const HEADROOM_MIN: u64 = 64 << 20;
/// Free space left beyond a partition's declared bytes, as a share of its size (1/100), when
/// more than [`HEADROOM_MIN`]: a partition's catch-up grows it by a share of its size.
pub const HEADROOM_DIVISOR: u64 = 100;

/// Headroom kept free beside a partition of `total` bytes.
pub fn headroom(total: u64) -> u64 {
    HEADROOM_MIN.max(total / HEADROOM_DIVISOR)
}

/// `Ok` when `needed` more bytes of a partition of `total` bytes fit on the filesystem of
/// `dir` with the headroom to spare.
pub(crate) fn check(dir: &Path, needed: u64, total: u64) -> Result<(), AttemptError> {
    let available = available(dir).map_err(AttemptError::local)?;
    let wanted = needed.saturating_add(headroom(total));
    if available < wanted {
        return Err(AttemptError::InsufficientSpace(format!(
            "{needed} bytes to receive and {} of headroom, {available} free in {}",
            headroom(total),
            dir.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_space_is_read_and_compared() {
        let dir = tempfile::tempdir().unwrap();
        let free = available(dir.path()).unwrap();
        assert!(free > 0);
        check(dir.path(), 0, 0).unwrap();
        let e = check(dir.path(), free, free).unwrap_err();
        assert_eq!(e.label(), "insufficient_space");
        assert_eq!(headroom(1 << 20), HEADROOM_MIN);
        assert_eq!(headroom(100 << 30), (100 << 30) / 100);
    }
}
