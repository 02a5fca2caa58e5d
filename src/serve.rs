//! `quicstrap serve`: a serving node from the command line — options (and a config file) in,
//! the library's [`Node`] run until SIGTERM or Ctrl-C, its addresses printed for scripts and
//! tests to read; SIGHUP (or the admin endpoint's reload) re-reads the config file.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Args;

use quicstrap::control::stores::StoreTable;
use quicstrap::ingest::follow::FollowConfig;
use quicstrap::jobs::admin::{LiveSettings, NodeControl, Reload, Reloaded};
use quicstrap::jobs::node::{Node, NodeConfig};
use quicstrap::net::tls::{AllowList, Identity};
use quicstrap::server::{LivePolicy, ServerConfig};
use quicstrap::store::lock::unpoisoned as lock;
use quicstrap::store::partition::TableFormat;
use quicstrap_baseline::{HttpServer, HttpServerConfig, TcpCongestion};

use crate::args::{KafkaOpts, ListenSpec, QuicArgs, TlsArgs};
use crate::config::ConfigFile;
use crate::error::CliError;

// The options of `quicstrap serve`.
#[derive(Args)]
pub struct ServeArgs {
    /// UDP address to listen on.
    #[arg(long, default_value = "0.0.0.0:7878")]
    pub listen: SocketAddr,
    /// More QUIC listeners over the same snapshots, `ADDR@cubic|bbr|newreno` (repeatable):
    /// lets one server offer several congestion controllers side by side.
    #[arg(long = "also-listen")]
    pub also_listen: Vec<ListenSpec>,
    /// HTTPS baseline listeners over the same snapshots, `ADDR` or `ADDR@<tcp cc>` such as
    /// `0.0.0.0:8443@bbr` (repeatable). See the `baseline` module for the URLs.
    #[arg(long = "http-listen")]
    pub http_listen: Vec<ListenSpec>,
    /// Root holding `<store>_v<version>/<partition>/` directories.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Table format of the partitions: block or plain.
    #[arg(long, default_value = "block")]
    pub format: TableFormat,
    /// Where snapshots are made (default: <data-dir>/.snapshots).
    #[arg(long)]
    pub snapshot_dir: Option<PathBuf>,
    /// Another serve owns --data-dir or the snapshot dir: wait up to this many seconds for
    /// it to exit instead of refusing at once (rolling restarts).
    #[arg(long, default_value_t = 0)]
    pub wait_for_lock: u64,
    /// Comma-separated client names allowed to fetch, matched exactly against the DNS names
    /// of a client's certificate (a wildcard certificate does not stand in for a specific
    /// name); `*` lets any client whose certificate chains to --ca fetch. Required: who may
    /// copy this node's data is a decision, not a default.
    #[arg(long)]
    pub allow: String,
    /// Reuse a snapshot younger than this many seconds.
    #[arg(long, default_value_t = 3600)]
    pub snapshot_ttl_secs: u64,
    /// How long after an interrupted transfer its client may resume it, in seconds (never
    /// past the snapshot TTL). An `Abort` from the client ends it at once.
    #[arg(long, default_value_t = 600)]
    pub resume_window_secs: u64,
    /// Sweep stale snapshots every this many seconds.
    #[arg(long, default_value_t = 7200)]
    pub snapshot_cleanup_secs: u64,
    /// Concurrent transfers before answering Busy.
    #[arg(long, default_value_t = 30)]
    pub max_users: usize,
    /// Concurrent transfers of one client (its certificate at its host: an IPv4 address or an
    /// IPv6 /64) before answering it Busy, while others are still served. The default is the
    /// most partitions one fetcher receives at once, so a node restoring itself from this peer
    /// alone is not refused; below the default --max-users, so one client that asks for many
    /// partitions and reads them slowly cannot hold every slot.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_users_per_client: u64,
    /// Close a QUIC connection that has carried no transfer for this many seconds, so idle
    /// connections cannot hold the connection cap. Fetchers close their own idle connections
    /// after 30 s, before this.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_connection_secs: u64,
    /// Files of one transfer in flight at once (1 to 16: a fetcher reads at most 16 file
    /// streams of a transfer at once).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=16))]
    pub files_in_flight: u64,
    /// Server-side limit for one partition transfer, seconds.
    #[arg(long, default_value_t = 3600)]
    pub partition_timeout_secs: u64,
    /// QUIC idle timeout, seconds.
    #[arg(long, default_value_t = 60)]
    pub idle_timeout_secs: u64,
    /// Write-rate limit for all transfers of this process, bytes/s (0 = unlimited).
    #[arg(long, default_value_t = quicstrap::control::pacing::DEFAULT_RATE)]
    pub write_limit: u64,
    /// Most bytes all QUIC transfers together may queue for sending (send windows plus file
    /// reads), whatever the number of clients and their paths: each connection's share
    /// follows its path, and file reads pause when it is full.
    #[arg(long, default_value_t = quicstrap::control::budget::DEFAULT_CAP)]
    pub max_send_buffer: u64,
    /// Kafka brokers (`host:port,...`): keep every partition under --data-dir following its
    /// topic while serving snapshots of it. A partition whose following stops (it cannot
    /// open, a bad record under --on-bad-record fail, a retention gap) is refused to peers as
    /// `stale` and retried every minute; the others are served meanwhile.
    #[arg(long)]
    pub kafka: Option<String>,
    #[command(flatten)]
    pub kafka_opts: KafkaOpts,
    /// Serve Prometheus metrics at `http://ADDR/metrics`.
    #[arg(long)]
    pub metrics_listen: Option<SocketAddr>,
    /// Adapt the write limit between 20 % and 200 % of --write-limit, in steps of 20 % per
    /// 1 s cycle: down when over half the requests of a cycle were answered Busy, up after
    /// 10 quiet cycles.
    #[arg(long)]
    pub adaptive_throttle: bool,
    /// Serve the admin endpoint (`quicstrap status`, `quicstrap admin`): live transfers,
    /// limits, drain, reload. `PORT` binds 127.0.0.1:PORT. It has no authentication, so an
    /// address other than loopback needs --admin-remote.
    #[arg(long, value_name = "ADDR|PORT", value_parser = parse_admin)]
    pub admin_listen: Option<SocketAddr>,
    /// Let --admin-listen bind an address other than loopback (anyone who reaches it can
    /// drain the node or change its limits).
    #[arg(long, requires = "admin_listen")]
    pub admin_remote: bool,
    /// Configuration file (TOML): its [serve] section holds any of these flags (flags
    /// given here win), [stores.NAME] sections the per-store policy. SIGHUP re-reads it and
    /// applies the allow list, the write limit and the store sections live.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(flatten)]
    pub quic: QuicArgs,
}

