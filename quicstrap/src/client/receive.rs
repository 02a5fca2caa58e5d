//! Receiving one file: bytes go to disk and through the digest in the same pass.
//!
//! No second read of the file is ever needed: the size is checked as bytes arrive (no more than
//! announced is read as file bytes; anything but a digest trailer after them is refused), and
//! the digest is compared at end of stream with the manifest's or, when the manifest had none,
//! the trailer's. The file is fsynced before it counts as received.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::control::pacing::RateLimiter;
use crate::control::throttle::LatencySignal;
use crate::peers::order::ZoneClass;
use crate::peers::Peer;
use crate::protocol::codec::LEN_PREFIX;
use crate::protocol::transfer::{expected_digest, MAX_FILES_IN_FLIGHT};
use crate::protocol::{codes, FileEntry, FileTrailer, FrameDecoder, MAX_TRAILER};
use crate::store::checksum::{ChecksumAlgo, Hasher};

use super::error::AttemptError;
use super::sink::{AlignedBuf, Sink};
use super::FetchPolicy;

/// Bytes of one receive buffer. Two per file in flight (one filling, one on its way to the
/// disk) hold what one 256 KiB buffer held before direct writes.
const BUF: usize = 128 * 1024;
/// Receive buffers one transfer holds outside quinn: two per file in flight (one filling, one
/// being written to the disk), at most [`MAX_FILES_IN_FLIGHT`] files (streams a server opens
/// beyond it wait unread).
pub(crate) const RESERVED: u64 = (MAX_FILES_IN_FLIGHT * 2 * BUF) as u64;

/// Files one attempt has open for receiving. The attempt's cleanup waits for this to drop to
/// zero before deleting or committing its temp dir, so no handle outlives its directory; only
/// the attempt's own files count, so partitions received at the same time never hold it up.
#[derive(Clone, Debug, Default)]
pub struct OpenFiles(Arc<AtomicUsize>);

