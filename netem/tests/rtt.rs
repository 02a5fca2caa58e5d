//! RTT honesty: a UDP echo across the emulated link must take the configured round trip
//! (median within 10 %), from 2 ms up to a 150 ms intercontinental path, and the relay's
//! own timing error is reported and bounded.
//!
//! At 2 ms the test's own endpoints busy-poll: on this virtual machine a thread woken after
//! its CPU went idle costs 50-100 µs, two of which per round trip belong to the test, not
//! to the link. The same RTT with ordinary blocking endpoints is printed alongside, and
//! `rtt_overhead_with_zero_delay` reports what the whole path costs with no delay at all.
//!
//! The relay and the endpoints run at real-time priority, so CPU-bound neighbours on the
//! host (a build, two busy loops) do not stretch what is measured; the delay is a floor
//! that no echo may beat, on any host.

mod common;

use std::sync::Mutex;
use std::time::Duration;

use common::{median, ping, start_realtime, supported, Echo, Wait};
use quicstrap_netem::{LinkParams, Loss};

/// One at a time: the tests' own threads compete for the two cores with the relay.
static SERIAL: Mutex<()> = Mutex::new(());

fn measure(
    emu: &quicstrap_netem::Emulator,
    rtt: Duration,
    interval: Duration,
    wait: Wait,
) -> Vec<Duration> {
    let echo = Echo::start(emu, 7000, wait);
    let rtts = ping(
        emu,
        &echo,
        80,
        interval,
        rtt + Duration::from_millis(200),
        wait,
    );
    assert!(
        rtts.len() >= 50,
        "only {} of 80 echoes came back",
        rtts.len()
    );
    rtts
}

fn check_rtt(
    test: &str,
    prefix: &str,
    subnet: [u8; 2],
    rtt: Duration,
    interval: Duration,
    wait: Wait,
) {
    if !supported(test) {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let params = LinkParams::symmetric_rtt(rtt, Some(200_000_000), Loss::None);
    let emu = start_realtime(prefix, subnet, params, 1);
    // At 2 ms the endpoints' own wake-ups are a visible share of the round trip. Which way
    // of waiting costs them least depends on the host: busy-polling on an idle one (a
    // thread woken from an idle CPU pays 50-100 µs), blocking on a loaded one (two
    // busy-polling real-time endpoints there run into the kernel's real-time throttling).
    // Both are measured; the median is judged on the cheaper one, the floor on both.
    let ways: &[Wait] = if wait == Wait::Spin {
        &[Wait::Block, Wait::Spin]
    } else {
        &[wait]
    };
    let mut best: Option<Duration> = None;
    for &way in ways {
        let before = emu.stats();
        let mut rtts = measure(&emu, rtt, interval, way);
        let min = *rtts.iter().min().unwrap();
        let max = *rtts.iter().max().unwrap();
        let med = median(&mut rtts);
        let (ab, ba) = emu.stats();
        let (ab, ba) = (ab.since(&before.0), ba.since(&before.1));
        println!(
            "{test}: configured RTT {rtt:?}, endpoints {way:?}: median {med:?} (min {min:?}, \
             max {max:?}, {} samples); relay lateness A->B {:?}, B->A {:?}",
            rtts.len(),
            ab.mean_lateness(),
            ba.mean_lateness()
        );
        // The relay itself keeps to the model's schedule.
        for late in [ab.mean_lateness(), ba.mean_lateness()] {
            assert!(
                late < Duration::from_micros(200),
                "relay ran {late:?} late on average"
            );
        }
        // Nothing ever arrives before the configured RTT: the delay is a floor on every
        // host, however its timers behave (the relay never back-dates an arrival).
        assert!(
            min >= rtt,
            "an echo came back after {min:?}, before the configured {rtt:?}"
        );
        best = Some(best.map_or(med, |b| b.min(med)));
    }
    let med = best.expect("at least one way of waiting");
    let err = (med.as_secs_f64() - rtt.as_secs_f64()).abs() / rtt.as_secs_f64();
    assert!(
        err < 0.10,
        "median RTT {med:?} is {:.1} % off {rtt:?}",
        err * 100.0
    );
    emu.stop().unwrap();
}

#[test]
fn rtt_2ms() {
    let ms = Duration::from_millis;
    check_rtt("rtt_2ms", "qsn-rtt2", [78, 2], ms(2), ms(5), Wait::Spin);
}

#[test]
fn rtt_50ms() {
    let ms = Duration::from_millis;
    check_rtt(
        "rtt_50ms",
        "qsn-rtt50",
        [78, 50],
        ms(50),
        ms(10),
        Wait::Block,
    );
}

#[test]
fn rtt_150ms() {
    let ms = Duration::from_millis;
    check_rtt(
        "rtt_150ms",
        "qsn-rtt150",
        [78, 150],
        ms(150),
        ms(10),
        Wait::Block,
    );
}

/// What the path costs with zero configured delay: two TUN crossings each way, the relay's
/// and the endpoints' wake-ups. Printed for the record; asserted loosely.
#[test]
fn rtt_overhead_with_zero_delay() {
    if !supported("rtt_overhead_with_zero_delay") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let emu = start_realtime("qsn-rtt0", [78, 0], LinkParams::ideal(), 1);
    for wait in [Wait::Block, Wait::Spin] {
        let mut rtts = measure(&emu, Duration::ZERO, Duration::from_millis(2), wait);
        let med = median(&mut rtts);
        println!(
            "rtt_overhead_with_zero_delay: endpoints {wait:?}: median {med:?} over {} samples",
            rtts.len()
        );
        assert!(med < Duration::from_millis(1), "overhead {med:?}");
    }
    emu.stop().unwrap();
}
