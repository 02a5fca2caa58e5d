//! Shared helpers of the integration tests: real RocksDB partitions, real QUIC servers on
//! loopback, real (dev) certificates, and the turns the tests take in their shared process.
//!
//! # Turns
//!
//! Every test of this binary runs in one process, two or more at a time, whatever module it
//! is in. Most only touch what they create (their own temp dirs, servers on port 0, child
//! processes, fresh topics), but some change or measure something the whole process or the
//! whole machine shares. So every test starts by taking a [`turn`] ([`turn_blocking`] in a
//! test without a runtime) that says what it needs, and holds it to its end:
//!
//! * [`Needs::Nothing`]: only its own things. Runs beside any other such test.
//! * [`Needs::Broker`]: the Kafka broker of `scripts/kafka.sh`, up. Runs beside the above
//!   and other broker users, never while a test has the broker stopped.
//! * [`Needs::BrokerToItself`]: stops and restarts the broker. No other broker user runs
//!   meanwhile; tests that need nothing of Kafka still do.
//! * [`Needs::Process`]: the whole process to itself — nothing else runs. For tests that
//!   change something process-wide (RocksDB's default `Env` and its background threads),
//!   measure rates or recovery times that neighbours' CPU use would distort, or drive the
//!   emulated link, whose relay threads must get the CPU when they need it.
//!
//! A test that counts file descriptors, temp dirs or snapshot users looks only under its own
//! directories and servers (e.g. [`open_fds_under`]), so those need no turn of their own.
//! A new test that changes the process's environment, working directory or limits, counts
//! what the whole process holds, or uses a fixed port outside a namespace of its own, takes
//! [`Needs::Process`].
//!
//! The turns are `tokio` locks, held across `.await` without blocking a runtime; a test
//! takes exactly one turn, first thing (the locks are fair: a second one taken while a
//! whole-process turn waits would deadlock).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use quicstrap::client::{FetchConfig, Fetcher};
use quicstrap::net::tls::{self, AllowList};
use quicstrap::peers::Peer;
use quicstrap::server::{Server, ServerConfig};
use quicstrap::snapshot::DataDir;
use quicstrap::store::partition::{PartitionId, TableFormat};
use testkit::seed;

// Running the `quicstrap` binary is shared with the benchmarks.
pub use testkit::{
    bin, certs, fetch_command, fetch_command_in, metric, output_ok, scrape, serve_command_in,
    ServeProcess,
};

/// Shared by every test; written by a test that needs the whole process.
static PROCESS: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());
/// Shared by the tests that use the Kafka broker; written by a test that stops it. Always
/// taken after [`PROCESS`], so the two cannot wait for each other.
static KAFKA: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// What a test needs of the process it shares with every other test (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Needs {
    /// Only what the test creates itself.
    Nothing,
    /// The Kafka broker, up.
    Broker,
    /// To stop and restart the Kafka broker.
    BrokerToItself,
    /// The whole process: no other test runs meanwhile.
    Process,
}

/// A test's turn, held until it is dropped at the end of the test.
pub struct Turn {
    _held: Vec<Box<dyn Send + Sync>>,
}

/// Waits for a turn for a test that needs `needs`.
pub async fn turn(needs: Needs) -> Turn {
    let mut held: Vec<Box<dyn Send + Sync>> = Vec::with_capacity(2);
    if needs == Needs::Process {
        held.push(Box::new(PROCESS.write().await));
    } else {
        held.push(Box::new(PROCESS.read().await));
    }
    match needs {
        Needs::Broker => held.push(Box::new(KAFKA.read().await)),
        Needs::BrokerToItself => held.push(Box::new(KAFKA.write().await)),
        Needs::Nothing | Needs::Process => {}
    }
    Turn { _held: held }
}

/// [`turn`] for a test that runs without an async runtime (a plain `#[test]`).
pub fn turn_blocking(needs: Needs) -> Turn {
    let mut held: Vec<Box<dyn Send + Sync>> = Vec::with_capacity(2);
    if needs == Needs::Process {
        held.push(Box::new(PROCESS.blocking_write()));
    } else {
        held.push(Box::new(PROCESS.blocking_read()));
    }
    match needs {
        Needs::Broker => held.push(Box::new(KAFKA.blocking_read())),
        Needs::BrokerToItself => held.push(Box::new(KAFKA.blocking_write())),
        Needs::Nothing | Needs::Process => {}
    }
    Turn { _held: held }
}

