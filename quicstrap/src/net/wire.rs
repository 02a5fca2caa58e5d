//! Frames over QUIC streams: the thin I/O layer around [`crate::protocol`].
//!
//! Reads ask the stream for exactly the bytes of one frame (the decoder says how many), so
//! the raw file bytes that follow a file header stay in the stream for the receiver.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::protocol::{encode, DecodeError, FrameDecoder};

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The stream or connection failed while reading.
    #[error("read: {0}")]
    Read(#[from] quinn::ReadError),
    /// The stream or connection failed while writing.
    #[error("write: {0}")]
    Write(#[from] quinn::WriteError),
    /// The bytes do not make a valid frame.
    #[error("decode: {0}")]
    Decode(#[from] DecodeError),
}

/// Reads frames one at a time from a receive stream.
pub struct FrameReader {
    /// The underlying stream; after a header frame it holds the raw payload.
    pub recv: quinn::RecvStream,
    dec: FrameDecoder,
}

impl FrameReader {
    /// Reader refusing frames over `max_len` bytes.
    pub fn new(recv: quinn::RecvStream, max_len: usize) -> Self {
        Self {
            recv,
            dec: FrameDecoder::new(max_len),
        }
    }

    /// The next frame's raw payload; `Ok(None)` at a clean end of stream.
    pub async fn next_raw(&mut self) -> Result<Option<Vec<u8>>, WireError> {
        loop {
            if let Some(p) = self.dec.next_raw()? {
                return Ok(Some(p));
            }
            let want = self.dec.wanted()?;
            let mut buf = vec![0u8; want.min(1 << 20)];
            match self.recv.read(&mut buf).await? {
                None => {
                    self.dec.finish()?;
                    return Ok(None);
                }
                Some(n) => self.dec.push(&buf[..n]),
            }
        }
    }

    /// The next frame; `Ok(None)` at a clean end of stream.
    pub async fn next_frame<T: DeserializeOwned>(&mut self) -> Result<Option<T>, WireError> {
        match self.next_raw().await? {
            None => Ok(None),
            Some(p) => postcard::from_bytes(&p)
                .map(Some)
                .map_err(|e| WireError::Decode(DecodeError::Malformed(e.to_string()))),
        }
    }
}

/// Writes one frame.
pub async fn write_frame<T: Serialize>(
    send: &mut quinn::SendStream,
    frame: &T,
) -> Result<(), WireError> {
    send.write_all(&encode(frame)).await?;
    Ok(())
}

/// Sleeps until a protocol machine's next timeout (`poll_timeout`), the one timer both drivers
/// wait on. `None` — nothing to time right now — is a day away: the driver wakes for its next
/// event long before, and the partition timeout bounds every transfer anyway.
pub(crate) fn sleep_until(at: Option<std::time::Instant>) -> tokio::time::Sleep {
    let at =
        at.unwrap_or_else(|| std::time::Instant::now() + std::time::Duration::from_secs(86_400));
    tokio::time::sleep_until(at.into())
}
