//! Mean time to restore a node, and the broker's load while it happens: a cluster of 4 nodes
//! holding 48 partitions with replication factor 3 (36 per node), each node a separate
//! `quicstrap serve --kafka` process following the real broker. One node's data dir is wiped
//! and `quicstrap recover` restores its 36 partitions from the other holders, found through
//! SRV records on a real dnsmasq, then catches up from the broker — against the same node
//! rebuilt from Kafka alone, in the same run, alternating. The nodes share loopback: the
//! link is not the point here (BENCHMARKS.md's link rows are), the broker and the node are.
//!
//! Per run: MTTR (from the start of `recover` until every partition is valid and caught up to
//! the high watermark, which `recover` waits for), the bytes the broker wrote meanwhile
//! (`wchar` of its process: socket sends including `sendfile`, plus its own files), the
//! records replayed, the recovering process's peak RSS, and when each partition became
//! valid (CSV, and an SVG plot of partitions completed over time). A cluster model
//! extrapolates from the measured rates.
//!
//! `cargo bench --bench cluster -- [--reps N] [--records N] [--value BYTES] [--out DIR]`
//! (defaults 2, 120 000, 100, `target/cluster`); needs the broker of `scripts/kafka.sh`
//! (`QUICSTRAP_KAFKA`) and dnsmasq. Under `cargo test`: a smoke run of 8 small partitions.
//! With `--two-zones` (as root) it runs the two-zone comparison instead: the holders on a
//! star of emulated links, locality-aware peer choice against shuffle ([`zones`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use quicstrap::ingest::{self, kafka::KafkaWriter};
use quicstrap::peers::dns::srv_name;
use quicstrap::store::partition::{self, PartitionId};
use testkit::seed::seed_value;
use testkit::{recover_command_in, serve_command_in, Dnsmasq, ServeProcess};

const NODES: u32 = 4;
const RF: u32 = 3;
const DOMAIN: &str = "cluster.quicstrap.test";
/// The node wiped and recovered.
const WIPED: u32 = 0;

struct Opts {
    partitions: u32,
    records: u64,
    value: usize,
    reps: usize,
    /// Where the report goes (`None`: a smoke run's, into its work dir).
    out: Option<PathBuf>,
    /// Smoke runs pass this to recover: their partitions are below the default lag threshold.
    lag_threshold: Option<u64>,
    /// Run the two-zone comparison on a star of emulated links instead ([`zones`]).
    two_zones: bool,
}

fn opts() -> Opts {
    let args: Vec<String> = std::env::args().collect();
    let bench = args.iter().any(|a| a == "--bench");
    let opt = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let num = |name: &str, default: u64| opt(name).and_then(|v| v.parse().ok()).unwrap_or(default);
    let out = opt("--out").map_or_else(
        || testkit::workspace_root().join("target/cluster"),
        PathBuf::from,
    );
    if bench {
        Opts {
            partitions: 48,
            records: num("--records", 120_000),
            value: num("--value", 100) as usize,
            reps: num("--reps", 2) as usize,
            out: Some(out),
            lag_threshold: None,
            two_zones: args.iter().any(|a| a == "--two-zones"),
        }
    } else {
        Opts {
            partitions: 8,
            records: 2_000,
            value: 100,
            reps: 1,
            out: None,
            lag_threshold: Some(100),
            two_zones: false,
        }
    }
}

/// The nodes holding partition `p`: `p`, `p + 1`, `p + 2` (mod 4).
fn holders(p: u32) -> Vec<u32> {
    (0..RF).map(|k| (p + k) % NODES).collect()
}

/// One recovery of the wiped node.
struct Run {
    mode: &'static str,
    mttr: f64,
    broker_bytes: Option<u64>,
    records: u64,
    received: u64,
    peak_rss_kib: i64,
    /// Seconds from the start to each partition's end.
    done_at: Vec<f64>,
}