pub fn id(partition: u32) -> PartitionId {
    PartitionId::new("it_store", 3, partition).unwrap()
}

/// Seeds `id` under `root`.
pub fn seed(root: &Path, id: &PartitionId, records: u64, value_size: usize, per_sst: u64) {
    seed::seed(
        &id.dir(root),
        TableFormat::Block,
        records,
        value_size,
        per_sst,
    )
    .unwrap();
}

/// A fresh directory holding partition `partition` of the test store, seeded with
/// `(records, value_size, records_per_sst)`: the source most tests start from.
pub fn seeded(
    partition: u32,
    (records, value_size, per_sst): (u64, usize, u64),
) -> (tempfile::TempDir, PartitionId) {
    let src = tempfile::tempdir().unwrap();
    let id = id(partition);
    seed(src.path(), &id, records, value_size, per_sst);
    (src, id)
}

/// [`seeded`], and an in-process server over it ([`server`], `tweak` applied).
pub async fn served(
    partition: u32,
    shape: (u64, usize, u64),
    tweak: impl FnOnce(&mut ServerConfig),
) -> (tempfile::TempDir, PartitionId, Server) {
    let (src, id) = seeded(partition, shape);
    let server = server(src.path(), tweak).await;
    (src, id, server)
}

pub fn server_config(root: &Path, snaps: &Path, format: TableFormat) -> ServerConfig {
    let _ = root;
    ServerConfig::new(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        tls::dev::server().unwrap(),
        AllowList::parse(tls::dev::ALLOW),
        format,
        snaps.to_owned(),
    )
}

static SERVERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Starts an in-process server over `root`, with a snapshot dir of its own.
pub async fn server(root: &Path, tweak: impl FnOnce(&mut ServerConfig)) -> Server {
    let n = SERVERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let snaps = root.join(format!(".snapshots-{n}"));
    let mut cfg = server_config(root, &snaps, TableFormat::Block);
    tweak(&mut cfg);
    let format = cfg.policy.table_format;
    Server::start(cfg, Arc::new(DataDir::new(root.to_owned(), format)))
        .await
        .unwrap()
}

pub fn peer(s: &Server) -> Peer {
    Peer::new(s.local_addr().unwrap())
}

/// A fetcher trying peers in the given order, with short timeouts for tests.
pub fn fetcher(tweak: impl FnOnce(&mut FetchConfig)) -> Fetcher {
    let mut cfg = FetchConfig::new(tls::dev::client().unwrap());
    cfg.order = quicstrap::peers::order::PeerOrder::Listed;
    cfg.bind = SocketAddr::from(([127, 0, 0, 1], 0));
    cfg.policy.idle_timeout = Duration::from_secs(5);
    cfg.tuning.idle_timeout = Duration::from_secs(5);
    cfg.policy.connect_timeout = Duration::from_secs(5);
    tweak(&mut cfg);
    Fetcher::new(cfg).unwrap()
}

/// Every entry under `dir` whose name marks a temp dir.
pub fn temp_dirs(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(stores) = std::fs::read_dir(root) else {
        return out;
    };
    for s in stores.flatten() {
        if let Ok(entries) = std::fs::read_dir(s.path()) {
            for e in entries.flatten() {
                if e.file_name()
                    .to_string_lossy()
                    .starts_with(".quicstrap-tmp-")
                {
                    out.push(e.path());
                }
            }
        }
    }
    out
}

/// File descriptors of this process that point under `dir`.
pub fn open_fds_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                if target.starts_with(dir) {
                    out.push(target);
                }
            }
        }
    }
    out
}

/// Asserts the fetched partition equals the source key by key, metadata included.
pub fn assert_same(src: &Path, dst: &Path) -> u64 {
    quicstrap::store::partition::verify_equal(src, dst).unwrap()
}

/// The attempts of a fetch that failed because every peer did; any other error fails the
/// test.
pub fn all_failed(err: &quicstrap::FetchError) -> &[quicstrap::client::Attempt] {
    match err {
        quicstrap::FetchError::AllPeersFailed { attempts } => attempts,
        other => panic!("{other}"),
    }
}

/// Flips one byte in the middle of `path` (same size, different content).
pub fn corrupt(path: &Path) {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let len = f.metadata().unwrap().len();
    let at = len / 2;
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(at)).unwrap();
    f.read_exact(&mut b).unwrap();
    b[0] ^= 0xff;
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&b).unwrap();
    f.sync_all().unwrap();
}