/// `PORT` (on loopback) or `ADDR`.
fn parse_admin(s: &str) -> Result<SocketAddr, String> {
    match s.parse::<u16>() {
        Ok(port) => Ok(SocketAddr::from(([127, 0, 0, 1], port))),
        Err(_) => s.parse().map_err(|e| format!("{s}: {e}")),
    }
}

/// What a reload needs: the file as last read and the command line's own flags (which win).
pub struct Reloadable {
    file: Mutex<ConfigFile>,
    tokens: Vec<OsString>,
}

impl Reloadable {
    /// The file the node started from, and the flags after `serve` on its command line.
    pub fn new(file: ConfigFile, tokens: Vec<OsString>) -> Self {
        Self {
            file: Mutex::new(file),
            tokens,
        }
    }

    /// Re-reads the file and applies its live part through `control`; names what changed
    /// and what would need a restart (logged at WARN).
    fn reload(&self, control: &NodeControl) -> Result<Reloaded, String> {
        // Held throughout: two reloads (a SIGHUP and an admin call) apply one after the
        // other, never an older file after a newer one.
        let mut old = lock(&self.file);
        let path = old.path.clone();
        let new = ConfigFile::load(&path, &old.command)?;
        new.check_values()?;
        let given = crate::config::given_flags(&self.tokens);
        let mut argv: Vec<OsString> = vec!["quicstrap".into(), "serve".into()];
        argv.extend(new.args("serve", &given)?.into_iter().map(OsString::from));
        argv.extend(self.tokens.iter().cloned());
        let a = parse_serve(&old.command, argv)?;
        let applied = control.apply(LiveSettings {
            allow: AllowList::parse(&a.allow),
            stores: new.stores.clone(),
            write_limit: a.write_limit,
        });
        let mut need_restart = Vec::new();
        for key in crate::config::changed_keys(&old, &new, "serve") {
            if given.contains(&key) {
                tracing::warn!(key, file = %path.display(), "changed in the file, but a flag on the command line sets it");
                need_restart.push(format!("{key} (set by a flag)"));
            } else if !crate::config::LIVE_SERVE_KEYS.contains(&key.as_str()) {
                tracing::warn!(key, file = %path.display(), "changed in the file; takes effect at the next restart");
                need_restart.push(key);
            }
        }
        *old = new;
        tracing::info!(?applied, ?need_restart, "configuration reloaded");
        Ok(Reloaded {
            applied,
            need_restart,
        })
    }
}

