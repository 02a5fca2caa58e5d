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
//! * variants: QUIC cubic, QUIC bbr, TCP cubic, TCP bbr, TCP cubic × 4 connections;
//! * repetitions alternate between variants (the order rotates every repetition).
//!
//! Then a clean loopback run (no emulator) of every variant with MD5 and BLAKE3. Each fetch is
//! a real process: goodput is the fetch's own report (validated payload bytes / time from the
//! request to the rename), client CPU and peak RSS come from `wait4`, server CPU from
//! `/proc/<pid>/stat` and server peak RSS from `VmHWM` (reset before every run).
//!
//! Output: a Markdown table, a JSON file and an SVG plot under `--out` (default
//! `bench-results/`). Options: `--reps N` (3), `--rtts 2,50,150`, `--losses 0,0.1,1,3,b1`,
//! `--rate-mbit 200`, `--cap-secs 30` (a run that has not finished by then is stopped and
//! reported with the bytes it had received over its time), `--records N` (262144 × 1000 B ≈ 268 MB),
//! `--variants quic-cubic,...`, `--no-loopback`, `--no-link`. `QUICSTRAP_BIN=path` runs another
//! build of `quicstrap` (e.g. an older commit's, for a before/after comparison).
//!
//! Under `cargo test` (no `--bench` argument) it runs a one-cell smoke version as root and
//! skips with a message otherwise.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use quicstrap_netem::{Dir, Emulator, EmulatorConfig, LinkParams, Loss};

const STORE: &str = "bench";
const CC: [&str; 2] = ["cubic", "bbr"];

#[derive(Clone, Debug)]
struct Opts {
    reps: usize,
    rtts: Vec<u64>,
    losses: Vec<String>,
    rate_mbit: u64,
    cap_secs: u64,
    records: u64,
    variants: Vec<String>,
    loopback: bool,
    link: bool,
    out: PathBuf,
    smoke: bool,
}

fn parse_opts() -> Opts {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let smoke = !args.iter().any(|a| a == "--bench");
    let mut o = Opts {
        reps: 3,
        rtts: vec![2, 50, 150],
        losses: ["0", "0.1", "1", "3", "b1"].map(String::from).to_vec(),
        rate_mbit: 200,
        cap_secs: 30,
        records: 262_144,
        variants: VARIANTS.iter().map(|v| v.name.to_string()).collect(),
        loopback: true,
        link: true,
        out: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("bench-results"),
        smoke,
    };
    if smoke {
        o.reps = 1;
        o.rtts = vec![20];
        o.losses = vec!["1".into()];
        o.records = 20_000;
        o.cap_secs = 60;
        o.loopback = false;
        o.out = std::env::temp_dir().join(format!("quicstrap-link-smoke-{}", std::process::id()));
    }
    let mut i = 0;
    let list = |s: &str| {
        s.split(',')
            .map(|x| x.trim().to_string())
            .collect::<Vec<_>>()
    };
    while i < args.len() {
        let v = args.get(i + 1).cloned().unwrap_or_default();
        let mut used = true;
        match args[i].as_str() {
            "--reps" => o.reps = v.parse().expect("--reps N"),
            "--rtts" => {
                o.rtts = list(&v)
                    .iter()
                    .map(|x| x.parse().expect("--rtts ms,..."))
                    .collect()
            }
            "--losses" => o.losses = list(&v),
            "--rate-mbit" => o.rate_mbit = v.parse().expect("--rate-mbit N"),
            "--cap-secs" => o.cap_secs = v.parse().expect("--cap-secs N"),
            "--records" => o.records = v.parse().expect("--records N"),
            "--variants" => o.variants = list(&v),
            "--out" => o.out = PathBuf::from(v),
            "--no-loopback" => {
                o.loopback = false;
                used = false;
            }
            "--no-link" => {
                o.link = false;
                used = false;
            }
            _ => used = false,
        }
        i += if used { 2 } else { 1 };
    }
    o
}