fn main() {
    let o = opts();
    let brokers = std::env::var("QUICSTRAP_KAFKA").expect(
        "QUICSTRAP_KAFKA is not set: start the broker (scripts/kafka.sh start) and export \
         QUICSTRAP_KAFKA=127.0.0.1:19092",
    );
    let work = tempfile::Builder::new()
        .prefix("quicstrap-cluster-")
        .tempdir_in("/var/tmp")
        .expect("work dir");
    let out = o.out.clone().unwrap_or_else(|| work.path().join("out"));
    std::fs::create_dir_all(&out).expect("out dir");
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    let store = format!("cluster_{}_{nanos}", std::process::id());
    let id = |p: u32| PartitionId::new(&store, 1, p).expect("store name");
    let rt = tokio::runtime::Runtime::new().expect("runtime");

    // The store's topic, written by its producers.
    let t0 = Instant::now();
    rt.block_on(produce(&brokers, &store, &o));
    eprintln!(
        "produced {} × {} records of {} bytes in {:.1} s",
        o.partitions,
        o.records,
        o.value,
        t0.elapsed().as_secs_f64()
    );

    // Every partition built once from Kafka, then copied to its holders (all but the wiped
    // node, whose data dir is what each run restores).
    let seed_dir = work.path().join("seed");
    let all = format!("0-{}", o.partitions - 1);
    let t0 = Instant::now();
    let (code, _, _) = recover(&brokers, &seed_dir, &store, &all, &o, &[]);
    assert_eq!(code, 0, "building the partitions from Kafka failed");
    eprintln!(
        "built the seed partitions from Kafka in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    let node_dir = |n: u32| work.path().join(format!("node{n}"));
    for p in 0..o.partitions {
        for n in holders(p).into_iter().filter(|&n| n != WIPED) {
            let dst = id(p).dir(&node_dir(n));
            std::fs::create_dir_all(dst.parent().expect("parent")).expect("mkdir");
            let ok = Command::new("cp")
                .arg("-a")
                .arg(id(p).dir(&seed_dir))
                .arg(&dst)
                .status()
                .expect("cp")
                .success();
            assert!(ok, "copy of partition {p}");
        }
    }
    let mine: Vec<u32> = (0..o.partitions)
        .filter(|p| holders(*p).contains(&WIPED))
        .collect();
    let list = work.path().join("partitions");
    let text: Vec<String> = mine.iter().map(ToString::to_string).collect();
    std::fs::write(&list, text.join("\n")).expect("partition list");
    let list_arg = format!("@{}", list.display());
    // Never wrong: every restored partition equals a live holder's.
    let verify = |target: &Path| {
        for &p in &mine {
            let holder = holders(p)
                .into_iter()
                .find(|n| *n != WIPED)
                .expect("holder");
            partition::verify_equal(&id(p).dir(&node_dir(holder)), &id(p).dir(target))
                .unwrap_or_else(|e| panic!("partition {p} differs from node {holder}: {e}"));
        }
    };
    if o.two_zones {
        if let Err(why) = quicstrap_netem::is_supported() {
            eprintln!("two-zone run skipped: {why}");
            return;
        }
        let runs = zones::run(
            &brokers,
            &store,
            &node_dir,
            &node_dir(WIPED),
            &list_arg,
            o.lag_threshold,
            o.reps,
            &verify,
        );
        let report = zones::render(mine.len(), &runs);
        print!("{report}");
        std::fs::write(out.join("cluster-zones.md"), &report).expect("report");
        return;
    }
    // The serving nodes, each following the broker.
    let nodes: BTreeMap<u32, ServeProcess> = (0..NODES)
        .filter(|&n| n != WIPED)
        .map(|n| {
            let mut cmd = serve_command_in(None, &node_dir(n), "127.0.0.1:0");
            cmd.args(["--kafka", &brokers]).stderr(Stdio::null());
            (n, ServeProcess::spawn(cmd))
        })
        .collect();
    // DNS: each partition's live holders.
    let mut conf = format!("local=/{DOMAIN}/\nhost-record=server.quicstrap.test,127.0.0.1\n");
    for p in 0..o.partitions {
        for n in holders(p) {
            if let Some(node) = nodes.get(&n) {
                let name = srv_name(&id(p), DOMAIN);
                let _ = writeln!(
                    conf,
                    "srv-host={},server.quicstrap.test,{},0,10",
                    name.trim_end_matches('.'),
                    node.addr.port()
                );
            }
        }
    }
    let conf_file = work.path().join("dnsmasq.conf");
    std::fs::write(&conf_file, conf).expect("dns records");
    let dns = Dnsmasq::start(&conf_file, 60).expect("dnsmasq");

    let discover = format!("srv:{DOMAIN}");
    let dns_addr = dns.addr.to_string();
    let peer_flags = ["--discover", discover.as_str(), "--dns-server", &dns_addr];

    let mut runs = Vec::new();
    for rep in 0..o.reps {
        // Alternating which goes first, so neither always runs on a warmer machine.
        let order: [bool; 2] = if rep % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for with_peers in order {
            let target = node_dir(WIPED);
            let _ = std::fs::remove_dir_all(&target);
            let flags: &[&str] = if with_peers { &peer_flags } else { &[] };
            let run = measure(with_peers, || {
                recover(&brokers, &target, &store, &list_arg, &o, flags)
            });
            verify(&target);
            eprintln!(
                "{}: {} partitions in {:.1} s, broker wrote {} MB, peak RSS {} MiB",
                run.mode,
                run.done_at.len(),
                run.mttr,
                run.broker_bytes
                    .map_or("?".into(), |b| format!("{:.0}", b as f64 / 1e6)),
                run.peak_rss_kib / 1024
            );
            runs.push(run);
        }
    }
    drop(nodes);
    drop(dns);
    let report = render(&o, mine.len(), &runs);
    print!("{report}");
    std::fs::write(out.join("cluster.md"), &report).expect("report");
    std::fs::write(out.join("cluster.svg"), plot(&runs, mine.len())).expect("plot");
    std::fs::write(out.join("cluster.csv"), csv(&runs)).expect("csv");
    eprintln!("wrote {}/cluster.{{md,svg,csv}}", out.display());
}

/// Creates the topic with one partition per store partition and produces every record.
async fn produce(brokers: &str, store: &str, o: &Opts) {
    let id0 = PartitionId::new(store, 1, 0).expect("store name");
    let topic = ingest::topic(&id0);
    let writer = KafkaWriter::new(brokers).expect("producer");
    writer
        .create_topic(&topic, o.partitions)
        .await
        .expect("create topic");
    for p in 0..o.partitions {
        let batch: Vec<_> = (0..o.records)
            .map(|i| {
                let key = format!("p{p:03}-k{i:09}").into_bytes();
                (key, Some(seed_value(i ^ (u64::from(p) << 40), o.value)))
            })
            .collect();
        writer.send_all(&topic, p, &batch).await.expect("produce");
    }
}

/// Runs `quicstrap recover` of `partitions` into `root` with `flags`; its exit code, report
/// lines and peak RSS (KiB).
fn recover(
    brokers: &str,
    root: &Path,
    store: &str,
    partitions: &str,
    o: &Opts,
    flags: &[&str],
) -> (i32, Vec<serde_json::Value>, i64) {
    let mut cmd = recover_command_in(None, root, store, 1, partitions, brokers);
    cmd.args(["--json"]).args(flags).stdout(Stdio::piped());
    if let Some(t) = o.lag_threshold {
        cmd.args(["--lag-threshold", &t.to_string()]);
    }
    // Reaped by wait_rusage below (wait4, for its peak RSS), which clippy cannot see.
    #[allow(clippy::zombie_processes)]
    let mut child = cmd.spawn().expect("recover");
    let out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(&l.expect("line")).expect("a JSON report line"))
        .collect();
    let (status, usage) = testkit::wait_rusage(child.id() as i32);
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    (code, lines, usage.ru_maxrss)
}

