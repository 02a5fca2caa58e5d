//! What the relay counts: per-direction [`DirStats`] and per-device [`IfaceStats`] as
//! handed out to harnesses, and the atomic cells the relay threads publish them through.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Counters of one direction, as the relay saw it: what came in, what was written out to
/// the far side, and why the rest was dropped. Lets a harness check that what it measured
/// is what the emulator did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirStats {
    /// Packets read from the sending side's TUN.
    pub packets_in: u64,
    /// Bytes read from the sending side's TUN.
    pub bytes_in: u64,
    /// Packets written to the receiving side's TUN.
    pub packets_delivered: u64,
    /// Bytes written to the receiving side's TUN.
    pub bytes_delivered: u64,
    /// Packets dropped while the direction was blackholed.
    pub dropped_blackhole: u64,
    /// Packets dropped by random loss.
    pub dropped_loss: u64,
    /// Packets dropped because the bottleneck queue was full.
    pub dropped_queue: u64,
    /// Packets the receiving TUN refused (should stay 0).
    pub write_errors: u64,
    /// Packets accepted but not yet due (in propagation or in the queue).
    pub in_flight: u64,
    /// Packets the sending side's kernel dropped at its TUN queue because the relay did not
    /// read them in time (the TUN's `TX dropped`). Not part of the link model: anything but
    /// 0 means the emulator itself was overloaded and the link was worse than configured.
    pub kernel_dropped: u64,
    /// Sum over delivered packets of how late each was written compared with the time the
    /// model gave it, in nanoseconds: the relay's own timing error (see
    /// [`DirStats::mean_lateness`]).
    pub lateness_ns: u64,
}

impl DirStats {
    /// The mean lateness under which the relay counts as keeping to the model's schedule:
    /// the fidelity benchmark's target, and the line past which a benchmark's numbers
    /// describe the host as much as the link.
    pub const FAITHFUL_LATENESS: Duration = Duration::from_micros(200);

    /// Whether the relay kept to the link model over these counters: on average within
    /// [`DirStats::FAITHFUL_LATENESS`] of its schedule, and no packet lost in the kernel
    /// before the model saw it.
    pub fn kept_up(&self) -> bool {
        self.mean_lateness() < Self::FAITHFUL_LATENESS && self.kernel_dropped == 0
    }

    /// Every packet dropped by the model, whatever the reason.
    pub fn dropped(&self) -> u64 {
        self.dropped_blackhole + self.dropped_loss + self.dropped_queue
    }

    /// Mean delay the relay added on top of the model's schedule per delivered packet
    /// (wake-up latency, scheduling), so a harness can see how faithful the timing was.
    pub fn mean_lateness(&self) -> Duration {
        match self.packets_delivered {
            0 => Duration::ZERO,
            n => Duration::from_nanos(self.lateness_ns / n),
        }
    }

    /// Counters accumulated since `earlier` (a snapshot of the same direction), so a
    /// harness can look at one experiment at a time; `in_flight` is the current value.
    pub fn since(&self, earlier: &DirStats) -> DirStats {
        DirStats {
            packets_in: self.packets_in.saturating_sub(earlier.packets_in),
            bytes_in: self.bytes_in.saturating_sub(earlier.bytes_in),
            packets_delivered: self
                .packets_delivered
                .saturating_sub(earlier.packets_delivered),
            bytes_delivered: self.bytes_delivered.saturating_sub(earlier.bytes_delivered),
            dropped_blackhole: self
                .dropped_blackhole
                .saturating_sub(earlier.dropped_blackhole),
            dropped_loss: self.dropped_loss.saturating_sub(earlier.dropped_loss),
            dropped_queue: self.dropped_queue.saturating_sub(earlier.dropped_queue),
            write_errors: self.write_errors.saturating_sub(earlier.write_errors),
            in_flight: self.in_flight,
            kernel_dropped: self.kernel_dropped.saturating_sub(earlier.kernel_dropped),
            lateness_ns: self.lateness_ns.saturating_sub(earlier.lateness_ns),
        }
    }
}

