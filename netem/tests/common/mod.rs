//! Helpers shared by the integration tests: skipping where the emulator cannot run, starting
//! an emulator on a fresh prefix, and the traffic generators (UDP echo, UDP sequence blast,
//! TCP bulk) whose sockets live in the emulator's namespaces.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use quicstrap_netem::{
    cleanup, in_netns, is_supported, Dir, DirStats, Emulator, EmulatorConfig, LinkParams,
};

/// True when the emulator can run here; otherwise prints why the test is skipped.
pub fn supported(test: &str) -> bool {
    match is_supported() {
        Ok(()) => true,
        Err(why) => {
            println!("SKIPPED {test}: {why}");
            false
        }
    }
}

/// Starts an emulator with the same `params` both ways after removing leftovers of a
/// previous (crashed) run with the same prefix.
pub fn start(prefix: &str, subnet: [u8; 2], params: LinkParams, seed: u64) -> Emulator {
    cleanup(prefix).unwrap();
    let mut cfg = EmulatorConfig::symmetric(prefix, subnet, params);
    cfg.seed = seed;
    Emulator::start(cfg).unwrap()
}

/// Like [`start`], with the relay threads at real-time priority: for the tests that measure
/// delays, so a CPU-bound neighbour on the host cannot stretch them.
pub fn start_realtime(prefix: &str, subnet: [u8; 2], params: LinkParams, seed: u64) -> Emulator {
    cleanup(prefix).unwrap();
    let mut cfg = EmulatorConfig::symmetric(prefix, subnet, params);
    cfg.seed = seed;
    cfg.realtime = true;
    Emulator::start(cfg).unwrap()
}

/// Moves the calling thread to `SCHED_FIFO` priority 1, the relay's real-time priority,
/// or back to the ordinary policy. Best effort (without the privilege nothing changes).
///
/// The delay tests' endpoints take part in every round trip they time: on a loaded host an
/// ordinary thread may wait milliseconds for a core, which would measure the host, not the
/// link. At the relay's own priority they run as soon as the relay hands them a packet, and
/// a busy-polling endpoint's `yield_now` hands the core back to a runnable relay thread.
pub fn set_realtime(on: bool) {
    let (policy, priority) = if on {
        (libc::SCHED_FIFO, 1)
    } else {
        (libc::SCHED_OTHER, 0)
    };
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: valid policy and parameter for the calling thread.
    unsafe {
        libc::pthread_setschedparam(libc::pthread_self(), policy, &param);
    }
}

/// Names of all named namespaces, as `ip netns list` shows them.
pub fn netns_list() -> Vec<String> {
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// Sets a socket's receive buffer past `rmem_max` (root only), so a burst the test sends
/// is not lost in the receiver's socket instead of on the emulated link.
pub fn big_rcvbuf(fd: &impl AsRawFd, bytes: i32) {
    // SAFETY: setsockopt with a valid int option value.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&bytes as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_RCVBUFFORCE: {}", std::io::Error::last_os_error());
}

pub fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// How the test's own endpoints wait for packets.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Wait {
    /// Blocking reads: realistic, but every reply then pays a thread wake-up, which on
    /// this virtual machine costs 50-100 µs when the CPU had gone idle.
    Block,
    /// Busy-polling non-blocking reads, so the measurement shows the link rather than the
    /// test's own wake-ups (burns a core per endpoint while it runs).
    Spin,
}

