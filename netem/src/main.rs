//! `quicstrap-netem`: the link emulator as a foreground command, for running benchmarks by
//! hand. `up` builds the two namespaces and relays until `quit`, end of input, SIGINT or
//! SIGTERM, then tears everything down; `down` removes leftovers of a killed run.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::ExitCode;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use quicstrap_netem::units::{parse_duration, parse_probability, parse_rate, parse_size};
use quicstrap_netem::{cleanup, DirStats, Emulator, EmulatorConfig, LinkParams, Loss, NetemError};

/// Command line of the emulator.
#[derive(Parser)]
#[command(
    name = "quicstrap-netem",
    version,
    about = "Userspace link emulator between two network namespaces (no tc netem needed)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create <prefix>-a and <prefix>-b joined by an emulated link, and run in the
    /// foreground. Commands on stdin: `blackhole on`, `blackhole off`, `stats`, `quit`, and
    /// with --second-client `move second`, `move first`.
    Up(UpArgs),
    /// Delete leftover namespaces named <prefix>-*.
    Down {
        /// Prefix given to `up`.
        #[arg(long, default_value = "qs")]
        prefix: String,
    },
}

#[derive(Args)]
struct UpArgs {
    /// Namespaces are <prefix>-a (client side) and <prefix>-b (server side).
    #[arg(long, default_value = "qs")]
    prefix: String,
    /// Subnet 10.X.Y.0 of the link: A gets .1, B gets .2.
    #[arg(long, default_value = "10.77.0.0", value_parser = parse_subnet)]
    subnet: [u8; 2],
    /// One-way delay in each direction (RTT = 2 × delay), e.g. 25ms.
    #[arg(long, default_value = "0", value_parser = parse_duration)]
    delay: Duration,
    /// Uniform extra delay 0..=jitter per packet (never reorders), e.g. 2ms.
    #[arg(long, default_value = "0", value_parser = parse_duration)]
    jitter: Duration,
    /// Random loss per direction, as a fraction (0.01) or percentage (1%).
    #[arg(long, default_value = "0", value_parser = parse_probability)]
    loss: f64,
    /// Mean loss-burst length in packets: switches --loss to a Gilbert–Elliott model.
    #[arg(long)]
    burst_len: Option<f64>,
    /// Bottleneck rate per direction, e.g. 200mbit, 1gbit, or unlimited.
    #[arg(long, default_value = "unlimited", value_parser = parse_rate_arg)]
    rate: RateArg,
    /// Drop-tail queue at the bottleneck, e.g. 512k [default: max(BDP, 64k)].
    #[arg(long, value_parser = parse_size)]
    queue: Option<usize>,
    /// Probability that a packet is held back by --reorder-delay (overtaken by later ones).
    #[arg(long, default_value = "0", value_parser = parse_probability)]
    reorder: f64,
    /// How long a reordered packet is held back.
    #[arg(long, default_value = "5ms", value_parser = parse_duration)]
    reorder_delay: Duration,
    /// Seed of the loss / jitter / reorder random streams.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Run the relay threads at SCHED_FIFO priority 1 (steadier delays next to CPU-bound
    /// endpoints; risks real-time throttling stalls at very high packet rates).
    #[arg(long)]
    realtime: bool,
    /// Also give <prefix>-a a second interface qs1 with address 10.X.Y.3 on the same link;
    /// `move second` / `move first` on stdin switch the route to B between the two (a
    /// client address change, for connection-migration experiments).
    #[arg(long)]
    second_client: bool,
    /// Ignore stdin and run until SIGINT/SIGTERM (for running in the background).
    #[arg(long)]
    no_stdin: bool,
}

/// A bit rate where `None` means unlimited (a bare `Option` would make clap treat the flag
/// as optional instead).
#[derive(Clone, Copy)]
struct RateArg(Option<u64>);

fn parse_rate_arg(s: &str) -> Result<RateArg, NetemError> {
    parse_rate(s).map(RateArg)
}

