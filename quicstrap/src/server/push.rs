//! Sending a snapshot's files: one stream per file, a bounded number at once, each read ahead
//! in chunks by one blocking thread per file (digesting as it reads) and paced by the shared
//! write limiter; each stream ends with the file's digest trailer. A stream cut off before its
//! last byte was acknowledged is reset, never finished short.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{watch, Semaphore};

use crate::control::pacing::RateLimiter;
use crate::net::wire::write_frame;
use crate::protocol::{codes, FileHeader, FileStart, FileTrailer};
use crate::snapshot::{Piece, Snapshot};
use crate::store::checksum::ChecksumAlgo;

use super::shared::Shared;
use super::ServerStats;
use crate::protocol::transfer::ServerEnd;

/// What a transfer's sends wait for and how its streams end if cut off.
pub(super) struct Pace {
    /// The process's write limit.
    pub(super) process: Arc<RateLimiter>,
    /// Where the store's own write limit is looked up, per chunk: a limit set while the
    /// transfer runs (a reload, `admin limit --store`) holds for it at once.
    pub(super) live: Arc<super::LivePolicy>,
    /// The store sent.
    pub(super) store: String,
    /// Set when the allow list dropped the client: cut-off streams say `REVOKED`.
    pub(super) revoked: watch::Receiver<bool>,
}

/// Sends the files of `plan` (each from its offset) on their own streams, at most
/// `files_in_flight` at once, and returns once the client has acknowledged every byte of
/// every one.
pub(super) async fn push_files(
    conn: &quinn::Connection,
    (transfer_id, algo): (u64, ChecksumAlgo),
    snap: &Arc<Snapshot>,
    plan: Vec<FileStart>,
    shared: &Shared,
    sent: Arc<AtomicU64>,
    pace: Pace,
) -> Result<(), ServerEnd> {
    let slots = Arc::new(Semaphore::new(shared.files_in_flight()));
    let mut tasks = tokio::task::JoinSet::new();
    for FileStart { index, offset } in plan {
        // The machine checked the plan against this very manifest.
        let size = snap
            .files
            .get(index as usize)
            .ok_or_else(|| ServerEnd::Protocol(format!("no file {index}")))?
            .size;
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
        let snap = snap.clone();
        let stats = shared.stats.clone();
        let limiters = (
            pace.process.clone(),
            (pace.live.clone(), pace.store.clone()),
        );
        let sent = sent.clone();
        let shutdown = shared.shutdown.clone();
        let revoked = pace.revoked.clone();
        tasks.spawn(async move {
            let stream = conn
                .open_uni()
                .await
                .map_err(|e| ServerEnd::StreamLost(e.to_string()))?;
            let mut guard = ResetOnDrop {
                stream: Some(stream),
                shutdown,
                revoked,
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
            let pieces = snap.read_file(index as usize, offset, algo);
            send_file(stream, pieces, (offset, size), &stats, &limiters, &sent).await?;
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
/// server is stopping (the client then moves on at once, typed), `REVOKED` when the client was
/// taken off the allow list, `ABORTED` otherwise.
struct ResetOnDrop {
    stream: Option<quinn::SendStream>,
    shutdown: watch::Receiver<bool>,
    revoked: watch::Receiver<bool>,
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
            let code = if *self.revoked.borrow() {
                codes::REVOKED
            } else if *self.shutdown.borrow() {
                codes::SHUTTING_DOWN
            } else {
                codes::ABORTED
            };
            let _ = s.reset(code.into());
        }
    }
}

/// Writes the file's bytes from `offset` to `size` as the reader hands them out, then its
/// digest trailer.
async fn send_file(
    stream: &mut quinn::SendStream,
    mut pieces: tokio::sync::mpsc::Receiver<std::io::Result<Piece>>,
    (offset, size): (u64, u64),
    stats: &ServerStats,
    (limiter, (live, store)): &(Arc<RateLimiter>, (Arc<super::LivePolicy>, String)),
    sent_total: &AtomicU64,
) -> Result<(), ServerEnd> {
    let mut sent = offset;
    loop {
        let piece = pieces
            .recv()
            .await
            .ok_or_else(|| ServerEnd::StreamLost("file reader gone".into()))?
            .map_err(|e| ServerEnd::LocalIo(e.to_string()))?;
        let chunk = match piece {
            Piece::Data(chunk) => chunk,
            Piece::Digest(digest) if sent == size => {
                return write_frame(stream, &FileTrailer { digest })
                    .await
                    .map_err(|e| ServerEnd::StreamLost(e.to_string()));
            }
            Piece::Digest(_) => {
                return Err(ServerEnd::LocalIo(format!(
                    "file read ended at byte {sent} of {size}"
                )))
            }
        };
        let n = chunk.len() as u64;
        limiter.acquire(n).await;
        if let Some(own) = live.store_limiter(store) {
            own.acquire(n).await;
        }
        stream
            .write_chunk(chunk)
            .await
            .map_err(|e| ServerEnd::StreamLost(e.to_string()))?;
        sent += n;
        sent_total.fetch_add(n, Ordering::Relaxed);
        stats.bytes_sent.fetch_add(n, Ordering::Relaxed);
    }
}