/// One recovery of the wiped node (`recover`, run here), measured.
fn measure(with_peers: bool, recover: impl FnOnce() -> (i32, Vec<serde_json::Value>, i64)) -> Run {
    let before = broker_wchar();
    let t0 = Instant::now();
    let (code, lines, rss) = recover();
    let mttr = t0.elapsed().as_secs_f64();
    let after = broker_wchar();
    assert_eq!(code, 0, "recover failed: {lines:?}");
    let mut done_at: Vec<f64> = lines
        .iter()
        .map(|l| l["finished_at"].as_f64().expect("finished_at"))
        .collect();
    done_at.sort_by(f64::total_cmp);
    let sum = |f: &dyn Fn(&serde_json::Value) -> u64| lines.iter().map(f).sum::<u64>();
    let paths: Vec<&str> = lines.iter().filter_map(|l| l["path"].as_str()).collect();
    let want = if with_peers {
        "peer_transfer"
    } else {
        "kafka_no_peers"
    };
    assert!(
        paths.iter().all(|p| *p == want),
        "{with_peers}: paths {paths:?}"
    );
    Run {
        mode: if with_peers {
            "peers + catch-up"
        } else {
            "Kafka alone"
        },
        mttr,
        broker_bytes: before.zip(after).map(|(b, a)| a.saturating_sub(b)),
        records: sum(&|l| l["report"]["catch_up"]["records"].as_u64().unwrap_or(0)),
        received: sum(&|l| l["report"]["transfer"]["bytes"].as_u64().unwrap_or(0)),
        peak_rss_kib: rss,
        done_at,
    }
}

