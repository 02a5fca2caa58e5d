//! Peer choice by locality against Venice's shuffle, on a star of emulated links.
//!
//! `cargo bench --bench locality` (as root) builds a star ([`quicstrap_netem::Star`]): the
//! client in the hub, one peer in its own zone over a near link (1 ms RTT, 500 Mbit/s, no
//! loss) and two in another zone over far links (60 ms, 100 Mbit/s, 1 % loss), each a
//! `quicstrap serve` of a copy of the same seeded partition. Then `--fetches` runs of
//! `quicstrap fetch --zone near` with `--peer-order shuffle` (Venice: a uniform shuffle) and
//! as many with `--peer-order locality` (the default), alternating, each into an empty dir;
//! and then the cases "local peer busy" (the near peer restarted with `--max-users 0`) and
//! "local peer down" (killed), a few fetches each. Reported per mode: time-to-recover
//! distribution (min, median, p90, max) and cross-zone bytes; per case, what each attempt
//! did. Writes `bench-results/locality.{md,svg,csv}` under the target directory.
//!
//! Options (`cargo bench --bench locality -- --help`): `--records N` (1000 B each),
//! `--fetches 20`, `--case-fetches 3`. Under `cargo test` it only says how to run it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;

#[path = "shared/seed.rs"]
mod seed;
use quicstrap_netem::{LinkParams, Loss, Spoke, Star, StarConfig};

const STORE: &str = "bench";
const PORT: u16 = 17300;

#[derive(Parser, Debug)]
#[command(
    name = "locality",
    bin_name = "cargo bench --bench locality --",
    about = "Locality-aware peer choice against a shuffle, on a star of links (as root)"
)]
struct Args {
    /// Records of 1000 B in the partition.
    #[arg(long, default_value_t = 65_536)]
    records: u64,
    /// Fetches of each order.
    #[arg(long, default_value_t = 20)]
    fetches: usize,
    /// Fetches of each case (local peer busy, local peer down).
    #[arg(long, default_value_t = 3)]
    case_fetches: usize,
    /// Cargo passes `--bench` to benchmarks it runs.
    #[arg(long, hide = true)]
    bench: bool,
}

/// One fetch: its wall time, the bytes that crossed zones, and its attempts.
struct Run {
    mode: &'static str,
    seconds: f64,
    remote_bytes: u64,
    bytes: u64,
    /// `zone:outcome` of each attempt.
    attempts: Vec<String>,
}

/// The star's spokes: the near peer first, then the two far ones.
fn spokes() -> Vec<(&'static str, Spoke)> {
    let near = LinkParams::symmetric_rtt(Duration::from_millis(1), Some(500_000_000), Loss::None);
    let far = LinkParams::symmetric_rtt(
        Duration::from_millis(60),
        Some(100_000_000),
        Loss::Bernoulli(0.01),
    );
    vec![
        ("near", Spoke::symmetric(near)),
        ("far", Spoke::symmetric(far)),
        ("far", Spoke::symmetric(far)),
    ]
}

