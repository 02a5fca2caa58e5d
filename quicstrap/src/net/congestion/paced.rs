//! A model-based controller whose window is what quinn's pacer needs to send at the model's
//! rate: the default.
//!
//! quinn gives a controller one knob, the window, and uses it twice: no more than the window in
//! flight, and a pacer releasing 1.25 windows per smoothed RTT. quinn's BBR computes a pacing
//! rate that nothing reads (quinn-rs/quinn#2802) and keeps its window at twice the path's
//! bandwidth-delay product, so the pacer lets it send at 2.5 times the bottleneck's rate until
//! the window is full: a one-BDP drop-tail queue overflows in every round (11–16 % of packets
//! lost at 500 Mbit/s, BENCHMARKS.md), and twenty such flows on one path drown it.
//!
//! This controller keeps BBR's model — the bottleneck rate (the largest delivery rate of the
//! last ten rounds) and the path's minimum RTT — and chooses the window from it so that both of
//! quinn's uses come out right:
//! * in flight, `gain × rate × min RTT` plus the bytes acknowledgements bunch by (BBR's
//!   "extra acked"): one BDP cruising, so the bottleneck queue stays nearly empty, 1.25 BDP one
//!   round in eight to probe for more;
//! * so the pacer, at 1.25 such windows per RTT, is never what holds the flow below the model's
//!   rate; the RTT the window is sized for is at least [`RTT_FLOOR`] (quinn's pacing and timer
//!   granularity), or on loopback the window would be a few packets.
//!
//! A connection's first data packets leave unpaced, as a train of [`TRAIN_PACKETS`]: the
//! spacing the bottleneck gives their acknowledgements measures its rate a round in (packet
//! train dispersion), and startup starts from that BDP ([`JUMP_GAIN`]) instead of climbing to
//! it from the initial window for ten rounds through quinn's pacer.
//!
//! Random loss does not change the model: a delivery rate measured through 3 % loss is still
//! the path's rate. A round losing more than [`LOSS_THRESHOLD`] is congestion that the model's
//! own window did not prevent (a path shared with flows that fill queues), and so is a round
//! losing more than [`QUEUED_LOSS_THRESHOLD`] while a queue stood all round: the window is then
//! bounded at [`LOSS_BACKOFF`] of what was in flight when the lost packets left (BBRv2's
//! `inflight_hi`), a bound that grows back by one packet per clean round (AIMD, so flows on one
//! bottleneck converge to equal shares). Startup doubles the window each round, within twice
//! the BDP measured so far, and ends when the rate stops growing, when the RTT shows a queue,
//! or at such a loss. Every ten seconds without
//! a lower RTT the window drops to half a BDP for 200 ms and a round, so flows sharing a
//! bottleneck see its empty queue and their RTT estimates agree.

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::congestion::{Controller, ControllerFactory, ControllerMetrics};
use quinn_proto::RttEstimator;

use super::sample::{Sampler, WindowedMax};

