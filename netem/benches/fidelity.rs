//! How faithfully the emulator reproduces a link on the machine at hand: what the tests
//! cannot assert, because it is the host's speed as much as the emulator's.
//!
//! `cargo bench -p quicstrap-netem --bench fidelity` (as root) measures
//!
//! * round trips: a UDP echo across links of 0, 2, 50 and 150 ms RTT, with the endpoints
//!   blocking (and busy-polling too, up to 2 ms, where their own wake-ups are a visible
//!   share of the round trip); the median against the configured RTT and the relay's own
//!   mean lateness behind the model's schedule, each way;
//! * rate: one TCP flow through a 200 Mbit/s bottleneck at 2 and 50 ms RTT, its goodput
//!   against the rate (a TCP payload can get at most ~96.5 % after headers), and whether the
//!   kernel dropped packets the relay did not read in time.
//!
//! and prints a Markdown table with the targets the benchmarks rely on: median RTT within
//! 10 %, relay lateness under 200 µs, zero-delay overhead under 1 ms, TCP goodput at least
//! 90 % of the rate. A host that misses them still runs every test, but its link-benchmark
//! numbers describe the host as much as the protocols.
//!
//! Under `cargo test` (no `--bench` argument) it only says how to run it.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Duration;

use common::{median, ping, start_realtime, tcp_bulk, Echo, Wait};
use quicstrap_netem::{is_supported, LinkParams, Loss};

const RATE: u64 = 200_000_000;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("fidelity bench: run it with `cargo bench -p quicstrap-netem --bench fidelity` (as root)");
        return;
    }
    if let Err(why) = is_supported() {
        eprintln!("fidelity bench skipped: {why}");
        return;
    }
    println!(
        "| link | endpoints | median RTT | min / max | error | relay lateness A→B / B→A | target |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (i, ms) in [0u64, 2, 50, 150].into_iter().enumerate() {
        let rtt = Duration::from_millis(ms);
        let params = if ms == 0 {
            LinkParams::ideal()
        } else {
            LinkParams::symmetric_rtt(rtt, Some(RATE), Loss::None)
        };
        let emu = start_realtime(&format!("qsf-rtt{ms}"), [76, i as u8], params, 1);
        // Busy-polling endpoints show the link rather than their own wake-ups, which matter
        // only at a few ms; on longer links two of them would starve the relay of a core.
        let ways: &[Wait] = if ms <= 2 {
            &[Wait::Block, Wait::Spin]
        } else {
            &[Wait::Block]
        };
        // The link is judged on the way of waiting that costs the endpoints least.
        let mut rows = Vec::new();
        for &wait in ways {
            let before = emu.stats();
            let echo = Echo::start(&emu, 7000, wait);
            let interval = Duration::from_millis(if ms <= 2 { 5 } else { 10 });
            let grace = rtt + Duration::from_secs(2);
            let mut rtts = ping(&emu, &echo, 200, interval, grace, wait);
            drop(echo);
            let (ab, ba) = emu.stats();
            let (ab, ba) = (ab.since(&before.0), ba.since(&before.1));
            if rtts.is_empty() {
                rows.push((
                    format!("| {ms} ms | {wait:?} | no echo came back | | | |"),
                    false,
                ));
                continue;
            }
            let (min, max) = (*rtts.iter().min().unwrap(), *rtts.iter().max().unwrap());
            let med = median(&mut rtts);
            let (error, held) = if ms == 0 {
                (
                    format!("+{:.0} µs", med.as_secs_f64() * 1e6),
                    med < Duration::from_millis(1),
                )
            } else {
                let err = (med.as_secs_f64() / rtt.as_secs_f64() - 1.0) * 100.0;
                (format!("{err:+.1} %"), err.abs() < 10.0)
            };
            rows.push((
                format!(
                    "| {ms} ms | {wait:?} | {med:.2?} | {min:.2?} / {max:.2?} | {error} | {:.1?} / {:.1?} |",
                    ab.mean_lateness(),
                    ba.mean_lateness(),
                ),
                held && ab.kept_up() && ba.kept_up(),
            ));
        }
        let link_held = rows.iter().any(|(_, held)| *held);
        for (row, held) in rows {
            let verdict = match (held, link_held) {
                (true, _) => "held",
                (false, true) => "(the other way held)",
                (false, false) => "missed",
            };
            println!("{row} {verdict} |");
        }
        emu.stop().unwrap();
    }
    println!();
    println!(
        "| link | goodput | of the rate | link rate | relay lateness | kernel drops | target |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (i, ms) in [2u64, 50].into_iter().enumerate() {
        let rtt = Duration::from_millis(ms);
        let params = LinkParams::symmetric_rtt(rtt, Some(RATE), Loss::None);
        let emu = start_realtime(&format!("qsf-tcp{ms}"), [76, 10 + i as u8], params, 1);
        let bulk = tcp_bulk(&emu, 7200, Duration::from_secs(1), Duration::from_secs(4));
        let share = bulk.goodput_bps / RATE as f64;
        println!(
            "| 200 Mbit/s, {ms} ms | {:.1} Mbit/s | {:.1} % | {:.1} Mbit/s | {:.1?} | {} | {} |",
            bulk.goodput_bps / 1e6,
            share * 100.0,
            bulk.link_bps / 1e6,
            bulk.stats.mean_lateness(),
            bulk.stats.kernel_dropped,
            if share >= 0.9 { "held" } else { "missed" }
        );
        emu.stop().unwrap();
    }
}
