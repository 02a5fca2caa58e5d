//! The default controller ([`super::paced`]): its state changes on hand-made sequences of
//! acknowledgements and losses, and its rates, own losses and fairness on simulated paths
//! ([`super::sim`]; set `QUICSTRAP_SIM_TRACE=1` to watch the first flow's model).

use std::time::{Duration, Instant};

use quinn::congestion::Controller;

use super::paced::{
    Mode, Paced, INITIAL_WINDOW, JUMP_GAIN, LOSS_BACKOFF, MIN_RTT_LIFETIME, PROBE_RTT_TIME,
    TRAIN_PACKETS, UNPACED,
};
use super::sim::{self, Path};

const S: Duration = Duration::from_secs(1);
const MTU: u64 = 1452;

/// Drives a controller by hand: each round sends `packets` evenly over `rtt` and has them
/// acknowledged (or declared lost) one RTT later.
struct Driver {
    cc: Paced,
    now: Instant,
}

impl Driver {
    /// A controller past startup on a 50 ms path carrying 200 packets per round.
    fn cruising() -> (Self, Duration) {
        let mut d = Self::new();
        let rtt = Duration::from_millis(50);
        for _ in 0..10 {
            d.round(200, rtt, 0);
        }
        (d, rtt)
    }

    fn new() -> Self {
        let now = Instant::now();
        Self {
            cc: Paced::new(now, MTU as u16),
            now,
        }
    }

    /// A handshake on a path of `rtt`: one packet out and back.
    fn handshake(&mut self, rtt: Duration) {
        let t0 = self.now;
        self.cc.sent(t0, 1200);
        self.cc.on_ack_rtt(t0 + rtt, t0, 1200, false, rtt);
        self.cc.end_acks(t0 + rtt, 0, false);
        self.now += rtt;
    }

    /// One round of `packets` at RTT `rtt`, of which every `lose_every`-th is lost (0: none).
    fn round(&mut self, packets: u64, rtt: Duration, lose_every: u64) {
        let step = rtt / packets as u32;
        let sends: Vec<Instant> = (0..packets).map(|i| self.now + step * i as u32).collect();
        for &t in &sends {
            self.cc.sent(t, MTU);
        }
        for (i, &t) in sends.iter().enumerate() {
            let at = t + rtt;
            if lose_every > 0 && (i as u64 + 1) % lose_every == 0 {
                self.cc.lost(t, MTU);
            } else {
                self.cc.on_ack_rtt(at, t, MTU, false, rtt);
            }
            let in_flight = (packets - i as u64 - 1) * MTU;
            self.cc.end_acks(at, in_flight, false);
        }
        self.now += rtt;
    }
}

#[test]
fn startup_grows_the_window_then_cruises_at_about_one_bdp() {
    let mut d = Driver::new();
    let rtt = Duration::from_millis(50);
    // 100 packets per 50 ms round: 2.9 MB/s, a BDP of 145 kB.
    let bdp = 100 * MTU;
    for _ in 0..3 {
        d.round(100, rtt, 0);
    }
    assert_eq!(d.cc.mode(), Mode::Startup);
    // Startup grows up to twice the BDP measured so far (what a one-BDP queue holds), plus the
    // allowance for bunched acknowledgements.
    let w = d.cc.window();
    assert!(
        w >= 2 * bdp && w <= 3 * bdp,
        "startup window {w}, BDP {bdp}"
    );
    for _ in 0..3 {
        d.round(100, rtt, 0);
    }
    assert!(
        matches!(d.cc.mode(), Mode::Cruise { .. }),
        "a flat rate ends startup: {:?}",
        d.cc.mode()
    );
    let rate = 100.0 * MTU as f64 / rtt.as_secs_f64();
    let bw = d.cc.bandwidth() as f64;
    assert!((0.95 * rate..=1.05 * rate).contains(&bw), "{bw} vs {rate}");
    let w = d.cc.window();
    assert!(
        w >= bdp && w <= bdp * 3 / 2,
        "cruising window {w} is about one BDP ({bdp}), not BBR's two"
    );
}