/// The largest `.sst` file of a directory.
pub fn largest_sst(dir: &Path) -> PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".sst"))
        .max_by_key(|e| e.metadata().unwrap().len())
        .unwrap()
        .path()
}

/// Waits (bounded) until `cond` holds, polling every millisecond.
pub async fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Starts a fetch in the background; returns its handle and its live progress (and cancel).
pub fn spawn_fetch(
    f: &Arc<Fetcher>,
    id: &PartitionId,
    peers: Vec<Peer>,
    dst: &Path,
) -> (
    tokio::task::JoinHandle<Result<quicstrap::FetchReport, quicstrap::FetchError>>,
    Arc<quicstrap::client::Progress>,
) {
    let progress = Arc::new(quicstrap::client::Progress::default());
    let (f, id, dst, pr) = (f.clone(), id.clone(), dst.to_owned(), progress.clone());
    let task = tokio::spawn(async move { f.fetch_with_progress(&id, &peers, &dst, &pr).await });
    (task, progress)
}

/// Waits until the current attempt has received more than `bytes`.
pub async fn wait_bytes(progress: &quicstrap::client::Progress, bytes: u64) {
    wait_for("bytes to arrive", Duration::from_secs(30), || {
        progress.received.load(std::sync::atomic::Ordering::Relaxed) > bytes
    })
    .await;
}

/// A fetcher whose reads are limited to `rate` bytes/s, so a test can act mid-transfer.
pub fn slow_fetcher(rate: u64, tweak: impl FnOnce(&mut FetchConfig)) -> Arc<Fetcher> {
    Arc::new(fetcher(|c| {
        c.policy.read_limiter = quicstrap::control::pacing::RateLimiter::new(rate);
        tweak(c);
    }))
}

/// Fetches `id` from `server` into a fresh directory with a default fetcher; it must succeed
/// (the "and others are still served" check of many tests).
pub async fn fetch_ok(server: &Server, id: &PartitionId) -> tempfile::TempDir {
    let dst = tempfile::tempdir().unwrap();
    fetcher(|_| {})
        .fetch(id, &[peer(server)], dst.path())
        .await
        .unwrap();
    dst
}

/// Makes `server` hold a snapshot of `id` with its digests cached, then corrupts one of its
/// files behind the cache's back, as a flipped bit on the serving disk would.
pub async fn poison_snapshot(server: &Server, id: &PartitionId) {
    let lease = server
        .snapshots()
        .acquire(id, std::time::Instant::now())
        .await
        .unwrap();
    lease
        .snapshot()
        .digests(quicstrap::store::checksum::ChecksumAlgo::Md5)
        .await
        .unwrap();
    corrupt(&largest_sst(&lease.snapshot().dir));
}

/// An HTTPS baseline listener over `server`'s snapshots, on a free loopback port.
pub async fn https_server(
    server: &Server,
    tweak: impl FnOnce(&mut quicstrap_baseline::HttpServerConfig),
) -> quicstrap_baseline::HttpServer {
    let mut cfg = quicstrap_baseline::HttpServerConfig::new(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        tls::dev::server().unwrap(),
        AllowList::parse(tls::dev::ALLOW),
        TableFormat::Block,
    );
    tweak(&mut cfg);
    quicstrap_baseline::HttpServer::start(cfg, server.snapshots().clone())
        .await
        .unwrap()
}

/// A baseline fetcher with the dev client identity and short timeouts for tests.
pub fn https_fetcher(
    tweak: impl FnOnce(&mut quicstrap_baseline::HttpFetchConfig),
) -> quicstrap_baseline::HttpFetcher {
    let mut cfg = quicstrap_baseline::HttpFetchConfig::new(tls::dev::client().unwrap());
    cfg.policy.idle_timeout = Duration::from_secs(5);
    cfg.policy.connect_timeout = Duration::from_secs(5);
    tweak(&mut cfg);
    quicstrap_baseline::HttpFetcher::new(cfg).unwrap()
}

/// The outcome line `scripts/chaos.sh` collects into CHAOS.md, for a scenario that ran: did
/// it end as it must, how long the recovery (or the work under fault) took, and how many
/// bytes of a completed partition differ from the source.
pub fn chaos_outcome(scenario: &str, ok: bool, recover: Duration, bytes_lost: u64) {
    println!(
        "CHAOS {scenario} ok={ok} recover_ms={} bytes_lost={bytes_lost}",
        recover.as_millis()
    );
}

