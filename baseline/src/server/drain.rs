//! Watching a response leave the socket: a client that stopped reading is found by its send
//! queue not shrinking, and a body ends only once the rest can leave within the timeout.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// One TCP connection's outgoing side, as the body streams and the stall watch see it.
pub(super) struct Wire {
    /// The socket (valid while its connection is served).
    pub(super) fd: std::os::fd::RawFd,
    /// Body bytes handed to hyper on this connection.
    pub(super) body_bytes: AtomicU64,
}

impl Wire {
    /// Bytes in the socket's send queue, not yet acknowledged by the client (`SIOCOUTQ`).
    fn unacked(&self) -> u64 {
        let mut n: libc::c_int = 0;
        // SAFETY: TIOCOUTQ (= SIOCOUTQ) writes one int; `fd` stays open while its connection
        // is served, which is the only time this is called.
        let rc = unsafe { libc::ioctl(self.fd, libc::TIOCOUTQ, &mut n) };
        if rc == 0 {
            n.max(0) as u64
        } else {
            0
        }
    }
}

/// How often the stall watch and the drain wait look at the socket.
const WIRE_POLL: Duration = Duration::from_millis(20);

/// Resolves once bytes wait in the socket and none left for `limit`: the client stopped
/// reading. Progress is a body chunk handed to hyper or the send queue shrinking.
pub(super) async fn write_stalled(wire: &Wire, limit: Duration) {
    let mut last = (wire.body_bytes.load(Ordering::Relaxed), wire.unacked());
    let mut since = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let now = (wire.body_bytes.load(Ordering::Relaxed), wire.unacked());
        let moved = now.0 != last.0 || now.1 < last.1;
        if moved || now.1 == 0 {
            since = Instant::now();
        } else if since.elapsed() >= limit {
            return;
        }
        last = now;
    }
}

/// Waits until what is left in the socket's send queue would leave within `limit` at the rate
/// this response's bytes have left so far (`start`: when it began and the connection's body
/// bytes then). A body ends — and hyper's header timeout for the next request starts — only
/// once the client can send that request well within the timeout, however slow its link; on a
/// fast link the end follows the last byte at once, costing no round trip.
pub(super) async fn drains_within(wire: &Wire, start: (Instant, u64), limit: Duration) {
    loop {
        let queued = wire.unacked();
        let body = wire.body_bytes.load(Ordering::Relaxed);
        let left = body.saturating_sub(start.1).saturating_sub(queued);
        let rate = left as f64 / start.0.elapsed().as_secs_f64().max(1e-3);
        if queued == 0 || queued as f64 <= rate * limit.as_secs_f64() {
            return;
        }
        tokio::time::sleep(WIRE_POLL).await;
    }
}