/// Traffic through one of namespace A's TUN devices, as the relay saw it. With a second
/// client interface, this is the evidence of which address the client used and which one
/// the server answered: a packet only reaches a device if its destination is that device's
/// address.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IfaceStats {
    /// Packets the client side sent out through this device (read by the relay, before the
    /// link model decided their fate).
    pub packets_sent: u64,
    /// Bytes of those packets.
    pub bytes_sent: u64,
    /// Packets from B written to this device (addressed to its address).
    pub packets_received: u64,
    /// Bytes of those packets.
    pub bytes_received: u64,
}

impl IfaceStats {
    /// Counters accumulated since `earlier` (a snapshot of the same device), so a harness
    /// can look at what happened after a given moment, such as a move between devices.
    pub fn since(&self, earlier: &IfaceStats) -> IfaceStats {
        IfaceStats {
            packets_sent: self.packets_sent.saturating_sub(earlier.packets_sent),
            bytes_sent: self.bytes_sent.saturating_sub(earlier.bytes_sent),
            packets_received: self
                .packets_received
                .saturating_sub(earlier.packets_received),
            bytes_received: self.bytes_received.saturating_sub(earlier.bytes_received),
        }
    }
}

/// Live counters of one A-side device, updated by both relay threads (each owns two of
/// the four fields).
#[derive(Default)]
pub(super) struct IfaceCells {
    packets_sent: AtomicU64,
    bytes_sent: AtomicU64,
    packets_received: AtomicU64,
    bytes_received: AtomicU64,
}

impl IfaceCells {
    pub(super) fn count_sent(&self, bytes: usize) {
        self.packets_sent.fetch_add(1, Ordering::Relaxed);
        self.bytes_sent.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub(super) fn count_received(&self, bytes: usize) {
        self.packets_received.fetch_add(1, Ordering::Relaxed);
        self.bytes_received
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub(super) fn load(&self) -> IfaceStats {
        let r = Ordering::Relaxed;
        IfaceStats {
            packets_sent: self.packets_sent.load(r),
            bytes_sent: self.bytes_sent.load(r),
            packets_received: self.packets_received.load(r),
            bytes_received: self.bytes_received.load(r),
        }
    }
}

/// Lock-free copy of [`DirStats`] that the relay thread publishes and readers snapshot.
#[derive(Default)]
pub(super) struct StatCells {
    packets_in: AtomicU64,
    bytes_in: AtomicU64,
    packets_delivered: AtomicU64,
    bytes_delivered: AtomicU64,
    dropped_blackhole: AtomicU64,
    dropped_loss: AtomicU64,
    dropped_queue: AtomicU64,
    write_errors: AtomicU64,
    in_flight: AtomicU64,
    lateness_ns: AtomicU64,
}

impl StatCells {
    pub(super) fn store(&self, s: &DirStats) {
        let r = Ordering::Relaxed;
        self.packets_in.store(s.packets_in, r);
        self.bytes_in.store(s.bytes_in, r);
        self.packets_delivered.store(s.packets_delivered, r);
        self.bytes_delivered.store(s.bytes_delivered, r);
        self.dropped_blackhole.store(s.dropped_blackhole, r);
        self.dropped_loss.store(s.dropped_loss, r);
        self.dropped_queue.store(s.dropped_queue, r);
        self.write_errors.store(s.write_errors, r);
        self.in_flight.store(s.in_flight, r);
        self.lateness_ns.store(s.lateness_ns, r);
    }

    pub(super) fn load(&self) -> DirStats {
        let r = Ordering::Relaxed;
        DirStats {
            packets_in: self.packets_in.load(r),
            bytes_in: self.bytes_in.load(r),
            packets_delivered: self.packets_delivered.load(r),
            bytes_delivered: self.bytes_delivered.load(r),
            dropped_blackhole: self.dropped_blackhole.load(r),
            dropped_loss: self.dropped_loss.load(r),
            dropped_queue: self.dropped_queue.load(r),
            write_errors: self.write_errors.load(r),
            in_flight: self.in_flight.load(r),
            kernel_dropped: 0,
            lateness_ns: self.lateness_ns.load(r),
        }
    }
}
