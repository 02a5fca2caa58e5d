//! One fetch of the link benchmark: the variants (which server port, which client flags), the
//! `quicstrap serve` all of them fetch from, and one measured `quicstrap fetch` process.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use quicstrap_netem::{DirStats, Loss};
use testkit::ServeProcess;

use crate::STORE;

/// The congestion controllers the server offers, in port order (see [`Serve::start`]).
const CC: [&str; 3] = ["cubic", "bbr", "paced"];

/// One way of fetching: which server port and which client flags.
pub(crate) struct Variant {
    /// The name `--variants` takes and the tables show.
    pub(crate) name: &'static str,
    quic: bool,
    cc: &'static str,
    connections: usize,
}

/// Every variant, in the order of the tables.
pub(crate) const VARIANTS: [Variant; 7] = [
    Variant {
        name: "quic-paced",
        quic: true,
        cc: "paced",
        connections: 1,
    },
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
    Variant {
        name: "tcp-bbr-x4",
        quic: false,
        cc: "bbr",
        connections: 4,
    },
];

/// The variant called `name`.
pub(crate) fn variant(name: &str) -> &'static Variant {
    VARIANTS
        .iter()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("unknown variant {name}"))
}

/// The server port of `v` (see [`Serve::start`]).
fn port(v: &Variant) -> u16 {
    let base = if v.quic { 17_000 } else { 18_000 };
    base + CC.iter().position(|c| *c == v.cc).unwrap_or(0) as u16
}