/// Bytes the broker process has written (`/proc/<pid>/io` wchar: sockets, `sendfile`
/// included, and files); `None` when its pid file or `/proc` cannot be read.
fn broker_wchar() -> Option<u64> {
    let home =
        std::env::var("QUICSTRAP_KAFKA_HOME").unwrap_or_else(|_| "/var/tmp/quicstrap-kafka".into());
    let pid = std::fs::read_to_string(Path::new(&home).join("kafka.pid")).ok()?;
    let io = std::fs::read_to_string(format!("/proc/{}/io", pid.trim())).ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("wchar: "))
        .and_then(|v| v.trim().parse().ok())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The markdown report: the runs, their medians and ratios, and the cluster model.
fn render(o: &Opts, partitions: usize, runs: &[Run]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Cluster: {NODES} nodes, {} partitions, replication factor {RF}; node {WIPED} \
         ({partitions} partitions of {} records × {} B values) wiped and recovered. \
         {} cores, {}.\n",
        o.partitions,
        o.records,
        o.value,
        testkit::cores(),
        testkit::cpu_model()
    );
    let _ = writeln!(
        s,
        "| run | MTTR (s) | broker wrote (MB) | records replayed | received from peers (MB) | peak RSS (MiB) |\n|---|---|---|---|---|---|"
    );
    for r in runs {
        let _ = writeln!(
            s,
            "| {} | {:.1} | {} | {} | {:.0} | {} |",
            r.mode,
            r.mttr,
            r.broker_bytes
                .map_or("?".into(), |b| format!("{:.0}", b as f64 / 1e6)),
            r.records,
            r.received as f64 / 1e6,
            r.peak_rss_kib / 1024
        );
    }
    let pick = |mode: &str, f: &dyn Fn(&Run) -> f64| {
        median(runs.iter().filter(|r| r.mode == mode).map(f).collect())
    };
    let (peer, kafka) = ("peers + catch-up", "Kafka alone");
    let mttr = (pick(peer, &|r| r.mttr), pick(kafka, &|r| r.mttr));
    let bytes = |r: &Run| r.broker_bytes.map_or(f64::NAN, |b| b as f64);
    let broker = (pick(peer, &bytes), pick(kafka, &bytes));
    let _ = writeln!(
        s,
        "\nMedians: MTTR {:.1} s with peers against {:.1} s from Kafka alone ({:.2}× faster); \
         the broker wrote {:.0} MB against {:.0} MB ({:.3}× the broker load).\n",
        mttr.0,
        mttr.1,
        mttr.1 / mttr.0,
        broker.0 / 1e6,
        broker.1 / 1e6,
        broker.0 / broker.1
    );
    let _ = writeln!(
        s,
        "Model: a rolling replacement of every node of a cluster of N nodes with {partitions} \
         partitions each, one node at a time. Assumed: partitions of the size measured here; \
         each node restores as fast as measured (its peers and the broker are not saturated by \
         one recovery at a time); the broker serves a recovering node what it served here.\n"
    );
    let _ = writeln!(
        s,
        "| N | per node, peers | per node, Kafka alone | whole cluster, peers | whole cluster, Kafka alone | broker read, peers | broker read, Kafka alone |\n|---|---|---|---|---|---|---|"
    );
    for n in [10u32, 100, 1000] {
        let n = f64::from(n);
        let _ = writeln!(
            s,
            "| {n} | {:.1} s | {:.1} s | {} | {} | {} | {} |",
            mttr.0,
            mttr.1,
            duration(n * mttr.0),
            duration(n * mttr.1),
            size(n * broker.0),
            size(n * broker.1),
        );
    }
    s
}