/// One way of fetching: which server port and which client flags.
struct Variant {
    name: &'static str,
    quic: bool,
    cc: &'static str,
    connections: usize,
}

const VARIANTS: [Variant; 5] = [
    Variant {
        name: "quic-cubic",
        quic: true,
        cc: "cubic",
        connections: 1,
    },
    Variant {
        name: "quic-bbr",
        quic: true,
        cc: "bbr",
        connections: 1,
    },
    Variant {
        name: "tcp-cubic",
        quic: false,
        cc: "cubic",
        connections: 1,
    },
    Variant {
        name: "tcp-bbr",
        quic: false,
        cc: "bbr",
        connections: 1,
    },
    Variant {
        name: "tcp-cubic-x4",
        quic: false,
        cc: "cubic",
        connections: 4,
    },
];

fn variant(name: &str) -> &'static Variant {
    VARIANTS
        .iter()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("unknown variant {name}"))
}

fn port(v: &Variant) -> u16 {
    let base = if v.quic { 17_000 } else { 18_000 };
    base + CC.iter().position(|c| *c == v.cc).unwrap_or(0) as u16
}

/// A loss row of the matrix: `3` is 3 % Bernoulli, `b1` is 1 % in bursts of 4 on average.
fn loss(spec: &str) -> (Loss, f64) {
    if let Some(p) = spec.strip_prefix('b') {
        let p: f64 = p.parse::<f64>().expect("loss") / 100.0;
        (Loss::bursty(p, 4.0).expect("bursty loss"), p)
    } else {
        let p: f64 = spec.parse::<f64>().expect("loss") / 100.0;
        (
            if p == 0.0 {
                Loss::None
            } else {
                Loss::Bernoulli(p)
            },
            p,
        )
    }
}

#[derive(Clone, Debug, serde::Serialize)]
struct Run {
    goodput_mbs: f64,
    completed: bool,
    /// Failed for another reason than the cap (left out of the medians, reported).
    failed: Option<String>,
    bytes: u64,
    seconds: f64,
    client_cpu: f64,
    server_cpu: f64,
    client_rss_mib: f64,
    server_rss_mib: f64,
}