/// Rounds the bottleneck-rate filter remembers.
pub const BW_ROUNDS: u64 = 10;
/// The window gain of each cruising phase; phase 0 probes for more rate.
pub const CYCLE: [f64; 8] = [1.25, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0];
/// A round losing more than this share of its packets is congestion, not random loss: above the
/// worst random loss worth transferring over (the link benchmark's 3 %).
pub const LOSS_THRESHOLD: f64 = 0.08;
/// A round losing more than this share while a queue stood through it is congestion too
/// (BBRv2's threshold): random loss does not build queues.
pub const QUEUED_LOSS_THRESHOLD: f64 = 0.02;
/// On such a round the window is bounded at this share of what was in flight.
pub const LOSS_BACKOFF: f64 = 0.85;
/// quinn's pacer releases this many windows per smoothed RTT.
pub const PACER_GAIN: f64 = 1.25;
/// How long a minimum RTT stands before a probe for a lower one.
pub const MIN_RTT_LIFETIME: Duration = Duration::from_secs(10);
/// How long that probe holds the window at half a BDP (at least a round as well).
pub const PROBE_RTT_TIME: Duration = Duration::from_millis(200);
/// The shortest RTT the window is sized for: quinn's pacer releases bursts every 2 ms and its
/// timers tick in milliseconds, so a sender cannot keep less than 2 ms of its rate in flight
/// and still keep the path busy. On loopback, where the path's RTT is tens of microseconds and
/// the receiver's CPU is the bottleneck, a BDP from the RTT alone would be a few packets.
pub const RTT_FLOOR: Duration = Duration::from_millis(2);
/// The initial window, in packets of quinn's minimum size (as quinn's BBR).
const INITIAL_PACKETS: u64 = 200;
/// The initial window, bytes.
pub(super) const INITIAL_WINDOW: u64 = INITIAL_PACKETS * 1200;
/// The fewest packets a window holds.
const MIN_PACKETS: u64 = 4;
/// Startup's window is at most this many BDPs of the rate measured so far.
pub const STARTUP_GAIN: f64 = 2.0;
/// Startup ends after this many rounds without 25 % more rate.
const STARTUP_FLAT_ROUNDS: u32 = 3;
/// Startup ends when a round's lowest RTT exceeds the minimum by this share...
const STARTUP_RTT_RISE: f64 = 0.25;
/// ...and by at least this much (timer and scheduling noise on short paths).
const STARTUP_RTT_RISE_MIN: Duration = Duration::from_millis(4);
/// The first packets of a connection's data leave back to back as a train of this many, and
/// the spacing the bottleneck gives their acknowledgements measures its rate (packet-train
/// dispersion) one round in, where startup's delivery rates need ten rounds to climb there.
pub const TRAIN_PACKETS: u64 = 64;
/// Sends further apart than this start a new train: the handshake's packets, then the data a
/// round later, are two.
const TRAIN_GAP: Duration = Duration::from_millis(1);
/// Startup starts from this share of the BDP the train measured: one BDP, what the path holds
/// without a queue; the delivery rates of the next rounds take it from there. A train leaves
/// no faster than the sender has data, so on a server reading files it reads low (40-65 % of
/// a 500 Mbit/s link, BENCHMARKS.md), not high.
pub const JUMP_GAIN: f64 = 1.0;
/// Acknowledgements of the train must come in at least this many bunches: fewer say more of
/// how the receiver read its packets (all at once, after a pause) than of the path's spacing.
const TRAIN_ACK_BUNCHES: u32 = 4;
/// The most startup jumps to, whatever the train measured: 15.4 MB, above the BDP of a
/// 500 Mbit/s, 150 ms path (9.4 MB); faster or longer paths climb the rest by rate.
const JUMP_MAX: u64 = 64 * INITIAL_WINDOW;
/// A window quinn does not pace (its pacer skips windows above `u32::MAX` bytes): what the
/// train leaves under. Whoever reads the window (the send-buffer budget) knows it by this.
pub const UNPACED: u64 = u32::MAX as u64 + 1;
/// Loss is judged over at least this many packets.
pub const LOSS_PACKETS: u64 = 64;
/// RTT samples of a round startup's queue check needs.
const STARTUP_RTT_SAMPLES: u32 = 8;

/// Where the controller is in its cycle.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    /// Doubling per round until the path is full.
    Startup,
    /// One BDP in flight; phase `phase` of [`CYCLE`] since `since`.
    Cruise {
        /// Index into [`CYCLE`].
        phase: usize,
        /// When the phase began.
        since: Instant,
    },
    /// Half a BDP in flight to see the path's empty-queue RTT; until `until` (set once the
    /// window drained) and the end of round `round`.
    ProbeRtt {
        /// When the probe may end.
        until: Option<Instant>,
        /// The round that must end first.
        round: u64,
    },
}

/// [`Paced`]'s factory: what [`crate::net::transport`] installs for `Congestion::Paced`.
#[derive(Debug, Default)]
pub struct PacedConfig;

impl ControllerFactory for PacedConfig {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(Paced::new(now, current_mtu))
    }
}

