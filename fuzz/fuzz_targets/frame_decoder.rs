//! Feeds arbitrary bytes, split at arbitrary points, to the frame decoder as every frame type
//! a peer can send. Nothing may panic, and nothing may be buffered past the size limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quicstrap_proto::codec::peek_request_version;
use quicstrap_proto::{encode, names, ControlFrame, FileHeader, FileTrailer, FrameDecoder, MAX_TRAILER};

const LIMIT: usize = 1 << 16;

fuzz_target!(|data: &[u8]| {
    let split = data.first().map(|b| *b as usize).unwrap_or(0).min(data.len());
    let mut dec = FrameDecoder::new(LIMIT);
    dec.push(&data[..split]);
    let _ = dec.next_frame::<ControlFrame>();
    dec.push(&data[split..]);
    while let Ok(Some(frame)) = dec.next_frame::<ControlFrame>() {
        // Whatever decodes re-encodes to something that decodes to the same frame.
        let bytes = encode(&frame);
        let mut again = FrameDecoder::new(usize::MAX);
        again.push(&bytes);
        assert_eq!(again.next_frame::<ControlFrame>().ok().flatten(), Some(frame.clone()));
        if let ControlFrame::Request(r) = &frame {
            let _ = names::validate_store(&r.store);
        }
        if let ControlFrame::Accept(a) = &frame {
            for f in &a.files {
                let _ = names::validate_file_name(&f.name);
            }
        }
    }
    assert!(dec.pending() <= data.len());
    let _ = dec.finish();
    let mut hdr = FrameDecoder::new(1024);
    hdr.push(data);
    let _ = hdr.next_frame::<FileHeader>();
    let mut trailer = FrameDecoder::new(MAX_TRAILER);
    trailer.push(data);
    let _ = trailer.next_frame::<FileTrailer>();
    let _ = peek_request_version(data);
});
