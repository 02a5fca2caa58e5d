//! Where a received file's bytes are written: straight to the disk (`O_DIRECT`) where the
//! filesystem takes it, through the page cache where it does not.
//!
//! A partition arrives once and is then read through RocksDB's own block cache, so copying it
//! into the page cache first buys nothing and costs three ways: a copy of every byte (a fifth
//! to a half of the receiving side's CPU, more where fresh memory is expensive to touch, as in
//! a VM that hands free pages back to its host), the eviction of the node's cached data by
//! gigabytes nobody reads soon, and a large flush at the end that the commit must wait for.
//! Direct writes put each buffer on the disk as it lands, so the per-file fsync has only
//! metadata left.
//!
//! Direct I/O needs buffers, offsets and lengths aligned to the device's block; [`ALIGN`]
//! covers every common one. Full buffers are written directly; a file's unaligned tail, a
//! resumed file, and every file of a filesystem that refuses `O_DIRECT` (tmpfs on older
//! kernels, some FUSE and network filesystems) go through the page cache as before: the bytes
//! on disk are the same either way.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Alignment of direct writes, in memory and on disk: the largest logical block size of
/// common devices (4 KiB native drives; 512-byte ones divide it).
pub const ALIGN: usize = 4096;

/// A buffer of `len` bytes whose start is [`ALIGN`]-aligned, without `unsafe`: the aligned
/// window of a slightly larger allocation.
pub struct AlignedBuf {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes.
    pub fn new(len: usize) -> Self {
        let storage = vec![0u8; len + ALIGN];
        let start = storage.as_ptr().align_offset(ALIGN);
        Self {
            storage,
            start,
            len,
        }
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.len]
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + self.len]
    }
}

/// A file being received, written from its start (or appended to after a resume's kept
/// prefix).
pub struct Sink {
    file: File,
    path: PathBuf,
    /// Bytes in the file so far: where the next write lands.
    at: u64,
    /// Whether `file` was opened with `O_DIRECT` and still is.
    direct: bool,
}

impl Sink {
    /// Creates (or empties) `path`, for direct writes when `direct` is asked for and the
    /// filesystem takes it.
    pub fn create(path: &Path, direct: bool) -> std::io::Result<Self> {
        let opened = if direct { open_direct(path)? } else { None };
        let direct = opened.is_some();
        let file = match opened {
            Some(file) => file,
            None => create_options().open(path)?,
        };
        Ok(Self {
            direct,
            ..Self::buffered(file, path, 0)
        })
    }

    /// A file already open for buffered writes, positioned at byte `at` (a resume).
    pub fn buffered(file: File, path: &Path, at: u64) -> Self {
        Self {
            file,
            path: path.to_path_buf(),
            at,
            direct: false,
        }
    }

    /// Whether writes still go straight to the disk.
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    /// Appends `bytes`. Directly when they and the position are aligned (the caller's buffer
    /// being an [`AlignedBuf`]); otherwise, and from then on, through the page cache. A
    /// filesystem that accepted `O_DIRECT` at open but refuses the write itself gets the
    /// same bytes again, buffered.
    pub fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if self.direct && !aligned(bytes, self.at) {
            self.reopen_buffered()?;
        }
        if self.direct {
            match self.file.write_all(bytes) {
                Ok(()) => {
                    self.at += bytes.len() as u64;
                    return Ok(());
                }
                // A short direct write leaves the position wherever the kernel got to; the
                // buffered handle starts again from the last whole write, which is on disk.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => self.reopen_buffered()?,
                Err(e) => return Err(e),
            }
        }
        self.file.write_all(bytes)?;
        self.at += bytes.len() as u64;
        Ok(())
    }

    /// Flushes data and metadata to the disk.
    pub fn sync_all(&self) -> std::io::Result<()> {
        self.file.sync_all()
    }

    /// Goes on through the page cache from [`Self::at`]: a new handle without `O_DIRECT`, so
    /// no `fcntl` on a shared descriptor is needed.
    fn reopen_buffered(&mut self) -> std::io::Result<()> {
        let mut file = OpenOptions::new().write(true).open(&self.path)?;
        file.set_len(self.at)?;
        file.seek(SeekFrom::Start(self.at))?;
        self.file = file;
        self.direct = false;
        Ok(())
    }
}

/// Whether a direct write of `bytes` at `offset` meets the alignment rules.
fn aligned(bytes: &[u8], offset: u64) -> bool {
    (bytes.as_ptr() as usize) % ALIGN == 0 && bytes.len() % ALIGN == 0 && offset % ALIGN as u64 == 0
}

/// How a received file is created: for writing, emptied if a kept dir still holds one.
fn create_options() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.write(true).create(true).truncate(true);
    o
}

/// Creates `path` with `O_DIRECT`; `None` when the filesystem refuses the flag.
#[cfg(target_os = "linux")]
fn open_direct(path: &Path) -> std::io::Result<Option<File>> {
    use std::os::unix::fs::OpenOptionsExt;
    match create_options().custom_flags(libc::O_DIRECT).open(path) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Elsewhere there is no `O_DIRECT`: every write is buffered.
#[cfg(not(target_os = "linux"))]
fn open_direct(_path: &Path) -> std::io::Result<Option<File>> {
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The file's bytes are exactly what was written, whichever way each write went: whole
    /// aligned buffers, an unaligned tail, a write after the switch to buffered.
    #[test]
    fn direct_and_buffered_writes_give_the_same_file() {
        let dir = tempfile::tempdir().unwrap();
        let supported = open_direct(&dir.path().join("probe")).unwrap().is_some();
        let mut expect = Vec::new();
        for direct in [true, false] {
            let path = dir.path().join(format!("f{direct}"));
            let mut sink = Sink::create(&path, direct).unwrap();
            let mut buf = AlignedBuf::new(4 * ALIGN);
            expect.clear();
            for round in 0..3u8 {
                buf.iter_mut()
                    .enumerate()
                    .for_each(|(i, b)| *b = (i as u8).wrapping_mul(31) ^ round);
                sink.write(&buf).unwrap();
                expect.extend_from_slice(&buf);
            }
            assert_eq!(
                sink.is_direct(),
                direct && supported,
                "aligned writes stay direct"
            );
            sink.write(&buf[..1000]).unwrap();
            expect.extend_from_slice(&buf[..1000]);
            assert!(!sink.is_direct(), "an unaligned tail is written buffered");
            sink.write(&buf[5..ALIGN + 5]).unwrap();
            expect.extend_from_slice(&buf[5..ALIGN + 5]);
            sink.sync_all().unwrap();
            drop(sink);
            assert_eq!(std::fs::read(&path).unwrap(), expect);
        }
    }

    #[test]
    fn aligned_buffers_start_on_the_boundary() {
        for len in [ALIGN, 64 * ALIGN, 256 * 1024] {
            let b = AlignedBuf::new(len);
            assert_eq!(b.len(), len);
            assert_eq!(b.as_ptr() as usize % ALIGN, 0);
        }
    }
}
