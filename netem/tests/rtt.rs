//! RTT honesty: a UDP echo across the emulated link comes back, and never before the
//! configured round trip, from 2 ms up to a 150 ms intercontinental path.
//!
//! The delay is a floor that holds on any host: the relay never delivers before the
//! model's schedule, however its timers behave, and the model's schedule is checked exactly
//! in its own unit tests (simulated time). How far above the floor the echoes land is the
//! relay's lateness plus the host's own wake-ups, so it is measured, not asserted:
//! `cargo bench -p quicstrap-netem --bench fidelity` (BENCHMARKS.md, "Emulator fidelity").

mod common;

use std::sync::Mutex;
use std::time::Duration;

use common::{ping, start_realtime, supported, Echo, Wait};
use quicstrap_netem::{LinkParams, Loss};

/// One at a time: the tests' own threads compete for the two cores with the relay.
static SERIAL: Mutex<()> = Mutex::new(());

fn check_rtt(test: &str, prefix: &str, subnet: [u8; 2], rtt: Duration) {
    if !supported(test) {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let params = LinkParams::symmetric_rtt(rtt, Some(200_000_000), Loss::None);
    let emu = start_realtime(prefix, subnet, params, 1);
    let echo = Echo::start(&emu, 7000, Wait::Block);
    // A lossless link: every echo comes back. The grace only bounds a broken run.
    let grace = rtt + Duration::from_secs(5);
    let rtts = ping(
        &emu,
        &echo,
        80,
        Duration::from_millis(10),
        grace,
        Wait::Block,
    );
    drop(echo);
    let min = rtts.iter().min().copied();
    println!(
        "{test}: configured RTT {rtt:?}: {} of 80 echoes, fastest {min:?}",
        rtts.len()
    );
    assert_eq!(rtts.len(), 80, "echoes lost on a lossless link");
    let min = min.expect("80 echoes");
    assert!(
        min >= rtt,
        "an echo came back after {min:?}, before the configured {rtt:?}"
    );
    let (ab, ba) = emu.stats();
    for s in [ab, ba] {
        assert_eq!(s.dropped(), 0, "{s:?}");
        // Not a fidelity target (the benchmark's is 200 µs), a broken relay: one whose
        // timed wake-ups oversleep by whole scheduler ticks.
        assert!(
            s.mean_lateness() < Duration::from_millis(20),
            "the relay ran {:?} late on average",
            s.mean_lateness()
        );
    }
    emu.stop().unwrap();
}

#[test]
fn rtt_2ms() {
    check_rtt("rtt_2ms", "qsn-rtt2", [78, 2], Duration::from_millis(2));
}

#[test]
fn rtt_50ms() {
    check_rtt("rtt_50ms", "qsn-rtt50", [78, 50], Duration::from_millis(50));
}

#[test]
fn rtt_150ms() {
    check_rtt(
        "rtt_150ms",
        "qsn-rtt150",
        [78, 150],
        Duration::from_millis(150),
    );
}
