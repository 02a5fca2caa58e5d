//! Reading a snapshot's file to send it: chunks read ahead on one blocking thread, each put
//! through the file's digest in the same pass when the digest is not known yet, and the digest
//! last. One read serves both the bytes and their digest, so the first byte leaves as soon as
//! the snapshot exists, and no file is read twice. Both transports send from here.

use std::io::{Read, Seek};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::Snapshot;
use crate::store::checksum::{ChecksumAlgo, Hasher};

/// Bytes read from a file at a time. Under glibc's mmap threshold (128 KiB), so a chunk comes
/// from, and goes back to, the allocator's free lists: no fresh pages to fault in and zero per
/// chunk, as a 256 KiB or 1 MiB buffer would get. The transport keeps each chunk until it is
/// acknowledged, so they cannot be reused by hand.
pub const CHUNK: usize = 64 << 10;
/// Chunks a file's reader may have ready ahead of its sender: the disk keeps going while the
/// sender waits for flow control or pacing.
const READ_AHEAD: usize = 2;
/// Most bytes of one file in flight held outside the transport: the chunks read ahead, the
/// one being read and the one being written.
pub const HELD_PER_FILE: u64 = (READ_AHEAD + 2) as u64 * CHUNK as u64;

/// What a file's reader hands its sender, in order: the file's bytes, then its digest.
#[derive(Debug)]
pub enum Piece {
    /// The next bytes of the file.
    Data(Bytes),
    /// The digest of the whole file (from byte 0), after its last byte: known before, or
    /// computed in this read.
    Digest(Vec<u8>),
}

/// A file's digest while it is read: known already, or computed from the bytes read.
enum Digesting {
    Known(Vec<u8>),
    Computing(Hasher),
}

impl Snapshot {
    /// Reads file `index` from byte `offset` to its listed size on one blocking thread, a few
    /// chunks ahead of whoever takes them, then hands out its digest for `algo`. Each chunk is
    /// read into fresh uninitialised capacity (`read_to_end`), so nothing is zeroed first.
    /// When the digest is not known, the bytes before `offset` (a resume) are read into it
    /// first, and the digest computed is remembered for later requests. The reader stops once
    /// the receiver is dropped (the stream failed or was reset); a file shorter than listed
    /// ends in an `UnexpectedEof` error, never in a short read.
    pub fn read_file(
        self: &Arc<Self>,
        index: usize,
        offset: u64,
        algo: ChecksumAlgo,
    ) -> mpsc::Receiver<std::io::Result<Piece>> {
        let (tx, rx) = mpsc::channel(READ_AHEAD);
        let snap = self.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = snap.read_into(index, offset, algo, &tx) {
                let _ = tx.blocking_send(Err(e));
            }
        });
        rx
    }

    fn read_into(
        &self,
        index: usize,
        offset: u64,
        algo: ChecksumAlgo,
        tx: &mpsc::Sender<std::io::Result<Piece>>,
    ) -> std::io::Result<()> {
        let file = self
            .files
            .get(index)
            .ok_or_else(|| std::io::Error::other(format!("no file {index} in the snapshot")))?;
        let path = self.dir.join(&file.name);
        let short = || {
            std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("{} shorter than its manifest size", path.display()),
            )
        };
        let mut digest = match self.book.known_digest(algo, index) {
            Some(d) => Digesting::Known(d),
            None => Digesting::Computing(Hasher::new(algo)),
        };
        let mut f = std::fs::File::open(&path)?;
        if let Digesting::Computing(h) = &mut digest {
            if offset > 0 {
                // A resume of a file whose digest was lost with the earlier attempt.
                let mut prefix = (&mut f).take(offset);
                let mut buf = vec![0u8; CHUNK];
                let mut read = 0;
                loop {
                    let n = prefix.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    h.update(&buf[..n]);
                    read += n as u64;
                }
                self.book.count_digested(read);
                if read < offset {
                    return Err(short());
                }
            }
        }
        f.seek(std::io::SeekFrom::Start(offset))?;
        let mut at = offset;
        while at < file.size {
            let want = CHUNK.min((file.size - at) as usize);
            let mut buf = Vec::with_capacity(want);
            (&mut f).take(want as u64).read_to_end(&mut buf)?;
            if buf.is_empty() {
                // The snapshot file shrank under us: never send fewer bytes than listed.
                return Err(short());
            }
            at += buf.len() as u64;
            if let Digesting::Computing(h) = &mut digest {
                h.update(&buf);
                self.book.count_digested(buf.len() as u64);
            }
            if tx.blocking_send(Ok(Piece::Data(Bytes::from(buf)))).is_err() {
                return Ok(()); // Nobody sends this file any more.
            }
        }
        let digest = match digest {
            Digesting::Known(d) => d,
            Digesting::Computing(h) => {
                let d = h.finish();
                self.book.learn(algo, index, d.clone());
                d
            }
        };
        let _ = tx.blocking_send(Ok(Piece::Digest(digest)));
        Ok(())
    }
}