/// The helpers run this build's binary (the one Cargo built for these tests) with the
/// development PKI this build embeds.
#[test]
fn testkit_runs_this_build_with_its_dev_pki() {
    let _turn = turn_blocking(Needs::Nothing);
    if std::env::var_os("QUICSTRAP_BIN").is_none() {
        let canonical = |p: &str| std::fs::canonicalize(p).unwrap();
        assert_eq!(canonical(bin()), canonical(env!("CARGO_BIN_EXE_quicstrap")));
    }
    assert_eq!(testkit::DEV_ALLOW, tls::dev::ALLOW);
    assert_eq!(std::fs::read(certs().join("ca.crt")).unwrap(), tls::dev::CA);
}

/// The exit code and JSON report of a finished `fetch --json` process.
pub fn report(child: std::process::Child) -> (i32, serde_json::Value) {
    let out = child.wait_with_output().unwrap();
    let v = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out.status.code().unwrap_or(-1), v)
}

/// Bytes received so far by the fetch writing into `dst` (files in its temp dirs).
pub fn received(dst: &Path) -> u64 {
    temp_dirs(dst)
        .iter()
        .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten())
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// A QUIC server endpoint on loopback with the development server identity, admitting any
/// client of the development CA: for tests that play a peer by hand (a hostile one, an old
/// one).
pub fn hand_played_peer() -> quinn::Endpoint {
    let crypto = tls::server_config(
        &tls::dev::server().unwrap(),
        quicstrap::server::LivePolicy::new(AllowList::AnyAuthenticated),
    )
    .unwrap();
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(
        quinn::crypto::rustls::QuicServerConfig::try_from(crypto).unwrap(),
    ));
    cfg.transport_config(Arc::new(
        quicstrap::net::transport::TransportTuning::default()
            .transport_config(quicstrap::net::transport::Side::Server),
    ));
    quinn::Endpoint::server(cfg, "127.0.0.1:0".parse().unwrap()).unwrap()
}

/// `cmd` run as PID 1 of a new PID namespace with its own /proc, the way a container runs a
/// process (`unshare --pid --fork --mount-proc`); killed if `unshare` dies.
pub fn as_pid_1(cmd: &std::process::Command) -> std::process::Command {
    let mut wrapped = std::process::Command::new("unshare");
    wrapped
        .args(["--pid", "--fork", "--mount-proc", "--kill-child"])
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => wrapped.env(k, v),
            None => wrapped.env_remove(k),
        };
    }
    wrapped
}

/// The PID (in this namespace) of the process `unshare` started ([`as_pid_1`]); asserts it is
/// PID 1 in its own.
pub async fn pid_1_of(unshare: &std::process::Child) -> i32 {
    let path = format!("/proc/{0}/task/{0}/children", unshare.id());
    let mut pid = None;
    wait_for(
        "the namespace's first process",
        Duration::from_secs(10),
        || {
            pid = std::fs::read_to_string(&path)
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse().ok());
            pid.is_some()
        },
    )
    .await;
    let pid = pid.unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let nspid = status
        .lines()
        .find(|l| l.starts_with("NSpid:"))
        .unwrap_or_default();
    assert!(nspid.trim_end().ends_with("\t1"), "{nspid}");
    pid
}

/// [`seeded`] with `records` records of 1 000 bytes, 4 000 to an SST, and its bytes on disk.
pub fn seeded_1k(partition: u32, records: u64) -> (tempfile::TempDir, PartitionId, u64) {
    let (src, id) = seeded(partition, (records, 1000, 4_000));
    let total = testkit::dir_bytes(&id.dir(src.path()));
    (src, id, total)
}

/// A server of `src` writing at `rate` bytes/s, so a test can act mid-transfer.
pub async fn server_at(src: &Path, rate: u64, tweak: impl FnOnce(&mut ServerConfig)) -> Server {
    server(src, |c| {
        c.policy.write_limiter = quicstrap::control::pacing::RateLimiter::new(rate);
        tweak(c);
    })
    .await
}

/// Copies the store-version directory `from` (with its partitions) into `root`.
pub fn copy_dir(from: &Path, root: &Path) {
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(root)
        .status()
        .unwrap();
    assert!(status.success());
}

/// A copy of the store of `id` under `src` in a directory of its own, for another server of
/// this process: two servers in one process cannot both open one RocksDB (its lock is per
/// process), so servers sharing a directory refuse each other's snapshots at random.
pub fn copy_of(src: &Path, id: &PartitionId) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&src.join(id.store_version_dir()), dir.path());
    dir
}