#[derive(Clone, Debug, serde::Serialize)]
struct Cell {
    section: String,
    rtt_ms: u64,
    loss: String,
    loss_rate: f64,
    capacity_mbs: f64,
    variant: String,
    checksum: String,
    runs: Vec<Run>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

impl Cell {
    /// Runs that count: finished, or cut at the cap (failures are reported apart).
    fn counted(&self) -> impl Iterator<Item = &Run> {
        self.runs.iter().filter(|r| r.failed.is_none())
    }
    fn med(&self, f: impl Fn(&Run) -> f64) -> f64 {
        median(self.counted().map(f).collect())
    }
    fn failures(&self) -> usize {
        self.runs.iter().filter(|r| r.failed.is_some()).count()
    }
    fn spread(&self) -> (f64, f64) {
        let g: Vec<f64> = self.counted().map(|r| r.goodput_mbs).collect();
        (
            g.iter().cloned().fold(f64::INFINITY, f64::min),
            g.iter().cloned().fold(0.0, f64::max),
        )
    }
    fn all_completed(&self) -> bool {
        self.runs.iter().all(|r| r.completed)
    }
}

/// The `quicstrap serve` process of the benchmark.
struct Serve {
    child: std::process::Child,
}

impl Serve {
    fn start(ns: Option<&str>, ip: &str, data: &Path, snaps: &Path, certs: &Path) -> Self {
        let mut cmd = netns_command(ns, bin());
        cmd.arg("serve")
            .args(["--listen", &format!("{ip}:{}", 17_000)])
            .args(["--also-listen", &format!("{ip}:{}@bbr", 17_001)])
            .args(["--http-listen", &format!("{ip}:{}@cubic", 18_000)])
            .args(["--http-listen", &format!("{ip}:{}@bbr", 18_001)])
            .arg("--data-dir")
            .arg(data)
            .arg("--snapshot-dir")
            .arg(snaps)
            .args(["--congestion", "cubic", "--idle-timeout-secs", "30"])
            // One checkpoint for the whole matrix: no run pays for a new one.
            .args(["--snapshot-ttl-secs", "86400"])
            // Transports, not the pacer: the default 150 MB/s limit would cap loopback runs.
            .args(["--write-limit", "0"])
            .arg("--cert")
            .arg(certs.join("server.crt"))
            .arg("--key")
            .arg(certs.join("server.key"))
            .arg("--ca")
            .arg(certs.join("ca.crt"))
            .args(["--allow", quicstrap::tls::dev::ALLOW])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("start quicstrap serve");
        let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        // Four listeners, four lines: then it is ready.
        for _ in 0..4 {
            let mut line = String::new();
            if out.read_line(&mut line).unwrap_or(0) == 0 {
                panic!("quicstrap serve exited before listening");
            }
        }
        // Keep the pipe open (it prints nothing more) without blocking anyone.
        std::thread::spawn(move || {
            let mut sink = String::new();
            while out.read_line(&mut sink).unwrap_or(0) > 0 {
                sink.clear();
            }
        });
        Self { child }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn cpu_secs(&self) -> f64 {
        proc_cpu_secs(self.pid())
    }

    fn reset_peak_rss(&self) {
        let _ = std::fs::write(format!("/proc/{}/clear_refs", self.pid()), "5");
    }

    fn peak_rss_mib(&self) -> f64 {
        quicstrap::budget::process_rss(Some(self.child.id()))
            .map_or(f64::NAN, |(_, peak)| peak as f64 / 1048576.0)
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(self.pid(), libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn proc_cpu_secs(pid: i32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return f64::NAN;
    };
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat, i.e. 11 and 12 after the name.
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz
}

/// This build's `quicstrap`, or `QUICSTRAP_BIN` when set (another build, for a before/after
/// comparison in one sitting).
fn bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var("QUICSTRAP_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_quicstrap").into())
    })
}

fn netns_command(ns: Option<&str>, program: &str) -> Command {
    match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, program]);
            c
        }
        None => Command::new(program),
    }
}