/// A loss row of the matrix: `3` is 3 % Bernoulli, `b1` is 1 % in bursts of 4 on average.
pub(crate) fn loss(spec: &str) -> (Loss, f64) {
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

/// What one fetch measured.
#[derive(Clone, Debug, serde::Serialize)]
pub(crate) struct Run {
    pub(crate) goodput_mbs: f64,
    pub(crate) completed: bool,
    /// Failed for another reason than the cap (left out of the medians, reported).
    pub(crate) failed: Option<String>,
    pub(crate) bytes: u64,
    pub(crate) seconds: f64,
    /// From the successful attempt's start to its first file byte, and its commit.
    pub(crate) first_byte_s: Option<f64>,
    pub(crate) commit_s: Option<f64>,
    /// Attempts the fetch made (1: it never had to resume or move on).
    pub(crate) attempts: usize,
    pub(crate) client_cpu: f64,
    pub(crate) server_cpu: f64,
    pub(crate) client_rss_mib: f64,
    pub(crate) server_rss_mib: f64,
    /// How the emulator kept up during the run (none on loopback): a relay far behind the
    /// model's schedule, or packets the kernel dropped before it, measure the host.
    pub(crate) relay: Option<RelayHealth>,
    /// QUIC only: the share of its packets the server's sender lost (to the link's loss and to
    /// the queue its own sending overflowed).
    pub(crate) sender_loss: Option<f64>,
}

/// The link emulator's own account of one run, data direction (server to client).
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub(crate) struct RelayHealth {
    /// Mean delivery lateness behind the model's schedule, µs.
    pub(crate) late_us: f64,
    /// Packets the kernel dropped at the TUN queue because the relay read them too late.
    pub(crate) kernel_drops: u64,
    /// Whether the emulator kept to the link model ([`DirStats::kept_up`]): if not, the
    /// run describes the host as much as the link.
    pub(crate) kept_up: bool,
}

impl RelayHealth {
    /// From the emulator's counters for the data direction over the run.
    pub(crate) fn of(s: &DirStats) -> Self {
        Self {
            late_us: s.mean_lateness().as_secs_f64() * 1e6,
            kernel_drops: s.kernel_dropped,
            kept_up: s.kept_up(),
        }
    }
}

/// The `quicstrap serve` of the benchmark: a QUIC endpoint per congestion controller and an
/// HTTPS listener per TCP congestion controller over one snapshot root; stopped with SIGTERM
/// on drop.
pub(crate) struct Serve {
    process: ServeProcess,
    /// Its log: each transfer's packets sent and lost (`transfer done`).
    log: std::path::PathBuf,
}

impl Serve {
    /// Starts it in namespace `ns` (if given) on `ip`, serving `data` with its snapshots in
    /// `snaps`; returns once every listener is up.
    pub(crate) fn start(ns: Option<&str>, ip: &str, data: &Path, snaps: &Path) -> Self {
        let mut cmd = testkit::serve_command_in(ns, data, &format!("{ip}:{}", 17_000));
        cmd.args(["--also-listen", &format!("{ip}:{}@bbr", 17_001)])
            .args(["--also-listen", &format!("{ip}:{}@paced", 17_002)])
            .args(["--http-listen", &format!("{ip}:{}@cubic", 18_000)])
            .args(["--http-listen", &format!("{ip}:{}@bbr", 18_001)])
            .arg("--snapshot-dir")
            .arg(snaps)
            .args(["--congestion", "cubic", "--idle-timeout-secs", "30"])
            // One checkpoint for the whole matrix: no run pays for a new one.
            .args(["--snapshot-ttl-secs", "86400"])
            // Transports, not the pacer: the default 150 MB/s limit would cap loopback runs.
            .args(["--write-limit", "0"]);
        let log = snaps.with_extension("log");
        cmd.env(
            "RUST_LOG",
            std::env::var("QUICSTRAP_BENCH_SERVER_LOG").unwrap_or_else(|_| "quicstrap=info".into()),
        )
        .stderr(std::fs::File::create(&log).expect("server log"));
        let mut process = ServeProcess::spawn(cmd);
        // Five listeners, five lines: then it is ready.
        process.next_line("also listening on ");
        process.next_line("also listening on ");
        process.next_line("https listening on ");
        process.next_line("https listening on ");
        // Keep the pipe open (it prints nothing more) without blocking anyone.
        process.drain_stdout();
        Self { process, log }
    }

    /// Transfers it finished so far (`transfer done` lines in its log).
    fn transfers_done(&self) -> usize {
        std::fs::read_to_string(&self.log).map_or(0, |l| {
            l.lines().filter(|l| l.contains("transfer done")).count()
        })
    }

    /// The share of its packets the server's sender lost in transfer number `n` (counting
    /// from 1) once it is logged (quinn's path statistics, `transfer done`): waits up to 2 s,
    /// since the server logs it when the client's last acknowledgement arrives.
    fn loss_of(&self, n: usize) -> Option<f64> {
        let t0 = std::time::Instant::now();
        while self.transfers_done() < n && t0.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let log = std::fs::read_to_string(&self.log).ok()?;
        let line = log
            .lines()
            .filter(|l| l.contains("transfer done"))
            .nth(n.checked_sub(1)?)?;
        let field = |name: &str| -> Option<u64> {
            let rest = &line[line.find(&format!("{name}="))? + name.len() + 1..];
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        };
        let (lost, sent) = (field("lost_packets")?, field("sent_packets")?);
        Some(lost as f64 / sent.max(1) as f64)
    }

    fn pid(&self) -> i32 {
        self.process.pid()
    }

    fn cpu_secs(&self) -> f64 {
        testkit::cpu_seconds(self.pid()).unwrap_or(f64::NAN)
    }

    fn peak_rss_mib(&self) -> f64 {
        quicstrap::control::budget::process_rss(Some(self.pid() as u32))
            .map_or(f64::NAN, |(_, peak)| peak as f64 / 1048576.0)
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.process.stop(Duration::from_secs(10));
    }
}

/// Runs one fetch as a child process (in namespace `ns`, if given) into `dst` and measures
/// it; a fetch still running at `cap` is stopped with SIGTERM (it suspends and reports) and
/// counts with what it had received.
#[allow(clippy::too_many_arguments)]
pub(crate) fn fetch_once(
    ns: Option<&str>,
    server_ip: &str,
    v: &Variant,
    checksum: &str,
    dst: &Path,
    cap: Duration,
    serve: &Serve,
    records: u64,
) -> Run {
    let _ = std::fs::remove_dir_all(dst);
    let mut cmd = testkit::fetch_command_in(ns, dst, STORE, 1, 0);
    cmd.args(["--peer", &format!("localhost@{server_ip}:{}", port(v))])
        .args(["--checksum", checksum, "--json", "--no-shuffle"])
        .args([
            "--min-rate",
            "0",
            "--idle-timeout-secs",
            "30",
            "--read-limit",
            "0",
        ]);
    if !v.quic {
        cmd.arg("--http")
            .args(["--http-connections", &v.connections.to_string()])
            .args(["--tcp-congestion", v.cc]);
    }
    let done_before = serve.transfers_done();
    let out_path = dst.with_extension("json");
    let out = std::fs::File::create(&out_path).expect("report file");
    cmd.stdout(out).stderr(Stdio::null());
    testkit::reset_peak_rss(serve.pid());
    let server_cpu0 = serve.cpu_secs();
    // Reaped by the wait4 below, which also yields its CPU time and peak RSS.
    #[allow(clippy::zombie_processes)]
    let child = cmd.spawn().expect("spawn fetch");
    let pid = child.id() as i32;
    // At the cap the fetch is asked to stop (it suspends and writes its report); one still
    // running a minute later is killed: the benchmark never hangs.
    let watchdog = {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            for (wait, signal) in [
                (cap, libc::SIGTERM),
                (Duration::from_secs(60), libc::SIGKILL),
            ] {
                if rx.recv_timeout(wait) != Err(std::sync::mpsc::RecvTimeoutError::Timeout) {
                    return;
                }
                // SAFETY: signalling our own child, not yet reaped (the sender is dropped
                // only after wait4 returns).
                unsafe {
                    libc::kill(pid, signal);
                }
            }
        });
        tx
    };
    let (_, usage) = testkit::wait_rusage(pid);
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
    // "cancelled": stopped at the cap.
    let failed = (!completed && outcome != "cancelled").then(|| {
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
        let db = quicstrap::store::partition::open_read_only(&dir, quicstrap::TableFormat::Block)
            .expect("fetched partition opens");
        let meta = quicstrap::store::partition::read_meta(&db).expect("metadata");
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
    let last = report["attempts"]
        .as_array()
        .and_then(|a| a.last())
        .cloned()
        .unwrap_or_default();
    let sender_loss = if v.quic && completed && failed.is_none() {
        serve.loss_of(done_before + 1)
    } else {
        None
    };
    Run {
        goodput_mbs: bytes as f64 / seconds / 1e6,
        completed,
        failed,
        bytes,
        seconds,
        attempts: report["attempts"].as_array().map_or(0, Vec::len),
        first_byte_s: last["first_byte_seconds"].as_f64(),
        commit_s: last["commit_seconds"].as_f64(),
        client_cpu,
        server_cpu,
        client_rss_mib,
        server_rss_mib: serve.peak_rss_mib(),
        relay: None,
        sender_loss,
    }
}
