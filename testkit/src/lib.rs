//! Runs the `quicstrap` binary the way the integration tests (`tests/it`) and the benchmarks
//! (`benches/`) do: where the binary and the development certificates are, `fetch` and
//! `serve` command lines (in a network namespace or not), a `serve` child and the addresses
//! it announces, its Prometheus metrics, and what `/proc` and `wait4` tell about a child.
//!
//! It also holds the seed generator ([`seed`]): deterministic partitions the tests, the
//! benchmarks and the demo move, kept out of the engine's API. That part writes through the
//! engine's own partition functions, so the seeded data is what a node ingests.

#![warn(missing_docs)]

pub mod seed;

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The allow list that admits the development client and server certificates of
/// `certs-dev/` (what `quicstrap::net::tls::dev::ALLOW` holds; the integration tests check the
/// two agree), so a `serve` started here accepts the `fetch` commands started here.
pub const DEV_ALLOW: &str = "client.quicstrap.test,server.quicstrap.test";

/// Path of the `quicstrap` binary: `QUICSTRAP_BIN` when set (a benchmark can run an older
/// build for a before/after comparison), else this build's.
///
/// Cargo builds a package's binaries before its integration tests and benchmarks, into the
/// profile directory whose `deps/` holds the test or benchmark executable that is running.
/// It tells only that package where (`CARGO_BIN_EXE_quicstrap`), not this helper crate, so
/// the path is found from the running executable; the integration tests check it is the
/// one Cargo names.
pub fn bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var("QUICSTRAP_BIN").unwrap_or_else(|_| this_build().display().to_string())
    })
}

/// `<target>/<profile>/quicstrap`, next to the `deps/` directory of the running executable.
fn this_build() -> PathBuf {
    let exe = std::env::current_exe().expect("the path of the running executable");
    let profile = exe
        .parent()
        .and_then(Path::parent)
        .expect("a test or benchmark executable under <target>/<profile>/deps");
    let bin = profile.join(format!("quicstrap{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.is_file(),
        "no quicstrap binary at {} (run through cargo test or cargo bench, or set QUICSTRAP_BIN)",
        bin.display()
    );
    bin
}

/// The development PKI (`certs-dev/`): the CA, a client and a server certificate with keys.
pub fn certs() -> PathBuf {
    workspace_root().join("certs-dev")
}

/// The root of the checkout the tests run in, found at run time.
///
/// A compile-time `env!("CARGO_MANIFEST_DIR")` is not enough: CI caches one target
/// directory across clones at different paths, and Cargo reuses a build of an unchanged
/// crate made from another clone, path and all. Cargo runs tests and benchmarks with
/// `CARGO_MANIFEST_DIR` set and the package as the working directory, so those come first.
pub fn workspace_root() -> &'static Path {
    static ROOT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    ROOT.get_or_init(|| {
        let candidates = [
            std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from),
            std::env::current_dir().ok(),
            Some(PathBuf::from(env!("CARGO_MANIFEST_DIR"))),
        ];
        candidates
            .into_iter()
            .flatten()
            .find_map(|start| {
                start
                    .ancestors()
                    .find(|dir| dir.join("certs-dev/make-certs.sh").is_file())
                    .map(Path::to_path_buf)
            })
            .expect("the quicstrap checkout (a directory holding certs-dev/make-certs.sh)")
    })
}

/// `program`, run in network namespace `netns` (via `ip netns exec`) if given.
pub fn netns_command(netns: Option<&str>, program: &str) -> Command {
    match netns {
        None => Command::new(program),
        Some(ns) => {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", ns, program]);
            cmd
        }
    }
}

/// The `quicstrap` binary, run in network namespace `netns` if given.
pub fn quicstrap_in(netns: Option<&str>) -> Command {
    netns_command(netns, bin())
}

/// `quicstrap fetch` with the dev client certificate, `data` as its data dir and the partition
/// `store`/`version`/`partition`; callers add the rest.
pub fn fetch_command(data: &Path, store: &str, version: u32, partition: u32) -> Command {
    fetch_command_in(None, data, store, version, partition)
}

