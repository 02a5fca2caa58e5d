//! Where a partition may resume reading its log: the offset after the stored one, checked
//! against the log's watermarks. A retention gap and an offset the log never reached are typed
//! errors before any record is read, because neither is cured by waiting.

use super::{CatchUpError, Watermarks};

/// Kafka offsets are signed 64-bit: anything above this is no log's offset.
const MAX_OFFSET: u64 = i64::MAX as u64;

/// The offset after `have`, or the typed error when `have` is no possible offset.
pub fn next_offset(have: Option<u64>) -> Result<u64, CatchUpError> {
    match have {
        None => Ok(0),
        Some(o) if o < MAX_OFFSET => Ok(o + 1),
        Some(o) => Err(CatchUpError::ImpossibleOffset {
            have: o,
            high_watermark: None,
        }),
    }
}

/// Checks that a partition holding `have` can be caught up from a log holding `wm`: no
/// retention gap before it, not ahead of the log.
pub fn check_position(have: Option<u64>, wm: Watermarks) -> Result<(), CatchUpError> {
    let next = next_offset(have)?;
    if next < wm.low {
        return Err(CatchUpError::OffsetOutOfRange {
            have,
            earliest: wm.low,
        });
    }
    if next > wm.high {
        return Err(CatchUpError::ImpossibleOffset {
            have: next - 1,
            high_watermark: Some(wm.high),
        });
    }
    Ok(())
}