/// The `serve` options of a whole command line (`quicstrap serve ...`) of `command`.
fn parse_serve(command: &clap::Command, argv: Vec<OsString>) -> Result<ServeArgs, String> {
    use clap::FromArgMatches;
    let matches = command
        .clone()
        .try_get_matches_from(argv)
        .map_err(|e| e.to_string())?;
    let serve = matches
        .subcommand_matches("serve")
        .ok_or("not a serve command line")?;
    ServeArgs::from_arg_matches(serve).map_err(|e| e.to_string())
}

/// Serves until told to stop; every failure to start is exit 2.
pub async fn run(a: ServeArgs, reloadable: Option<Reloadable>) -> Result<(), CliError> {
    // First of all: a SIGHUP while the node starts (config management reloading every
    // node) must not kill it, which is the signal's default action.
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(CliError::unusable)?;
    let mut hup = signal(SignalKind::hangup()).map_err(CliError::unusable)?;
    let identity = a.tls.identity("serve").map_err(CliError::Unusable)?;
    if let Some(addr) = a.admin_listen {
        if !addr.ip().is_loopback() && !a.admin_remote {
            return Err(CliError::Unusable(format!(
                "--admin-listen {addr} is not loopback: the admin endpoint has no \
                 authentication; add --admin-remote to bind it anyway"
            )));
        }
    }
    let stores = reloadable
        .as_ref()
        .map(|r| lock(&r.file).stores.clone())
        .unwrap_or_default();
    let cfg = node_config(&a, identity, stores)?;
    // Checked before anything starts, like the QUIC listeners' controllers.
    let https_specs: Vec<(SocketAddr, Option<TcpCongestion>)> = listeners(&a.http_listen)?;
    let policy = cfg.server.policy.clone();
    let prepared = Node::prepare(cfg).await.map_err(CliError::unusable)?;
    for f in prepared.followed() {
        if let Some(e) = &f.open_error {
            // Serving the others beats serving none; this one is refused as `stale` and
            // retried.
            eprintln!(
                "quicstrap: partition {} does not open, not served until it does: {e}",
                f.id
            );
        }
    }
    let mut node = prepared.start().await.map_err(CliError::unusable)?;
    // Tests and scripts read this line to learn the port.
    let addr = node.server().local_addr().map_err(CliError::unusable)?;
    println!("listening on {addr}");
    for s in node.extra() {
        if let Ok(addr) = s.local_addr() {
            println!("also listening on {addr}");
        }
    }
    // The HTTPS baseline over the node's own snapshots.
    let mut https = Vec::new();
    for (addr, congestion) in https_specs {
        let mut h = HttpServerConfig::with_policy(addr, policy.clone());
        h.congestion = congestion;
        match HttpServer::start(h, node.server().snapshots().clone()).await {
            Ok(server) => https.push(server),
            Err(e) => {
                node.shutdown().await;
                return Err(CliError::unusable(e));
            }
        }
    }
    for h in &https {
        println!("https listening on {}", h.local_addr());
    }
    if let Some(addr) = a.metrics_listen {
        let registry = node.registry();
        for h in &https {
            quicstrap_baseline::metrics::register(&registry, h);
        }
        let bound = node
            .serve_metrics(addr, registry)
            .await
            .map_err(|e| CliError::Unusable(format!("metrics listener {addr}: {e}")))?;
        println!("metrics on http://{bound}/metrics");
    }
    let reloadable = reloadable.map(Arc::new);
    let reload: Option<Reload> = reloadable
        .clone()
        .map(|r| Arc::new(move |c: &NodeControl| r.reload(c)) as Reload);
    if let Some(addr) = a.admin_listen {
        let bound = node
            .serve_admin(addr, reload.clone())
            .await
            .map_err(|e| CliError::Unusable(format!("admin listener {addr}: {e}")))?;
        println!("admin on http://{bound}/status");
    }
    let control = node.control();
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = hup.recv() => match &reloadable {
                // The file is read off the runtime's threads: it is disk work.
                Some(r) => {
                    let (r, c) = (r.clone(), control.clone());
                    match tokio::task::spawn_blocking(move || r.reload(&c)).await {
                        Ok(Ok(done)) => eprintln!(
                            "quicstrap: reloaded: applied {:?}; need a restart {:?}",
                            done.applied, done.need_restart
                        ),
                        Ok(Err(e)) => eprintln!("quicstrap: reload refused, nothing changed: {e}"),
                        Err(e) => eprintln!("quicstrap: reload failed: {e}"),
                    }
                }
                None => eprintln!("quicstrap: SIGHUP: no --config to reload"),
            },
        }
    }
    eprintln!("quicstrap: shutting down");
    // Every listener at once, so every client hears the shutdown without waiting for the
    // other listeners' grace periods.
    let https = https.into_iter().map(HttpServer::shutdown);
    tokio::join!(futures_util::future::join_all(https), node.shutdown());
    Ok(())
}

