//! The relay: one OS thread per direction moving IP packets from one TUN fd to the other
//! through a [`Link`] model.
//!
//! Each thread sleeps in `ppoll()` on its input fd with a timeout equal to the time until
//! the next scheduled delivery (nanosecond `timespec`, timer slack lowered to 1 ns), reads
//! every packet that is ready, asks the model for its fate, keeps accepted packets in a
//! min-heap keyed by delivery time (ties in arrival order), and writes each packet out once
//! it is due. A runtime timer wheel with millisecond ticks could not honour a 2 ms RTT,
//! which is why this is plain threads. An eventfd wakes both threads for shutdown.
//!
//! The configured delay is a floor: no packet ever leaves before its scheduled time. Timed
//! wake-ups are aimed early by the learnt wake-up latency and the rest is waited out on the
//! CPU ([`WakeAim`], rationed), so delivery is not late by a timer's latency either. An
//! arrival is stamped when the thread sees it, never back-dated by an estimate: on hosts
//! where the estimate overshoots that made packets leave early. What the relay adds is
//! reported per packet in [`DirStats::lateness_ns`] and, for the kernel's side,
//! [`DirStats::kernel_dropped`].
//!
//! Side A may have a second TUN device (a second client address, for connection-migration
//! tests): the A→B thread then reads both A-side fds into the one A→B link model, and the
//! B→A thread writes each packet to the A-side device that owns its IPv4 destination
//! address, as a router would. Both share the direction's model, so moving the client from
//! one interface to the other changes its address but not the link it sees. Per-interface
//! counters ([`IfaceStats`]) show which device carried what.

use std::cmp::Ordering as CmpOrdering;
use std::collections::BinaryHeap;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::model::{Link, LinkParams, Verdict};
use crate::tun::{read_packet, write_packet, Io};
use crate::NetemError;

/// Packets read per wake-up before due packets get written again, so a flood on the input
/// cannot starve delivery.
const READ_BATCH: usize = 256;
/// Largest packet a TUN read can return (far above the 1500-byte MTU, never truncates).
const READ_BUF: usize = 65_536;
/// Spare packet buffers kept for reuse instead of freeing them.
const POOL_MAX: usize = 4096;
/// Most TUN devices one side may have (the client's first and second interface).
pub(crate) const MAX_SIDE_DEVICES: usize = 2;

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
struct IfaceCells {
    packets_sent: AtomicU64,
    bytes_sent: AtomicU64,
    packets_received: AtomicU64,
    bytes_received: AtomicU64,
}

impl IfaceCells {
    fn count_sent(&self, bytes: usize) {
        self.packets_sent.fetch_add(1, Ordering::Relaxed);
        self.bytes_sent.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    fn count_received(&self, bytes: usize) {
        self.packets_received.fetch_add(1, Ordering::Relaxed);
        self.bytes_received
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    fn load(&self) -> IfaceStats {
        let r = Ordering::Relaxed;
        IfaceStats {
            packets_sent: self.packets_sent.load(r),
            bytes_sent: self.bytes_sent.load(r),
            packets_received: self.packets_received.load(r),
            bytes_received: self.bytes_received.load(r),
        }
    }
}

/// One TUN device as a relay thread uses it.
struct Device {
    fd: Arc<OwnedFd>,
    /// The address of the device's side, for picking the output of a B→A packet.
    addr: Ipv4Addr,
    /// Index into the A-side interface counters, for A-side devices.
    iface: Option<usize>,
}

/// The IPv4 destination of a raw IP packet, if it is one.
fn ipv4_destination(packet: &[u8]) -> Option<Ipv4Addr> {
    if packet.len() >= 20 && packet[0] >> 4 == 4 {
        Some(Ipv4Addr::new(
            packet[16], packet[17], packet[18], packet[19],
        ))
    } else {
        None
    }
}

/// The output device for `packet`: the one whose address is its destination, else the
/// first (the side's main device, which also gets anything that is not IPv4).
fn route<'a>(outputs: &'a [Device], packet: &[u8]) -> &'a Device {
    if outputs.len() > 1 {
        if let Some(dst) = ipv4_destination(packet) {
            if let Some(dev) = outputs.iter().find(|d| d.addr == dst) {
                return dev;
            }
        }
    }
    &outputs[0]
}

