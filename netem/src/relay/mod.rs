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
//!
//! [`Link`]: crate::model::Link
//! [`WakeAim`]: wake::WakeAim

mod route;
mod stats;
mod wake;
mod worker;

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use crate::model::LinkParams;
use crate::NetemError;

use self::route::Device;
pub use self::stats::{DirStats, IfaceStats};
use self::stats::{IfaceCells, StatCells};
use self::worker::Worker;

/// Most TUN devices one side may have (the client's first and second interface).
pub(crate) const MAX_SIDE_DEVICES: usize = 2;

/// State one direction shares between its relay thread and the controlling side.
struct DirShared {
    params: Mutex<LinkParams>,
    /// Bumped on every parameter change; the thread re-reads `params` when it moves.
    generation: AtomicU64,
    stats: StatCells,
    /// Why the thread stopped early, if it did.
    error: Mutex<Option<String>>,
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