/// [`fetch_command`] in network namespace `netns` (if given).
pub fn fetch_command_in(
    netns: Option<&str>,
    data: &Path,
    store: &str,
    version: u32,
    partition: u32,
) -> Command {
    let mut cmd = quicstrap_in(netns);
    cmd.args(["fetch", "--store", store])
        .args(["--version", &version.to_string()])
        .args(["--partition", &partition.to_string()])
        .arg("--data-dir")
        .arg(data);
    dev_identity(&mut cmd, "client");
    cmd
}

/// `quicstrap recover` with the dev client certificate, `data` as its data dir, of
/// `partitions` (`0-3`, `@FILE`) of `store`/`version`, catching up from `kafka`; callers add
/// the peers and the rest.
pub fn recover_command_in(
    netns: Option<&str>,
    data: &Path,
    store: &str,
    version: u32,
    partitions: &str,
    kafka: &str,
) -> Command {
    let mut cmd = quicstrap_in(netns);
    cmd.args(["recover", "--store", store])
        .args(["--version", &version.to_string()])
        .args(["--partitions", partitions, "--kafka", kafka])
        .arg("--data-dir")
        .arg(data);
    dev_identity(&mut cmd, "client");
    cmd
}

/// Adds `--cert`, `--key` and `--ca` of the development PKI's `who` (`client` or `server`).
fn dev_identity(cmd: &mut Command, who: &str) {
    let c = certs();
    cmd.arg("--cert")
        .arg(c.join(format!("{who}.crt")))
        .arg("--key")
        .arg(c.join(format!("{who}.key")))
        .arg("--ca")
        .arg(c.join("ca.crt"));
}

/// `quicstrap serve` of `root` on `listen` with the dev server certificate, in network
/// namespace `netns` (if given); callers add the rest.
pub fn serve_command_in(netns: Option<&str>, root: &Path, listen: &str) -> Command {
    let mut cmd = quicstrap_in(netns);
    cmd.args(["serve", "--listen", listen, "--data-dir"])
        .arg(root)
        .args(["--allow", DEV_ALLOW]);
    dev_identity(&mut cmd, "server");
    cmd
}

/// A `quicstrap serve` child process; killed on drop.
pub struct ServeProcess {
    /// The process, for its exit status or a signal.
    pub child: Child,
    /// The QUIC address it announced first (`listening on ADDR`).
    pub addr: SocketAddr,
    /// The rest of its stdout (kept open: the server prints more lines); `None` once handed
    /// to [`ServeProcess::drain_stdout`].
    stdout: Option<std::io::BufReader<ChildStdout>>,
}

impl ServeProcess {
    /// `quicstrap serve` of `root` on a free loopback port with `extra` arguments; its stderr
    /// goes to this process's.
    pub fn start(root: &Path, extra: &[&str]) -> Self {
        let mut cmd = serve_command_in(None, root, "127.0.0.1:0");
        cmd.args(extra).stderr(Stdio::inherit());
        Self::spawn(cmd)
    }