fn main() {
    let args = Args::parse();
    if !args.bench {
        eprintln!("locality bench: run it with `cargo bench --bench locality` (as root)");
        return;
    }
    if let Err(why) = quicstrap_netem::is_supported() {
        eprintln!("locality bench skipped: {why}");
        return;
    }
    let work = PathBuf::from("/var/tmp/quicstrap-bench");
    let data = work.join(format!("source-{}", args.records));
    seed::seed_source(&data, STORE, args.records);
    let source = data.join(format!("{STORE}_v1")).join("0");
    let total = testkit::dir_bytes(&source);
    eprintln!("partition: {:.1} MB", total as f64 / 1e6);

    let prefix = format!("qsl{}", std::process::id() % 10_000);
    let _ = quicstrap_netem::cleanup(&prefix);
    let spokes = spokes();
    let star = Star::start(StarConfig::new(
        prefix,
        91,
        spokes.iter().map(|(_, s)| *s).collect(),
    ))
    .expect("start the star");
    // A copy of the partition per peer: each serve locks its own data dir.
    let roots: Vec<PathBuf> = (0..spokes.len())
        .map(|i| {
            let root = work.join(format!("locality-peer-{i}"));
            let _ = std::fs::remove_dir_all(&root);
            copy_dir(&data, &root);
            root
        })
        .collect();
    let mut serves: Vec<testkit::ServeProcess> = (0..spokes.len())
        .map(|i| serve(&star, i, &roots[i], &[]))
        .collect();
    // Far peers listed first, so an order that ignores zones gets no help from the list.
    let mut peers: Vec<String> = (0..spokes.len())
        .map(|i| format!("{}/localhost@{}:{PORT}", spokes[i].0, star.addr_peer(i)))
        .collect();
    peers.rotate_left(1);
    let dst = work.join("dst-locality");

    // Warm-up, untimed: each peer makes its snapshot and digests once.
    for p in &peers {
        let r = fetch(&star, &dst, std::slice::from_ref(p), "listed");
        assert!(
            r.attempts.last().is_some_and(|a| a.ends_with(":ok")),
            "warm-up from {p}"
        );
    }
    let mut runs = Vec::new();
    for i in 0..args.fetches {
        let modes = if i % 2 == 0 {
            ["shuffle", "locality"]
        } else {
            ["locality", "shuffle"]
        };
        for mode in modes {
            let r = fetch(&star, &dst, &peers, mode);
            quicstrap::store::partition::verify_equal(&source, &dst.join(format!("{STORE}_v1/0")))
                .expect("the fetched partition equals the source");
            eprintln!(
                "{mode}: {:.2} s, {:.1} MB across zones, {:?}",
                r.seconds,
                r.remote_bytes as f64 / 1e6,
                r.attempts
            );
            runs.push(r);
        }
    }
    // The near peer busy: restarted with no free slot.
    serves[0].stop(Duration::from_secs(10));
    serves[0] = serve(&star, 0, &roots[0], &["--max-users", "0"]);
    let mut cases = Vec::new();
    for _ in 0..args.case_fetches {
        cases.push(Run {
            mode: "local peer busy",
            ..fetch(&star, &dst, &peers, "locality")
        });
    }
    // The near peer down.
    serves[0].stop(Duration::from_secs(10));
    for _ in 0..args.case_fetches {
        cases.push(Run {
            mode: "local peer down",
            ..fetch(&star, &dst, &peers, "locality")
        });
    }
    for s in &mut serves[1..] {
        s.stop(Duration::from_secs(10));
    }
    let lateness: Vec<String> = (0..spokes.len())
        .map(|i| {
            let (a, b) = star.stats(i);
            format!(
                "spoke {i}: {:.0} / {:.0} µs",
                a.mean_lateness().as_secs_f64() * 1e6,
                b.mean_lateness().as_secs_f64() * 1e6
            )
        })
        .collect();
    star.check().expect("the star's relays ran to the end");
    drop(star);
    for root in &roots {
        let _ = std::fs::remove_dir_all(root);
    }
    let _ = std::fs::remove_dir_all(&dst);

    let report = render(&args, total, &runs, &cases, &lateness);
    println!("{report}");
    let out = PathBuf::from(std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into()))
        .join("bench-results");
    std::fs::create_dir_all(&out).expect("results dir");
    std::fs::write(out.join("locality.md"), &report).expect("report");
    std::fs::write(out.join("locality.csv"), csv(&runs, &cases)).expect("csv");
    std::fs::write(out.join("locality.svg"), plot(&runs)).expect("plot");
    eprintln!("wrote {}/locality.{{md,svg,csv}}", out.display());
}

/// `cp -a` of a directory tree.
fn copy_dir(from: &Path, to: &Path) {
    let ok = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("cp")
        .success();
    assert!(ok, "copying {} to {}", from.display(), to.display());
}

/// `quicstrap serve` of `root` in spoke `i`'s namespace.
fn serve(star: &Star, i: usize, root: &Path, extra: &[&str]) -> testkit::ServeProcess {
    let listen = format!("{}:{PORT}", star.addr_peer(i));
    let mut cmd = testkit::serve_command_in(Some(star.ns_peer(i)), root, &listen);
    cmd.arg("--snapshot-dir")
        .arg(root.join(".snapshots"))
        .args(["--snapshot-ttl-secs", "86400", "--write-limit", "0"])
        .args(extra)
        .stderr(Stdio::null());
    let mut s = testkit::ServeProcess::spawn(cmd);
    s.drain_stdout();
    s
}

/// One `quicstrap fetch --zone near` in the hub into an empty `dst`, timed.
fn fetch(star: &Star, dst: &Path, peers: &[String], order: &str) -> Run {
    let _ = std::fs::remove_dir_all(dst);
    let mut cmd = testkit::fetch_command_in(Some(star.ns_hub()), dst, STORE, 1, 0);
    cmd.args(["--json", "--zone", "near", "--peer-order", order])
        .args(["--read-limit", "0"])
        .stderr(Stdio::null());
    for p in peers {
        cmd.args(["--peer", p]);
    }
    let t0 = Instant::now();
    let out = cmd.output().expect("fetch");
    let seconds = t0.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "fetch failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    let attempts = report["attempts"].as_array().expect("attempts");
    let bytes_of = |zone: Option<&str>| -> u64 {
        attempts
            .iter()
            .filter(|a| zone.map_or(true, |z| a["zone"] == z))
            .filter_map(|a| a["bytes"].as_u64())
            .sum()
    };
    Run {
        mode: if order == "shuffle" {
            "shuffle"
        } else {
            "locality"
        },
        seconds,
        remote_bytes: bytes_of(Some("remote")),
        bytes: bytes_of(None),
        attempts: attempts
            .iter()
            .map(|a| {
                format!(
                    "{}:{}",
                    a["zone"].as_str().unwrap_or("?"),
                    a["outcome"].as_str().unwrap_or("?")
                )
            })
            .collect(),
    }
}

/// The `q`-quantile (0..=1) of `v`, nearest rank.
fn quantile(v: &[f64], q: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[((s.len() - 1) as f64 * q).round() as usize]
}