#[test]
fn random_loss_does_not_move_the_model() {
    let (mut d, rtt) = Driver::cruising();
    let (bw, window) = (d.cc.bandwidth(), d.cc.window());
    // 3 % loss (one packet in 33), a hundred rounds.
    for _ in 0..100 {
        d.round(200, rtt, 33);
    }
    assert_eq!(d.cc.inflight_hi(), None, "random loss is not congestion");
    let bw_now = d.cc.bandwidth() as f64;
    assert!(bw_now >= 0.9 * bw as f64, "{bw_now} vs {bw}");
    assert!(d.cc.window() as f64 >= 0.9 * window as f64);
}

#[test]
fn heavy_loss_bounds_the_window_and_clean_rounds_lift_the_bound() {
    let (mut d, rtt) = Driver::cruising();
    // A round losing one packet in five, with 200 packets in flight when they left; it is
    // judged when the next round begins.
    d.round(200, rtt, 5);
    d.round(200, rtt, 0);
    let hi = d.cc.inflight_hi().expect("20 % loss is congestion");
    let expected = (200.0 * MTU as f64 * LOSS_BACKOFF) as u64;
    assert!(
        hi.abs_diff(expected) <= MTU,
        "bound {hi}, expected {expected}"
    );
    assert!(d.cc.window() <= hi);
    // Clean rounds add a packet each (additive increase) until the bound no longer binds.
    d.round(200, rtt, 0);
    let grown = d.cc.inflight_hi().expect("still bounded");
    assert_eq!(grown, hi + MTU);
    let mut rounds = 0;
    while d.cc.inflight_hi().is_some() {
        d.round(200, rtt, 0);
        rounds += 1;
        assert!(rounds < 2_000, "the bound never lifts");
    }
}

#[test]
fn loss_with_a_standing_queue_is_congestion_at_a_lower_rate() {
    let (mut d, rtt) = Driver::cruising();
    // 4 % loss with the RTT at twice the minimum all round: a queue that overflows.
    d.round(200, 2 * rtt, 25);
    d.round(200, 2 * rtt, 25);
    assert!(d.cc.inflight_hi().is_some(), "queue and loss: congestion");
}

#[test]
fn a_minimum_rtt_ten_seconds_old_is_probed_with_half_a_bdp() {
    let (mut d, rtt) = Driver::cruising();
    // RTTs a little above the minimum from now on: it is never refreshed.
    let higher = rtt + Duration::from_millis(2);
    let rounds = (MIN_RTT_LIFETIME.as_millis() / higher.as_millis()) as usize + 2;
    let mut probed = false;
    for _ in 0..rounds {
        d.round(200, higher, 0);
        probed |= matches!(d.cc.mode(), Mode::ProbeRtt { .. });
    }
    assert!(probed, "no probe after {rounds} rounds: {:?}", d.cc.mode());
    let bdp = d.cc.bandwidth() as f64 * rtt.as_secs_f64();
    assert!(
        (d.cc.window() as f64) <= 0.55 * bdp,
        "window {} in the probe, BDP {bdp}",
        d.cc.window()
    );
    // The flight drains under the window, the probe lasts its 200 ms and a round, then cruising
    // resumes.
    for _ in 0..(PROBE_RTT_TIME.as_millis() / higher.as_millis()) as usize + 3 {
        d.round(20, higher, 0);
    }
    assert!(
        matches!(d.cc.mode(), Mode::Cruise { .. }),
        "{:?}",
        d.cc.mode()
    );
}

#[test]
fn persistent_congestion_restarts_from_the_smallest_window() {
    let mut d = Driver::new();
    for _ in 0..5 {
        d.round(100, Duration::from_millis(20), 0);
    }
    d.cc.on_congestion_event(d.now, d.now, true, 100 * MTU);
    assert_eq!(d.cc.window(), 4 * MTU);
}