/// The initial train: when it left, and when its acknowledgements came back.
#[derive(Clone, Debug, Default)]
struct Train {
    first_sent: Option<Instant>,
    last_sent: Option<Instant>,
    bytes: u64,
    /// The whole train left; it is measured from here on.
    left: bool,
    first_ack: Option<Instant>,
    first_ack_bytes: u64,
    last_ack: Option<Instant>,
    acked: u64,
    /// Distinct times acknowledgements of the train came in.
    bunches: u32,
    /// A packet sent after the train was acknowledged: the train's are in or lost.
    passed: bool,
}

impl Train {
    /// A batch of `bytes` left at `now`.
    fn sent(&mut self, now: Instant, bytes: u64, mtu: u64) {
        if self
            .last_sent
            .map_or(true, |l| now.saturating_duration_since(l) > TRAIN_GAP)
        {
            self.first_sent = Some(now);
            self.bytes = 0;
        }
        self.last_sent = Some(now);
        self.bytes += bytes;
        self.left = self.bytes >= TRAIN_PACKETS * mtu;
    }

    /// A packet sent at `sent` of `bytes` was acknowledged at `now`.
    fn acked(&mut self, now: Instant, sent: Instant, bytes: u64) {
        let (Some(first), Some(last)) = (self.first_sent, self.last_sent) else {
            return;
        };
        if sent > last {
            self.passed = true;
        } else if sent >= first {
            let first_ack = *self.first_ack.get_or_insert(now);
            if now == first_ack {
                self.first_ack_bytes += bytes;
            }
            if self.last_ack != Some(now) {
                self.bunches += 1;
            }
            self.last_ack = Some(now);
            self.acked += bytes;
        }
    }

    /// Whether every packet of the train is acknowledged or behind one that is.
    fn measured(&self) -> bool {
        self.left && (self.passed || self.acked >= self.bytes)
    }

    /// The bottleneck's rate, bytes per second, from the spacing of the acknowledgements: the
    /// bytes acknowledged after the first acknowledgement over the time since it, and never
    /// faster than the train left (as a delivery-rate sample). None when half the train is
    /// missing or it came back in fewer than [`TRAIN_ACK_BUNCHES`] bunches.
    fn rate(&self) -> Option<f64> {
        let bytes = self.acked.saturating_sub(self.first_ack_bytes);
        if bytes < self.bytes / 2 || self.bunches < TRAIN_ACK_BUNCHES {
            return None;
        }
        let span = self.acked_span().max(self.sent_span());
        (!span.is_zero()).then(|| bytes as f64 / span.as_secs_f64())
    }

    /// From the first packet's send to the last one's.
    fn sent_span(&self) -> Duration {
        span(self.first_sent, self.last_sent)
    }

    /// From the first acknowledgement to the last one.
    fn acked_span(&self) -> Duration {
        span(self.first_ack, self.last_ack)
    }
}

/// From `from` to `to`, zero when either is missing.
fn span(from: Option<Instant>, to: Option<Instant>) -> Duration {
    match (from, to) {
        (Some(a), Some(b)) => b.saturating_duration_since(a),
        _ => Duration::ZERO,
    }
}

/// The controller's state.
#[derive(Clone, Debug)]
pub struct Paced {
    mtu: u64,
    sampler: Sampler,
    bw: WindowedMax,
    min_rtt: Option<Duration>,
    min_rtt_stamp: Instant,
    round_min_rtt: Option<Duration>,
    round_rtt_samples: u32,
    srtt: Duration,
    extra_acked: WindowedMax,
    epoch_start: Option<Instant>,
    epoch_bytes: u64,
    batch_acked: u64,
    mode: Mode,
    full_bw: u64,
    flat_rounds: u32,
    round_lost: u64,
    loss_acked: u64,
    loss_lost: u64,
    loss_in_flight: u64,
    inflight_hi: Option<u64>,
    queue_standing: bool,
    window: u64,
    /// The initial train, until it is measured (or never formed).
    train: Option<Train>,
    /// Bytes sent so far, while the train is forming.
    sent_total: u64,
    /// The window startup starts from, from the train's rate.
    jump: u64,
}

