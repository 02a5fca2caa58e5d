//! Length-prefixed postcard framing with a hard size limit, as a push-style decoder.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Bytes of the length prefix.
pub const LEN_PREFIX: usize = 4;

/// Why bytes did not make a frame. Every variant means "close this stream".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The announced length is over the limit: refused before any of it is buffered.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// Configured limit.
        max: usize,
    },
    /// The payload is not a valid frame of the expected type.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame ({0} bytes pending)")]
    Truncated(usize),
}

/// Encodes one frame: 4-byte big-endian length, then the postcard payload.
pub fn encode<T: Serialize>(frame: &T) -> Vec<u8> {
    // postcard cannot fail on our types (no maps with non-string keys, no unsized data);
    // an error here would be a bug in this crate, not peer input.
    let payload = postcard::to_stdvec(frame).expect("frames always serialize");
    let mut out = Vec::with_capacity(LEN_PREFIX + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&payload);
    out
}

/// Push-style decoder: feed bytes as they arrive, pull whole frames out.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    max_len: usize,
}

impl FrameDecoder {
    /// A decoder that refuses frames over `max_len` payload bytes.
    pub fn new(max_len: usize) -> Self {
        Self {
            buf: Vec::new(),
            max_len,
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes buffered but not yet consumed by a frame.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// How many more bytes the next frame needs before [`Self::next_frame`] can return it; lets a
    /// reader ask the stream for no more than one frame, so bytes after it stay unread.
    pub fn wanted(&self) -> Result<usize, DecodeError> {
        if self.buf.len() < LEN_PREFIX {
            return Ok(LEN_PREFIX - self.buf.len());
        }
        let len = self.announced()?;
        Ok((LEN_PREFIX + len).saturating_sub(self.buf.len()))
    }

    fn announced(&self) -> Result<usize, DecodeError> {
        let mut prefix = [0u8; LEN_PREFIX];
        prefix.copy_from_slice(&self.buf[..LEN_PREFIX]);
        let len = u32::from_be_bytes(prefix) as usize;
        if len > self.max_len {
            return Err(DecodeError::TooLarge {
                len,
                max: self.max_len,
            });
        }
        Ok(len)
    }

    /// The next whole frame, `Ok(None)` when more bytes are needed.
    pub fn next_frame<T: DeserializeOwned>(&mut self) -> Result<Option<T>, DecodeError> {
        match self.next_raw()? {
            None => Ok(None),
            Some(payload) => postcard::from_bytes(&payload)
                .map(Some)
                .map_err(|e| DecodeError::Malformed(e.to_string())),
        }
    }

    /// The next whole frame's payload, undecoded.
    pub fn next_raw(&mut self) -> Result<Option<Vec<u8>>, DecodeError> {
        if self.buf.len() < LEN_PREFIX {
            return Ok(None);
        }
        let len = self.announced()?;
        if self.buf.len() < LEN_PREFIX + len {
            return Ok(None);
        }
        let payload = self.buf[LEN_PREFIX..LEN_PREFIX + len].to_vec();
        self.buf.drain(..LEN_PREFIX + len);
        Ok(Some(payload))
    }

    /// Called at end of stream: an error if a frame was cut short.
    pub fn finish(&self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Truncated(self.buf.len()))
        }
    }
}

/// Reads the protocol version out of a `ControlFrame::Request` payload that may not decode
/// as this build's `Request` (a newer client): the tag and the version lead every layout.
pub fn peek_request_version(payload: &[u8]) -> Option<u16> {
    let (tag, rest) = postcard::take_from_bytes::<u32>(payload).ok()?;
    if tag != 0 {
        return None;
    }
    postcard::take_from_bytes::<u16>(rest).ok().map(|(v, _)| v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::*;

    fn request() -> ControlFrame {
        ControlFrame::Request(Request {
            version: PROTOCOL_VERSION,
            transfer_id: 9,
            store: "s".into(),
            store_version: 1,
            partition: 2,
            table_format: TableFormat::Block,
            checksum: ChecksumAlgo::Md5,
            resume: None,
        })
    }

    #[test]
    fn round_trip_byte_by_byte() {
        let frames = vec![
            request(),
            ControlFrame::Reject(Reject {
                reason: RejectReason::Busy,
                message: "full".into(),
            }),
            ControlFrame::Complete,
        ];
        let bytes: Vec<u8> = frames.iter().flat_map(encode).collect();
        let mut dec = FrameDecoder::new(1024);
        let mut out = Vec::new();
        for b in bytes {
            dec.push(&[b]);
            while let Some(f) = dec.next_frame::<ControlFrame>().unwrap() {
                out.push(f);
            }
        }
        assert_eq!(out, frames);
        dec.finish().unwrap();
    }

    #[test]
    fn oversize_is_refused_before_buffering() {
        let mut dec = FrameDecoder::new(16);
        dec.push(&1_000_000u32.to_be_bytes());
        assert_eq!(
            dec.next_frame::<ControlFrame>(),
            Err(DecodeError::TooLarge {
                len: 1_000_000,
                max: 16
            })
        );
        assert!(dec.wanted().is_err());
    }

    #[test]
    fn garbage_is_malformed_and_truncation_is_seen() {
        let mut dec = FrameDecoder::new(64);
        dec.push(&[0, 0, 0, 3, 0xff, 0xff, 0xff]);
        assert!(matches!(
            dec.next_frame::<ControlFrame>(),
            Err(DecodeError::Malformed(_))
        ));
        let mut dec = FrameDecoder::new(64);
        dec.push(&[0, 0, 0, 9, 1]);
        assert_eq!(dec.next_frame::<ControlFrame>(), Ok(None));
        assert_eq!(dec.finish(), Err(DecodeError::Truncated(5)));
    }

    #[test]
    fn version_is_readable_from_any_request_layout() {
        let bytes = encode(&request());
        assert_eq!(peek_request_version(&bytes[4..]), Some(PROTOCOL_VERSION));
        // A future layout: tag 0, version 7, then fields this build does not know.
        let future = [0u8, 7, 0xff, 0xff, 0x01];
        assert_eq!(peek_request_version(&future), Some(7));
        assert_eq!(
            peek_request_version(&encode(&ControlFrame::Complete)[4..]),
            None
        );
    }

    #[test]
    fn digests_keep_their_wire_encoding() {
        // The hex form is for JSON only: on the wire a digest is the bytes postcard always
        // wrote for a `Vec<u8>`, so peers of either build read each other.
        #[derive(serde::Serialize)]
        struct Plain {
            name: String,
            size: u64,
            digest: Vec<u8>,
        }
        let entry = FileEntry {
            name: "CURRENT".into(),
            size: 16,
            digest: (0..16).collect(),
        };
        let plain = Plain {
            name: entry.name.clone(),
            size: entry.size,
            digest: entry.digest.clone(),
        };
        let wire = postcard::to_stdvec(&entry).unwrap();
        assert_eq!(wire, postcard::to_stdvec(&plain).unwrap());
        assert_eq!(postcard::from_bytes::<FileEntry>(&wire).unwrap(), entry);
    }

    #[test]
    fn wanted_asks_for_exactly_one_frame() {
        let bytes = encode(&ControlFrame::Complete);
        let mut dec = FrameDecoder::new(64);
        assert_eq!(dec.wanted().unwrap(), 4);
        dec.push(&bytes[..4]);
        assert_eq!(dec.wanted().unwrap(), bytes.len() - 4);
    }
}
