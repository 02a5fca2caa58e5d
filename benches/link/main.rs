//! QUIC against HTTP/TCP on an emulated lossy, high-latency link: the benchmark the project
//! exists for.
//!
//! `cargo bench --bench link` (as root) builds the link emulator (two network namespaces and
//! a userspace relay, see `netem/`), starts one `quicstrap serve` in the server namespace with
//! a QUIC endpoint per congestion controller and an HTTPS listener per TCP congestion
//! controller — all over the same snapshot, so checksums are computed once — and runs
//! `quicstrap fetch` in the client namespace for every cell of the matrix:
//!
//! * RTT {2, 50, 150} ms × loss {0, 0.1 %, 1 %, 3 %, bursty 1 % (mean burst 4)}, at
//!   200 Mbit/s with a one-BDP drop-tail queue;
//! * variants: QUIC paced (the default), QUIC cubic, QUIC bbr, TCP cubic, TCP bbr, TCP cubic
//!   and TCP bbr × 4 connections;
//! * repetitions alternate between variants (the order rotates every repetition).
//!
//! Then a clean loopback run (no emulator) of every variant with MD5 and BLAKE3. Each fetch is
//! a real process: goodput is the fetch's own report (validated payload bytes / time from the
//! request to the rename), client CPU and peak RSS come from `wait4`, server CPU from
//! `/proc/<pid>/stat` and server peak RSS from `VmHWM` (reset before every run).
//!
//! Output: a Markdown table, a JSON file and an SVG plot under `--out` (default
//! `bench-results/`). Every run over the emulated link also records how the relay kept up
//! (its mean lateness behind the model's schedule, the kernel's drops before it); the table
//! names the cells where it fell behind, whose numbers describe the host as much as the
//! protocols (`cargo bench -p quicstrap-netem --bench fidelity` checks a host beforehand). Options (`cargo bench --bench link -- --help`): `--reps N` (3),
//! `--rtts 2,50,150`, `--losses 0,0.1,1,3,b1`, `--rate-mbit 200`, `--mtu 1500`, `--cap-secs 30` (a run that
//! has not finished by then is stopped and reported with the bytes it had received over its
//! time), `--records N` (262144 × 1000 B ≈ 268 MB), `--variants quic-cubic,...`,
//! `--no-loopback`, `--no-link`. `QUICSTRAP_BIN=path` runs another build of `quicstrap` (e.g.
//! an older commit's, for a before/after comparison).
//!
//! Under `cargo test` (no `--bench` argument) it runs a one-cell smoke version as root and
//! skips with a message otherwise.

mod fetch;
mod report;
#[path = "../shared/seed.rs"]
mod seed;

use std::ffi::OsString;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::Parser;
use quicstrap_netem::{Dir, Emulator, EmulatorConfig, LinkParams, Loss};

use fetch::{fetch_once, loss, variant, RelayHealth, Serve, VARIANTS};
use report::{write_outputs, Cell};

/// The store name of the benchmark's partition.
const STORE: &str = "bench";

