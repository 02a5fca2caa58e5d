//! Resume against restart from byte 0, on an emulated lossy, high-latency link.
//!
//! `cargo bench --bench resume` (as root) builds the link emulator (`netem/`), seeds a
//! partition (1 048 576 records × 1000 B ≈ 1.07 GB by default; the link benchmark's seed of
//! that size is reused), starts one `quicstrap serve` in the server namespace, and then, for
//! each repetition and each mode — with resume, and with `--no-resume` — runs `quicstrap
//! fetch` in the client namespace, SIGKILLs it once `--at` percent of the partition is on
//! disk, and runs the same command again until it completes. Reported per run: the time to
//! the kill, the rerun's time, the total, and what the rerun resumed and received. Both modes
//! run in the same session against the same snapshot, alternating which goes first.
//!
//! Options (`cargo bench --bench resume -- --help`): `--rtt-ms 150`, `--loss 1` (percent),
//! `--rate-mbit 200`, `--records N`, `--at 70`, `--reps 1`. Under `cargo test` (no `--bench`
//! argument) it only says how to run it: a gigabyte over an emulated link is no unit test.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;

#[path = "shared/seed.rs"]
mod seed;
use quicstrap_netem::{Emulator, EmulatorConfig, LinkParams, Loss};

const STORE: &str = "bench";

#[derive(Parser, Debug)]
#[command(
    name = "resume",
    bin_name = "cargo bench --bench resume --",
    about = "A fetch killed mid-transfer and rerun, with and without resume (as root)"
)]
struct Args {
    /// Round-trip time of the link, ms.
    #[arg(long, default_value_t = 150)]
    rtt_ms: u64,
    /// Random loss on the link, percent.
    #[arg(long, default_value_t = 1.0)]
    loss: f64,
    /// Link rate, Mbit/s.
    #[arg(long, default_value_t = 200)]
    rate_mbit: u64,
    /// Records of 1000 B in the partition.
    #[arg(long, default_value_t = 1_048_576)]
    records: u64,
    /// Percent of the partition on disk when the first run is killed.
    #[arg(long, default_value_t = 70)]
    at: u64,
    /// Repetitions of each mode.
    #[arg(long, default_value_t = 1)]
    reps: usize,
    /// Cargo passes `--bench` to benchmarks it runs.
    #[arg(long, hide = true)]
    bench: bool,
}

/// One interrupted fetch and its rerun.
struct Run {
    mode: &'static str,
    to_kill: f64,
    rerun: f64,
    resumed: u64,
    received: u64,
}