impl Paced {
    /// A controller for a connection starting at `now` with packets of `mtu` bytes.
    pub fn new(now: Instant, mtu: u16) -> Self {
        Self {
            mtu: u64::from(mtu),
            sampler: Sampler::new(now),
            bw: WindowedMax::new(BW_ROUNDS),
            min_rtt: None,
            min_rtt_stamp: now,
            round_min_rtt: None,
            round_rtt_samples: 0,
            // quinn's initial RTT, until the first acknowledgement measures one.
            srtt: Duration::from_millis(333),
            extra_acked: WindowedMax::new(BW_ROUNDS),
            epoch_start: None,
            epoch_bytes: 0,
            batch_acked: 0,
            mode: Mode::Startup,
            full_bw: 0,
            flat_rounds: 0,
            round_lost: 0,
            loss_acked: 0,
            loss_lost: 0,
            loss_in_flight: 0,
            inflight_hi: None,
            queue_standing: false,
            window: INITIAL_WINDOW,
            train: Some(Train::default()),
            sent_total: 0,
            jump: 0,
        }
    }

    /// The mode it is in.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The bottleneck rate the model holds, bytes per second.
    pub fn bandwidth(&self) -> u64 {
        self.bw.get()
    }

    /// The path's minimum RTT the model holds.
    pub fn min_rtt(&self) -> Option<Duration> {
        self.min_rtt
    }

    /// The window startup jumped to from the initial train's rate (0: none).
    pub fn jump(&self) -> u64 {
        self.jump
    }

    /// The bound set by congested rounds, if any.
    pub fn inflight_hi(&self) -> Option<u64> {
        self.inflight_hi
    }

    /// The rate the window lets quinn's pacer send at, bytes per second.
    pub fn pacing_rate(&self) -> u64 {
        (self.window as f64 * PACER_GAIN / self.srtt.as_secs_f64().max(1e-6)) as u64
    }

    fn min_window(&self) -> u64 {
        MIN_PACKETS * self.mtu
    }

    fn bdp(&self, gain: f64) -> u64 {
        let rtt = self.min_rtt.unwrap_or(self.srtt).max(RTT_FLOOR);
        (self.bw.get() as f64 * rtt.as_secs_f64() * gain) as u64
    }

    /// A batch of acknowledgements arrived: feed the model, move through the modes, and set the
    /// window.
    fn update(&mut self, now: Instant, in_flight: u64, app_limited: bool) {
        let min_interval = self.min_rtt.unwrap_or_default();
        let (sample, round_ended) = self.sampler.end_acks(min_interval);
        let round = self.sampler.round();
        if let Some(s) = sample {
            let rate = s.rate();
            // A sample from a sender short of data only ever raises the estimate.
            if !(s.app_limited || app_limited) || rate > self.bw.get() {
                self.bw.update(round, rate);
            }
        }
        self.update_extra_acked(now, round);
        if round_ended {
            self.end_round(in_flight);
            // Every round at trace level, every sixteenth at debug: one event, so a trace
            // shows each round once.
            macro_rules! model {
                ($level:expr) => {
                    tracing::event!(
                        $level,
                        round,
                        mode = ?self.mode,
                        bw = self.bw.get(),
                        min_rtt_us = self.min_rtt.map(|r| r.as_micros() as u64),
                        srtt_us = self.srtt.as_micros() as u64,
                        extra_acked = self.extra_acked.get(),
                        inflight_hi = self.inflight_hi,
                        in_flight,
                        window = self.window,
                        "congestion model"
                    )
                };
            }
            if round % 16 == 0 {
                model!(tracing::Level::DEBUG);
            } else {
                model!(tracing::Level::TRACE);
            }
        }
        self.update_mode(now, in_flight, round);
        self.window = self.target_window();
    }

    /// Bytes acknowledged beyond what the bottleneck rate explains since the acknowledgements
    /// last ran at or under it: the allowance bunched acknowledgements need (BBR's extra
    /// acked).
    fn update_extra_acked(&mut self, now: Instant, round: u64) {
        let acked = std::mem::take(&mut self.batch_acked);
        let bw = self.bw.get();
        let start = *self.epoch_start.get_or_insert(now);
        let expected = (bw as f64 * now.saturating_duration_since(start).as_secs_f64()) as u64;
        if self.epoch_bytes + acked <= expected || bw == 0 {
            self.epoch_start = Some(now);
            self.epoch_bytes = acked;
            return;
        }
        self.epoch_bytes += acked;
        let extra = (self.epoch_bytes - expected)
            .min(self.window)
            .min(self.bdp(1.0));
        self.extra_acked.update(round, extra);
    }

