//! The filesystem under a partition: how much room is left, whether an error means it is
//! full, and making directory entries durable. Plain facts about the disk, for whoever
//! writes there (a fetch's temp dirs, its commit, the sweep).

use std::path::Path;

/// Bytes an unprivileged writer may still put on the filesystem holding `dir`.
pub fn available(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("path with a NUL byte"))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `path` is a valid C string and `st` points to writable memory of the right type.
    let rc = unsafe { libc::statvfs(path.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs succeeded, so it filled `st`.
    let st = unsafe { st.assume_init() };
    // The field types differ between platforms (u32 on some 32-bit ones).
    #[allow(clippy::unnecessary_cast)]
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// True for the errors of a full filesystem or an exhausted quota.
pub fn is_full(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
}

/// fsync of a directory, so the entries in it (new files, a rename) are durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// True when `dir` has no entries.
pub fn is_empty_dir(dir: &Path) -> std::io::Result<bool> {
    Ok(std::fs::read_dir(dir)?.next().is_none())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_space_is_read_and_a_full_disk_recognised() {
        let dir = tempfile::tempdir().unwrap();
        assert!(available(dir.path()).unwrap() > 0);
        assert!(available(&dir.path().join("missing")).is_err());
        assert!(is_full(&std::io::Error::from_raw_os_error(libc::ENOSPC)));
        assert!(is_full(&std::io::Error::from_raw_os_error(libc::EDQUOT)));
        assert!(!is_full(&std::io::Error::from_raw_os_error(libc::EACCES)));
        assert!(is_empty_dir(dir.path()).unwrap());
        std::fs::write(dir.path().join("f"), b"1").unwrap();
        assert!(!is_empty_dir(dir.path()).unwrap());
        sync_dir(dir.path()).unwrap();
    }
}
