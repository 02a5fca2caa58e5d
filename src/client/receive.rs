//! Receiving one file: bytes go to disk and through the digest in the same pass.
//!
//! No second read of the file is ever needed: the size is checked as bytes arrive (a peer that
//! sends more than announced is cut off at once) and the digest is compared at end of stream.
//! The file is fsynced before it counts as received.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::checksum::{ChecksumAlgo, Hasher};
use crate::pacing::RateLimiter;
use crate::protocol::transfer::MAX_FILES_IN_FLIGHT;
use crate::protocol::{codes, FileEntry};

use super::error::AttemptError;

const BUF: usize = 256 * 1024;
/// Receive buffers one transfer holds outside quinn: one per file in flight, at most
/// [`MAX_FILES_IN_FLIGHT`] (streams a server opens beyond it wait unread).
pub(crate) const RESERVED: u64 = (MAX_FILES_IN_FLIGHT * BUF) as u64;

/// Files one attempt has open for receiving. The attempt's cleanup waits for this to drop to
/// zero before deleting or committing its temp dir, so no handle outlives its directory; only
/// the attempt's own files count, so partitions received at the same time never hold it up.
#[derive(Clone, Debug, Default)]
pub(crate) struct OpenFiles(Arc<AtomicUsize>);

impl OpenFiles {
    /// Files open right now.
    pub(crate) fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// A file counted in its attempt's [`OpenFiles`] for as long as it is open, wherever it is
/// dropped (an aborted task, a blocking fsync).
struct TrackedFile(std::fs::File, OpenFiles);

impl TrackedFile {
    fn new(file: std::fs::File, open: OpenFiles) -> Self {
        open.0.fetch_add(1, Ordering::SeqCst);
        Self(file, open)
    }
}

impl Drop for TrackedFile {
    fn drop(&mut self) {
        self.1 .0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Where a file's bytes come from: a QUIC stream, or an HTTP body for the TCP baseline, so
/// both transports are validated by the very same code.
pub(crate) trait ByteSource {
    /// Reads some bytes into `buf`; `None` at end of file.
    async fn read_some(&mut self, buf: &mut [u8]) -> Result<Option<usize>, AttemptError>;
    /// Tells the sender to stop: it sent more than announced.
    fn cut(&mut self);
}

impl ByteSource for quinn::RecvStream {
    async fn read_some(&mut self, buf: &mut [u8]) -> Result<Option<usize>, AttemptError> {
        self.read(buf)
            .await
            .map_err(|e| AttemptError::from_read(&e))
    }

    fn cut(&mut self) {
        let _ = self.stop(codes::PROTOCOL.into());
    }
}

/// Opens `path` to continue it at byte `offset`: the first `offset` bytes are kept and read
/// back into the digest (so the full-file digest covers them too), anything after them is
/// cut. At offset 0 the file is created, or emptied if a kept dir still holds one.
fn open_at(
    path: &std::path::Path,
    offset: u64,
    algo: ChecksumAlgo,
) -> std::io::Result<(std::fs::File, Hasher)> {
    use std::io::{Read, Seek};
    let mut hasher = Hasher::new(algo);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(offset == 0)
        .open(path)?;
    if offset > 0 {
        file.set_len(offset)?;
        let mut buf = vec![0u8; BUF];
        let mut left = offset;
        while left > 0 {
            let n = file.read(&mut buf[..BUF.min(left as usize)])?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("{} shorter than its resume offset", path.display()),
                ));
            }
            hasher.update(&buf[..n]);
            left -= n as u64;
        }
        file.seek(std::io::SeekFrom::Start(offset))?;
    }
    Ok((file, hasher))
}

/// Receives `entry` from `stream` into `path`, the stream carrying the bytes from `offset` on
/// (the ones before are on disk already); returns the bytes received.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn receive_file(
    mut stream: impl ByteSource,
    path: PathBuf,
    entry: FileEntry,
    offset: u64,
    algo: ChecksumAlgo,
    progress: Arc<AtomicU64>,
    limiter: Arc<RateLimiter>,
    open: OpenFiles,
) -> Result<u64, AttemptError> {
    let (mut file, mut hasher) = if offset == 0 {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(AttemptError::local)?;
        (TrackedFile::new(file, open), Hasher::new(algo))
    } else {
        // Counted while the prefix is read back too: the attempt's cleanup waits for it.
        let at = path.clone();
        tokio::task::spawn_blocking(move || {
            let (file, hasher) = open_at(&at, offset, algo)?;
            Ok::<_, std::io::Error>((TrackedFile::new(file, open), hasher))
        })
        .await
        .map_err(|e| AttemptError::LocalIo(e.to_string()))?
        .map_err(AttemptError::local)?
    };
    let mut buf = vec![0u8; BUF];
    let mut total = offset;
    loop {
        let mut filled = 0;
        let mut eof = false;
        while filled < buf.len() {
            match stream.read_some(&mut buf[filled..]).await? {
                Some(n) => {
                    filled += n;
                    // Progress is every byte as it arrives, not per buffer written: on a
                    // slow share of a slow path, filling one buffer per file can take longer
                    // than the idle timeout, and a transfer that moves must never look idle.
                    progress.fetch_add(n as u64, Ordering::Relaxed);
                }
                None => {
                    eof = true;
                    break;
                }
            }
            if total + filled as u64 > entry.size {
                stream.cut();
                return Err(AttemptError::SizeMismatch {
                    file: entry.name,
                    expected: entry.size,
                    got: total + filled as u64,
                    more: true,
                });
            }
        }
        if filled > 0 {
            hasher.update(&buf[..filled]);
            file.0
                .write_all(&buf[..filled])
                .map_err(AttemptError::local)?;
            total += filled as u64;
            // Pay for these bytes before reading more: with reads paused, QUIC flow control
            // holds the sender back instead of buffers filling up here.
            limiter.acquire(filled as u64).await;
        }
        if eof {
            break;
        }
    }
    if total != entry.size {
        return Err(AttemptError::SizeMismatch {
            file: entry.name,
            expected: entry.size,
            got: total,
            more: false,
        });
    }
    if hasher.finish() != entry.digest {
        return Err(AttemptError::ChecksumMismatch { file: entry.name });
    }
    tokio::task::spawn_blocking(move || {
        crate::throttle::fsync_latency().time(|| file.0.sync_all())
    })
    .await
    .map_err(|e| AttemptError::LocalIo(e.to_string()))?
    .map_err(AttemptError::local)?;
    Ok(total - offset)
}