/// Goodput over the measured part of a run, as a share of what the path can carry.
fn share(path: &Path, r: &sim::FlowReport, secs: f64) -> f64 {
    r.delivered_late as f64 / secs / path.capacity() / (1.0 - path.loss)
}

#[test]
fn fills_lossy_long_paths_without_overflowing_their_queue() {
    for (mbit, rtt_ms, loss) in [
        (500.0, 50, 0.01),
        (500.0, 150, 0.01),
        (200.0, 2, 0.03),
        (200.0, 150, 0.03),
        (200.0, 50, 0.0),
    ] {
        let path = Path::link(mbit, rtt_ms, loss);
        let r = &sim::run(path, &[Duration::ZERO], 12 * S, 4 * S, 7)[0];
        let got = share(&path, r, 8.0);
        let what = format!("{mbit} Mbit/s, {rtt_ms} ms, {loss}: {got:.3}, {}", r.model);
        assert!(got >= 0.95, "{what}");
        // Its own losses, startup included, stay far under the 2 % budget.
        assert!(
            r.queue_loss() <= 0.005,
            "queue loss {}: {what}",
            r.queue_loss()
        );
    }
}

#[test]
fn twenty_flows_share_one_bottleneck_fairly() {
    // The memory bench's shape: 20 Mbit/s, 150 ms, clients 150 ms apart.
    let path = Path::link(20.0, 150, 0.0);
    let starts: Vec<Duration> = (0..20).map(|i| Duration::from_millis(150 * i)).collect();
    let flows = sim::run(path, &starts, 60 * S, 10 * S, 7);
    let rates: Vec<f64> = flows
        .iter()
        .map(|f| f.delivered_late as f64 / 50.0)
        .collect();
    let total = rates.iter().sum::<f64>() / path.capacity();
    let fairness = sim::jain(&rates);
    let (lost, sent) = flows.iter().fold((0, 0), |(l, s), f| {
        (l + f.queue_drops_late, s + f.sent_late)
    });
    let loss = lost as f64 / sent as f64;
    let what = format!("link {total:.3}, Jain {fairness:.3}, queue loss {loss:.4}, {rates:?}");
    assert!(total >= 0.9, "{what}");
    assert!(fairness >= 0.85, "{what}");
    // Twenty flows of ~13 packets per round on a one-BDP queue: some loss, never a flood
    // (quinn's BBR lost 80 % here).
    assert!(loss <= 0.05, "{what}");
}

#[test]
fn acknowledgements_in_bunches_still_fill_the_path() {
    // A receiver or a host that handles packets in batches: acknowledgements arrive every
    // 5 or 10 ms in bunches. The allowance for bunching keeps the path full.
    for bunch_ms in [5, 10] {
        for rtt_ms in [50, 150] {
            let mut path = Path::link(500.0, rtt_ms, 0.01);
            path.ack_bunch = Duration::from_millis(bunch_ms);
            let r = &sim::run(path, &[Duration::ZERO], 12 * S, 4 * S, 7)[0];
            let got = share(&path, r, 8.0);
            let what = format!(
                "bunches of {bunch_ms} ms, {rtt_ms} ms: {got:.3}, {}",
                r.model
            );
            assert!(got >= 0.95, "{what}");
            assert!(
                r.queue_loss() <= 0.005,
                "queue loss {}: {what}",
                r.queue_loss()
            );
        }
    }
}

#[test]
fn startup_fills_long_fat_paths_in_a_few_rounds() {
    // Twelve round trips from the first byte: the initial train measures the path in the
    // first, startup starts from its BDP in the second. Slow start through quinn's pacer
    // delivered 49-60 % of these rounds' capacity; the rate-based startup without the train
    // 52-63 %.
    for (mbit, rtt_ms) in [(500.0, 150), (500.0, 50), (200.0, 150)] {
        let path = Path::link(mbit, rtt_ms, 0.01);
        let length = path.rtt * 12;
        let r = &sim::run(path, &[Duration::ZERO], length, Duration::ZERO, 7)[0];
        let got = share(&path, r, length.as_secs_f64());
        let what = format!(
            "{mbit} Mbit/s, {rtt_ms} ms: {got:.3}, queue loss {}, {}",
            r.queue_loss(),
            r.model
        );
        eprintln!("{what}");
        assert!(got >= 0.7, "{what}");
        // Startup stops at twice the measured BDP, what a one-BDP queue holds.
        assert!(
            r.queue_loss() <= 0.002,
            "queue loss {}: {what}",
            r.queue_loss()
        );
    }
}