/// The node the options describe. A congestion controller a listener names is checked here,
/// before anything starts.
fn node_config(
    a: &ServeArgs,
    identity: Identity,
    stores: StoreTable,
) -> Result<NodeConfig, CliError> {
    let snaps = a
        .snapshot_dir
        .clone()
        .unwrap_or_else(|| a.data_dir.join(".snapshots"));
    let mut server = ServerConfig::new(
        a.listen,
        identity,
        AllowList::parse(&a.allow),
        a.format,
        snaps,
    );
    server.policy.live = LivePolicy::with_stores(AllowList::parse(&a.allow), stores);
    server.snapshots.ttl = Duration::from_secs(a.snapshot_ttl_secs);
    server.snapshots.cleanup_interval = Duration::from_secs(a.snapshot_cleanup_secs.max(1));
    server.snapshots.resume_window = Duration::from_secs(a.resume_window_secs);
    server.snapshots.max_users = a.max_users;
    server.snapshots.max_users_per_client =
        usize::try_from(a.max_users_per_client).unwrap_or(usize::MAX);
    server.connection_idle = Duration::from_secs(a.idle_connection_secs);
    server.snapshots.lock_wait = Duration::from_secs(a.wait_for_lock);
    server.files_in_flight = a.files_in_flight as usize;
    server.partition_timeout = Duration::from_secs(a.partition_timeout_secs);
    server.tuning.idle_timeout = Duration::from_secs(a.idle_timeout_secs);
    server.policy.idle_timeout = server.tuning.idle_timeout;
    server.policy.write_limiter = quicstrap::control::pacing::RateLimiter::new(a.write_limit);
    server.max_send_buffer = a.max_send_buffer;
    a.quic.apply(&mut server.tuning);
    let follow = a.kafka.as_deref().map(|brokers| {
        let mut fc = FollowConfig::new(a.kafka_opts.config(brokers));
        fc.catch_up = a.kafka_opts.catch_up();
        fc.catch_up.deadline = Duration::MAX;
        fc.retry_stopped = Duration::from_secs(a.kafka_opts.kafka_retry_secs.max(1));
        fc
    });
    Ok(NodeConfig {
        server,
        data_dir: a.data_dir.clone(),
        follow,
        also_listen: listeners(&a.also_listen)?,
        adaptive_throttle: a.adaptive_throttle,
    })
}