/// A UDP echo server in namespace B.
pub struct Echo {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Echo {
    pub fn start(emu: &Emulator, port: u16, wait: Wait) -> Echo {
        let sock = in_netns(emu.ns_b(), || UdpSocket::bind((emu.addr_b(), port)))
            .unwrap()
            .unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        sock.set_nonblocking(wait == Wait::Spin).unwrap();
        let addr = sock.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            set_realtime(true);
            let mut buf = [0u8; 2048];
            while !flag.load(Ordering::Relaxed) {
                match sock.recv_from(&mut buf) {
                    Ok((n, from)) => {
                        let _ = sock.send_to(&buf[..n], from);
                    }
                    // Busy-polling: let a runnable relay thread have the CPU first.
                    Err(_) if wait == Wait::Spin => std::thread::yield_now(),
                    Err(_) => {}
                }
            }
        });
        Echo {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

/// Sends `count` pings from namespace A to the echo server, one every `interval`
/// (pipelined, so long RTTs do not make the test slow), and returns the RTT of each one
/// that came back within `grace` after the last send (sooner once all of them are back).
pub fn ping(
    emu: &Emulator,
    echo: &Echo,
    count: u32,
    interval: Duration,
    grace: Duration,
    wait: Wait,
) -> Vec<Duration> {
    let sock = in_netns(emu.ns_a(), || UdpSocket::bind((emu.addr_a(), 0)))
        .unwrap()
        .unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let rx = sock.try_clone().unwrap();
    rx.set_nonblocking(wait == Wait::Spin).unwrap();
    let sent: Arc<Mutex<HashMap<u32, Instant>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let back = Arc::new(AtomicU64::new(0));
    let receiver = {
        let sent = sent.clone();
        let (done, back) = (done.clone(), back.clone());
        std::thread::spawn(move || {
            set_realtime(true);
            let mut rtts = Vec::new();
            let mut buf = [0u8; 64];
            while !done.load(Ordering::Relaxed) {
                if let Ok(n) = rx.recv(&mut buf) {
                    let now = Instant::now();
                    assert_eq!(n, 4);
                    let seq = u32::from_be_bytes(buf[..4].try_into().unwrap());
                    if let Some(t) = sent.lock().unwrap().get(&seq) {
                        rtts.push(now - *t);
                        back.fetch_add(1, Ordering::Relaxed);
                    }
                } else if wait == Wait::Spin {
                    // Busy-polling: let a runnable relay thread have the CPU first.
                    std::thread::yield_now();
                }
            }
            rtts
        })
    };
    // The sender too: two busy-polling real-time endpoints would otherwise leave an
    // ordinary thread only the kernel's real-time throttling slack.
    set_realtime(true);
    let start = Instant::now();
    for seq in 0..count {
        // Absolute schedule, so a late wake-up does not stretch the whole run.
        let due = start + interval * seq;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        sent.lock().unwrap().insert(seq, Instant::now());
        sock.send_to(&seq.to_be_bytes(), echo.addr).unwrap();
    }
    set_realtime(false);
    let deadline = Instant::now() + grace;
    while back.load(Ordering::Relaxed) < u64::from(count) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    done.store(true, Ordering::Relaxed);
    receiver.join().unwrap()
}

/// Result of sending numbered UDP datagrams across one direction.
pub struct Blast {
    /// Which sequence numbers arrived.
    pub received: Vec<bool>,
    /// What the emulator counted for that direction during the blast.
    pub stats: DirStats,
}

impl Blast {
    pub fn lost(&self) -> usize {
        self.received.iter().filter(|&&r| !r).count()
    }

    pub fn loss_rate(&self) -> f64 {
        self.lost() as f64 / self.received.len() as f64
    }

    /// Mean number of consecutive lost packets per loss burst.
    pub fn mean_loss_run(&self) -> f64 {
        let mut runs = 0usize;
        let mut lost = 0usize;
        let mut prev_lost = false;
        for &r in &self.received {
            if !r {
                lost += 1;
                if !prev_lost {
                    runs += 1;
                }
            }
            prev_lost = !r;
        }
        lost as f64 / runs.max(1) as f64
    }
}

fn dir_stats(emu: &Emulator, dir: Dir) -> DirStats {
    let (ab, ba) = emu.stats();
    match dir {
        Dir::AtoB => ab,
        Dir::BtoA => ba,
    }
}

/// The emulator's totals for `dir` once nothing is on the link ([`quiet`]). The relay
/// publishes its counters one at a time, so a snapshot taken while traffic flows may mix two
/// moments; only a quiet link gives totals that add up exactly.
pub fn settled(emu: &Emulator, dir: Dir) -> DirStats {
    quiet(|| dir_stats(emu, dir), |s| s.in_flight == 0)
}

/// What `read` returns once two reads 20 ms apart agree and `idle` holds of it: counters
/// the relay updates just after the packet they count may already have woken the reader.
/// Fails after 30 s.
pub fn quiet<T: PartialEq + std::fmt::Debug>(read: impl Fn() -> T, idle: impl Fn(&T) -> bool) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = read();
    loop {
        std::thread::sleep(Duration::from_millis(20));
        let now = read();
        if now == last && idle(&now) {
            return now;
        }
        assert!(Instant::now() < deadline, "never went quiet: {now:?}");
        last = now;
    }
}

/// Sends `count` numbered datagrams across `dir` and records which ones arrived.
///
/// Paced at about 25 000 packets/s in bursts of 25, and never more than [`BLAST_WINDOW`]
/// ahead of what the relay has read: the TUN queue (1000 packets) cannot overflow however
/// slowly the host runs the relay, so every datagram reaches the link model and the test
/// measures the model, not the machine's packet rate. The receiver stops once it holds
/// every datagram the emulator delivered, not after a guessed drain time.
pub fn blast(emu: &Emulator, dir: Dir, port: u16, count: u32) -> Blast {
    let (src_ns, src_ip, dst_ns, dst_ip) = match dir {
        Dir::AtoB => (emu.ns_a(), emu.addr_a(), emu.ns_b(), emu.addr_b()),
        Dir::BtoA => (emu.ns_b(), emu.addr_b(), emu.ns_a(), emu.addr_a()),
    };
    let rx = in_netns(dst_ns, || UdpSocket::bind((dst_ip, port)))
        .unwrap()
        .unwrap();
    big_rcvbuf(&rx, 16 << 20);
    rx.set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let tx = in_netns(src_ns, || UdpSocket::bind((src_ip, 0)))
        .unwrap()
        .unwrap();
    let dst = rx.local_addr().unwrap();

    let before = settled(emu, dir);
    let arrived = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let receiver = {
        let (arrived, done) = (arrived.clone(), done.clone());
        std::thread::spawn(move || {
            let mut got = vec![false; count as usize];
            let mut buf = [0u8; 256];
            loop {
                match rx.recv(&mut buf) {
                    Ok(n) => {
                        assert_eq!(n, 100);
                        let seq = u32::from_be_bytes(buf[..4].try_into().unwrap());
                        assert!(!got[seq as usize], "duplicate {seq}");
                        got[seq as usize] = true;
                        arrived.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) if done.load(Ordering::Relaxed) => return got,
                    Err(_) => {}
                }
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut payload = [0u8; 100];
    let start = Instant::now();
    for seq in 0..count {
        if seq % 25 == 0 {
            while u64::from(seq) > dir_stats(emu, dir).since(&before).packets_in + BLAST_WINDOW {
                assert!(Instant::now() < deadline, "the relay stopped reading");
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        payload[..4].copy_from_slice(&seq.to_be_bytes());
        tx.send_to(&payload, dst).unwrap();
        if seq % 25 == 24 {
            let due = start + Duration::from_micros(u64::from(seq + 1) * 40);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
    }
    // The relay has read every datagram (or the kernel says it dropped it), everything it
    // read has left the link, and the receiver holds what it delivered.
    loop {
        let s = dir_stats(emu, dir).since(&before);
        if s.packets_in + s.kernel_dropped >= u64::from(count) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the relay stopped reading: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let stats = settled(emu, dir).since(&before);
    while arrived.load(Ordering::Relaxed) < stats.packets_delivered {
        assert!(
            Instant::now() < deadline,
            "{} of {} delivered datagrams arrived",
            arrived.load(Ordering::Relaxed),
            stats.packets_delivered
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    done.store(true, Ordering::Relaxed);
    let received = receiver.join().unwrap();
    Blast { received, stats }
}

/// How many datagrams [`blast`] lets the sender get ahead of the relay: a quarter of the
/// TUN queue, so the kernel never drops one before the link model sees it.
pub const BLAST_WINDOW: u64 = 250;

/// Result of a TCP bulk transfer from namespace A to namespace B.
pub struct Bulk {
    /// Application bytes received per second between the end of warm-up and the end of the
    /// measurement window, in bits per second.
    pub goodput_bps: f64,
    /// IP bytes the emulator delivered A→B per second over the same window (payload plus
    /// headers: what the bottleneck rate applies to), in bits per second.
    pub link_bps: f64,
    pub stats: DirStats,
}

/// Streams data A→B over TCP for `warmup + measure`, then reports throughput over the
/// `measure` window only (the warm-up covers connection setup and slow start).
pub fn tcp_bulk(emu: &Emulator, port: u16, warmup: Duration, measure: Duration) -> Bulk {
    let listener = in_netns(emu.ns_b(), || TcpListener::bind((emu.addr_b(), port)))
        .unwrap()
        .unwrap();
    let dst = listener.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let stop = stop.clone();
        let stream = in_netns(emu.ns_a(), || TcpStream::connect(dst))
            .unwrap()
            .unwrap();
        std::thread::spawn(move || {
            let mut stream = stream;
            let chunk = vec![0x5au8; 256 * 1024];
            while !stop.load(Ordering::Relaxed) {
                if stream.write_all(&chunk).is_err() {
                    break;
                }
            }
        })
    };
    let (mut conn, _) = listener.accept().unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    let mut first: Option<Instant> = None;
    let mut warm: Option<(Instant, u64, u64)> = None;
    let result = loop {
        let n = conn.read(&mut buf).unwrap();
        assert!(n > 0, "sender closed early");
        let now = Instant::now();
        total += n as u64;
        let t0 = *first.get_or_insert(now);
        match warm {
            None if now - t0 >= warmup => {
                warm = Some((now, total, dir_stats(emu, Dir::AtoB).bytes_delivered));
            }
            Some((tw, bytes_w, link_w)) if now - tw >= measure => {
                let secs = (now - tw).as_secs_f64();
                // Counters before the clock (at the start, the clock before the counters):
                // a pause between the two reads can only lengthen the window the link's
                // bytes are divided by, never count bytes from outside it.
                let stats = dir_stats(emu, Dir::AtoB);
                let link_secs = tw.elapsed().as_secs_f64();
                break Bulk {
                    goodput_bps: (total - bytes_w) as f64 * 8.0 / secs,
                    link_bps: (stats.bytes_delivered - link_w) as f64 * 8.0 / link_secs,
                    stats,
                };
            }
            _ => {}
        }
    };
    stop.store(true, Ordering::Relaxed);
    drop(conn);
    sender.join().unwrap();
    result
}