/// A train of [`TRAIN_PACKETS`] leaving at once on a path of `rtt`, its acknowledgements
/// spread over `spread` (zero: all in one bunch); returns the controller after them.
fn train(rtt: Duration, spread: Duration) -> Paced {
    let mut d = Driver::new();
    d.handshake(rtt);
    assert_eq!(Controller::window(&d.cc), UNPACED, "the train is not paced");
    // Half a round trip to the request.
    let start = d.now + rtt / 2;
    for _ in 0..TRAIN_PACKETS / 8 {
        d.cc.sent(start, 8 * MTU);
    }
    assert_eq!(Controller::window(&d.cc), INITIAL_WINDOW);
    let step = spread / TRAIN_PACKETS as u32;
    for i in 0..TRAIN_PACKETS {
        let at = start + rtt + step * i as u32;
        d.cc.on_ack_rtt(at, start, MTU, false, rtt);
        d.cc.end_acks(at, (TRAIN_PACKETS - i - 1) * MTU, false);
    }
    d.cc
}

#[test]
fn the_initial_train_measures_the_bottleneck_and_startup_jumps_to_its_bdp() {
    let rtt = Duration::from_millis(150);
    // 64 packets acknowledged one by one over 1.5 ms: the spacing of a 62 MB/s bottleneck.
    let cc = train(rtt, Duration::from_micros(1500));
    // One packet's bytes per packet's spacing.
    let rate = MTU as f64 * TRAIN_PACKETS as f64 / 1.5e-3;
    let want = rate * rtt.as_secs_f64() * JUMP_GAIN;
    let jump = cc.jump() as f64;
    assert!(
        (0.99 * want..=1.01 * want).contains(&jump),
        "jump {jump}, want {want}"
    );
    assert!(Controller::window(&cc) as f64 >= 0.9 * want);
    assert_eq!(cc.mode(), Mode::Startup);
}

#[test]
fn a_train_acknowledged_in_a_few_bunches_measures_nothing() {
    // A receiver that read the whole train at once, or in a few bursts: their spacing says
    // nothing of the path.
    for bunches in [1, 3] {
        let mut d = Driver::new();
        let rtt = Duration::from_millis(150);
        d.handshake(rtt);
        let start = d.now + rtt;
        d.cc.sent(start, TRAIN_PACKETS * MTU);
        let per = TRAIN_PACKETS / bunches;
        for b in 0..bunches {
            let at = start + rtt + Duration::from_micros(100) * b as u32;
            for _ in 0..per {
                d.cc.on_ack_rtt(at, start, MTU, false, rtt);
            }
            d.cc.end_acks(at, (TRAIN_PACKETS - per * (b + 1)) * MTU, false);
        }
        assert_eq!(d.cc.jump(), 0, "{bunches} bunches");
        assert!(Controller::window(&d.cc) <= 2 * INITIAL_WINDOW);
    }
}

#[test]
fn a_sender_short_of_data_sends_no_train_and_stays_paced() {
    // Packets a few milliseconds apart never form a train; after the initial window's worth
    // the window is an ordinary, paced one.
    let mut d = Driver::new();
    let mut t = d.now;
    let mut sent = 0;
    while sent < INITIAL_WINDOW {
        d.cc.sent(t, MTU);
        sent += MTU;
        t += Duration::from_millis(2);
    }
    assert_eq!(Controller::window(&d.cc), INITIAL_WINDOW);
}