fn main() {
    let args = Args::parse();
    if !args.bench {
        eprintln!("resume bench: run it with `cargo bench --bench resume` (as root)");
        return;
    }
    if let Err(why) = quicstrap_netem::is_supported() {
        eprintln!("resume bench skipped: {why}");
        return;
    }
    let work = PathBuf::from("/var/tmp/quicstrap-bench");
    let data = work.join(format!("source-{}", args.records));
    seed::seed_source(&data, STORE, args.records);
    let source = data.join(format!("{STORE}_v1")).join("0");
    let total = testkit::dir_bytes(&source);
    eprintln!("partition: {:.2} GB", total as f64 / 1e9);

    let prefix = format!("qsr{}", std::process::id() % 10_000);
    let _ = quicstrap_netem::cleanup(&prefix);
    let loss = if args.loss > 0.0 {
        Loss::Bernoulli(args.loss / 100.0)
    } else {
        Loss::None
    };
    let params = LinkParams::symmetric_rtt(
        Duration::from_millis(args.rtt_ms),
        Some(args.rate_mbit * 1_000_000),
        loss,
    );
    let emu = Emulator::start(EmulatorConfig::symmetric(prefix, [77, 0], params))
        .expect("start the link emulator");
    let ip = emu.addr_b().to_string();
    let snaps = work.join("snapshots-resume");
    let _ = std::fs::remove_dir_all(&snaps);
    let mut cmd = testkit::serve_command_in(Some(emu.ns_b()), &data, &format!("{ip}:17100"));
    cmd.arg("--snapshot-dir")
        .arg(&snaps)
        .args(["--snapshot-ttl-secs", "86400", "--write-limit", "0"])
        .stderr(Stdio::null());
    let mut serve = testkit::ServeProcess::spawn(cmd);
    serve.drain_stdout();
    let peer = format!("localhost@{ip}:17100");
    let dst = work.join("dst-resume");

    // Warm-up, untimed: the snapshot and its digests are made once for every run.
    let _ = std::fs::remove_dir_all(&dst);
    let out = fetch(emu.ns_a(), &dst, &peer, false)
        .output()
        .expect("warm-up fetch");
    assert!(out.status.success(), "warm-up fetch failed");

    let mut runs = Vec::new();
    for rep in 0..args.reps {
        let modes = if rep % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for no_resume in modes {
            let run = interrupted(emu.ns_a(), &dst, &peer, no_resume, total * args.at / 100);
            quicstrap::store::partition::verify_equal(
                &source,
                &dst.join(format!("{STORE}_v1")).join("0"),
            )
            .expect("the fetched partition equals the source");
            eprintln!(
                "{}: killed after {:.1} s, rerun {:.1} s",
                run.mode, run.to_kill, run.rerun
            );
            runs.push(run);
        }
    }
    serve.stop(Duration::from_secs(10));
    drop(emu);

    println!(
        "{:.2} GB partition, {} ms RTT, {} % loss, {} Mbit/s, killed at {} %:\n",
        total as f64 / 1e9,
        args.rtt_ms,
        args.loss,
        args.rate_mbit,
        args.at
    );
    println!("| mode | to the kill | rerun | total | rerun resumed | rerun received |");
    println!("|---|---|---|---|---|---|");
    for r in &runs {
        println!(
            "| {} | {:.1} s | {:.1} s | {:.1} s | {:.0} MB | {:.0} MB |",
            r.mode,
            r.to_kill,
            r.rerun,
            r.to_kill + r.rerun,
            r.resumed as f64 / 1e6,
            r.received as f64 / 1e6
        );
    }
}

/// `quicstrap fetch --json` of the benchmark partition in namespace `ns` into `dst`.
fn fetch(ns: &str, dst: &Path, peer: &str, no_resume: bool) -> Command {
    let mut cmd = testkit::fetch_command_in(Some(ns), dst, STORE, 1, 0);
    cmd.args(["--peer", peer, "--json", "--read-limit", "0"])
        .args(["--idle-timeout-secs", "30", "--min-rate", "0"])
        .stderr(Stdio::null());
    if no_resume {
        cmd.arg("--no-resume");
    }
    cmd
}

/// A fetch SIGKILLed once `at` bytes are on disk, then rerun to completion.
fn interrupted(ns: &str, dst: &Path, peer: &str, no_resume: bool, at: u64) -> Run {
    let _ = std::fs::remove_dir_all(dst);
    let t0 = Instant::now();
    let mut first = fetch(ns, dst, peer, no_resume)
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn fetch");
    while received(dst) < at {
        assert!(
            first.try_wait().expect("wait").is_none(),
            "the fetch ended before {at} bytes"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    first.kill().expect("SIGKILL");
    first.wait().expect("reap");
    let to_kill = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let out = fetch(ns, dst, peer, no_resume).output().expect("rerun");
    let rerun = t1.elapsed().as_secs_f64();
    assert!(out.status.success(), "the rerun failed");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    let last = report["attempts"]
        .as_array()
        .and_then(|a| a.last())
        .cloned()
        .unwrap_or_default();
    Run {
        mode: if no_resume { "--no-resume" } else { "resume" },
        to_kill,
        rerun,
        resumed: last["resumed_bytes"].as_u64().unwrap_or(0),
        received: last["bytes"].as_u64().unwrap_or(0),
    }
}

/// Bytes in the temp dirs of the fetch writing into `dst`.
fn received(dst: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dst.join(format!("{STORE}_v1"))) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".quicstrap-tmp-")
        })
        .map(|e| testkit::dir_bytes(&e.path()))
        .sum()
}
