//! Throughput honesty: a single TCP flow over a clean 200 Mbit/s link must get at least
//! 90 % of the configured rate, and never more than the rate.
//!
//! Measured as application bytes received over 4 s, after a 1 s warm-up that covers the
//! handshake and slow start (at 50 ms RTT slow start alone takes ~10 round trips). The
//! emulator's own count of IP bytes delivered over the same window is checked too: it is
//! what the rate limit applies to, so it must not exceed the rate.
//!
//! The tests take a lock so two bulk flows never share the machine's cores, and the relay
//! runs at real-time priority: next to CPU-bound neighbours an ordinary relay thread ran
//! hundreds of µs late and a 2 ms-RTT flow fell to 78 % of the rate.

mod common;

use std::sync::Mutex;
use std::time::Duration;

use common::{start_realtime, supported, tcp_bulk};
use quicstrap_netem::{LinkParams, Loss};

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
    assert!(
        bulk.goodput_bps >= 0.9 * rate as f64,
        "goodput {:.1} Mbit/s < 90 % of {} Mbit/s",
        bulk.goodput_bps / 1e6,
        rate / 1_000_000
    );
    // The bottleneck holds: a few packets of slack for the window edges.
    assert!(
        bulk.link_bps <= rate as f64 * 1.01,
        "link carried {:.1} Mbit/s, above the {} Mbit/s limit",
        bulk.link_bps / 1e6,
        rate / 1_000_000
    );
    assert_eq!(bulk.stats.write_errors, 0);
    // Every loss TCP saw was the bottleneck queue's, none the relay's.
    assert_eq!(
        bulk.stats.kernel_dropped, 0,
        "the relay fell behind: {:?}",
        bulk.stats
    );
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
