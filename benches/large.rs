//! A production-size partition (≥ 10 GB) over loopback: QUIC against HTTPS/TCP × 4 in the same
//! run, each from a cold snapshot (no digest known: every file digested in the read that sends
//! it) and from a warm one (a restarted server whose digest cache knows every SST).
//!
//! `cargo bench --bench large [-- --records N] [--variants quic-cubic,quic-bbr,tcp-cubic-x4]`
//! seeds `N` records of 1000 B (default 10 000 000, ≈ 10.3 GB; kept under
//! `/var/tmp/quicstrap-bench/large-N` for the next run), then per variant and snapshot
//! temperature starts one `quicstrap serve` and runs one `quicstrap fetch` process. Per run:
//! time to first byte (the attempt's start to its first file byte), total time (request to
//! rename), commit time (database check, receipt, rename), CPU seconds per GB of each side
//! (`wait4` for the fetch, `/proc/<pid>/stat` for the server) and peak RSS of each side
//! (`VmHWM`, reset before the run). The emulated-link row comes from the link benchmark with
//! the same partition (see BENCHMARKS.md).
//!
//! Under `cargo test` (no `--bench` argument) it runs a 50 000-record smoke version (~50 MB,
//! well under a minute) of the same rows.

#[path = "link/fetch.rs"]
#[allow(dead_code)]
mod fetch;
#[path = "shared/seed.rs"]
mod seed;

use std::path::Path;
use std::time::Duration;

use fetch::{fetch_once, variant, Run, Serve};

/// The store name of the benchmark's partition (the link benchmark's fetch code uses it).
const STORE: &str = "bench";

/// The value of `--name N` or `--name=N` on the command line.
fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().enumerate().find_map(|(i, a)| {
        a.strip_prefix(&format!("{name}="))
            .map(str::to_owned)
            .or_else(|| (a == name).then(|| args.get(i + 1).cloned()).flatten())
    })
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let records: u64 = arg("--records")
        .map(|r| r.parse().expect("--records N"))
        .unwrap_or(if bench { 10_000_000 } else { 50_000 });
    let variants: Vec<String> = arg("--variants")
        .map(|v| v.split(',').map(|s| s.trim().to_owned()).collect())
        .unwrap_or_else(|| {
            ["quic-cubic", "quic-bbr", "tcp-cubic-x4"]
                .map(str::to_owned)
                .to_vec()
        });
    let work = if bench {
        std::path::PathBuf::from(format!("/var/tmp/quicstrap-bench/large-{records}"))
    } else {
        std::env::temp_dir().join(format!("quicstrap-large-smoke-{}", std::process::id()))
    };
    let data = work.join("data");
    seed::seed_source(&data, STORE, records);
    let size: u64 = std::fs::read_dir(data.join(format!("{STORE}_v1")).join("0"))
        .expect("seeded partition")
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    eprintln!(
        "partition: {records} records of 1000 B, {:.2} GB",
        size as f64 / 1e9
    );
    let digest_pass = digest_pass(&data.join(format!("{STORE}_v1")).join("0"));
    eprintln!("one MD5 pass over every file on every core: {digest_pass:.1} s");
    let snaps = work.join("snapshots");
    let dst = work.join("dst");
    let cap = Duration::from_secs(if bench { 1800 } else { 120 });
    let mut rows = Vec::new();
    for name in &variants {
        let v = variant(name);
        // Cold: a snapshot root without a digest cache. Warm: the same root after a restart,
        // so a new snapshot whose SST digests all come from the cache.
        let _ = std::fs::remove_dir_all(&snaps);
        for temperature in ["cold", "warm"] {
            let serve = Serve::start(None, "127.0.0.1", &data, &snaps);
            let run = fetch_once(None, "127.0.0.1", v, "md5", &dst, cap, &serve, records);
            eprintln!("  {name} {temperature}: {}", line(&run));
            assert!(
                run.completed,
                "{name} {temperature} did not complete: {:?}",
                run.failed
            );
            rows.push((name.clone(), temperature, run));
        }
    }
    println!("{}", table(size, &rows));
    println!(
        "A whole MD5 pass over the partition, files in parallel on every core (what protocol \
         version 2 did before its first byte on a cold snapshot): {digest_pass:.1} s."
    );
    if bench {
        let out = Path::new("bench-results");
        std::fs::create_dir_all(out).expect("bench-results");
        let json: Vec<_> = rows
            .iter()
            .map(|(v, t, r)| serde_json::json!({"variant": v, "snapshot": t, "run": r}))
            .collect();
        std::fs::write(
            out.join("large.json"),
            serde_json::to_vec_pretty(&serde_json::json!({
                "bytes": size,
                "digest_pass_seconds": digest_pass,
                "runs": json,
            }))
            .expect("json"),
        )
        .expect("write large.json");
    } else {
        let _ = std::fs::remove_dir_all(&work);
    }
}

/// Seconds to MD5 every file of `dir`, files spread over every core.
fn digest_pass(dir: &Path) -> f64 {
    let files: Vec<_> = std::fs::read_dir(dir)
        .expect("partition dir")
        .flatten()
        .map(|e| e.path())
        .collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let t0 = std::time::Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(f) = files.get(i) else { break };
                quicstrap::store::checksum::digest_file(
                    f,
                    quicstrap::store::checksum::ChecksumAlgo::Md5,
                )
                .expect("digest");
            });
        }
    });
    t0.elapsed().as_secs_f64()
}

fn secs(s: Option<f64>) -> String {
    s.map_or("–".into(), |s| format!("{s:.2}"))
}

fn line(r: &Run) -> String {
    format!(
        "first byte {} s, total {:.1} s ({:.0} MB/s), commit {} s, {} attempt(s)",
        secs(r.first_byte_s),
        r.seconds,
        r.goodput_mbs,
        secs(r.commit_s),
        r.attempts
    )
}

/// The Markdown table of BENCHMARKS.md.
fn table(size: u64, rows: &[(String, &str, Run)]) -> String {
    let gb = size as f64 / 1e9;
    let mut t = String::from(
        "| variant | snapshot | first byte | total | goodput | commit | client CPU-s/GB | \
         server CPU-s/GB | client peak RSS | server peak RSS |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for (v, temp, r) in rows {
        t += &format!(
            "| {v} | {temp} | {} s | {:.1} s | {:.0} MB/s | {} s | {:.2} | {:.2} | {:.0} MiB | {:.0} MiB |\n",
            secs(r.first_byte_s),
            r.seconds,
            r.goodput_mbs,
            secs(r.commit_s),
            r.client_cpu / gb,
            r.server_cpu / gb,
            r.client_rss_mib,
            r.server_rss_mib,
        );
    }
    t
}
