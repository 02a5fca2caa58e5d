//! The kernel's congestion control, chosen per TCP socket: the baseline's one knob of the
//! TCP world besides parallel connections.

/// A TCP congestion controller known to the kernel (`cubic`, `bbr`, ...), set per socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpCongestion(pub String);

impl std::str::FromStr for TcpCongestion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() || s.len() > 15 || !s.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(format!("bad TCP congestion controller name {s:?}"));
        }
        Ok(Self(s.to_owned()))
    }
}

impl std::fmt::Display for TcpCongestion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Sets `TCP_CONGESTION` on a socket: the sender's controller is the one that matters, so
/// the server sets it on every accepted connection.
pub fn set_tcp_congestion(
    sock: &impl std::os::fd::AsRawFd,
    cc: &TcpCongestion,
) -> std::io::Result<()> {
    let name = cc.0.as_bytes();
    // SAFETY: the fd is a live socket owned by `sock`; the buffer outlives the call and its
    // length is passed.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_CONGESTION,
            name.as_ptr().cast(),
            name.len() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn congestion_names_are_checked() {
        assert!("bbr".parse::<TcpCongestion>().is_ok());
        assert!("".parse::<TcpCongestion>().is_err());
        assert!("cu/bic".parse::<TcpCongestion>().is_err());
        assert!("a-very-long-congestion-name"
            .parse::<TcpCongestion>()
            .is_err());
    }
}
