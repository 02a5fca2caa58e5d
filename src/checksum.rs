//! File digests: MD5 (what Venice validates with) and BLAKE3 (faster, offered as an option).
//!
//! The receiver feeds bytes to a [`Hasher`] as they arrive, so validation needs no second read
//! of the file; the sender computes digests once per snapshot and caches them.

use std::io::Read;
use std::path::Path;

use md5::Digest as _;

pub use crate::protocol::ChecksumAlgo;

/// Incremental digest of either algorithm.
pub enum Hasher {
    /// MD5 state.
    Md5(md5::Md5),
    /// BLAKE3 state (boxed: it is large).
    Blake3(Box<blake3::Hasher>),
}

impl Hasher {
    /// A fresh hasher for `algo`.
    pub fn new(algo: ChecksumAlgo) -> Self {
        match algo {
            ChecksumAlgo::Md5 => Self::Md5(md5::Md5::new()),
            ChecksumAlgo::Blake3 => Self::Blake3(Box::default()),
        }
    }

    /// Feeds bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            Self::Md5(h) => h.update(bytes),
            Self::Blake3(h) => {
                h.update(bytes);
            }
        }
    }

    /// The digest.
    pub fn finish(self) -> Vec<u8> {
        match self {
            Self::Md5(h) => h.finalize().to_vec(),
            Self::Blake3(h) => h.finalize().as_bytes().to_vec(),
        }
    }
}

/// Digest and size of a whole file, read in large blocks.
pub fn digest_file(path: &Path, algo: ChecksumAlgo) -> std::io::Result<(u64, Vec<u8>)> {
    digest_file_unless(
        path,
        algo,
        &std::sync::atomic::AtomicBool::new(false),
        &|_| {},
    )
}

/// [`digest_file`] that gives up between 1 MiB blocks once `cancel` is set (an
/// `Interrupted` error), and reports each block's size to `read`: a digest nobody waits
/// for any more must not keep a disk busy for a whole partition.
pub fn digest_file_unless(
    path: &Path,
    algo: ChecksumAlgo,
    cancel: &std::sync::atomic::AtomicBool,
    read: &dyn Fn(u64),
) -> std::io::Result<(u64, Vec<u8>)> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Hasher::new(algo);
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        if cancel.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Interrupted,
                "digest cancelled: nobody waits for it",
            ));
        }
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
        read(n as u64);
        h.update(&buf[..n]);
    }
    Ok((total, h.finish()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors() {
        let mut h = Hasher::new(ChecksumAlgo::Md5);
        h.update(b"abc");
        assert_eq!(hex::encode(h.finish()), "900150983cd24fb0d6963f7d28e17f72");
        let mut h = Hasher::new(ChecksumAlgo::Blake3);
        h.update(b"abc");
        assert_eq!(
            hex::encode(h.finish()),
            "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"
        );
    }
}