/// Accepts `10.X.Y.0` or `X.Y`.
fn parse_subnet(s: &str) -> Result<[u8; 2], String> {
    let parts: Vec<&str> = s.split('.').collect();
    let (x, y) = match parts.as_slice() {
        ["10", x, y, "0"] | [x, y] => (*x, *y),
        _ => return Err(format!("subnet {s:?} must look like 10.X.Y.0")),
    };
    let x: u8 = x.parse().map_err(|_| format!("bad octet {x:?}"))?;
    let y: u8 = y.parse().map_err(|_| format!("bad octet {y:?}"))?;
    Ok([x, y])
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Up(args) => up(args),
        Cmd::Down { prefix } => cleanup(&prefix).map(|n| {
            println!("removed {n} namespace(s) named {prefix}-*");
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("quicstrap-netem: {e}");
            ExitCode::FAILURE
        }
    }
}

fn up(args: UpArgs) -> Result<(), NetemError> {
    let loss = if args.loss == 0.0 {
        Loss::None
    } else if let Some(burst) = args.burst_len {
        Loss::bursty(args.loss, burst)?
    } else {
        Loss::Bernoulli(args.loss)
    };
    let rtt = args.delay * 2;
    let rate = args.rate.0;
    let params = LinkParams {
        jitter: args.jitter,
        reorder: args.reorder,
        reorder_delay: args.reorder_delay,
        queue_bytes: args
            .queue
            .unwrap_or_else(|| LinkParams::default_queue_bytes(rate, rtt)),
        ..LinkParams::symmetric_rtt(rtt, rate, loss)
    };
    let mut cfg = EmulatorConfig::symmetric(args.prefix.clone(), args.subnet, params);
    cfg.seed = args.seed;
    cfg.realtime = args.realtime;
    cfg.second_client_interface = args.second_client;

    // Signals first, so a Ctrl-C during setup still ends in a clean teardown.
    let signals = SignalPipe::install()?;
    let emu = Emulator::start(cfg)?;
    print_banner(&emu, &params);

    let outcome = run_loop(&emu, &signals, args.no_stdin);
    print_all_stats(&emu);
    let stopped = emu.stop();
    if stopped.is_ok() {
        println!("torn down: namespaces deleted");
    }
    outcome.and(stopped)
}

fn print_banner(emu: &Emulator, p: &LinkParams) {
    let rate = p.rate_bps.map_or("unlimited".to_owned(), |r| {
        format!("{} Mbit/s", r as f64 / 1e6)
    });
    println!(
        "link up: {} ({}) <-> {} ({})",
        emu.ns_a(),
        emu.addr_a(),
        emu.ns_b(),
        emu.addr_b()
    );
    if let Some(a2) = emu.addr_a2() {
        println!(
            "second client interface: {} {a2} in {} (idle until `move second`)",
            quicstrap_netem::TUN2_NAME,
            emu.ns_a()
        );
    }
    println!(
        "each way: delay {:?}, jitter {:?}, loss {:.4} ({:?}), rate {rate}, queue {} B, \
         reorder {} (+{:?})",
        p.delay,
        p.jitter,
        p.loss.mean_rate(),
        p.loss,
        p.queue_bytes,
        p.reorder,
        p.reorder_delay
    );
    println!("try:");
    println!("  ip netns exec {} iperf3 -s", emu.ns_b());
    println!("  ip netns exec {} iperf3 -c {}", emu.ns_a(), emu.addr_b());
    println!("  ip netns exec {} ping {}", emu.ns_a(), emu.addr_b());
    println!("commands: {COMMANDS}");
}

/// What `up` understands on stdin.
const COMMANDS: &str = "blackhole on | blackhole off | move second | move first | stats | quit";

/// Both directions' counters, then each client interface's when there are two.
fn print_all_stats(emu: &Emulator) {
    let (ab, ba) = emu.stats();
    print_stats(&ab, &ba);
    if emu.addr_a2().is_some() {
        for (second, name) in [
            (false, quicstrap_netem::TUN_NAME),
            (true, quicstrap_netem::TUN2_NAME),
        ] {
            if let Some(s) = emu.client_iface_stats(second) {
                println!(
                    "client {name}: sent {} pkts / {} B, received {} pkts / {} B",
                    s.packets_sent, s.bytes_sent, s.packets_received, s.bytes_received
                );
            }
        }
    }
}

