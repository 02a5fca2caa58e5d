//! Loss honesty: numbered UDP datagrams across each direction. The measured loss must be
//! within a 4-sigma binomial bound of the configured rate, every missing packet must be one
//! the emulator says it dropped (nothing lost elsewhere), and Gilbert–Elliott loss must be
//! bursty where Bernoulli loss is not.

mod common;

use std::sync::Mutex;

use common::{blast, start_realtime, supported, Blast};
use quicstrap_netem::{Dir, LinkParams, Loss};

const PACKETS: u32 = 20_000;

/// One blast at a time: each must find the relay with the CPU it needs, or packets would
/// be lost before the link model ever saw them (which the accounting below would catch).
static SERIAL: Mutex<()> = Mutex::new(());

fn run_both_ways(test: &str, prefix: &str, subnet: [u8; 2], loss: Loss) -> Vec<Blast> {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let params = LinkParams {
        loss,
        ..LinkParams::ideal()
    };
    // Real-time relay: a busy host must not make the TUN queue drop what the model kept.
    let emu = start_realtime(prefix, subnet, params, 42);
    let mut out = Vec::new();
    for (dir, port) in [(Dir::AtoB, 7100), (Dir::BtoA, 7101)] {
        let b = blast(&emu, dir, port, PACKETS);
        println!(
            "{test} {dir:?}: configured {:.4}, measured {:.4} ({} of {}), mean loss run {:.2}",
            loss.mean_rate(),
            b.loss_rate(),
            b.lost(),
            PACKETS,
            b.mean_loss_run()
        );
        // Every datagram reached the emulator, and every one it did not drop arrived.
        assert_eq!(
            b.stats.packets_in,
            u64::from(PACKETS),
            "{dir:?}: {:?}",
            b.stats
        );
        assert_eq!(
            b.stats.dropped_loss,
            b.lost() as u64,
            "{dir:?}: {:?}",
            b.stats
        );
        assert_eq!(
            b.stats.packets_delivered,
            u64::from(PACKETS) - b.lost() as u64,
            "{dir:?}: {:?}",
            b.stats
        );
        assert_eq!(b.stats.dropped_queue + b.stats.dropped_blackhole, 0);
        assert_eq!(b.stats.write_errors + b.stats.kernel_dropped, 0);
        out.push(b);
    }
    emu.stop().unwrap();
    out
}

fn assert_within(p: f64, measured: f64, sigma: f64) {
    assert!(
        (measured - p).abs() <= 4.0 * sigma,
        "measured {measured:.5} vs configured {p} (4 sigma = {:.5})",
        4.0 * sigma
    );
}

fn check_bernoulli(test: &str, prefix: &str, subnet: [u8; 2], p: f64) {
    if !supported(test) {
        return;
    }
    for b in run_both_ways(test, prefix, subnet, Loss::Bernoulli(p)) {
        let sigma = (p * (1.0 - p) / f64::from(PACKETS)).sqrt();
        assert_within(p, b.loss_rate(), sigma);
        // Independent losses: runs are about 1/(1-p) long.
        assert!(b.mean_loss_run() < 1.5, "mean run {}", b.mean_loss_run());
    }
}

#[test]
fn bernoulli_1_percent() {
    check_bernoulli("bernoulli_1_percent", "qsn-loss1", [79, 1], 0.01);
}

#[test]
fn bernoulli_3_percent() {
    check_bernoulli("bernoulli_3_percent", "qsn-loss3", [79, 3], 0.03);
}

#[test]
fn gilbert_elliott_is_bursty_with_the_right_mean() {
    let test = "gilbert_elliott_is_bursty_with_the_right_mean";
    if !supported(test) {
        return;
    }
    let (p, burst) = (0.02, 4.0);
    let loss = Loss::bursty(p, burst).unwrap();
    let Loss::GilbertElliott {
        p_good_to_bad,
        p_bad_to_good,
        ..
    } = loss
    else {
        unreachable!()
    };
    // Successive loss indicators are correlated, which widens the spread of the mean by
    // (1 + λ) / (1 - λ) with λ = 1 - p_gb - p_bg.
    let lambda = 1.0 - p_good_to_bad - p_bad_to_good;
    let sigma = (p * (1.0 - p) / f64::from(PACKETS) * (1.0 + lambda) / (1.0 - lambda)).sqrt();
    let ge = run_both_ways(test, "qsn-lossge", [79, 4], loss);
    let bern = run_both_ways(test, "qsn-lossgb", [79, 5], Loss::Bernoulli(p));
    for (g, b) in ge.iter().zip(&bern) {
        assert_within(p, g.loss_rate(), sigma);
        assert!(g.mean_loss_run() > 1.5, "GE mean run {}", g.mean_loss_run());
        assert!(
            g.mean_loss_run() > b.mean_loss_run(),
            "GE run {} not burstier than Bernoulli run {}",
            g.mean_loss_run(),
            b.mean_loss_run()
        );
    }
}