/// The command line. Every option is optional: the full matrix and the smoke run have
/// defaults of their own ([`Args::resolve`]).
#[derive(Parser, Debug)]
#[command(
    name = "link",
    bin_name = "cargo bench --bench link --",
    about = "QUIC against HTTP/TCP on an emulated lossy, high-latency link (as root)"
)]
struct Args {
    /// Repetitions of every cell [default: 3; 1 in the smoke run].
    #[arg(long, value_name = "N")]
    reps: Option<usize>,
    /// Round-trip times of the matrix, in ms [default: 2,50,150; 20 in the smoke run].
    #[arg(long, value_name = "MS,...", value_delimiter = ',', value_parser = trimmed::<u64>)]
    rtts: Option<Vec<u64>>,
    /// Loss rates of the matrix, in percent; `bN` is N % in bursts of 4 on average
    /// [default: 0,0.1,1,3,b1; 1 in the smoke run].
    #[arg(long, value_name = "PERCENT,...", value_delimiter = ',', value_parser = trimmed::<String>)]
    losses: Option<Vec<String>>,
    /// Link rate in Mbit/s.
    #[arg(long, value_name = "N", default_value_t = 200)]
    rate_mbit: u64,
    /// MTU of the emulated link's interfaces: 1500 (Ethernet) or, for jumbo frames, 9000.
    #[arg(long, value_name = "BYTES", default_value_t = quicstrap_netem::TUN_MTU)]
    mtu: u32,
    /// Seconds a run may take before it is stopped and counted with the bytes it had
    /// received [default: 30; 120 in the smoke run].
    #[arg(long, value_name = "N")]
    cap_secs: Option<u64>,
    /// Records of 1000 B in the partition [default: 262144; 8000 in the smoke run].
    #[arg(long, value_name = "N")]
    records: Option<u64>,
    /// Variants to run [default: all of them].
    #[arg(long, value_name = "NAME,...", value_delimiter = ',', value_parser = variant_name)]
    variants: Option<Vec<String>>,
    /// Skip the clean loopback runs (the smoke run always does).
    #[arg(long)]
    no_loopback: bool,
    /// Skip the emulated link.
    #[arg(long)]
    no_link: bool,
    /// Where the table, the JSON and the plot go [default: bench-results/; a temporary dir,
    /// removed afterwards, in the smoke run].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Passed by `cargo bench`: the full matrix. Without it (`cargo test`), the smoke run.
    #[arg(long, hide = true)]
    bench: bool,
    /// Values of arguments for other benchmarks or the test harness: ignored (see
    /// [`Args::from_env`]).
    #[arg(hide = true)]
    others: Vec<String>,
}

impl Args {
    /// Parses the command line, skipping options it does not know: `cargo bench -- ARGS`
    /// hands ARGS to every benchmark, and `cargo test -- ARGS` to this one's smoke run, so
    /// options of the others (their values land in `others`) are no error here.
    fn from_env() -> Self {
        let mut argv: Vec<OsString> = std::env::args_os().collect();
        loop {
            let err = match Self::try_parse_from(&argv) {
                Ok(args) => return args,
                Err(e) => e,
            };
            let unknown = match (err.kind(), err.get(ContextKind::InvalidArg)) {
                (ErrorKind::UnknownArgument, Some(ContextValue::String(a))) => a.clone(),
                _ => err.exit(),
            };
            let with_value = format!("{unknown}=");
            let at = argv.iter().skip(1).position(|a| {
                a.to_str()
                    .is_some_and(|a| a == unknown || a.starts_with(&with_value))
            });
            match at {
                Some(i) => {
                    argv.remove(i + 1);
                }
                None => err.exit(),
            }
        }
    }
}

/// A list element, spaces around it ignored.
fn trimmed<T: FromStr>(s: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    s.trim().parse().map_err(|e| format!("{s:?}: {e}"))
}

/// The name of one of [`VARIANTS`].
fn variant_name(s: &str) -> Result<String, String> {
    let s = s.trim();
    if VARIANTS.iter().any(|v| v.name == s) {
        Ok(s.to_owned())
    } else {
        let names: Vec<_> = VARIANTS.iter().map(|v| v.name).collect();
        Err(format!(
            "unknown variant {s:?}, want one of {}",
            names.join(", ")
        ))
    }
}

/// What a run does, defaults filled in.
#[derive(Clone, Debug)]
pub(crate) struct Opts {
    pub(crate) reps: usize,
    pub(crate) rtts: Vec<u64>,
    pub(crate) losses: Vec<String>,
    pub(crate) rate_mbit: u64,
    pub(crate) mtu: u32,
    pub(crate) cap_secs: u64,
    records: u64,
    pub(crate) variants: Vec<String>,
    loopback: bool,
    link: bool,
    pub(crate) out: PathBuf,
    smoke: bool,
}

