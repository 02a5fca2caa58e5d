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
    /// MD5 through OpenSSL: its assembly is the fastest MD5 at hand, and MD5 is most of a
    /// receiver's CPU per byte.
    Md5(Md5),
    /// BLAKE3 state (boxed: it is large).
    Blake3(Box<blake3::Hasher>),
}

/// MD5 state: OpenSSL's where it offers MD5, the portable md-5 crate's where it does not (an
/// OpenSSL with only a FIPS provider refuses MD5). Both give the same digest.
pub enum Md5 {
    /// OpenSSL's implementation.
    OpenSsl(openssl::hash::Hasher),
    /// The md-5 crate's.
    Portable(md5::Md5),
    /// OpenSSL failed mid-way (never seen: it fails only without memory). The digest is then
    /// empty, which matches no manifest entry: a broken digest can refuse a file, never
    /// accept one.
    Failed,
}

impl Md5 {
    /// OpenSSL's MD5 if it can make one, the portable one otherwise.
    fn new() -> Self {
        match openssl::hash::Hasher::new(openssl::hash::MessageDigest::md5()) {
            Ok(h) => Self::OpenSsl(h),
            Err(_) => Self::Portable(md5::Md5::new()),
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        match self {
            Self::OpenSsl(h) => {
                if h.update(bytes).is_err() {
                    *self = Self::Failed;
                }
            }
            Self::Portable(h) => h.update(bytes),
            Self::Failed => {}
        }
    }

    fn finish(self) -> Vec<u8> {
        match self {
            Self::OpenSsl(mut h) => h.finish().map(|d| d.to_vec()).unwrap_or_default(),
            Self::Portable(h) => h.finalize().to_vec(),
            Self::Failed => Vec::new(),
        }
    }
}

impl Hasher {
    /// A fresh hasher for `algo`.
    pub fn new(algo: ChecksumAlgo) -> Self {
        match algo {
            ChecksumAlgo::Md5 => Self::Md5(Md5::new()),
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
            Self::Md5(h) => h.finish(),
            Self::Blake3(h) => h.finalize().as_bytes().to_vec(),
        }
    }
}

/// Digest and size of a whole file, read in large blocks.
pub fn digest_file(path: &Path, algo: ChecksumAlgo) -> std::io::Result<(u64, Vec<u8>)> {
    digest_file_counting(path, algo, &|_| {})
}

/// [`digest_file`] that reports each block's size to `read`, for a count of digest work.
pub fn digest_file_counting(
    path: &Path,
    algo: ChecksumAlgo,
    read: &dyn Fn(u64),
) -> std::io::Result<(u64, Vec<u8>)> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Hasher::new(algo);
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
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

    #[test]
    fn openssl_and_portable_md5_agree_whatever_the_update_sizes() {
        let data: Vec<u8> = (0..1_000_003u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let mut fast = Md5::new();
        assert!(
            matches!(fast, Md5::OpenSsl(_)),
            "this host's OpenSSL offers MD5, so it must be the one used"
        );
        let mut portable = Md5::Portable(md5::Md5::new());
        let mut at = 0;
        for step in [1, 63, 64, 65, 4096, 100_000].iter().cycle() {
            let end = (at + step).min(data.len());
            fast.update(&data[at..end]);
            portable.update(&data[at..end]);
            at = end;
            if at == data.len() {
                break;
            }
        }
        let (a, b) = (fast.finish(), portable.finish());
        assert_eq!(a.len(), 16);
        assert_eq!(a, b);
        assert!(
            Md5::Failed.finish().is_empty(),
            "a failed digest matches nothing"
        );
    }
}
