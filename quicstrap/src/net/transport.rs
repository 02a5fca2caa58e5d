//! QUIC endpoints tuned for long fat pipes: windows, socket buffers, congestion control.
//!
//! quinn's defaults (1.25 MB stream window) cap one stream at ~100 Mbit/s over 100 ms. The
//! defaults here cover 1 Gbit/s × 150 ms (≈ 19 MB in flight) for a single stream, with a
//! larger connection window so several files can be in flight, and UDP socket buffers raised
//! so a burst is not dropped by the kernel before quinn reads it. These are ceilings: the
//! windows a connection actually gets follow its path and the process's memory budget
//! ([`crate::control::budget`]).

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use quinn::congestion::{CubicConfig, NewRenoConfig};

use crate::net::congestion::{GuardedBbrConfig, PacedConfig};
use quinn::{IdleTimeout, MtuDiscoveryConfig, TransportConfig, VarInt};

/// Congestion controller of a QUIC connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Congestion {
    /// CUBIC (RFC 9438): quinn's default.
    Cubic,
    /// BBR: model-based, does not treat random loss as congestion; with a guard that backs
    /// off when a round loses more than 15 % ([`crate::net::congestion`]), so many transfers on
    /// one bottleneck do not drown it.
    Bbr,
    /// NewReno (RFC 9002's reference).
    NewReno,
    /// quicstrap's own model-based controller ([`crate::net::congestion::paced`]): BBR's
    /// model of the path, with the window chosen so that quinn's pacer sends at the model's
    /// rate and the bottleneck queue stays nearly empty. The default.
    Paced,
}