impl OpenFiles {
    /// Files open right now.
    pub fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// A file counted in its attempt's [`OpenFiles`] for as long as it is open, wherever it is
/// dropped (an aborted task, a blocking fsync).
struct TrackedFile(Sink, OpenFiles);

impl TrackedFile {
    fn new(file: Sink, open: OpenFiles) -> Self {
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
// Implemented by concrete stream types and used through generics only, so the futures'
// `Send` follows from each implementation; no caller names them as trait objects.
#[allow(async_fn_in_trait)]
pub trait ByteSource {
    /// Reads some bytes into `buf`; `None` at end of file.
    async fn read_some(&mut self, buf: &mut [u8]) -> Result<Option<usize>, AttemptError>;
    /// After the file's last byte: the digest trailer, and nothing after it.
    async fn trailer(&mut self) -> Result<Result<Vec<u8>, BadTrailer>, AttemptError>;
    /// Tells the sender to stop: it sent more than announced.
    fn cut(&mut self);
}

/// Why what followed a file's last byte is no trailer.
#[derive(Debug)]
pub enum BadTrailer {
    /// More bytes than a trailer holds: the file is longer than announced.
    More,
    /// No trailer, or one that does not decode.
    Malformed(String),
}

impl ByteSource for quinn::RecvStream {
    async fn read_some(&mut self, buf: &mut [u8]) -> Result<Option<usize>, AttemptError> {
        self.read(buf)
            .await
            .map_err(|e| AttemptError::from_read(&e))
    }

    async fn trailer(&mut self) -> Result<Result<Vec<u8>, BadTrailer>, AttemptError> {
        // The frame and the end of the stream; one byte more is already too many.
        let limit = LEN_PREFIX + MAX_TRAILER;
        let mut buf = [0u8; LEN_PREFIX + MAX_TRAILER + 1];
        let mut filled = 0;
        while let Some(n) = self
            .read(&mut buf[filled..])
            .await
            .map_err(|e| AttemptError::from_read(&e))?
        {
            filled += n;
            if filled > limit {
                return Ok(Err(BadTrailer::More));
            }
        }
        Ok(decode_trailer(&buf[..filled]))
    }

    fn cut(&mut self) {
        let _ = self.stop(codes::PROTOCOL.into());
    }
}

/// The trailer frame that `bytes` must be, exactly.
fn decode_trailer(bytes: &[u8]) -> Result<Vec<u8>, BadTrailer> {
    let mut dec = FrameDecoder::new(MAX_TRAILER);
    dec.push(bytes);
    match dec.next_frame::<FileTrailer>() {
        Ok(Some(t)) if dec.pending() == 0 => Ok(t.digest),
        Ok(Some(_)) | Err(crate::protocol::DecodeError::TooLarge { .. }) => Err(BadTrailer::More),
        Ok(None) => Err(BadTrailer::Malformed(
            "the stream ended without a digest trailer".into(),
        )),
        Err(e) => Err(BadTrailer::Malformed(format!("digest trailer: {e}"))),
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

/// Where an attempt's file bytes land and whom they are reported to: the same for every file
/// of the attempt, cloned into each file's task.
#[derive(Clone, Debug)]
pub struct Landing {
    /// The manifest's digest algorithm.
    pub algo: ChecksumAlgo,
    /// Bytes received in the attempt, counted as they arrive.
    pub progress: Arc<AtomicU64>,
    /// The process's read limit, paid before more is read.
    pub limiter: Arc<RateLimiter>,
    /// The cross-zone read limit, paid as well when the peer is in another zone.
    pub zone_limiter: Option<Arc<RateLimiter>>,
    /// Told how long each file's fsync took, if anyone listens.
    pub fsync_latency: Option<Arc<LatencySignal>>,
    /// The attempt's open files.
    pub open: OpenFiles,
    /// Whether new files are written around the page cache ([`FetchPolicy::direct_io`]).
    pub direct: bool,
}

impl Landing {
    /// The landing of an attempt at `peer` under `policy`, counting into `progress` and
    /// `open`.
    pub fn new(
        policy: &FetchPolicy,
        peer: &Peer,
        progress: Arc<AtomicU64>,
        open: OpenFiles,
    ) -> Self {
        Self {
            algo: policy.checksum,
            progress,
            limiter: policy.read_limiter.clone(),
            zone_limiter: (policy.class(peer) == ZoneClass::Remote)
                .then(|| policy.remote_read_limiter.clone()),
            fsync_latency: policy.fsync_latency.clone(),
            open,
            direct: policy.direct_io,
        }
    }
}

/// Receives `entry` from `stream` into `path`, the stream carrying the bytes from `offset` on
/// (the ones before are on disk already); returns the bytes received.
pub async fn receive_file(
    mut stream: impl ByteSource,
    path: PathBuf,
    entry: FileEntry,
    offset: u64,
    landing: Landing,
) -> Result<u64, AttemptError> {
    let Landing {
        algo,
        progress,
        limiter,
        zone_limiter,
        fsync_latency,
        open,
        direct,
    } = landing;
    let (file, mut hasher) = if offset == 0 {
        let file = Sink::create(&path, direct).map_err(AttemptError::local)?;
        (TrackedFile::new(file, open), Hasher::new(algo))
    } else {
        // Counted while the prefix is read back too: the attempt's cleanup waits for it.
        let at = path.clone();
        tokio::task::spawn_blocking(move || {
            let (file, hasher) = open_at(&at, offset, algo)?;
            let file = Sink::buffered(file, &at, offset);
            Ok::<_, std::io::Error>((TrackedFile::new(file, open), hasher))
        })
        .await
        .map_err(|e| AttemptError::LocalIo(e.to_string()))?
        .map_err(AttemptError::local)?
    };
    // Aligned, so whole buffers can go straight to the disk.
    let mut buf = AlignedBuf::new(BUF);
    let mut disk = Disk::Idle(file, None);
    let mut total = offset;
    // No more than the file's bytes are read as file bytes: its trailer follows them.
    while total < entry.size {
        let want = BUF.min((entry.size - total) as usize);
        let mut filled = 0;
        let mut eof = false;
        while filled < want {
            match stream.read_some(&mut buf[filled..want]).await? {
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
        }
        if filled > 0 {
            hasher.update(&buf[..filled]);
            disk = disk.write(&mut buf, filled).await?;
            total += filled as u64;
            // Pay for these bytes before reading more: with reads paused, QUIC flow control
            // holds the sender back instead of buffers filling up here.
            limiter.acquire(filled as u64).await;
            if let Some(zone) = &zone_limiter {
                zone.acquire(filled as u64).await;
            }
        }
        if eof {
            return Err(AttemptError::SizeMismatch {
                file: entry.name,
                expected: entry.size,
                got: total,
                more: false,
            });
        }
    }
    let trailer = match stream.trailer().await? {
        Ok(digest) => digest,
        Err(BadTrailer::More) => {
            stream.cut();
            return Err(AttemptError::SizeMismatch {
                file: entry.name,
                expected: entry.size,
                got: entry.size + 1,
                more: true,
            });
        }
        Err(BadTrailer::Malformed(m)) => {
            return Err(AttemptError::Protocol(format!("{}: {m}", entry.name)))
        }
    };
    let want = expected_digest(&entry, &trailer, algo)
        .map_err(|e| AttemptError::Protocol(e.to_string()))?;
    if hasher.finish() != want {
        return Err(AttemptError::ChecksumMismatch { file: entry.name });
    }
    let file = disk.settle().await?;
    tokio::task::spawn_blocking(move || match fsync_latency {
        Some(signal) => signal.time(|| file.0.sync_all()),
        None => file.0.sync_all(),
    })
    .await
    .map_err(|e| AttemptError::LocalIo(e.to_string()))?
    .map_err(AttemptError::local)?;
    Ok(total - offset)
}

/// A received file's writes. Through the page cache a write is a copy, done in place; a
/// direct write waits for the device, so it goes to the blocking pool while the next buffer
/// fills, and hands the file and its buffer back when done (two buffers per file at most).
enum Disk {
    /// No write out: the file, and the spare buffer once there is one.
    Idle(TrackedFile, Option<AlignedBuf>),
    /// A direct write on the blocking pool.
    Writing(tokio::task::JoinHandle<(TrackedFile, AlignedBuf, std::io::Result<()>)>),
}

impl Disk {
    /// Writes the first `len` bytes of `buf`; a direct write takes `buf` along and leaves the
    /// spare in its place. A failure of the write before surfaces here.
    async fn write(self, buf: &mut AlignedBuf, len: usize) -> Result<Self, AttemptError> {
        let (mut file, spare) = self.take().await?;
        if !file.0.is_direct() {
            file.0.write(&buf[..len]).map_err(AttemptError::local)?;
            return Ok(Disk::Idle(file, spare));
        }
        let full = std::mem::replace(buf, spare.unwrap_or_else(|| AlignedBuf::new(BUF)));
        Ok(Disk::Writing(tokio::task::spawn_blocking(move || {
            let written = file.0.write(&full[..len]);
            (file, full, written)
        })))
    }

    /// The file once every write is done.
    async fn settle(self) -> Result<TrackedFile, AttemptError> {
        Ok(self.take().await?.0)
    }

    /// Waits for the write out, if any, and takes the file and the spare buffer.
    async fn take(self) -> Result<(TrackedFile, Option<AlignedBuf>), AttemptError> {
        match self {
            Disk::Idle(file, spare) => Ok((file, spare)),
            Disk::Writing(out) => {
                let (file, buf, written) = out
                    .await
                    .map_err(|e| AttemptError::LocalIo(e.to_string()))?;
                written.map_err(AttemptError::local)?;
                Ok((file, Some(buf)))
            }
        }
    }
}