    /// Spawns `cmd` (a `serve` command) and reads the address from its first line.
    pub fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .unwrap();
        Self {
            child,
            addr,
            stdout: Some(stdout),
        }
    }

    /// The address on the next stdout line that starts with `prefix`.
    pub fn next_addr(&mut self, prefix: &str) -> SocketAddr {
        self.next_line(prefix).parse().unwrap()
    }

    /// The rest of the next stdout line that starts with `prefix`, trimmed.
    pub fn next_line(&mut self, prefix: &str) -> String {
        let stdout = self
            .stdout
            .as_mut()
            .expect("stdout was handed to drain_stdout");
        loop {
            let mut line = String::new();
            assert!(
                stdout.read_line(&mut line).unwrap() > 0,
                "no {prefix:?} line"
            );
            if let Some(a) = line.trim().strip_prefix(prefix) {
                return a.trim().to_owned();
            }
        }
    }

    /// Reads the rest of stdout on a thread of its own, so the pipe stays open (the server
    /// never gets a broken pipe) and never fills up, with nobody else reading it.
    pub fn drain_stdout(&mut self) {
        if let Some(mut out) = self.stdout.take() {
            std::thread::spawn(move || {
                let mut sink = String::new();
                while out.read_line(&mut sink).unwrap_or(0) > 0 {
                    sink.clear();
                }
            });
        }
    }

    /// The process id.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends signal `sig` to the process.
    pub fn signal(&self, sig: i32) {
        // SAFETY: sending a signal to our own child process.
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// Stops the process as an operator would: `SIGTERM`, then `SIGKILL` if it has not
    /// exited within `grace`; reaped either way.
    pub fn stop(&mut self, grace: Duration) {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + grace;
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

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `cmd` to the end and asserts it succeeded, showing its stderr otherwise.
pub fn output_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{:?} failed: {}",
        cmd.get_program(),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The Prometheus text at `url` (empty when it does not answer).
pub fn scrape(url: &str) -> String {
    let out = Command::new("curl").args(["-sf", url]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value of the metric line starting with `series` (name and labels) in `text`.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

/// CPU seconds (user + system) process `pid` has used so far; `None` once it is gone.
pub fn cpu_seconds(pid: i32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let (_, rest) = stat.rsplit_once(')')?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok());
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    // SAFETY: sysconf with a valid name has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((ticks(11)? + ticks(12)?) / hz)
}

/// Resets the peak resident set size (`VmHWM`) of process `pid` to its current one, so the
/// next peak read is that of what follows (best effort).
pub fn reset_peak_rss(pid: i32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

/// Waits for child `pid` to exit: its raw wait status and its resource usage (CPU time, peak
/// RSS), which only `wait4` reports for a child.
///
/// The child must not have been reaped yet, nor be waited for elsewhere.
pub fn wait_rusage(pid: i32) -> (i32, libc::rusage) {
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to overwrite.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waiting for our own child; the pointers are valid for the call.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid, "wait4: {}", std::io::Error::last_os_error());
    (status, usage)
}

/// Total size of the files directly in `dir` (0 where it cannot be read).
pub fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// The CPU model of this machine, for a benchmark's record of where it ran.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown cpu".into())
}

/// How many cores this process may run on (0 if unknown).
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(0, |n| n.get())
}

/// A dnsmasq answering only from the records in `conf` (dnsmasq config lines: `local=`,
/// `host-record=`, `srv-host=`), on a free loopback port, with answers cached for `ttl`
/// seconds; killed and reaped on drop. The SRV discovery tests, `examples/node.rs` and the
/// cluster benchmark ask it.
pub struct Dnsmasq {
    child: Child,
    /// Where it answers.
    pub addr: SocketAddr,
}

impl Dnsmasq {
    /// Starts it on a free port; ready once it answers a probe.
    pub fn start(conf: &Path, ttl: u32) -> std::io::Result<Self> {
        let port = std::net::UdpSocket::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        Self::start_on(port, conf, ttl)
    }

    /// [`Dnsmasq::start`] on `port` (a restart on the same address, for TTL tests).
    pub fn start_on(port: u16, conf: &Path, ttl: u32) -> std::io::Result<Self> {
        let child = Command::new("dnsmasq")
            .arg("--no-daemon")
            .arg(format!("--port={port}"))
            .args(["--listen-address=127.0.0.1", "--bind-interfaces"])
            .args(["--no-resolv", "--no-hosts", "--no-poll", "--user=root"])
            .arg("--pid-file=")
            .arg(format!("--local-ttl={ttl}"))
            .arg(format!("--conf-file={}", conf.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("dnsmasq: {e} (scripts/setup.sh installs dnsmasq-base)"),
                )
            })?;
        // Owned at once, so a dnsmasq that never answers is killed and reaped.
        let dns = Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        let probe = std::net::UdpSocket::bind("127.0.0.1:0")?;
        probe.set_read_timeout(Some(Duration::from_millis(100)))?;
        for _ in 0..100 {
            // A minimal query for "." type A; any answer means it is up.
            let q = [0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1];
            probe.send_to(&q, dns.addr)?;
            if probe.recv_from(&mut [0u8; 512]).is_ok() {
                return Ok(dns);
            }
        }
        Err(std::io::Error::other(format!(
            "dnsmasq did not come up on port {port}"
        )))
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