    fn end_round(&mut self, in_flight: u64) {
        // Loss is judged over enough packets that a few unlucky ones on a small window never
        // decide anything: a round, or as many as it takes to see LOSS_PACKETS.
        let seen = self.loss_acked + self.loss_lost;
        let mut congested = false;
        if seen >= LOSS_PACKETS * self.mtu {
            let share = self.loss_lost as f64 / seen as f64;
            congested =
                share > LOSS_THRESHOLD || (share > QUEUED_LOSS_THRESHOLD && self.queue_stood());
            self.loss_acked = 0;
            self.loss_lost = 0;
        }
        let loss_in_flight = std::mem::take(&mut self.loss_in_flight);
        if congested {
            // What was in flight when the lost packets left is what the path could not hold;
            // the flight now may already be far below it.
            let base = if loss_in_flight > 0 {
                loss_in_flight
            } else {
                in_flight
            };
            let base = base.min(self.inflight_hi.unwrap_or(u64::MAX));
            self.inflight_hi = Some(((base as f64 * LOSS_BACKOFF) as u64).max(self.min_window()));
        } else if let Some(hi) = self.inflight_hi {
            // Additive increase after the multiplicative decrease above: flows that share a
            // bottleneck converge to equal shares (AIMD), where proportional growth would keep
            // whatever shares they had.
            let grown = hi + self.mtu;
            // Once the model's own window sits well under the bound, the bound is moot.
            self.inflight_hi = (grown < 2 * self.model_window()).then_some(grown);
        }
        if self.mode == Mode::Startup {
            let bw = self.bw.get();
            if bw as f64 >= self.full_bw as f64 * 1.25 {
                self.full_bw = bw;
                self.flat_rounds = 0;
            } else {
                self.flat_rounds += 1;
            }
            if congested {
                // Leaves in `update_mode`.
                self.flat_rounds = STARTUP_FLAT_ROUNDS;
            }
        }
        self.queue_standing = self.queue_stood();
        self.round_lost = 0;
        self.round_min_rtt = None;
        self.round_rtt_samples = 0;
    }

    /// Whether a queue stood through the whole round: even its lowest RTT was a quarter over
    /// the path's minimum. Loss with a standing queue is the queue overflowing, whatever the
    /// rate: the flows sharing it ask for more than it drains.
    fn queue_stood(&self) -> bool {
        match (self.min_rtt, self.round_min_rtt) {
            (Some(min), Some(round_min)) => round_min > min.mul_f64(1.25) + RTT_FLOOR,
            _ => false,
        }
    }

    /// Whether this round's RTT already shows a queue of startup's making: checked on every
    /// batch, since a round later the window has doubled again.
    fn startup_queue_seen(&self) -> bool {
        let (Some(min), Some(round_min)) = (self.min_rtt, self.round_min_rtt) else {
            return false;
        };
        let rise = min.mul_f64(STARTUP_RTT_RISE).max(STARTUP_RTT_RISE_MIN);
        self.round_rtt_samples >= STARTUP_RTT_SAMPLES && round_min > min + rise
    }