/// Runs one fetch as a child process and measures it.
#[allow(clippy::too_many_arguments)]
fn fetch_once(
    ns: Option<&str>,
    server_ip: &str,
    v: &Variant,
    checksum: &str,
    dst: &Path,
    certs: &Path,
    cap: Duration,
    serve: &Serve,
    records: u64,
) -> Run {
    let _ = std::fs::remove_dir_all(dst);
    let mut cmd = netns_command(ns, bin());
    cmd.arg("fetch")
        .args(["--peer", &format!("localhost@{server_ip}:{}", port(v))])
        .args(["--store", STORE, "--version", "1", "--partition", "0"])
        .arg("--data-dir")
        .arg(dst)
        .args(["--checksum", checksum, "--json", "--no-shuffle"])
        .args(["--partition-timeout-secs", &cap.as_secs().to_string()])
        .args(["--idle-timeout-secs", "30", "--read-limit", "0"])
        .arg("--cert")
        .arg(certs.join("client.crt"))
        .arg("--key")
        .arg(certs.join("client.key"))
        .arg("--ca")
        .arg(certs.join("ca.crt"));
    if !v.quic {
        cmd.arg("--http")
            .args(["--http-connections", &v.connections.to_string()])
            .args(["--tcp-congestion", v.cc]);
    }
    let out_path = dst.with_extension("json");
    let out = std::fs::File::create(&out_path).expect("report file");
    cmd.stdout(out).stderr(Stdio::null());
    serve.reset_peak_rss();
    let server_cpu0 = serve.cpu_secs();
    // Reaped by the wait4 below, which also yields its CPU time and peak RSS.
    #[allow(clippy::zombie_processes)]
    let child = cmd.spawn().expect("spawn fetch");
    let pid = child.id() as i32;
    let mut status = 0;
    // A fetch that outlives its own deadline by a minute is killed: the benchmark never hangs.
    let watchdog = {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let limit = cap + Duration::from_secs(60);
        std::thread::spawn(move || {
            if rx.recv_timeout(limit) == Err(std::sync::mpsc::RecvTimeoutError::Timeout) {
                // SAFETY: signalling our own child, not yet reaped (the sender is dropped
                // only after wait4 returns).
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        });
        tx
    };
    // SAFETY: an all-zero rusage is a valid value to be filled in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waiting for our own child; the pointers are valid for the call.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid, "wait4");
    let _ = watchdog.send(());
    let server_cpu = serve.cpu_secs() - server_cpu0;
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let client_cpu = tv(usage.ru_utime) + tv(usage.ru_stime);
    let client_rss_mib = usage.ru_maxrss as f64 / 1024.0;
    let report: serde_json::Value = std::fs::read(&out_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(serde_json::Value::Null);
    let _ = std::fs::remove_file(&out_path);
    let completed = report.get("seconds").is_some();
    let outcome = report["attempts"][0]["outcome"]
        .as_str()
        .unwrap_or("no report");
    let failed = (!completed && outcome != "partition_timeout").then(|| {
        format!(
            "{outcome}: {}",
            report["attempts"][0]["error"]
                .as_str()
                .or(report["error"].as_str())
                .unwrap_or("process died")
        )
    });
    let (bytes, seconds) = if completed {
        (
            report["bytes"].as_u64().unwrap_or(0),
            report["seconds"].as_f64().unwrap_or(f64::NAN),
        )
    } else {
        let a = &report["attempts"][0];
        (
            a["bytes"].as_u64().unwrap_or(0),
            a["seconds"].as_f64().unwrap_or(cap.as_secs_f64()),
        )
    };
    if completed {
        // Validated and committed: check it is the whole partition before trusting the number.
        let dir = dst.join(format!("{STORE}_v1")).join("0");
        let db = quicstrap::partition::open_read_only(&dir, quicstrap::TableFormat::Block)
            .expect("fetched partition opens");
        let meta = quicstrap::partition::read_meta(&db).expect("metadata");
        assert_eq!(
            meta.offset,
            Some(records - 1),
            "fetched partition is not the source"
        );
    } else if let Some(why) = &failed {
        eprintln!("    {} FAILED: {why}", v.name);
    } else {
        eprintln!("    {} did not finish within {cap:?}", v.name);
    }
    let _ = std::fs::remove_dir_all(dst);
    Run {
        goodput_mbs: bytes as f64 / seconds / 1e6,
        completed,
        failed,
        bytes,
        seconds,
        client_cpu,
        server_cpu,
        client_rss_mib,
        server_rss_mib: serve.peak_rss_mib(),
    }
}

fn seed_source(data: &Path, records: u64) {
    let dir = data.join(format!("{STORE}_v1")).join("0");
    let marker = data.join(format!(".records-{records}"));
    if marker.exists() && dir.join("CURRENT").exists() {
        return;
    }
    let _ = std::fs::remove_dir_all(data);
    std::fs::create_dir_all(data).expect("source dir");
    eprintln!("seeding {records} records of 1000 B ...");
    quicstrap::demo::seed::seed(&dir, quicstrap::TableFormat::Block, records, 1000, 8192)
        .expect("seed");
    std::fs::write(&marker, b"").expect("marker");
}

fn main() {
    let o = parse_opts();
    if o.smoke {
        if let Err(why) = quicstrap_netem::is_supported() {
            eprintln!("link bench smoke skipped: {why}");
            return;
        }
    }
    let certs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("certs-dev");
    let work = if o.smoke {
        o.out.join("work")
    } else {
        PathBuf::from("/var/tmp/quicstrap-bench")
    };
    let data = work.join(format!("source-{}", o.records));
    seed_source(&data, o.records);
    let source_bytes = dir_bytes(&data.join(format!("{STORE}_v1")).join("0"));
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
        let emu = Emulator::start(EmulatorConfig::symmetric(prefix, [78, 0], start_params))
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
        let serve = Serve::start(Some(emu.ns_b()), &server_ip, &data, &snaps, &certs);
        let dst = work.join("dst-link");
        // Warm-up: make the snapshot and its MD5 digests once, untimed.
        let warm = fetch_once(
            Some(emu.ns_a()),
            &server_ip,
            variant("quic-bbr"),
            "md5",
            &dst,
            &certs,
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
                        let r = fetch_once(
                            Some(emu.ns_a()),
                            &server_ip,
                            v,
                            "md5",
                            &dst,
                            &certs,
                            Duration::from_secs(o.cap_secs),
                            &serve,
                            o.records,
                        );
                        eprintln!(
                            "rtt {rtt} ms loss {l}% {:<13} rep {rep}: {:6.1} MB/s{}",
                            v.name,
                            r.goodput_mbs,
                            if r.completed { "" } else { " (cut)" }
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
        let serve = Serve::start(None, "127.0.0.1", &data, &snaps, &certs);
        let dst = work.join("dst-loopback");
        for checksum in ["md5", "blake3"] {
            fetch_once(
                None,
                "127.0.0.1",
                variant("quic-bbr"),
                checksum,
                &dst,
                &certs,
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
                        &certs,
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

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown cpu".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
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
        "{cpu}, {cores} cores, {mem} GiB RAM, Linux {}",
        kernel.trim()
    )
}

fn fmt_cell(c: &Cell) -> String {
    let (lo, hi) = c.spread();
    let failed = match c.failures() {
        0 => String::new(),
        n => format!(" ({n} failed)"),
    };
    format!(
        "{:.1}{} ({:.1}–{:.1}){failed}",
        c.med(|r| r.goodput_mbs),
        if c.all_completed() { "" } else { "*" },
        lo,
        hi
    )
}

fn write_outputs(o: &Opts, cells: &[Cell], machine: &str, source_bytes: u64) {
    let mut md = String::new();
    let cmd: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    md.push_str(&format!(
        "Command: `cargo bench --bench link -- {}` (as root)\n\nMachine: {machine}\n\nSnapshot: {:.1} MB; link {} Mbit/s, one-BDP drop-tail queue; {} repetitions, variants alternating; cap {} s per run.\n\n",
        cmd.join(" "),
        source_bytes as f64 / 1e6,
        o.rate_mbit,
        o.reps,
        o.cap_secs,
    ));
    md.push_str("Goodput in MB/s (10⁶ B/s): median (min–max). `*`: at least one run did not finish within the cap; such a run counts with the bytes it had received by then over its time. Runs that failed otherwise are left out of the medians and counted as failed.\n\n");
    let by_key = |section: &str, rtt: u64, loss: &str, variant: &str, checksum: &str| {
        cells.iter().find(|c| {
            c.section == section
                && c.rtt_ms == rtt
                && c.loss == loss
                && c.variant == variant
                && c.checksum == checksum
        })
    };
    let link: Vec<&Cell> = cells.iter().filter(|c| c.section == "link").collect();
    if !link.is_empty() {
        md.push_str("| RTT | loss | capacity | ");
        for v in &o.variants {
            md.push_str(&format!("{v} | "));
        }
        md.push_str("QUIC-bbr / capacity | QUIC-bbr / tcp-cubic | QUIC-bbr / best TCP |\n|");
        md.push_str(&"---|".repeat(3 + o.variants.len() + 3));
        md.push('\n');
        let mut rows: Vec<(u64, String)> = Vec::new();
        for c in &link {
            let k = (c.rtt_ms, c.loss.clone());
            if !rows.contains(&k) {
                rows.push(k);
            }
        }
        for (rtt, l) in &rows {
            let first = by_key("link", *rtt, l, &o.variants[0], "md5");
            let cap = first.map(|c| c.capacity_mbs).unwrap_or(f64::NAN);
            md.push_str(&format!("| {rtt} ms | {} | {cap:.1} | ", loss_label(l)));
            for v in &o.variants {
                md.push_str(
                    &by_key("link", *rtt, l, v, "md5")
                        .map(fmt_cell)
                        .unwrap_or_default(),
                );
                md.push_str(" | ");
            }
            let g = |v: &str| by_key("link", *rtt, l, v, "md5").map(|c| c.med(|r| r.goodput_mbs));
            let quic = g("quic-bbr").unwrap_or(f64::NAN);
            let best_tcp = ["tcp-cubic", "tcp-bbr", "tcp-cubic-x4"]
                .iter()
                .filter_map(|v| g(v))
                .fold(f64::NAN, f64::max);
            // A ratio against a variant this run did not measure is "—", not NaN.
            let ratio = |r: f64, digits: usize| {
                if r.is_finite() {
                    format!("{r:.digits$}×")
                } else {
                    "—".to_string()
                }
            };
            md.push_str(&format!(
                "{:.0} % | {} | {} |\n",
                100.0 * quic / cap,
                ratio(quic / g("tcp-cubic").unwrap_or(f64::NAN), 1),
                ratio(quic / best_tcp, 2)
            ));
        }
        md.push_str("\nCPU seconds (client / server) and peak RSS MiB (client / server), medians per variant:\n\n| RTT | loss | ");
        for v in &o.variants {
            md.push_str(&format!("{v} | "));
        }
        md.push_str("\n|");
        md.push_str(&"---|".repeat(2 + o.variants.len()));
        md.push('\n');
        for (rtt, l) in &rows {
            md.push_str(&format!("| {rtt} ms | {} | ", loss_label(l)));
            for v in &o.variants {
                if let Some(c) = by_key("link", *rtt, l, v, "md5") {
                    md.push_str(&format!(
                        "{:.1}/{:.1} s, {:.0}/{:.0} MiB | ",
                        c.med(|r| r.client_cpu),
                        c.med(|r| r.server_cpu),
                        c.med(|r| r.client_rss_mib),
                        c.med(|r| r.server_rss_mib)
                    ));
                } else {
                    md.push_str(" | ");
                }
            }
            md.push('\n');
        }
    }
    let lb: Vec<&Cell> = cells.iter().filter(|c| c.section == "loopback").collect();
    if !lb.is_empty() {
        md.push_str("\nClean loopback (no emulator), goodput MB/s median (min–max), CPU s client/server, peak RSS MiB client/server:\n\n| checksum | variant | goodput | CPU | RSS |\n|---|---|---|---|---|\n");
        for c in lb {
            md.push_str(&format!(
                "| {} | {} | {} | {:.1}/{:.1} | {:.0}/{:.0} |\n",
                c.checksum,
                c.variant,
                fmt_cell(c),
                c.med(|r| r.client_cpu),
                c.med(|r| r.server_cpu),
                c.med(|r| r.client_rss_mib),
                c.med(|r| r.server_rss_mib)
            ));
        }
    }
    let _ = std::fs::write(o.out.join("link.md"), &md);
    if let Ok(json) = serde_json::to_vec_pretty(cells) {
        let _ = std::fs::write(o.out.join("link.json"), json);
    }
    let _ = std::fs::write(o.out.join("link.svg"), plot(o, cells));
    let _ = std::io::stderr().flush();
}

fn loss_label(l: &str) -> String {
    match l.strip_prefix('b') {
        Some(p) => format!("{p} % bursty"),
        None => format!("{l} %"),
    }
}

/// Goodput against loss, one line per variant, one panel per RTT (plain SVG, no fonts to
/// find).
fn plot(o: &Opts, cells: &[Cell]) -> String {
    let colors: BTreeMap<&str, &str> = [
        ("quic-cubic", "#1f77b4"),
        ("quic-bbr", "#d62728"),
        ("tcp-cubic", "#2ca02c"),
        ("tcp-bbr", "#9467bd"),
        ("tcp-cubic-x4", "#ff7f0e"),
    ]
    .into_iter()
    .collect();
    let (pw, ph, m) = (320.0, 240.0, 50.0);
    let width = m + o.rtts.len() as f64 * (pw + m);
    let height = ph + 2.0 * m + 30.0;
    let ymax = o.rate_mbit as f64 / 8.0;
    let mut s = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' font-family='sans-serif' font-size='11'>\n<rect width='100%' height='100%' fill='white'/>\n"
    );
    for (pi, rtt) in o.rtts.iter().enumerate() {
        let x0 = m + pi as f64 * (pw + m);
        let y0 = m;
        s.push_str(&format!(
            "<rect x='{x0}' y='{y0}' width='{pw}' height='{ph}' fill='none' stroke='#888'/>\n<text x='{}' y='{}' text-anchor='middle' font-size='13'>RTT {rtt} ms</text>\n",
            x0 + pw / 2.0,
            y0 - 8.0
        ));
        for t in 0..=5 {
            let v = ymax * t as f64 / 5.0;
            let y = y0 + ph - ph * t as f64 / 5.0;
            s.push_str(&format!(
                "<line x1='{x0}' y1='{y}' x2='{}' y2='{y}' stroke='#eee'/><text x='{}' y='{}' text-anchor='end'>{v:.0}</text>\n",
                x0 + pw,
                x0 - 4.0,
                y + 4.0
            ));
        }
        let n = o.losses.len().max(2) as f64;
        let xat = |i: usize| x0 + 20.0 + (pw - 40.0) * i as f64 / (n - 1.0);
        for (i, l) in o.losses.iter().enumerate() {
            s.push_str(&format!(
                "<text x='{}' y='{}' text-anchor='middle'>{}</text>\n",
                xat(i),
                y0 + ph + 15.0,
                loss_label(l)
            ));
        }
        for v in &o.variants {
            let pts: Vec<String> = o
                .losses
                .iter()
                .enumerate()
                .filter_map(|(i, l)| {
                    cells
                        .iter()
                        .find(|c| {
                            c.section == "link"
                                && c.rtt_ms == *rtt
                                && &c.loss == l
                                && &c.variant == v
                        })
                        .map(|c| {
                            let g = c.med(|r| r.goodput_mbs).min(ymax);
                            format!("{:.1},{:.1}", xat(i), y0 + ph - ph * g / ymax)
                        })
                })
                .collect();
            let color = colors.get(v.as_str()).copied().unwrap_or("#000");
            s.push_str(&format!(
                "<polyline fill='none' stroke='{color}' stroke-width='2' points='{}'/>\n",
                pts.join(" ")
            ));
        }
    }
    s.push_str(&format!(
        "<text x='12' y='{}' transform='rotate(-90 12 {})' text-anchor='middle'>goodput MB/s</text>\n",
        m + ph / 2.0,
        m + ph / 2.0
    ));
    for (i, v) in o.variants.iter().enumerate() {
        let x = m + i as f64 * 130.0;
        let y = height - 12.0;
        let color = colors.get(v.as_str()).copied().unwrap_or("#000");
        s.push_str(&format!(
            "<line x1='{x}' y1='{}' x2='{}' y2='{}' stroke='{color}' stroke-width='3'/><text x='{}' y='{y}'>{v}</text>\n",
            y - 4.0,
            x + 20.0,
            y - 4.0,
            x + 25.0
        ));
    }
    s.push_str("</svg>\n");
    s
}