impl Args {
    /// The options of a full run (`--bench`) or of the smoke run, with what was given.
    fn resolve(self) -> Opts {
        let smoke = !self.bench;
        fn pick<T>(smoke: bool, given: Option<T>, bench: T, smoke_default: T) -> T {
            given.unwrap_or(if smoke { smoke_default } else { bench })
        }
        Opts {
            reps: pick(smoke, self.reps, 3, 1),
            rtts: self
                .rtts
                .unwrap_or_else(|| if smoke { vec![20] } else { vec![2, 50, 150] }),
            losses: self.losses.unwrap_or_else(|| {
                let l: &[&str] = if smoke {
                    &["1"]
                } else {
                    &["0", "0.1", "1", "3", "b1"]
                };
                l.iter().map(|s| s.to_string()).collect()
            }),
            rate_mbit: self.rate_mbit,
            mtu: self.mtu,
            cap_secs: pick(smoke, self.cap_secs, 30, 120),
            records: pick(smoke, self.records, 262_144, 8_000),
            variants: self
                .variants
                .unwrap_or_else(|| VARIANTS.iter().map(|v| v.name.to_string()).collect()),
            loopback: !smoke && !self.no_loopback,
            link: !self.no_link,
            out: self.out.unwrap_or_else(|| {
                if smoke {
                    std::env::temp_dir()
                        .join(format!("quicstrap-link-smoke-{}", std::process::id()))
                } else {
                    testkit::workspace_root().join("bench-results")
                }
            }),
            smoke,
        }
    }
}