    fn update_mode(&mut self, now: Instant, in_flight: u64, round: u64) {
        if self.mode == Mode::Startup
            && (self.flat_rounds >= STARTUP_FLAT_ROUNDS || self.startup_queue_seen())
        {
            tracing::debug!(
                round,
                flat_rounds = self.flat_rounds,
                queue_seen = self.startup_queue_seen(),
                bw = self.bw.get(),
                window = self.window,
                in_flight,
                "startup ends"
            );
            // Straight to cruising: a window of one BDP drains the startup queue by itself,
            // since nothing is sent until the flight falls under it.
            self.mode = Mode::Cruise {
                phase: 1,
                since: now,
            };
            // Startup's bursts say nothing of how acknowledgements bunch at the path's rate.
            self.extra_acked.reset();
        }
        let expired = now.saturating_duration_since(self.min_rtt_stamp) > MIN_RTT_LIFETIME;
        match self.mode {
            Mode::Cruise { .. } if expired => {
                self.mode = Mode::ProbeRtt {
                    until: None,
                    round: round + 1,
                };
            }
            Mode::Cruise { phase, since } => {
                let len = self.min_rtt.unwrap_or(self.srtt);
                if now.saturating_duration_since(since) >= len {
                    // The probing phase lasts until the flight reached its window too, or
                    // loss says the path is full.
                    let probing = phase == 0
                        && in_flight < self.bdp(CYCLE[0])
                        && self.round_lost == 0
                        && now.saturating_duration_since(since) < 3 * len;
                    if !probing {
                        self.mode = Mode::Cruise {
                            phase: (phase + 1) % CYCLE.len(),
                            since: now,
                        };
                    }
                }
            }
            Mode::ProbeRtt { until: None, round } => {
                if in_flight <= self.probe_rtt_window() {
                    self.mode = Mode::ProbeRtt {
                        until: Some(now + PROBE_RTT_TIME),
                        round: round.max(self.sampler.round() + 1),
                    };
                }
            }
            Mode::ProbeRtt {
                until: Some(until),
                round: r,
            } => {
                if now >= until && round >= r {
                    self.min_rtt_stamp = now;
                    self.mode = Mode::Cruise {
                        phase: 1,
                        since: now,
                    };
                }
            }
            Mode::Startup => {}
        }
    }

    fn probe_rtt_window(&self) -> u64 {
        self.bdp(0.5).max(self.min_window())
    }

    /// What the model alone asks for in the current mode, before the loss bound.
    fn model_window(&self) -> u64 {
        let gain = match self.mode {
            // BBR's startup, by rate: twice the BDP measured so far may fly (the most a
            // one-BDP queue holds without loss; bunched acknowledgements get no allowance
            // here, or the flight overflows that queue as startup ends), released by quinn's
            // pacer at 2.5 times the measured rate. Slow start's ack clock (a byte more per
            // byte acknowledged) grew only 1.5-1.65 times per round through that pacer; by
            // rate it is 1.6-1.9 times (the measured rate lags the sending), and the initial
            // train's jump skips most of the climb.
            Mode::Startup => {
                return self.bdp(STARTUP_GAIN).max(self.jump).max(INITIAL_WINDOW);
            }
            Mode::Cruise { phase, .. } => CYCLE[phase],
            Mode::ProbeRtt { .. } => return self.probe_rtt_window(),
        };
        // The allowance for bunched acknowledgements is what keeps the bottleneck busy between
        // them; a queue that stood through the last round shows it is not needed (and, with
        // many flows on one path, that the allowances add up to a queue of their own).
        let extra = if self.queue_standing {
            0
        } else {
            self.extra_acked.get()
        };
        self.bdp(gain) + extra
    }

    fn target_window(&self) -> u64 {
        let w = self.model_window();
        self.inflight_hi
            .map_or(w, |hi| w.min(hi))
            .max(self.min_window())
    }
}

impl Paced {
    /// A batch of packets left at `now`.
    pub fn sent(&mut self, now: Instant, bytes: u64) {
        self.sampler.on_sent(now, bytes);
        if let Some(train) = self.train.as_mut().filter(|t| !t.left) {
            train.sent(now, bytes, self.mtu);
            self.sent_total += bytes;
            if !train.left && self.sent_total >= INITIAL_WINDOW {
                // The data trickled out (a sender short of data): nothing to measure, and the
                // rest is paced as always.
                self.train = None;
            }
        }
    }

    /// Whether the train is still leaving: quinn is not to pace it.
    fn train_leaving(&self) -> bool {
        self.train.as_ref().is_some_and(|t| !t.left)
    }