fn print_stats(ab: &DirStats, ba: &DirStats) {
    for (name, s) in [("A->B", ab), ("B->A", ba)] {
        println!(
            "{name}: in {} pkts / {} B, delivered {} pkts / {} B, dropped loss {} queue {} \
             blackhole {}, in flight {}, relay lateness {:?} mean, overload drops {} \
             (kernel {} + write errors {})",
            s.packets_in,
            s.bytes_in,
            s.packets_delivered,
            s.bytes_delivered,
            s.dropped_loss,
            s.dropped_queue,
            s.dropped_blackhole,
            s.in_flight,
            s.mean_lateness(),
            s.kernel_dropped + s.write_errors,
            s.kernel_dropped,
            s.write_errors,
        );
    }
}

/// Waits for commands or a signal; returns when it is time to tear down.
fn run_loop(emu: &Emulator, signals: &SignalPipe, no_stdin: bool) -> Result<(), NetemError> {
    let mut pending = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let mut fds = [
            libc::pollfd {
                fd: signals.read.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: libc::STDIN_FILENO,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let nfds = if no_stdin { 1 } else { 2 };
        // A periodic wake-up to notice a dead relay.
        // SAFETY: `fds` holds at least `nfds` valid pollfds.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), nfds, 1000) };
        if rc < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(NetemError::Io {
                context: "poll".into(),
                source: err,
            });
        }
        emu.check()?;
        if fds[0].revents != 0 {
            println!("signal received, tearing down");
            return Ok(());
        }
        if no_stdin || fds[1].revents == 0 {
            continue;
        }
        // SAFETY: reads into a valid buffer of its length.
        let n = unsafe { libc::read(libc::STDIN_FILENO, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(NetemError::Io {
                context: "reading stdin".into(),
                source: err,
            });
        }
        if n == 0 {
            println!("end of input, tearing down");
            return Ok(());
        }
        pending.extend_from_slice(&buf[..n as usize]);
        while let Some(pos) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=pos).collect();
            let line = String::from_utf8_lossy(&line);
            if !command(emu, line.trim()) {
                return Ok(());
            }
        }
    }
}

/// Runs one stdin command; `false` means quit.
fn command(emu: &Emulator, line: &str) -> bool {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        [] => {}
        ["blackhole", "on"] => {
            emu.set_blackhole(true);
            println!("blackhole on: both directions drop everything");
        }
        ["blackhole", "off"] => {
            emu.set_blackhole(false);
            println!("blackhole off");
        }
        ["move", to @ ("second" | "first")] => match emu.move_client(*to == "second") {
            Ok(()) => println!("client route to B now via its {to} interface"),
            Err(e) => println!("move {to}: {e}"),
        },
        ["stats"] => print_all_stats(emu),
        ["quit"] | ["exit"] => return false,
        _ => println!("unknown command {line:?}; try: {COMMANDS}"),
    }
    true
}

/// Write end of the self-pipe, for the signal handler (which may only make async-signal-
/// safe calls such as `write`).
static SIGNAL_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(_sig: libc::c_int) {
    let fd = SIGNAL_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        let byte = 1u8;
        // SAFETY: write(2) is async-signal-safe; the pipe is non-blocking, so a full pipe
        // (a signal already pending) just drops this byte.
        unsafe {
            libc::write(fd, (&byte as *const u8).cast(), 1);
        }
    }
}

/// Self-pipe that turns SIGINT, SIGTERM and SIGHUP into a readable fd, so the main loop
/// can tear down normally instead of dying with the namespaces left behind.
struct SignalPipe {
    read: OwnedFd,
    _write: OwnedFd,
}

impl SignalPipe {
    fn install() -> Result<SignalPipe, NetemError> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` has room for the two fds pipe2 returns.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
            return Err(NetemError::Io {
                context: "pipe2".into(),
                source: std::io::Error::last_os_error(),
            });
        }
        // SAFETY: both fds are fresh and owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        SIGNAL_FD.store(write.as_raw_fd(), Ordering::Relaxed);
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            // SAFETY: a zeroed sigaction with a valid handler and an empty mask is valid.
            let rc = unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
                libc::sigemptyset(&mut action.sa_mask);
                action.sa_flags = libc::SA_RESTART;
                libc::sigaction(sig, &action, std::ptr::null_mut())
            };
            if rc != 0 {
                return Err(NetemError::Io {
                    context: format!("installing a handler for signal {sig}"),
                    source: std::io::Error::last_os_error(),
                });
            }
        }
        Ok(SignalPipe {
            read,
            _write: write,
        })
    }
}