fn main() {
    let o = Args::from_env().resolve();
    if o.smoke {
        if let Err(why) = quicstrap_netem::is_supported() {
            eprintln!("link bench smoke skipped: {why}");
            return;
        }
    }
    let work = if o.smoke {
        o.out.join("work")
    } else {
        PathBuf::from("/var/tmp/quicstrap-bench")
    };
    let data = work.join(format!("source-{}", o.records));
    seed::seed_source(&data, STORE, o.records);
    let source_bytes = testkit::dir_bytes(&data.join(format!("{STORE}_v1")).join("0"));
    std::fs::create_dir_all(&o.out).expect("out dir");
    let mut cells: Vec<Cell> = Vec::new();
    let machine = machine();
    eprintln!("machine: {machine}");
    eprintln!("snapshot: {:.1} MB", source_bytes as f64 / 1e6);

    if o.link {
        let prefix = format!("qsb{}", std::process::id() % 10_000);
        let rate = o.rate_mbit * 1_000_000;
        let start_params =
            LinkParams::symmetric_rtt(Duration::from_millis(2), Some(rate), Loss::None);
        let emu = Emulator::start(EmulatorConfig {
            mtu: o.mtu,
            ..EmulatorConfig::symmetric(prefix, [78, 0], start_params)
        })
        .expect("start the link emulator");
        // TCP autotuning may grow buffers to 64 MiB in both namespaces (the default 4 MiB send
        // buffer caps one TCP flow below 200 Mbit/s at 150 ms): the baseline must not lose
        // for want of buffers.
        for ns in [emu.ns_a(), emu.ns_b()] {
            quicstrap_netem::set_sysctl(ns, "net.ipv4.tcp_rmem", "4096 131072 67108864")
                .expect("tcp_rmem");
            quicstrap_netem::set_sysctl(ns, "net.ipv4.tcp_wmem", "4096 16384 67108864")
                .expect("tcp_wmem");
        }
        let server_ip = emu.addr_b().to_string();
        let snaps = work.join("snapshots-link");
        let _ = std::fs::remove_dir_all(&snaps);
        let serve = Serve::start(Some(emu.ns_b()), &server_ip, &data, &snaps);
        let dst = work.join("dst-link");
        // Warm-up: make the snapshot and its MD5 digests once, untimed.
        let warm = fetch_once(
            Some(emu.ns_a()),
            &server_ip,
            variant("quic-paced"),
            "md5",
            &dst,
            Duration::from_secs(600),
            &serve,
            o.records,
        );
        eprintln!("warm-up: {:.1} MB/s", warm.goodput_mbs);
        for &rtt in &o.rtts {
            for l in &o.losses {
                let (model, p) = loss(l);
                let params =
                    LinkParams::symmetric_rtt(Duration::from_millis(rtt), Some(rate), model);
                emu.set_params(Dir::AtoB, params).expect("set params");
                emu.set_params(Dir::BtoA, params).expect("set params");
                let capacity = rate as f64 / 8.0 / 1e6 * (1.0 - p);
                let mut row: Vec<Cell> = o
                    .variants
                    .iter()
                    .map(|v| Cell {
                        section: "link".into(),
                        rtt_ms: rtt,
                        loss: l.clone(),
                        loss_rate: p,
                        capacity_mbs: capacity,
                        variant: v.clone(),
                        checksum: "md5".into(),
                        runs: Vec::new(),
                    })
                    .collect();
                for rep in 0..o.reps {
                    for k in 0..row.len() {
                        let i = (k + rep) % row.len();
                        let v = variant(&row[i].variant);
                        let (_, before) = emu.stats();
                        let mut r = fetch_once(
                            Some(emu.ns_a()),
                            &server_ip,
                            v,
                            "md5",
                            &dst,
                            Duration::from_secs(o.cap_secs),
                            &serve,
                            o.records,
                        );
                        let relay = RelayHealth::of(&emu.stats().1.since(&before));
                        r.relay = Some(relay);
                        eprintln!(
                            "rtt {rtt} ms loss {l}% {:<13} rep {rep}: {:6.1} MB/s, {} attempt(s), first byte {:.2} s{}{}",
                            v.name,
                            r.goodput_mbs,
                            r.attempts,
                            r.first_byte_s.unwrap_or(f64::NAN),
                            if r.completed { "" } else { " (cut)" },
                            if relay.kept_up {
                                String::new()
                            } else {
                                format!(
                                    " (emulator behind: {:.0} µs late, {} kernel drops)",
                                    relay.late_us, relay.kernel_drops
                                )
                            }
                        );
                        row[i].runs.push(r);
                    }
                }
                cells.extend(row);
                write_outputs(&o, &cells, &machine, source_bytes);
            }
        }
        drop(serve);
        let (ab, ba) = emu.stats();
        eprintln!("emulator: a→b {ab:?}\n          b→a {ba:?}");
        emu.stop().expect("emulator teardown");
    }

    if o.loopback {
        let snaps = work.join("snapshots-loopback");
        let _ = std::fs::remove_dir_all(&snaps);
        let serve = Serve::start(None, "127.0.0.1", &data, &snaps);
        let dst = work.join("dst-loopback");
        for checksum in ["md5", "blake3"] {
            fetch_once(
                None,
                "127.0.0.1",
                variant("quic-paced"),
                checksum,
                &dst,
                Duration::from_secs(600),
                &serve,
                o.records,
            );
            let mut row: Vec<Cell> = o
                .variants
                .iter()
                .map(|v| Cell {
                    section: "loopback".into(),
                    rtt_ms: 0,
                    loss: "0".into(),
                    loss_rate: 0.0,
                    capacity_mbs: f64::NAN,
                    variant: v.clone(),
                    checksum: checksum.into(),
                    runs: Vec::new(),
                })
                .collect();
            for rep in 0..o.reps {
                for k in 0..row.len() {
                    let i = (k + rep) % row.len();
                    let v = variant(&row[i].variant);
                    let r = fetch_once(
                        None,
                        "127.0.0.1",
                        v,
                        checksum,
                        &dst,
                        Duration::from_secs(600),
                        &serve,
                        o.records,
                    );
                    eprintln!(
                        "loopback {checksum} {:<13} rep {rep}: {:6.1} MB/s",
                        v.name, r.goodput_mbs
                    );
                    row[i].runs.push(r);
                }
            }
            cells.extend(row);
            write_outputs(&o, &cells, &machine, source_bytes);
        }
    }
    write_outputs(&o, &cells, &machine, source_bytes);
    if o.smoke {
        for c in &cells {
            assert!(
                c.all_completed(),
                "{} did not complete in the smoke run",
                c.variant
            );
        }
        let _ = std::fs::remove_dir_all(&o.out);
        eprintln!("link bench smoke: every variant fetched and validated over the emulated link");
    } else {
        eprintln!("results in {}", o.out.display());
    }
}

/// Where the benchmark ran, for the record in `link.md`.
fn machine() -> String {
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<u64>().ok())
        })
        .map(|kb| kb / 1024 / 1024)
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{}, {} cores, {mem} GiB RAM, Linux {}",
        testkit::cpu_model(),
        testkit::cores(),
        kernel.trim()
    )
}