/// Lock-free copy of [`DirStats`] that the relay thread publishes and readers snapshot.
#[derive(Default)]
struct StatCells {
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
    fn store(&self, s: &DirStats) {
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

    fn load(&self) -> DirStats {
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

/// State one direction shares between its relay thread and the controlling side.
struct DirShared {
    params: Mutex<LinkParams>,
    /// Bumped on every parameter change; the thread re-reads `params` when it moves.
    generation: AtomicU64,
    stats: StatCells,
    /// Why the thread stopped early, if it did.
    error: Mutex<Option<String>>,
}

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

/// The two relay threads and their controls.
pub(crate) struct Relay {
    stop: Arc<AtomicBool>,
    wake: Arc<OwnedFd>,
    threads: Vec<JoinHandle<()>>,
    dirs: [Arc<DirShared>; 2],
    /// Counters of each A-side device, in the order given to [`Relay::start`].
    ifaces: Arc<[IfaceCells]>,
}

impl Relay {
    /// Starts relaying between side A's TUN fds (each with its address; the first is the
    /// main one) and side B's; index 0 of the parameters and stats is the A→B direction
    /// (reads every A-side fd, writes `fd_b`), index 1 is B→A (reads `fd_b`, writes each
    /// packet to the A-side fd owning its destination). With `realtime` the threads ask for
    /// `SCHED_FIFO` priority 1.
    pub(crate) fn start(
        side_a: Vec<(OwnedFd, Ipv4Addr)>,
        (fd_b, addr_b): (OwnedFd, Ipv4Addr),
        params: [LinkParams; 2],
        seed: u64,
        realtime: bool,
    ) -> Result<Relay, NetemError> {
        if side_a.is_empty() || side_a.len() > MAX_SIDE_DEVICES {
            return Err(NetemError::InvalidConfig(format!(
                "side A needs 1..={MAX_SIDE_DEVICES} devices, not {}",
                side_a.len()
            )));
        }
        // SAFETY: plain syscall; the fd is checked before use.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if raw < 0 {
            return Err(NetemError::last_os("eventfd"));
        }
        // SAFETY: fresh fd owned by nobody else.
        let wake = Arc::new(unsafe { OwnedFd::from_raw_fd(raw) });
        let dirs = params.map(|p| {
            Arc::new(DirShared {
                params: Mutex::new(p),
                generation: AtomicU64::new(0),
                stats: StatCells::default(),
                error: Mutex::new(None),
            })
        });
        let ifaces: Arc<[IfaceCells]> = side_a.iter().map(|_| IfaceCells::default()).collect();
        let mut relay = Relay {
            stop: Arc::new(AtomicBool::new(false)),
            wake,
            threads: Vec::new(),
            dirs,
            ifaces,
        };
        let side_a: Vec<(Arc<OwnedFd>, Ipv4Addr)> = side_a
            .into_iter()
            .map(|(fd, addr)| (Arc::new(fd), addr))
            .collect();
        let devices_a = || -> Vec<Device> {
            side_a
                .iter()
                .enumerate()
                .map(|(i, (fd, addr))| Device {
                    fd: fd.clone(),
                    addr: *addr,
                    iface: Some(i),
                })
                .collect()
        };
        let fd_b = Arc::new(fd_b);
        let device_b = || Device {
            fd: fd_b.clone(),
            addr: addr_b,
            iface: None,
        };
        let plan = [
            ("netem-a2b", devices_a(), vec![device_b()], seed),
            // A different stream for the other direction, still derived from the one seed.
            (
                "netem-b2a",
                vec![device_b()],
                devices_a(),
                seed ^ 0x9e37_79b9_7f4a_7c15,
            ),
        ];
        for (i, (name, inputs, outputs, seed)) in plan.into_iter().enumerate() {
            let shared = relay.dirs[i].clone();
            let stop = relay.stop.clone();
            let wake = relay.wake.clone();
            let ifaces = relay.ifaces.clone();
            // On failure `relay` drops here, stopping the thread already started.
            let handle = std::thread::Builder::new()
                .name(name.into())
                .spawn(move || {
                    let worker = Worker {
                        inputs,
                        outputs,
                        wake,
                        stop,
                        shared: shared.clone(),
                        ifaces,
                        realtime,
                    };
                    if let Err(e) = worker.run(seed) {
                        *shared.error.lock().unwrap_or_else(PoisonError::into_inner) =
                            Some(e.to_string());
                    }
                })
                .map_err(|e| NetemError::io("spawning a relay thread", e))?;
            relay.threads.push(handle);
        }
        Ok(relay)
    }

    /// Replaces the parameters of direction `i`; packets already in flight keep their
    /// schedule.
    pub(crate) fn set_params(&self, i: usize, p: LinkParams) {
        self.update_params(i, |cur| *cur = p);
    }

    /// Changes the parameters of direction `i` in place (used to flip one field without
    /// racing another writer).
    pub(crate) fn update_params(&self, i: usize, f: impl FnOnce(&mut LinkParams)) {
        let d = &self.dirs[i];
        let mut guard = d.params.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut guard);
        d.generation.fetch_add(1, Ordering::Release);
    }

    /// The parameters in force for direction `i`.
    pub(crate) fn params(&self, i: usize) -> LinkParams {
        *self.dirs[i]
            .params
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// A snapshot of direction `i`'s counters.
    pub(crate) fn stats(&self, i: usize) -> DirStats {
        self.dirs[i].stats.load()
    }

    /// A snapshot of the counters of A-side device `i` (0: the main one), `None` if there
    /// is no such device.
    pub(crate) fn iface_stats(&self, i: usize) -> Option<IfaceStats> {
        self.ifaces.get(i).map(IfaceCells::load)
    }

    /// The first error that stopped a relay thread, if any.
    pub(crate) fn error(&self) -> Option<String> {
        self.dirs.iter().find_map(|d| {
            d.error
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
        })
    }

    /// Stops and joins both threads, which closes the TUN fds (and so removes the devices).
    /// Safe to call more than once.
    pub(crate) fn shutdown(&mut self) -> Result<(), NetemError> {
        self.stop.store(true, Ordering::Release);
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64 to our eventfd. A failure could only be
        // an overflowing counter, which still leaves the fd readable, i.e. awake.
        unsafe {
            libc::write(
                self.wake.as_raw_fd(),
                (&one as *const u64).cast(),
                std::mem::size_of::<u64>(),
            );
        }
        let mut result = Ok(());
        for handle in self.threads.drain(..) {
            if handle.join().is_err() && result.is_ok() {
                result = Err(NetemError::Relay("a relay thread panicked".into()));
            }
        }
        result
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // Errors were already reported by an explicit shutdown, or have nowhere to go.
        let _ = self.shutdown();
    }
}

/// One direction's thread state.
struct Worker {
    /// Devices read from (one, or both of side A's), all feeding the one link model.
    inputs: Vec<Device>,
    /// Devices written to; see [`route`].
    outputs: Vec<Device>,
    wake: Arc<OwnedFd>,
    stop: Arc<AtomicBool>,
    shared: Arc<DirShared>,
    ifaces: Arc<[IfaceCells]>,
    realtime: bool,
}

impl Worker {
    fn run(&self, seed: u64) -> Result<(), NetemError> {
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

/// What one `ppoll()` returned.
#[derive(Default)]
struct Ready {
    /// Which inputs have packets (bit `k`: input `k`).
    inputs: u8,
    /// Shutdown was requested.
    wake: bool,
    /// The timeout expired with nothing ready.
    timed_out: bool,
}

/// Cap on how early a timed wake-up is aimed (and so on how long one spin may last).
const MAX_AIM: Duration = Duration::from_micros(200);
/// Below this much time to spare a timer is not worth it; the thread spins instead.
const MIN_SLEEP: Duration = Duration::from_micros(2);
/// Spinning may take at most 1/SPIN_SHARE of the thread's wall time.
const SPIN_SHARE: u32 = 4;
/// Most spin time that can be saved up while idle.
const MAX_SPIN_CREDIT: Duration = Duration::from_micros(500);

/// How to wait for the next due packet.
#[derive(Debug, PartialEq, Eq)]
enum Wait {
    /// Sleep in `ppoll()` this long (input may end it earlier).
    Sleep(Duration),
    /// Busy-wait until the packet is due.
    Spin,
}

/// Learns how late this thread's timed wake-ups arrive (tens of µs on a virtual machine,
/// even with 1 ns timer slack) and aims that much early, spinning away the rest. Without
/// it every delivery would be late by one wake-up latency, several percent of a 2 ms RTT.
///
/// Spinning is rationed to a quarter of the thread's time: when packets are due closer
/// together than a wake-up takes (around 500 Mbit/s and up), the thread sleeps anyway and
/// delivers what fell due in one batch, like a NIC coalescing interrupts, rather than
/// burning a core the endpoints need.
#[derive(Default)]
struct WakeAim {
    /// Moving average of recent wake-up lateness.
    late: Duration,
    /// Spin time available now.
    credit: Duration,
    /// When `credit` was last topped up.
    refilled: Option<Instant>,
}

impl WakeAim {
    /// How to wait at `now` when the next packet is due in `remaining`.
    fn plan(&mut self, now: Instant, remaining: Duration) -> Wait {
        let earned = self.refilled.map_or(Duration::ZERO, |t| {
            now.saturating_duration_since(t) / SPIN_SHARE
        });
        self.credit = (self.credit + earned).min(MAX_SPIN_CREDIT);
        self.refilled = Some(now);
        if remaining > self.late + MIN_SLEEP {
            Wait::Sleep(remaining - self.late)
        } else if remaining <= self.credit {
            self.credit -= remaining;
            Wait::Spin
        } else {
            Wait::Sleep(remaining)
        }
    }

    /// Records how late a timed wake-up was (exponential moving average, weight 1/8).
    fn observe(&mut self, late: Duration) {
        let late = late.min(MAX_AIM);
        self.late = self.late - self.late / 8 + late / 8;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn b_to_a_packets_go_to_the_device_owning_their_destination() {
        let fd = || Arc::new(OwnedFd::from(std::fs::File::open("/dev/null").unwrap()));
        let main = Ipv4Addr::new(10, 1, 2, 1);
        let second = Ipv4Addr::new(10, 1, 2, 3);
        let outputs = [
            Device {
                fd: fd(),
                addr: main,
                iface: Some(0),
            },
            Device {
                fd: fd(),
                addr: second,
                iface: Some(1),
            },
        ];
        let packet = |dst: Ipv4Addr| {
            let mut p = vec![0u8; 28];
            p[0] = 0x45;
            p[16..20].copy_from_slice(&dst.octets());
            p
        };
        assert_eq!(route(&outputs, &packet(second)).iface, Some(1));
        assert_eq!(route(&outputs, &packet(main)).iface, Some(0));
        // Unknown destinations, runts and non-IPv4 go to the main device.
        assert_eq!(
            route(&outputs, &packet(Ipv4Addr::new(10, 9, 9, 9))).iface,
            Some(0)
        );
        assert_eq!(route(&outputs, &[0x45, 0, 0]).iface, Some(0));
        let mut v6 = packet(second);
        v6[0] = 0x60;
        assert_eq!(route(&outputs, &v6).iface, Some(0));
        assert_eq!(ipv4_destination(&packet(second)), Some(second));
    }

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

    #[test]
    fn wake_aim_learns_lateness_and_spins_when_close() {
        let us = Duration::from_micros;
        let ms = Duration::from_millis(1);
        let mut t = Instant::now();
        let mut aim = WakeAim::default();
        assert_eq!(aim.plan(t, ms), Wait::Sleep(ms));
        for _ in 0..100 {
            aim.observe(us(40));
        }
        let late = aim.late.as_secs_f64() * 1e6;
        assert!((late - 40.0).abs() < 1.0, "{late}");
        // Far away: sleep, aimed early by the learnt lateness.
        t += ms;
        assert_eq!(aim.plan(t, ms), Wait::Sleep(ms - aim.late));
        // Close: spin (credit was earned during the last millisecond).
        assert_eq!(aim.plan(t, us(30)), Wait::Spin);
        // Outliers are capped.
        for _ in 0..100 {
            aim.observe(Duration::from_secs(1));
        }
        assert!(aim.late <= MAX_AIM);
    }

    #[test]
    fn spinning_is_rationed() {
        let us = Duration::from_micros;
        let mut aim = WakeAim {
            late: us(40),
            ..WakeAim::default()
        };
        let mut t = Instant::now();
        let mut spun = Duration::ZERO;
        // A packet due every 12 µs (1 Gbit/s of 1500-byte packets) for 100 ms.
        for _ in 0..8_333 {
            t += us(12);
            if aim.plan(t, us(12)) == Wait::Spin {
                spun += us(12);
            }
        }
        let share = spun.as_secs_f64() / 0.1;
        assert!(share <= 0.26, "spun {:.0} % of the time", share * 100.0);
        assert!(share >= 0.2, "spun only {:.0} % of the time", share * 100.0);
    }
}