    /// A packet sent at `sent` of `bytes` was acknowledged at `now`; `srtt` the smoothed RTT
    /// after it, `app_limited` whether the sender was short of data.
    pub fn on_ack_rtt(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        srtt: Duration,
    ) {
        self.sampler.set_app_limited(app_limited);
        self.sampler.on_ack(now, sent, bytes);
        self.srtt = srtt;
        let sample = now.saturating_duration_since(sent);
        if !sample.is_zero() {
            if self.min_rtt.map_or(true, |m| sample <= m) {
                self.min_rtt = Some(sample);
                self.min_rtt_stamp = now;
            }
            self.round_min_rtt = Some(self.round_min_rtt.map_or(sample, |m| m.min(sample)));
            self.round_rtt_samples += 1;
        }
        self.batch_acked += bytes;
        self.loss_acked += bytes;
        if let Some(train) = self.train.as_mut().filter(|t| t.left) {
            train.acked(now, sent, bytes);
        }
    }

    /// A batch of acknowledgements ended with `in_flight` bytes still in flight.
    pub fn end_acks(&mut self, now: Instant, in_flight: u64, app_limited: bool) {
        self.sampler.set_in_flight(in_flight);
        if let Some(train) = self.train.take_if(|t| t.measured()) {
            let rate = train.rate();
            if let (Some(rate), Mode::Startup) = (rate, self.mode) {
                let rtt = self.min_rtt.unwrap_or(self.srtt).max(RTT_FLOOR);
                self.jump = ((rate * rtt.as_secs_f64() * JUMP_GAIN) as u64).min(JUMP_MAX);
            }
            tracing::debug!(
                rate = rate.map(|r| r as u64),
                jump = self.jump,
                bytes = train.bytes,
                acked = train.acked,
                bunches = train.bunches,
                sent_us = train.sent_span().as_micros() as u64,
                acked_us = train.acked_span().as_micros() as u64,
                "initial train measured"
            );
        }
        // quinn declares a packet lost within about an RTT of a later one's acknowledgement,
        // or at its probe timeout: after four RTTs its send is history.
        if let Some(horizon) = now.checked_sub(4 * self.srtt.max(self.min_rtt.unwrap_or_default()))
        {
            self.sampler.forget_before(horizon);
        }
        self.update(now, in_flight, app_limited);
    }

    /// `bytes` sent up to `sent` were declared lost.
    pub fn lost(&mut self, sent: Instant, bytes: u64) {
        if let Some(at_send) = self.sampler.on_lost(sent, bytes) {
            self.loss_in_flight = self.loss_in_flight.max(at_send);
        }
        self.round_lost += bytes;
        self.loss_lost += bytes;
    }
}

impl Controller for Paced {
    fn on_sent(&mut self, now: Instant, bytes: u64, _last_packet_number: u64) {
        self.sent(now, bytes);
    }

    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        rtt: &RttEstimator,
    ) {
        self.on_ack_rtt(now, sent, bytes, app_limited, rtt.get());
    }

    fn on_end_acks(
        &mut self,
        now: Instant,
        in_flight: u64,
        app_limited: bool,
        _largest_packet_num_acked: Option<u64>,
    ) {
        self.end_acks(now, in_flight, app_limited);
    }

    fn on_congestion_event(
        &mut self,
        _now: Instant,
        sent: Instant,
        is_persistent_congestion: bool,
        lost_bytes: u64,
    ) {
        self.lost(sent, lost_bytes);
        if is_persistent_congestion {
            // Nothing got through for several PTOs: start over from a minimal window.
            self.window = self.min_window();
            self.inflight_hi = Some(self.min_window());
        }
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.mtu = u64::from(new_mtu);
        self.window = self.window.max(self.min_window());
    }

    fn window(&self) -> u64 {
        if self.train_leaving() {
            UNPACED
        } else {
            self.window
        }
    }

    fn metrics(&self) -> ControllerMetrics {
        let mut m = ControllerMetrics::default();
        m.congestion_window = self.window;
        m.pacing_rate = Some(self.pacing_rate() * 8);
        m
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(self.clone())
    }

    fn initial_window(&self) -> u64 {
        INITIAL_WINDOW
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}
