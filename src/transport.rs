//! QUIC endpoints tuned for long fat pipes: windows, socket buffers, congestion control.
//!
//! quinn's defaults (1.25 MB stream window) cap one stream at ~100 Mbit/s over 100 ms. The
//! defaults here cover 1 Gbit/s × 150 ms (≈ 19 MB in flight) for a single stream, with a
//! larger connection window so several files can be in flight, and UDP socket buffers raised
//! so a burst is not dropped by the kernel before quinn reads it.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use quinn::congestion::{BbrConfig, CubicConfig, NewRenoConfig};
use quinn::{IdleTimeout, MtuDiscoveryConfig, TransportConfig, VarInt};

/// Congestion controller of a QUIC connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Congestion {
    /// CUBIC (RFC 9438): quinn's default.
    Cubic,
    /// BBR: model-based, does not treat random loss as congestion.
    Bbr,
    /// NewReno (RFC 9002's reference).
    NewReno,
}

impl std::str::FromStr for Congestion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "cubic" => Ok(Self::Cubic),
            "bbr" => Ok(Self::Bbr),
            "newreno" | "reno" => Ok(Self::NewReno),
            o => Err(format!(
                "unknown congestion controller {o:?} (cubic, bbr, newreno)"
            )),
        }
    }
}

/// Which end of a connection a configuration is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The serving peer: accepts control streams, opens file streams.
    Server,
    /// The fetching node: opens control streams, accepts file streams.
    Client,
}

/// Transport knobs shared by server and client.
#[derive(Clone, Debug)]
pub struct TransportTuning {
    /// Bytes a single stream may have in flight (default 24 MiB ≥ 1 Gbit/s × 150 ms).
    pub stream_window: u64,
    /// Bytes all streams of a connection may have in flight (default 96 MiB).
    pub connection_window: u64,
    /// Requested UDP send/receive buffer, bytes (default 8 MiB; forced past `rmem_max` when
    /// running as root).
    pub socket_buffer: usize,
    /// Congestion controller (default bbr): the link benchmark's choice. On lossy long links
    /// bbr keeps the rate where cubic collapses exactly like TCP cubic (BENCHMARKS.md); on
    /// clean links the two are within a few percent.
    pub congestion: Congestion,
    /// Connection dies after this long without any packet from the peer (default 60 s).
    pub idle_timeout: Duration,
    /// Keep-alive ping interval, so an idle but healthy connection is not timed out.
    pub keep_alive: Duration,
    /// Concurrent control streams a client may open on one connection (default 64): bounds a
    /// flood of control streams.
    pub max_control_streams: u32,
    /// Concurrent file streams a server may open toward a client (default 512).
    pub max_file_streams: u32,
    /// UDP payload size a connection starts with (default 1452: a 1500-byte Ethernet path
    /// over IPv4 or IPv6). quinn starts at 1200 and only probes upward when it has nothing
    /// else to send, so a bulk sender would stay at 1200 for good. On a path with a smaller
    /// MTU (tunnels) set 1200.
    pub initial_mtu: u16,
}

impl Default for TransportTuning {
    fn default() -> Self {
        Self {
            stream_window: 24 << 20,
            connection_window: 96 << 20,
            socket_buffer: 8 << 20,
            congestion: Congestion::Bbr,
            idle_timeout: Duration::from_secs(60),
            keep_alive: Duration::from_secs(5),
            max_control_streams: 64,
            max_file_streams: 512,
            initial_mtu: 1452,
        }
    }
}

impl TransportTuning {
    /// quinn transport configuration from these knobs, for the server or the client side.
    /// Each side only admits the streams the other side legitimately opens (control streams
    /// toward the server, file streams toward the client), so neither can be made to hold
    /// streams it never reads.
    pub fn transport_config(&self, side: Side) -> TransportConfig {
        let mut t = TransportConfig::default();
        let stream = VarInt::from_u64(self.stream_window).unwrap_or(VarInt::MAX);
        let conn = VarInt::from_u64(self.connection_window).unwrap_or(VarInt::MAX);
        t.stream_receive_window(stream)
            .receive_window(conn)
            .send_window(self.connection_window)
            .max_concurrent_bidi_streams(VarInt::from_u32(match side {
                Side::Server => self.max_control_streams,
                Side::Client => 0,
            }))
            .max_concurrent_uni_streams(VarInt::from_u32(match side {
                Side::Server => 0,
                Side::Client => self.max_file_streams,
            }))
            // Ping often enough that a healthy but quiet connection never idles out.
            .keep_alive_interval(Some(self.keep_alive.min(self.idle_timeout / 3)))
            .max_idle_timeout(IdleTimeout::try_from(self.idle_timeout).ok());
        let initial_mtu = self.initial_mtu.max(1200);
        let mut mtu = MtuDiscoveryConfig::default();
        mtu.upper_bound(initial_mtu.max(1452));
        t.mtu_discovery_config(Some(mtu)).initial_mtu(initial_mtu);
        match self.congestion {
            Congestion::Cubic => {
                t.congestion_controller_factory(Arc::new(CubicConfig::default()));
            }
            Congestion::Bbr => {
                t.congestion_controller_factory(Arc::new(BbrConfig::default()));
            }
            Congestion::NewReno => {
                t.congestion_controller_factory(Arc::new(NewRenoConfig::default()));
            }
        }
        t
    }
}

