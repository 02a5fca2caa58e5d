//! TUN devices: opening `/dev/net/tun` and attaching it to a named layer-3 interface with the
//! `TUNSETIFF` ioctl, and plain non-blocking packet I/O on the resulting fd.
//!
//! The device is created in the network namespace of the calling thread and stays bound to
//! it; it disappears when the fd is closed (it is not made persistent), which is what makes
//! teardown leave nothing behind.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::NetemError;

/// Creates TUN interface `name` (IP packets, no packet-info header) in the current thread's
/// namespace and returns its non-blocking, close-on-exec fd.
pub(crate) fn open_tun(name: &str) -> Result<OwnedFd, NetemError> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(NetemError::InvalidConfig(format!(
            "bad interface name {name:?} (1..{} bytes, no NUL)",
            libc::IFNAMSIZ - 1
        )));
    }
    // SAFETY: constant NUL-terminated path; the returned fd is checked before use.
    let raw = unsafe {
        libc::open(
            c"/dev/net/tun".as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if raw < 0 {
        return Err(NetemError::last_os("opening /dev/net/tun"));
    }
    // SAFETY: `raw` is a freshly opened fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };

    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, which `req` is.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) };
    if rc < 0 {
        return Err(NetemError::last_os(format!("TUNSETIFF {name}")));
    }
    Ok(fd)
}

/// Outcome of one non-blocking read or write.
pub(crate) enum Io {
    /// This many bytes moved.
    Done(usize),
    /// Nothing to read now (EAGAIN), or interrupted: try again after polling.
    WouldBlock,
}

/// Reads one packet into `buf`.
pub(crate) fn read_packet(fd: &OwnedFd, buf: &mut [u8]) -> std::io::Result<Io> {
    // SAFETY: `buf` is valid for writes of its length.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    io_result(n)
}

/// Writes one packet from `buf`.
pub(crate) fn write_packet(fd: &OwnedFd, buf: &[u8]) -> std::io::Result<Io> {
    // SAFETY: `buf` is valid for reads of its length.
    let n = unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
    io_result(n)
}

fn io_result(n: isize) -> std::io::Result<Io> {
    if n >= 0 {
        return Ok(Io::Done(n as usize));
    }
    let err = std::io::Error::last_os_error();
    match err.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => Ok(Io::WouldBlock),
        _ => Err(err),
    }
}