impl std::str::FromStr for Congestion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "cubic" => Ok(Self::Cubic),
            "bbr" => Ok(Self::Bbr),
            "newreno" | "reno" => Ok(Self::NewReno),
            "paced" => Ok(Self::Paced),
            o => Err(format!(
                "unknown congestion controller {o:?} (paced, bbr, cubic, newreno)"
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
    /// Most bytes all streams of a connection may have in flight (default 96 MiB): the
    /// ceiling of the windows [`crate::control::budget`] sizes to the path.
    pub connection_window: u64,
    /// Requested UDP send/receive buffer, bytes (default 8 MiB; forced past `rmem_max` when
    /// running as root).
    pub socket_buffer: usize,
    /// Congestion controller (default paced): the link benchmark's choice. On lossy long links
    /// it keeps the rate where cubic collapses exactly like TCP cubic, and unlike quinn's bbr
    /// it does not overflow the bottleneck's queue (BENCHMARKS.md).
    pub congestion: Congestion,
    /// Connection dies after this long without any packet from the peer (default 60 s).
    pub idle_timeout: Duration,
    /// Keep-alive ping interval, so an idle but healthy connection is not timed out.
    pub keep_alive: Duration,
    /// Client side: a pooled connection to a peer that no transfer has used for this long is
    /// closed (default 30 s); the next partition from that peer connects again. Keep-alive
    /// pings keep a connection open for good otherwise, and a fleet of fetchers between
    /// partitions would hold the servers' connection cap. Shorter than a server's own idle
    /// close (`ServerConfig::connection_idle`, 60 s), so the client closes first and never
    /// loses a connection under a request it is about to send. Long enough that a good
    /// handshake of the connectivity check stays warm for the transfer that follows it, and
    /// that a pause between attempts at the same peer (at most 30 s) rarely reconnects.
    pub pool_idle: Duration,
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
    /// Largest UDP payload path MTU discovery may probe up to, and that this end accepts
    /// (default 6500 bytes, the most quinn sends safely, see `MAX_UDP_PAYLOAD`). Per-packet
    /// work (encryption, framing, acknowledgements, system calls) is most of QUIC's CPU cost,
    /// so jumbo paths inside and between datacenters, and loopback, move the same bytes in up
    /// to 4.5 times fewer packets. On a 1500-byte path the larger probes fail (the kernel
    /// refuses them locally, or they are lost) without counting as congestion, and the
    /// connection settles at that path's MTU. Every host has a 64 KiB loopback, so a ceiling
    /// read from the host's interfaces would be this one anyway.
    pub max_mtu: u16,
}

impl Default for TransportTuning {
    fn default() -> Self {
        Self {
            stream_window: 24 << 20,
            connection_window: 96 << 20,
            socket_buffer: 8 << 20,
            congestion: Congestion::Paced,
            idle_timeout: Duration::from_secs(60),
            keep_alive: Duration::from_secs(5),
            pool_idle: Duration::from_secs(30),
            max_control_streams: 64,
            max_file_streams: 512,
            initial_mtu: 1452,
            max_mtu: MAX_UDP_PAYLOAD,
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
        // Only the direction that carries files gets large windows, and only once a transfer
        // runs (`budget`): a connection starts at what control frames need, so a client or a
        // server that merely connects holds the other side's memory to a few MiB.
        let (stream_rx, conn_rx, send) = match side {
            Side::Server => (CONTROL_WINDOW, CONTROL_WINDOW, CONTROL_WINDOW),
            Side::Client => (
                self.stream_window,
                CONTROL_WINDOW.min(self.connection_window),
                CONTROL_WINDOW,
            ),
        };
        let varint = |v: u64| VarInt::from_u64(v).unwrap_or(VarInt::MAX);
        t.stream_receive_window(varint(stream_rx))
            .receive_window(varint(conn_rx))
            .send_window(send)
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
        let max_mtu = self.max_udp_payload();
        let initial_mtu = self.initial_mtu.clamp(MIN_UDP_PAYLOAD, max_mtu);
        let mut mtu = MtuDiscoveryConfig::default();
        mtu.upper_bound(max_mtu);
        t.mtu_discovery_config(Some(mtu)).initial_mtu(initial_mtu);
        match self.congestion {
            Congestion::Cubic => {
                t.congestion_controller_factory(Arc::new(CubicConfig::default()));
            }
            Congestion::Bbr => {
                t.congestion_controller_factory(Arc::new(GuardedBbrConfig::default()));
            }
            Congestion::NewReno => {
                t.congestion_controller_factory(Arc::new(NewRenoConfig::default()));
            }
            Congestion::Paced => {
                t.congestion_controller_factory(Arc::new(PacedConfig));
            }
        }
        t
    }

    /// [`Self::max_mtu`] within what QUIC allows.
    fn max_udp_payload(&self) -> u16 {
        self.max_mtu.clamp(MIN_UDP_PAYLOAD, MAX_UDP_PAYLOAD)
    }
}

/// The smallest UDP payload QUIC requires of every path (RFC 9000, section 14).
const MIN_UDP_PAYLOAD: u16 = 1200;
/// The largest UDP payload a connection uses. quinn batches up to 10 packets of one size into
/// one GSO send, and the kernel refuses a send over 64 KiB (`EMSGSIZE`), which quinn-udp
/// drops silently as if it were a lost MTU probe (quinn-rs/quinn#2201; a fix was proposed in
/// #2653 and is in no release). At 8952 bytes a batch of 10 is 88 KB: every full batch would
/// be lost, the losses read as an MTU black hole, and the connection falls back to 1200. Ten
/// packets of 6500 bytes fit. Drop this cap once quinn splits oversized batches.
const MAX_UDP_PAYLOAD: u16 = 6500;
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
    let mut config = quinn::EndpointConfig::default();
    // What this end accepts (the transport parameter `max_udp_payload_size`): the peer's path
    // MTU discovery cannot go above it, so both ends raise it for jumbo paths.
    config
        .max_udp_payload_size(tuning.max_udp_payload())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
    quinn::Endpoint::new(config, server, socket, Arc::new(quinn::TokioRuntime))
}

/// A path's send window is at least this much (the floor of [`crate::control::budget`]'s send need):
/// room for the congestion window to grow between two resizes even from its initial size.
pub const MIN_SEND_WINDOW: u64 = 4 << 20;
/// A path's receive window is at least this much: the first round trips of a transfer, before
/// its rate is measured, are not held back.
pub const MIN_RECV_WINDOW: u64 = 8 << 20;
/// Windows of a direction that carries control frames only (a server's receive side, a
/// client's send side; a request is at most 64 KiB), and of a connection between transfers.
/// The budget grants more to a connection once a transfer runs on it.
pub const CONTROL_WINDOW: u64 = 1 << 20;