fn render(args: &Args, total: u64, runs: &[Run], cases: &[Run], lateness: &[String]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Partition {:.1} MB ({} records of 1000 B). Star: the node's zone `near` has one peer \
         at 1 ms RTT / 500 Mbit/s / no loss; zone `far` has two at 60 ms / 100 Mbit/s / 1 % \
         loss. {} fetches of each order, alternating; wall time of `quicstrap fetch` (process \
         start to exit, connectivity check included).\n",
        total as f64 / 1e6,
        args.records,
        args.fetches
    );
    let _ = writeln!(
        s,
        "| order | min | median | p90 | max | cross-zone bytes (all fetches) | fetches served from the far zone |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|");
    for mode in ["shuffle", "locality"] {
        let mine: Vec<&Run> = runs.iter().filter(|r| r.mode == mode).collect();
        let secs: Vec<f64> = mine.iter().map(|r| r.seconds).collect();
        let remote: u64 = mine.iter().map(|r| r.remote_bytes).sum();
        let all: u64 = mine.iter().map(|r| r.bytes).sum();
        let far = mine
            .iter()
            .filter(|r| r.attempts.last().is_some_and(|a| a.starts_with("remote")))
            .count();
        let _ = writeln!(
            s,
            "| {mode} | {:.2} s | {:.2} s | {:.2} s | {:.2} s | {:.0} MB of {:.0} MB ({:.0} %) | {far} of {} |",
            quantile(&secs, 0.0),
            quantile(&secs, 0.5),
            quantile(&secs, 0.9),
            quantile(&secs, 1.0),
            remote as f64 / 1e6,
            all as f64 / 1e6,
            100.0 * remote as f64 / all.max(1) as f64,
            mine.len()
        );
    }
    let _ = writeln!(
        s,
        "\n| case (locality order) | time | cross-zone bytes | attempts (zone:outcome) |"
    );
    let _ = writeln!(s, "|---|---|---|---|");
    for r in cases {
        let _ = writeln!(
            s,
            "| {} | {:.2} s | {:.0} MB | {} |",
            r.mode,
            r.seconds,
            r.remote_bytes as f64 / 1e6,
            r.attempts.join(", ")
        );
    }
    let _ = writeln!(
        s,
        "\nRelay lateness (mean, to peer / to hub): {}.",
        lateness.join("; ")
    );
    s
}

fn csv(runs: &[Run], cases: &[Run]) -> String {
    let mut s = String::from("mode,seconds,remote_bytes,bytes,attempts\n");
    for r in runs.iter().chain(cases) {
        let _ = writeln!(
            s,
            "{},{:.3},{},{},{}",
            r.mode,
            r.seconds,
            r.remote_bytes,
            r.bytes,
            r.attempts.join(" ")
        );
    }
    s
}

/// Time-to-recover distributions: one cumulative step line per order.
fn plot(runs: &[Run]) -> String {
    let (w, h, left, bottom, top, right) = (720.0, 360.0, 60.0, 50.0, 30.0, 20.0);
    let max_t = runs
        .iter()
        .map(|r| r.seconds)
        .fold(1.0_f64, f64::max)
        .ceil();
    let x = |t: f64| left + t / max_t * (w - left - right);
    let y = |f: f64| h - bottom - f * (h - bottom - top);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"18\" text-anchor=\"middle\">Time to recover a partition: share of fetches done by time t</text>\n\
         <line x1=\"{left}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n\
         <line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{}\" stroke=\"black\"/>\n\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">seconds</text>\n",
        w / 2.0,
        h - bottom,
        w - right,
        h - bottom,
        h - bottom,
        (left + w - right) / 2.0,
        h - 12.0,
    );
    for i in 0..=5 {
        let t = max_t * f64::from(i) / 5.0;
        let f = f64::from(i) / 5.0;
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{t:.1}</text>\n<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{:.0} %</text>",
            x(t),
            h - bottom + 16.0,
            left - 6.0,
            y(f) + 4.0,
            f * 100.0
        );
    }
    for (k, (mode, colour)) in [("shuffle", "#ff7f0e"), ("locality", "#1f77b4")]
        .iter()
        .enumerate()
    {
        let mut secs: Vec<f64> = runs
            .iter()
            .filter(|r| r.mode == *mode)
            .map(|r| r.seconds)
            .collect();
        secs.sort_by(f64::total_cmp);
        let n = secs.len().max(1) as f64;
        let mut points = format!("{:.1},{:.1}", x(0.0), y(0.0));
        for (i, t) in secs.iter().enumerate() {
            let _ = write!(
                points,
                " {:.1},{:.1} {:.1},{:.1}",
                x(*t),
                y(i as f64 / n),
                x(*t),
                y((i + 1) as f64 / n)
            );
        }
        let _ = writeln!(
            s,
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{points}\"/>\n\
             <rect x=\"{}\" y=\"{}\" width=\"12\" height=\"3\" fill=\"{colour}\"/><text x=\"{}\" y=\"{}\">{mode}</text>",
            w - 140.0,
            h - bottom - 44.0 + 20.0 * k as f64,
            w - 122.0,
            h - bottom - 38.0 + 20.0 * k as f64
        );
    }
    s.push_str("</svg>\n");
    s
}