/// A UDP socket bound to `addr` with enlarged buffers.
pub fn bind_udp(addr: SocketAddr, buffer: usize) -> std::io::Result<UdpSocket> {
    let domain = socket2::Domain::for_address(addr);
    let sock = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    if addr.is_ipv6() {
        sock.set_only_v6(false).ok();
    }
    raise_buffers(&sock, buffer);
    sock.bind(&addr.into())?;
    Ok(sock.into())
}

fn raise_buffers(sock: &socket2::Socket, buffer: usize) {
    use std::os::fd::AsRawFd;
    let _ = sock.set_recv_buffer_size(buffer);
    let _ = sock.set_send_buffer_size(buffer);
    // As root, SO_*BUFFORCE goes past net.core.{r,w}mem_max; elsewhere it fails harmlessly.
    let val = buffer.min(i32::MAX as usize) as libc::c_int;
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_SNDBUFFORCE] {
        // SAFETY: plain setsockopt on a socket we own, with a correctly sized int.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                &val as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
}

/// A quinn endpoint over a tuned socket, with an optional server side.
pub fn endpoint(
    addr: SocketAddr,
    tuning: &TransportTuning,
    server: Option<quinn::ServerConfig>,
) -> std::io::Result<quinn::Endpoint> {
    let socket = bind_udp(addr, tuning.socket_buffer)?;
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        server,
        socket,
        Arc::new(quinn::TokioRuntime),
    )
}

/// Send buffer of a connection: at least this much, whatever the path.
pub const MIN_SEND_WINDOW: u64 = 4 << 20;
/// How many congestion windows of data may wait in a connection's send buffer.
const SEND_WINDOW_CWNDS: u64 = 4;
/// How often the send buffer is resized to the path.
const SEND_WINDOW_EVERY: Duration = Duration::from_millis(200);

/// The send buffer a path warrants: a few congestion windows (bbr's is about twice the
/// bandwidth-delay product), between [`MIN_SEND_WINDOW`] and `max`.
pub fn send_window_for(cwnd: u64, max: u64) -> u64 {
    cwnd.saturating_mul(SEND_WINDOW_CWNDS)
        .clamp(MIN_SEND_WINDOW.min(max), max)
}

/// Keeps `conn`'s send buffer sized to its path until the connection ends.
///
/// A fixed buffer as large as a fast long path needs (96 MiB) means that on an 8 Mbit/s
/// path up to 96 MiB wait unacknowledged behind the last file: minutes of tail that no
/// flow-control credit can speed up, with the server's memory held all along. Sized from
/// the congestion window instead, the queue stays a few round trips deep on any path, and
/// writes wait for the path instead of piling up.
pub fn spawn_send_window_sizer(conn: quinn::Connection, max: u64) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut applied = 0;
        loop {
            let window = send_window_for(conn.stats().path.cwnd, max);
            if window != applied {
                conn.set_send_window(window);
                applied = window;
            }
            tokio::select! {
                _ = conn.closed() => return,
                _ = tokio::time::sleep(SEND_WINDOW_EVERY) => {}
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_window_follows_the_path_within_bounds() {
        let max = 96 << 20;
        // 8 Mbit/s x 50 ms: a BDP of 50 kB, bbr cwnd ~100 kB: the floor.
        assert_eq!(send_window_for(100_000, max), MIN_SEND_WINDOW);
        // 200 Mbit/s x 150 ms: a cwnd of ~7.5 MB gets four of them.
        assert_eq!(send_window_for(7_500_000, max), 30_000_000);
        // Never past the configured window, even for a huge cwnd or a tiny max.
        assert_eq!(send_window_for(u64::MAX, max), max);
        assert_eq!(send_window_for(10, 1 << 20), 1 << 20);
    }
}
