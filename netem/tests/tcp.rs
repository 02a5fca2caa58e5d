//! Rate honesty: a single TCP flow pushed through a 200 Mbit/s bottleneck never gets more
//! than the rate across the link, and every packet the relay read is accounted for:
//! delivered or dropped by the bottleneck queue.
//!
//! Both hold on any host: a slow or loaded machine can only make the relay deliver later,
//! never faster than the model's schedule, and the accounting is exact. How close to the
//! rate a flow gets is the host's speed as much as the emulator's, so it is measured, not
//! asserted: `cargo bench -p quicstrap-netem --bench fidelity` (BENCHMARKS.md, "Emulator
//! fidelity").
//!
//! Measured as application bytes received over 4 s, after a 1 s warm-up that covers the
//! handshake and slow start (at 50 ms RTT slow start alone takes ~10 round trips). The
//! emulator's own count of IP bytes delivered over the same window is what the rate limit
//! applies to.

mod common;

use std::sync::Mutex;
use std::time::Duration;

use common::{settled, start_realtime, supported, tcp_bulk};
use quicstrap_netem::{Dir, LinkParams, Loss};

static SERIAL: Mutex<()> = Mutex::new(());

fn check(test: &str, prefix: &str, subnet: [u8; 2], rtt: Duration) {
    if !supported(test) {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let rate = 200_000_000u64;
    let params = LinkParams::symmetric_rtt(rtt, Some(rate), Loss::None);
    let emu = start_realtime(prefix, subnet, params, 1);
    let bulk = tcp_bulk(&emu, 7200, Duration::from_secs(1), Duration::from_secs(4));
    println!(
        "{test}: RTT {rtt:?}, queue {} B: goodput {:.1} Mbit/s ({:.1} %), link {:.1} Mbit/s; \
         A->B stats {:?}",
        params.queue_bytes,
        bulk.goodput_bps / 1e6,
        bulk.goodput_bps / rate as f64 * 100.0,
        bulk.link_bps / 1e6,
        bulk.stats
    );
    // The bottleneck holds. A relay that fell behind delivers what is overdue at once, but
    // that is at most the queue and the delay line (90 KB at 2 ms, 1.9 MB at 50 ms), spread
    // over the 4 s window; 1 % on top covers the window's edges.
    let backlog = params.queue_bytes as f64 + rate as f64 / 8.0 * params.delay.as_secs_f64();
    let ceiling = rate as f64 * 1.01 + backlog * 8.0 / 4.0;
    assert!(
        bulk.link_bps <= ceiling,
        "link carried {:.1} Mbit/s, above the {} Mbit/s limit (allowing {:.1})",
        bulk.link_bps / 1e6,
        rate / 1_000_000,
        ceiling / 1e6
    );
    // Not a fidelity target (that is the benchmark's), a broken relay: one that caps a flow
    // at a fraction of the rate. The slowest host seen carried 87 % of it.
    assert!(
        bulk.link_bps >= rate as f64 / 4.0,
        "link carried {:.1} Mbit/s, under a quarter of the {} Mbit/s rate",
        bulk.link_bps / 1e6,
        rate / 1_000_000
    );
    // Totals once the flow has ended and the link is idle (the relay publishes its counters
    // one by one, so only a quiet link gives a consistent snapshot).
    let s = &settled(&emu, Dir::AtoB);
    assert_eq!(s.write_errors, 0, "{s:?}");
    // Nothing the relay read vanishes: each packet was delivered, dropped by the model
    // (here only its bottleneck queue: no loss, no blackhole).
    assert_eq!(s.dropped_loss + s.dropped_blackhole, 0, "{s:?}");
    assert_eq!(s.packets_in, s.packets_delivered + s.dropped_queue, "{s:?}");
    emu.stop().unwrap();
}

#[test]
fn tcp_200mbit_rtt_2ms() {
    check(
        "tcp_200mbit_rtt_2ms",
        "qsn-tcp2",
        [80, 2],
        Duration::from_millis(2),
    );
}

#[test]
fn tcp_200mbit_rtt_50ms() {
    check(
        "tcp_200mbit_rtt_50ms",
        "qsn-tcp50",
        [80, 50],
        Duration::from_millis(50),
    );
}
