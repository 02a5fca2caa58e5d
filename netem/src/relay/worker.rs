//! One direction's relay thread: reads arrivals, asks the link model for their fate, holds
//! accepted packets in a heap keyed by delivery time and writes each one out when it is due.

use std::cmp::Ordering as CmpOrdering;
use std::collections::BinaryHeap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use crate::model::{Link, Verdict};
use crate::tun::{read_packet, write_packet, Io};
use crate::NetemError;

use super::route::{route, Device};
use super::stats::{DirStats, IfaceCells};
use super::wake::{Ready, Wait, WakeAim};
use super::{DirShared, MAX_SIDE_DEVICES};

/// Packets read per wake-up before due packets get written again, so a flood on the input
/// cannot starve delivery.
const READ_BATCH: usize = 256;
/// Largest packet a TUN read can return (far above the 1500-byte MTU, never truncates).
const READ_BUF: usize = 65_536;
/// Spare packet buffers kept for reuse instead of freeing them.
const POOL_MAX: usize = 4096;

/// A packet waiting for its delivery time.
struct Pending {
    at: Instant,
    seq: u64,
    buf: Vec<u8>,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at && self.seq == other.seq
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pending {
    /// Reversed so `BinaryHeap` (a max-heap) pops the earliest delivery first, and of two
    /// packets due at the same instant the one that arrived first.
    fn cmp(&self, other: &Self) -> CmpOrdering {
        other
            .at
            .cmp(&self.at)
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

/// One direction's thread state.
pub(super) struct Worker {
    /// Devices read from (one, or both of side A's), all feeding the one link model.
    pub(super) inputs: Vec<Device>,
    /// Devices written to; see [`route`].
    pub(super) outputs: Vec<Device>,
    pub(super) wake: Arc<OwnedFd>,
    pub(super) stop: Arc<AtomicBool>,
    pub(super) shared: Arc<DirShared>,
    pub(super) ifaces: Arc<[IfaceCells]>,
    pub(super) realtime: bool,
}

impl Worker {
    pub(super) fn run(&self, seed: u64) -> Result<(), NetemError> {
        // Wake-ups within 1 ns of the requested time instead of the default 50 µs slack.
        // SAFETY: prctl with integer arguments only affects this thread.
        unsafe {
            libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0);
        }
        if self.realtime {
            // Like the kernel's own qdiscs, which run in softirq ahead of every process: a
            // busy endpoint must not delay the link's clock. Best effort; without the
            // privilege the thread stays an ordinary one.
            let param = libc::sched_param { sched_priority: 1 };
            // SAFETY: valid policy and parameter for the calling thread.
            unsafe {
                libc::pthread_setschedparam(libc::pthread_self(), libc::SCHED_FIFO, &param);
            }
        }
        let mut seen = self.shared.generation.load(Ordering::Acquire);
        let mut link = Link::new(
            *self
                .shared
                .params
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
            seed,
        );
        let mut heap: BinaryHeap<Pending> = BinaryHeap::new();
        let mut pool: Vec<Vec<u8>> = Vec::new();
        let mut scratch = vec![0u8; READ_BUF];
        let mut seq: u64 = 0;
        let mut stats = DirStats::default();
        let mut aim = WakeAim::default();

        while !self.stop.load(Ordering::Acquire) {
            // Write everything that is due.
            let now = Instant::now();
            while heap.peek().is_some_and(|p| p.at <= now) {
                let Some(p) = heap.pop() else { break };
                let out = route(&self.outputs, &p.buf);
                match write_packet(&out.fd, &p.buf) {
                    Ok(Io::Done(_)) => {
                        if let Some(i) = out.iface {
                            self.ifaces[i].count_received(p.buf.len());
                        }
                        stats.packets_delivered += 1;
                        stats.bytes_delivered += p.buf.len() as u64;
                        let late = now.saturating_duration_since(p.at).as_nanos();
                        stats.lateness_ns += u64::try_from(late).unwrap_or(u64::MAX);
                    }
                    // A refused packet is a lost packet; the link goes on.
                    Ok(Io::WouldBlock) | Err(_) => stats.write_errors += 1,
                }
                if pool.len() < POOL_MAX {
                    pool.push(p.buf);
                }
            }

            let c = link.counters();
            stats.packets_in = c.packets_in;
            stats.bytes_in = c.bytes_in;
            stats.dropped_blackhole = c.dropped_blackhole;
            stats.dropped_loss = c.dropped_loss;
            stats.dropped_queue = c.dropped_queue;
            stats.in_flight = heap.len() as u64;
            self.shared.stats.store(&stats);

            let timeout = match heap.peek() {
                None => None,
                Some(next) => {
                    let now = Instant::now();
                    match aim.plan(now, next.at.saturating_duration_since(now)) {
                        Wait::Sleep(sleep) => Some(sleep),
                        Wait::Spin => {
                            // Too close for a timer to hit: wait it out on the CPU.
                            let at = next.at;
                            while Instant::now() < at {
                                std::hint::spin_loop();
                            }
                            continue;
                        }
                    }
                }
            };
            let asleep = Instant::now();
            let ready = self.poll(timeout)?;
            if let (true, Some(deadline)) =
                (ready.timed_out, timeout.and_then(|t| asleep.checked_add(t)))
            {
                aim.observe(Instant::now().saturating_duration_since(deadline));
            }
            if ready.wake || ready.inputs == 0 {
                continue;
            }
            // Stamp arrivals with when this thread saw them, never earlier. Taking an
            // estimated wake-up latency off (as an earlier version did) shortened the delay
            // on hosts where that estimate overshoots, so packets left before their
            // scheduled time. Late by one wake-up is the honest error: the model's delay is
            // a lower bound, and what the relay adds shows up in `lateness_ns`.
            let mut arrival = Instant::now();
            // Parameters only matter to new arrivals, so pick up a change right before them
            // (a change made while this thread slept applies to the very next packet).
            let generation = self.shared.generation.load(Ordering::Acquire);
            if generation != seen {
                seen = generation;
                link.set_params(
                    *self
                        .shared
                        .params
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner),
                );
            }
            for (k, input) in self.inputs.iter().enumerate() {
                if ready.inputs & (1 << k) == 0 {
                    continue;
                }
                for _ in 0..READ_BATCH {
                    let n = match read_packet(&input.fd, &mut scratch) {
                        Ok(Io::Done(n)) => n,
                        Ok(Io::WouldBlock) => break,
                        Err(e) => return Err(NetemError::io("reading from TUN", e)),
                    };
                    if let Some(i) = input.iface {
                        self.ifaces[i].count_sent(n);
                    }
                    let verdict = link.offer(arrival, n);
                    arrival = Instant::now();
                    if let Verdict::Deliver(at) = verdict {
                        let mut buf = pool.pop().unwrap_or_default();
                        buf.clear();
                        buf.extend_from_slice(&scratch[..n]);
                        heap.push(Pending { at, seq, buf });
                        seq += 1;
                    }
                }
            }
        }
        Ok(())
    }

    /// Waits until an input is readable, the wake fd fires, or `timeout` passes (`None`:
    /// no deadline).
    fn poll(&self, timeout: Option<Duration>) -> Result<Ready, NetemError> {
        let idle = libc::pollfd {
            fd: -1,
            events: 0,
            revents: 0,
        };
        // Inputs first, then the wake fd; `start` caps the inputs at MAX_SIDE_DEVICES.
        let mut fds = [idle; MAX_SIDE_DEVICES + 1];
        let n = self.inputs.len();
        for (slot, input) in fds.iter_mut().zip(&self.inputs) {
            slot.fd = input.fd.as_raw_fd();
            slot.events = libc::POLLIN;
        }
        fds[n] = libc::pollfd {
            fd: self.wake.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ts = timeout.map(|d| libc::timespec {
            tv_sec: d.as_secs().min(i64::MAX as u64) as libc::time_t,
            tv_nsec: d.subsec_nanos() as libc::c_long,
        });
        let ts_ptr = ts
            .as_ref()
            .map_or(std::ptr::null(), |t| t as *const libc::timespec);
        // SAFETY: `fds` holds at least `n + 1` valid pollfds; `ts_ptr` is null or points to
        // a live timespec; a null sigmask leaves the signal mask alone.
        let rc = unsafe {
            libc::ppoll(
                fds.as_mut_ptr(),
                (n + 1) as libc::nfds_t,
                ts_ptr,
                std::ptr::null(),
            )
        };
        if rc < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                return Ok(Ready::default());
            }
            return Err(NetemError::io("ppoll", err));
        }
        let mut inputs = 0;
        for (k, fd) in fds[..n].iter().enumerate() {
            if fd.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
                return Err(NetemError::Relay(format!(
                    "TUN fd reported poll events {:#x}",
                    fd.revents
                )));
            }
            if fd.revents & libc::POLLIN != 0 {
                inputs |= 1 << k;
            }
        }
        Ok(Ready {
            inputs,
            wake: fds[n].revents & libc::POLLIN != 0,
            timed_out: rc == 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heap_pops_earliest_then_arrival_order() {
        let t0 = Instant::now();
        let mut heap = BinaryHeap::new();
        for (seq, ms) in [(0u64, 5u64), (1, 1), (2, 5), (3, 3), (4, 1)] {
            heap.push(Pending {
                at: t0 + Duration::from_millis(ms),
                seq,
                buf: Vec::new(),
            });
        }
        let order: Vec<u64> = std::iter::from_fn(|| heap.pop().map(|p| p.seq)).collect();
        assert_eq!(order, [1, 4, 3, 0, 2]);
    }
}