/// Listeners with the congestion controller each names, as QUIC's or TCP's (`T`).
fn listeners<T: std::str::FromStr<Err = String>>(
    specs: &[ListenSpec],
) -> Result<Vec<(SocketAddr, Option<T>)>, CliError> {
    specs
        .iter()
        .map(|s| Ok((s.addr, s.parse_congestion()?)))
        .collect::<Result<_, String>>()
        .map_err(CliError::Unusable)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    /// `Debug` of a node config without its clock readings (the rate limiters' buckets, the
    /// ingest counters' creation time), which differ between any two configs built at
    /// different instants.
    fn shape(cfg: &NodeConfig) -> String {
        let mut text = format!("{cfg:?}");
        for (start, end) in [("Instant {", "}"), ("last_progress_ms: ", ",")] {
            let mut out = String::new();
            let mut rest = text.as_str();
            while let Some(i) = rest.find(start) {
                out.push_str(&rest[..i]);
                let stop = rest[i..].find(end).map_or(rest.len(), |e| i + e + 1);
                rest = &rest[stop..];
            }
            text = out + rest;
        }
        text
    }

    fn parse(argv: Vec<OsString>) -> (ServeArgs, StoreTable) {
        use clap::Args;
        let command = clap::Command::new("quicstrap")
            .subcommand(ServeArgs::augment_args(clap::Command::new("serve")));
        let (argv, file) = crate::config::expand(argv, &command).unwrap();
        let a = parse_serve(&command, argv).unwrap();
        (a, file.map(|f| f.stores).unwrap_or_default())
    }

    #[test]
    fn a_config_file_equal_to_a_flag_set_gives_the_same_node() {
        let certs = concat!(env!("CARGO_MANIFEST_DIR"), "/certs-dev");
        let flags: Vec<OsString> = [
            "quicstrap",
            "serve",
            "--listen=127.0.0.1:7000",
            "--also-listen=127.0.0.1:7001@cubic",
            "--also-listen=127.0.0.1:7002",
            "--data-dir=/srv/q",
            "--allow=a.example,b.example",
            "--write-limit=5000000",
            "--max-users=7",
            "--adaptive-throttle",
            "--congestion=bbr",
            "--kafka=127.0.0.1:9092",
            "--kafka-config=client.id=q",
            "--kafka-config=fetch.min.bytes=1",
        ]
        .into_iter()
        .map(OsString::from)
        .chain(
            ["cert", "key", "ca"]
                .iter()
                .zip(["server.crt", "server.key", "ca.crt"])
                .map(|(k, f)| format!("--{k}={certs}/{f}").into()),
        )
        .collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.toml");
        std::fs::write(
            &path,
            format!(
                "[serve]\nlisten = \"127.0.0.1:7000\"\n\
                 also_listen = [\"127.0.0.1:7001@cubic\", \"127.0.0.1:7002\"]\n\
                 data-dir = \"/srv/q\"\nallow = [\"a.example\", \"b.example\"]\n\
                 write-limit = 5_000_000\nmax-users = 7\nadaptive-throttle = true\n\
                 congestion = \"bbr\"\nkafka = \"127.0.0.1:9092\"\n\
                 kafka-config = [\"client.id=q\", \"fetch.min.bytes=1\"]\n\
                 cert = \"{certs}/server.crt\"\nkey = \"{certs}/server.key\"\n\
                 ca = \"{certs}/ca.crt\"\n\n[stores.orders]\nserve = false\n"
            ),
        )
        .unwrap();
        let from_file: Vec<OsString> = vec![
            "quicstrap".into(),
            "serve".into(),
            "--config".into(),
            path.clone().into(),
        ];
        let (by_flags, _) = parse(flags);
        let (by_file, stores) = parse(from_file.clone());
        assert!(!stores.get("orders").serve);
        let node = |a: &ServeArgs| {
            let id = a.tls.identity("serve").unwrap();
            node_config(a, id, stores.clone()).unwrap()
        };
        assert_eq!(shape(&node(&by_flags)), shape(&node(&by_file)));
        // A flag on the command line wins over the file.
        let mut over = from_file;
        over.extend(["--max-users".into(), "9".into()]);
        let (a, _) = parse(over);
        assert_eq!(a.max_users, 9);
        assert_ne!(shape(&node(&a)), shape(&node(&by_file)));
    }
}