fn duration(secs: f64) -> String {
    if secs >= 3600.0 {
        format!("{:.1} h", secs / 3600.0)
    } else if secs >= 60.0 {
        format!("{:.1} min", secs / 60.0)
    } else {
        format!("{secs:.0} s")
    }
}

fn size(bytes: f64) -> String {
    if bytes >= 1e9 {
        format!("{:.1} GB", bytes / 1e9)
    } else {
        format!("{:.0} MB", bytes / 1e6)
    }
}

fn csv(runs: &[Run]) -> String {
    let mut s = String::from("run,mode,partitions_done,seconds\n");
    for (i, r) in runs.iter().enumerate() {
        for (k, t) in r.done_at.iter().enumerate() {
            let _ = writeln!(s, "{i},{},{},{t:.3}", r.mode, k + 1);
        }
    }
    s
}

/// Partitions completed over time, one step line per run (peers blue, Kafka alone orange).
fn plot(runs: &[Run], partitions: usize) -> String {
    let (w, h, left, bottom, top, right) = (720.0, 400.0, 60.0, 50.0, 30.0, 20.0);
    let max_t = runs.iter().map(|r| r.mttr).fold(1.0_f64, f64::max).ceil();
    let x = |t: f64| left + t / max_t * (w - left - right);
    let y = |k: f64| h - bottom - k / partitions as f64 * (h - bottom - top);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"18\" text-anchor=\"middle\">Partitions valid and caught up over time, node of {partitions} partitions</text>\n\
         <line x1=\"{left}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n\
         <line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{}\" stroke=\"black\"/>\n\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">seconds since recover started</text>\n\
         <text x=\"15\" y=\"{}\" transform=\"rotate(-90 15 {})\" text-anchor=\"middle\">partitions</text>\n",
        w / 2.0,
        h - bottom,
        w - right,
        h - bottom,
        h - bottom,
        (left + w - right) / 2.0,
        h - 12.0,
        h / 2.0,
        h / 2.0
    );
    for i in 0..=5 {
        let t = max_t * f64::from(i) / 5.0;
        let k = partitions as f64 * f64::from(i) / 5.0;
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{t:.0}</text>\n<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{k:.0}</text>",
            x(t),
            h - bottom + 16.0,
            left - 6.0,
            y(k) + 4.0
        );
    }
    for r in runs {
        let colour = if r.mode.starts_with("peers") {
            "#1f77b4"
        } else {
            "#ff7f0e"
        };
        let mut points = format!("{:.1},{:.1}", x(0.0), y(0.0));
        for (k, t) in r.done_at.iter().enumerate() {
            let _ = write!(
                points,
                " {:.1},{:.1} {:.1},{:.1}",
                x(*t),
                y(k as f64),
                x(*t),
                y(k as f64 + 1.0)
            );
        }
        let _ = writeln!(
            s,
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{points}\"/>"
        );
    }
    let _ = writeln!(
        s,
        "<rect x=\"{}\" y=\"{}\" width=\"12\" height=\"3\" fill=\"#1f77b4\"/><text x=\"{}\" y=\"{}\">peers + catch-up</text>\n\
         <rect x=\"{}\" y=\"{}\" width=\"12\" height=\"3\" fill=\"#ff7f0e\"/><text x=\"{}\" y=\"{}\">Kafka alone</text>\n</svg>",
        w - 180.0,
        h - bottom - 44.0,
        w - 162.0,
        h - bottom - 38.0,
        w - 180.0,
        h - bottom - 24.0,
        w - 162.0,
        h - bottom - 18.0
    );
    s
}

