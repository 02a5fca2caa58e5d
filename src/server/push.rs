//! Sending a snapshot's files: one stream per file, a bounded number at once, each read ahead
//! in chunks by one blocking thread per file and paced by the shared write limiter; a stream
//! cut off before its last byte was acknowledged is reset, never finished short.

use std::io::{Read, Seek};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, watch, Semaphore};

use crate::pacing::RateLimiter;
use crate::protocol::{codes, FileHeader, FileStart};
use crate::wire::write_frame;

use super::{ServerStats, Shared};
use crate::protocol::transfer::ServerEnd;

/// Sends the files of `plan` (each from its offset) on their own streams, at most
/// `files_in_flight` at once, and returns once the client has acknowledged every byte of
/// every one.
pub(super) async fn push_files(
    conn: &quinn::Connection,
    transfer_id: u64,
    snap: &Arc<crate::snapshot::Snapshot>,
    plan: Vec<FileStart>,
    shared: &Shared,
    sent: Arc<AtomicU64>,
) -> Result<(), ServerEnd> {
    let slots = Arc::new(Semaphore::new(shared.files_in_flight()));
    let mut tasks = tokio::task::JoinSet::new();
    for FileStart { index, offset } in plan {
        // The machine checked the plan against this very manifest.
        let file = snap
            .files
            .get(index as usize)
            .ok_or_else(|| ServerEnd::Protocol(format!("no file {index}")))?;
        let permit = slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ServerEnd::StreamLost("slots closed".into()))?;
        // Surface a failure of an earlier file before opening more streams.
        while let Some(done) = tasks.try_join_next() {
            done.map_err(|e| ServerEnd::StreamLost(e.to_string()))??;
        }
        let conn = conn.clone();
        let path = snap.dir.join(&file.name);
        let size = file.size;
        let stats = shared.stats.clone();
        let limiter = shared.cfg.policy.write_limiter.clone();
        let sent = sent.clone();
        let shutdown = shared.shutdown.clone();
        tasks.spawn(async move {
            let stream = conn
                .open_uni()
                .await
                .map_err(|e| ServerEnd::StreamLost(e.to_string()))?;
            let mut guard = ResetOnDrop {
                stream: Some(stream),
                shutdown,
            };
            let stream = guard.stream();
            write_frame(
                stream,
                &FileHeader {
                    transfer_id,
                    index,
                    offset,
                },
            )
            .await
            .map_err(|e| ServerEnd::StreamLost(e.to_string()))?;
            send_file(stream, path, offset, size, &stats, &limiter, &sent).await?;
            stream
                .finish()
                .map_err(|e| ServerEnd::StreamLost(e.to_string()))?;
            drop(permit);
            // Every byte acknowledged by the client (or the client stopped the stream).
            // Still guarded: a transfer ended meanwhile (shutdown, another file failed)
            // resets this stream too, so none of its data stays queued.
            let stopped = guard.stream().stopped().await;
            guard.disarm();
            match stopped {
                Ok(None) => Ok(()),
                // Stopped by the client: whether it gave up or will resume, its control
                // stream says (and the transfer counts as interrupted until it does).
                Ok(Some(code)) => Err(ServerEnd::StreamLost(format!(
                    "file stream stopped with code {code}"
                ))),
                Err(e) => Err(ServerEnd::StreamLost(e.to_string())),
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.map_err(|e| ServerEnd::StreamLost(e.to_string()))??;
    }
    Ok(())
}

/// A file stream that is reset, not finished, when dropped before the client acknowledged its
/// last byte: quinn finishes dropped streams, and a cut-off file must look cut off to the
/// client, never like a short but complete one. The reset says `SHUTTING_DOWN` when the
/// server is stopping (the client then moves on at once, typed), `ABORTED` otherwise.
struct ResetOnDrop {
    stream: Option<quinn::SendStream>,
    shutdown: watch::Receiver<bool>,
}

impl ResetOnDrop {
    fn stream(&mut self) -> &mut quinn::SendStream {
        self.stream.as_mut().expect("stream present until disarmed")
    }

    /// The stream is done with (acknowledged or failed on its own): nothing to reset.
    fn disarm(mut self) {
        self.stream.take();
    }
}

impl Drop for ResetOnDrop {
    fn drop(&mut self) {
        if let Some(s) = self.stream.as_mut() {
            let code = if *self.shutdown.borrow() {
                codes::SHUTTING_DOWN
            } else {
                codes::ABORTED
            };
            let _ = s.reset(code.into());
        }
    }
}

/// Bytes read from a file at a time. Under glibc's mmap threshold (128 KiB), so a chunk comes
/// from, and goes back to, the allocator's free lists: no fresh pages to fault in and zero per
/// chunk, as a 256 KiB or 1 MiB buffer would get. quinn keeps each chunk until it is
/// acknowledged, so they cannot be reused by hand.
const CHUNK: usize = 64 << 10;
/// Chunks a file's reader may have ready ahead of its stream: the disk keeps going while the
/// stream waits for flow control or pacing.
const READ_AHEAD: usize = 2;
/// Most bytes of one file in flight held outside quinn: the chunks read ahead, the one being
/// read and the one being written (256 KiB, what one 256 KiB chunk per file held before the
/// reads moved ahead, so the send budget's reservations are unchanged).
pub(super) const HELD_PER_FILE: u64 = (READ_AHEAD + 2) as u64 * CHUNK as u64;

/// Reads `path` from `offset` to `size` on one blocking thread, `READ_AHEAD` chunks ahead of
/// whoever takes them: one hand-off per file, not one per chunk. Each chunk is read into fresh
/// uninitialised capacity (`read_to_end`), so nothing is zeroed first. The reader stops once
/// the receiver is dropped (the stream failed or was reset); a file shorter than announced
/// ends in an `UnexpectedEof` error, never in a short stream.
fn read_ahead(path: PathBuf, offset: u64, size: u64) -> mpsc::Receiver<std::io::Result<Bytes>> {
    let (tx, rx) = mpsc::channel(READ_AHEAD);
    tokio::task::spawn_blocking(move || {
        let read = |tx: &mpsc::Sender<std::io::Result<Bytes>>| -> std::io::Result<()> {
            let mut f = std::fs::File::open(&path)?;
            f.seek(std::io::SeekFrom::Start(offset))?;
            let mut at = offset;
            while at < size {
                let want = CHUNK.min((size - at) as usize);
                let mut buf = Vec::with_capacity(want);
                (&mut f).take(want as u64).read_to_end(&mut buf)?;
                if buf.is_empty() {
                    // The snapshot file shrank under us: never send fewer bytes than
                    // announced silently.
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("{} shorter than its manifest size", path.display()),
                    ));
                }
                at += buf.len() as u64;
                if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                    break; // Nobody sends this file any more.
                }
            }
            Ok(())
        };
        if let Err(e) = read(&tx) {
            let _ = tx.blocking_send(Err(e));
        }
    });
    rx
}

async fn send_file(
    stream: &mut quinn::SendStream,
    path: PathBuf,
    offset: u64,
    size: u64,
    stats: &ServerStats,
    limiter: &RateLimiter,
    sent_total: &AtomicU64,
) -> Result<(), ServerEnd> {
    let mut chunks = read_ahead(path, offset, size);
    let mut sent = offset;
    while sent < size {
        let chunk = chunks
            .recv()
            .await
            .ok_or_else(|| ServerEnd::StreamLost("file reader gone".into()))?
            .map_err(|e| ServerEnd::LocalIo(e.to_string()))?;
        let n = chunk.len() as u64;
        limiter.acquire(n).await;
        stream
            .write_chunk(chunk)
            .await
            .map_err(|e| ServerEnd::StreamLost(e.to_string()))?;
        sent += n;
        sent_total.fetch_add(n, Ordering::Relaxed);
        stats.bytes_sent.fetch_add(n, Ordering::Relaxed);
    }
    Ok(())
}
