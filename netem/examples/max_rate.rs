//! Measures the highest rate the relay sustains on this machine: one TCP bulk flow across
//! an emulated link with no rate limit, reported as application goodput.
//!
//! ```text
//! cargo run --release -p quicstrap-netem --example max_rate -- [one-way-delay] [seconds] [rate] [rt]
//! ```
//! e.g. `-- 0 5` (no delay, no limit), `-- 1ms 5`, or `-- 1ms 5 1gbit` to check that a
//! limit that high is still honoured; a fourth argument `rt` runs the relay at real-time
//! priority. Needs root. Prints Mbit/s, the emulator's counters
//! and the kernel's counters of the sending TUN (its `TX dropped` would be packets the
//! relay failed to read in time). TCP buffer limits are raised to 32 MiB in both
//! namespaces so the flow measures the relay, not the default socket-buffer ceiling.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quicstrap_netem::units::{parse_duration, parse_rate};
use quicstrap_netem::{
    cleanup, in_netns, is_supported, set_sysctl, Emulator, EmulatorConfig, LinkParams, TUN_NAME,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    is_supported()?;
    let mut args = std::env::args().skip(1);
    let delay = parse_duration(&args.next().unwrap_or_else(|| "0".into()))?;
    let secs: f64 = args.next().unwrap_or_else(|| "5".into()).parse()?;
    let rate = parse_rate(&args.next().unwrap_or_else(|| "unlimited".into()))?;
    let realtime = args.next().as_deref() == Some("rt");
    let warmup = Duration::from_millis(500);
    let measure = Duration::from_secs_f64(secs);

    let prefix = "qsn-maxrate";
    cleanup(prefix)?;
    let params = LinkParams {
        delay,
        rate_bps: rate,
        queue_bytes: LinkParams::default_queue_bytes(rate, delay * 2),
        ..LinkParams::ideal()
    };
    let mut cfg = EmulatorConfig::symmetric(prefix, [83, 0], params);
    cfg.realtime = realtime;
    let emu = Emulator::start(cfg)?;
    for ns in [emu.ns_a(), emu.ns_b()] {
        set_sysctl(ns, "net.ipv4.tcp_rmem", "4096 131072 33554432")?;
        set_sysctl(ns, "net.ipv4.tcp_wmem", "4096 16384 33554432")?;
    }
    let listener = in_netns(emu.ns_b(), || TcpListener::bind((emu.addr_b(), 7400)))??;
    let dst = listener.local_addr()?;
    let stream = in_netns(emu.ns_a(), || TcpStream::connect(dst))??;
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut stream = stream;
            let chunk = vec![0u8; 256 * 1024];
            while !stop.load(Ordering::Relaxed) {
                if stream.write_all(&chunk).is_err() {
                    break;
                }
            }
        })
    };
    let (mut conn, _) = listener.accept()?;
    let mut buf = vec![0u8; 1 << 20];
    let start = Instant::now();
    let mut warm: Option<(Instant, u64)> = None;
    let mut total = 0u64;
    let goodput = loop {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            return Err("sender closed early".into());
        }
        total += n as u64;
        let now = Instant::now();
        match warm {
            None if now - start >= warmup => warm = Some((now, total)),
            Some((tw, bw)) if now - tw >= measure => {
                break (total - bw) as f64 * 8.0 / (now - tw).as_secs_f64();
            }
            _ => {}
        }
    };
    stop.store(true, Ordering::Relaxed);
    drop(conn);
    let _ = sender.join();
    let (ab, ba) = emu.stats();
    let limit = rate.map_or("unlimited".to_owned(), |r| {
        format!("{} Mbit/s", r / 1_000_000)
    });
    println!(
        "one-way delay {delay:?}, rate {limit}, realtime {realtime}: TCP goodput {:.0} Mbit/s \
         over {secs} s",
        goodput / 1e6
    );
    println!(
        "mean relay lateness A->B {:?}, B->A {:?}",
        ab.mean_lateness(),
        ba.mean_lateness()
    );
    println!("A->B {ab:?}");
    println!("B->A {ba:?}");
    let out = std::process::Command::new("ip")
        .args(["-s", "-n", emu.ns_a(), "link", "show", TUN_NAME])
        .output()?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    emu.stop()?;
    Ok(())
}