/// The two-zone run (`--two-zones`, as root): the three live holders on a star of emulated
/// links — node 1 in the recovering node's zone (1 ms, 500 Mbit/s), nodes 2 and 3 in another
/// (60 ms, 100 Mbit/s, 1 % loss) — and `recover` in the hub, with every holder named by
/// `--peer ZONE/...` (one who lacks a partition answers not found). Locality-aware choice
/// against Venice's shuffle, alternating: MTTR and the bytes that crossed zones. The broker
/// stays in the root namespace; each namespace reaches it through a TCP relay on the
/// broker's own address, so catch-up does not cross the emulated links.
mod zones {
    use std::fmt::Write as _;
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::path::Path;
    use std::process::Stdio;
    use std::time::{Duration, Instant};

    use quicstrap_netem::{in_netns, LinkParams, Loss, Spoke, Star, StarConfig};
    use testkit::{recover_command_in, serve_command_in, ServeProcess};

    /// Nodes 1..=3 on the spokes, in order; their zones.
    const ZONES: [&str; 3] = ["near", "far", "far"];

    /// Relays every TCP connection made to `addr` inside namespace `ns` to `addr` in this
    /// process's namespace (the broker), for as long as the process lives.
    fn relay_broker(ns: &str, addr: SocketAddr) {
        // The star brought each namespace's loopback up.
        let listener = in_netns(ns, || TcpListener::bind(addr))
            .expect("enter namespace")
            .expect("bind the broker relay");
        std::thread::spawn(move || {
            for inbound in listener.incoming().flatten() {
                let Ok(outbound) = TcpStream::connect(addr) else {
                    continue;
                };
                for (mut from, mut to) in [
                    (
                        inbound.try_clone().expect("clone"),
                        outbound.try_clone().expect("clone"),
                    ),
                    (outbound, inbound),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
    }

    /// One recovery: its order, MTTR, bytes received and bytes from the far zone.
    pub(super) struct ZoneRun {
        order: &'static str,
        mttr: f64,
        bytes: u64,
        remote: u64,
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn run(
        brokers: &str,
        store: &str,
        node_dir: &dyn Fn(u32) -> std::path::PathBuf,
        target: &Path,
        list_arg: &str,
        lag_threshold: Option<u64>,
        reps: usize,
        verify: &dyn Fn(&Path),
    ) -> Vec<ZoneRun> {
        let near =
            LinkParams::symmetric_rtt(Duration::from_millis(1), Some(500_000_000), Loss::None);
        let far = LinkParams::symmetric_rtt(
            Duration::from_millis(60),
            Some(100_000_000),
            Loss::Bernoulli(0.01),
        );
        let prefix = format!("qsz{}", std::process::id() % 10_000);
        let _ = quicstrap_netem::cleanup(&prefix);
        let star = Star::start(StarConfig::new(
            prefix,
            93,
            vec![
                Spoke::symmetric(near),
                Spoke::symmetric(far),
                Spoke::symmetric(far),
            ],
        ))
        .expect("start the star");
        let broker: SocketAddr = brokers
            .split(',')
            .next()
            .expect("a broker")
            .parse()
            .expect("broker IP:port");
        relay_broker(star.ns_hub(), broker);
        let mut serves = Vec::new();
        let mut peers = Vec::new();
        for (i, zone) in ZONES.iter().enumerate() {
            relay_broker(star.ns_peer(i), broker);
            let listen = format!("{}:17400", star.addr_peer(i));
            let mut cmd = serve_command_in(Some(star.ns_peer(i)), &node_dir(i as u32 + 1), &listen);
            cmd.args(["--kafka", brokers]).stderr(Stdio::null());
            let mut s = ServeProcess::spawn(cmd);
            s.drain_stdout();
            serves.push(s);
            peers.push(format!("{zone}/localhost@{listen}"));
        }
        // Far peers listed first: an order that ignores zones gets no help from the list.
        peers.rotate_left(1);
        let mut runs = Vec::new();
        for rep in 0..reps {
            let orders = if rep % 2 == 0 {
                ["locality", "shuffle"]
            } else {
                ["shuffle", "locality"]
            };
            for order in orders {
                let _ = std::fs::remove_dir_all(target);
                let mut cmd =
                    recover_command_in(Some(star.ns_hub()), target, store, 1, list_arg, brokers);
                cmd.args(["--json", "--zone", "near", "--peer-order", order])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null());
                if let Some(t) = lag_threshold {
                    cmd.args(["--lag-threshold", &t.to_string()]);
                }
                for p in &peers {
                    cmd.args(["--peer", p]);
                }
                let t0 = Instant::now();
                let out = cmd.output().expect("recover");
                let mttr = t0.elapsed().as_secs_f64();
                assert!(out.status.success(), "recover ({order}) failed");
                verify(target);
                let (mut bytes, mut remote) = (0, 0);
                for line in String::from_utf8_lossy(&out.stdout).lines() {
                    let v: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
                    for a in v["report"]["attempts"].as_array().into_iter().flatten() {
                        let b = a["bytes"].as_u64().unwrap_or(0);
                        bytes += b;
                        if a["zone"] == "remote" {
                            remote += b;
                        }
                    }
                }
                eprintln!(
                    "two zones, {order}: {mttr:.1} s, {:.0} of {:.0} MB across zones",
                    remote as f64 / 1e6,
                    bytes as f64 / 1e6
                );
                runs.push(ZoneRun {
                    order: if order == "shuffle" {
                        "shuffle"
                    } else {
                        "locality"
                    },
                    mttr,
                    bytes,
                    remote,
                });
            }
        }
        for s in &mut serves {
            s.stop(Duration::from_secs(10));
        }
        star.check().expect("the star's relays ran to the end");
        runs
    }

    /// The two-zone table.
    pub(super) fn render(partitions: usize, runs: &[ZoneRun]) -> String {
        let mut s = format!(
            "\nTwo zones on a star of emulated links ({partitions} partitions; holders: node 1 \
             in the recovering node's zone at 1 ms / 500 Mbit/s, nodes 2 and 3 in another at \
             60 ms / 100 Mbit/s / 1 % loss):\n\n| order | MTTR | received | across zones |\n|---|---|---|---|\n"
        );
        for r in runs {
            let _ = writeln!(
                s,
                "| {} | {:.1} s | {:.0} MB | {:.0} MB ({:.0} %) |",
                r.order,
                r.mttr,
                r.bytes as f64 / 1e6,
                r.remote as f64 / 1e6,
                100.0 * r.remote as f64 / r.bytes.max(1) as f64
            );
        }
        s
    }
}
