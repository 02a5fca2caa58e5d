//! A packet-level simulation of a bottleneck path, for the controller's tests: senders that
//! obey the window and the pacer exactly as quinn 0.11 does (no more than the window in flight;
//! a token bucket refilled at 1.25 windows per smoothed RTT, bursts of 2 ms of it, 10 to 256
//! packets, none for a window above `u32::MAX`; the RTT measured by a handshake before the
//! first packet), a drop-tail queue draining at the link's rate, the propagation delay, random
//! loss, and RFC 9002's loss detection (three packets or 9/8 of an RTT). Seconds of a transfer
//! run in milliseconds, so the tests can check rates, losses and fairness that only the link
//! benchmark could see before.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::time::{Duration, Instant};

use super::paced::Paced;

/// The path all flows share.
#[derive(Clone, Copy, Debug)]
pub struct Path {
    /// Bottleneck rate, bytes per second.
    pub rate: f64,
    /// Propagation RTT, without queueing.
    pub rtt: Duration,
    /// Drop-tail queue, bytes.
    pub queue: u64,
    /// Probability that a packet is lost at random.
    pub loss: f64,
    /// Acknowledgements reach the sender in bunches at multiples of this (zero: one by one):
    /// a receiver or a host that handles packets in batches.
    pub ack_bunch: Duration,
}

impl Path {
    /// `mbit` Mbit/s, `rtt_ms`, a one-BDP queue (at least 64 KiB), `loss` random loss: the
    /// link benchmark's shape.
    pub fn link(mbit: f64, rtt_ms: u64, loss: f64) -> Self {
        let rate = mbit * 1e6 / 8.0;
        let rtt = Duration::from_millis(rtt_ms);
        Self {
            rate,
            rtt,
            queue: ((rate * rtt.as_secs_f64()) as u64).max(64 << 10),
            loss,
            ack_bunch: Duration::ZERO,
        }
    }

    /// Bytes per second the bottleneck carries.
    pub fn capacity(&self) -> f64 {
        self.rate
    }
}

/// What one flow did.
#[derive(Clone, Debug, Default)]
pub struct FlowReport {
    /// Bytes acknowledged.
    pub delivered: u64,
    /// Packets sent.
    pub sent: u64,
    /// Packets dropped by the full queue: losses the sender caused.
    pub queue_drops: u64,
    /// Packets lost at random.
    pub random_drops: u64,
    /// Bytes acknowledged from `measure_from` on.
    pub delivered_late: u64,
    /// Packets sent from `measure_from` on.
    pub sent_late: u64,
    /// Packets the queue dropped from `measure_from` on.
    pub queue_drops_late: u64,
    /// The controller's model at the end, for a failing test's message.
    pub model: String,
}

impl FlowReport {
    /// Share of its packets the queue dropped.
    pub fn queue_loss(&self) -> f64 {
        self.queue_drops as f64 / self.sent.max(1) as f64
    }
}

const MTU: u64 = 1452;

struct Sender {
    cc: Paced,
    start: Duration,
    next_pn: u64,
    in_flight: u64,
    unacked: BTreeMap<u64, Duration>,
    largest_acked: Option<u64>,
    srtt: Option<Duration>,
    latest_rtt: Duration,
    tokens: u64,
    capacity: u64,
    last_window: u64,
    prev: Duration,
    wake: Option<Duration>,
    report: FlowReport,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Start(usize),
    Wake(usize),
    Depart,
    Ack(usize, u64),
    /// quinn's probe timeout, reduced to its effect: packets unacknowledged for two RTTs are
    /// declared lost, so a flow whose whole flight was dropped goes on.
    Tick(usize),
    Trace,
}

/// Runs flows starting at `starts` over `path` for `length`; `measure_from` splits off the
/// late part of each flow's delivery (after startup). `seed` drives the random loss.
pub fn run(
    path: Path,
    starts: &[Duration],
    length: Duration,
    measure_from: Duration,
    seed: u64,
) -> Vec<FlowReport> {
    let t0 = Instant::now();
    let mut rng = seed.max(1);
    let mut random = move || {
        // xorshift64*: deterministic, good enough for loss draws.
        rng ^= rng >> 12;
        rng ^= rng << 25;
        rng ^= rng >> 27;
        (rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut flows: Vec<Sender> = starts
        .iter()
        .map(|&start| Sender {
            cc: Paced::new(t0 + start, MTU as u16),
            start,
            next_pn: 0,
            in_flight: 0,
            unacked: BTreeMap::new(),
            largest_acked: None,
            // The handshake measured the path before the first byte of data.
            srtt: Some(path.rtt),
            latest_rtt: path.rtt,
            tokens: 0,
            capacity: 0,
            last_window: 0,
            prev: start,
            wake: None,
            report: FlowReport::default(),
        })
        .collect();
    let mut events = BinaryHeap::new();
    let mut seq = 0u64;
    let mut push = |events: &mut BinaryHeap<_>, at: Duration, e: Event| {
        seq += 1;
        events.push(Reverse((at, seq, e)));
    };
    for (i, f) in flows.iter().enumerate() {
        push(&mut events, f.start, Event::Start(i));
        push(&mut events, f.start + path.rtt, Event::Tick(i));
    }
    let trace = std::env::var_os("QUICSTRAP_SIM_TRACE").is_some();
    if trace {
        push(&mut events, Duration::ZERO, Event::Trace);
    }
    let serialize = |bytes: u64| Duration::from_secs_f64(bytes as f64 / path.rate);
    let mut queue: VecDeque<(usize, u64)> = VecDeque::new();
    let mut queued_bytes = 0u64;
    while let Some(Reverse((now, _, event))) = events.pop() {
        if now > length {
            break;
        }
        let at = t0 + now;
        let send_from = match event {
            Event::Start(i) => {
                let f = &mut flows[i];
                let w = f.cc_window();
                f.capacity = pacer_capacity(Duration::from_millis(333), w);
                f.tokens = f.capacity;
                f.last_window = w;
                Some(i)
            }
            Event::Wake(i) => (flows[i].wake == Some(now)).then_some(i),
            Event::Tick(i) => {
                let f = &mut flows[i];
                let rtt = f.srtt.unwrap_or(path.rtt);
                push(&mut events, now + rtt, Event::Tick(i));
                let stale: Vec<(u64, Duration)> = f
                    .unacked
                    .iter()
                    .filter(|&(_, &sent)| {
                        now.saturating_sub(sent) > 2 * rtt + Duration::from_millis(10)
                    })
                    .map(|(&pn, &sent)| (pn, sent))
                    .collect();
                if let Some(&(_, last)) = stale.last() {
                    for (pn, _) in &stale {
                        f.unacked.remove(pn);
                    }
                    f.in_flight -= stale.len() as u64 * MTU;
                    f.cc.lost(t0 + last, stale.len() as u64 * MTU);
                    Some(i)
                } else {
                    None
                }
            }
            Event::Trace => {
                let f = &flows[0];
                eprintln!(
                    "{:>6.2}s delivered {:>10} mode {:?} bw {} window {} in_flight {} hi {:?} queue {}",
                    now.as_secs_f64(),
                    f.report.delivered,
                    f.cc.mode(),
                    f.cc.bandwidth(),
                    f.cc_window(),
                    f.in_flight,
                    f.cc.inflight_hi(),
                    queued_bytes
                );
                push(&mut events, now + Duration::from_millis(100), Event::Trace);
                None
            }
            Event::Depart => {
                if let Some((i, pn)) = queue.pop_front() {
                    queued_bytes -= MTU;
                    let mut at = now + path.rtt;
                    if !path.ack_bunch.is_zero() {
                        let bunch = path.ack_bunch.as_nanos();
                        at = Duration::from_nanos((at.as_nanos().div_ceil(bunch) * bunch) as u64);
                    }
                    push(&mut events, at, Event::Ack(i, pn));
                }
                if !queue.is_empty() {
                    push(&mut events, now + serialize(MTU), Event::Depart);
                }
                None
            }
            Event::Ack(i, pn) => {
                let f = &mut flows[i];
                if let Some(sent) = f.unacked.remove(&pn) {
                    f.in_flight -= MTU;
                    let rtt = now - sent;
                    f.latest_rtt = rtt;
                    f.srtt = Some(f.srtt.map_or(rtt, |s| (s * 7 + rtt) / 8));
                    f.largest_acked = Some(f.largest_acked.map_or(pn, |l| l.max(pn)));
                    let srtt = f.srtt.unwrap_or(rtt);
                    f.cc.on_ack_rtt(at, t0 + sent, MTU, false, srtt);
                    f.report.delivered += MTU;
                    if now >= measure_from {
                        f.report.delivered_late += MTU;
                    }
                    f.detect_losses(now, t0);
                    let in_flight = f.in_flight;
                    f.cc.end_acks(at, in_flight, false);
                }
                Some(i)
            }
        };
        let Some(i) = send_from else { continue };
        // Send what the window and the pacer allow, as quinn's `poll_transmit` would.
        loop {
            let f = &mut flows[i];
            let window = f.cc_window();
            if f.in_flight + MTU >= window {
                break;
            }
            if let Some(wait) = f.pacer_delay(now, window) {
                f.wake = Some(wait);
                push(&mut events, wait, Event::Wake(i));
                break;
            }
            f.tokens = f.tokens.saturating_sub(MTU);
            let pn = f.next_pn;
            f.next_pn += 1;
            f.in_flight += MTU;
            f.unacked.insert(pn, now);
            f.report.sent += 1;
            let late = now >= measure_from;
            f.report.sent_late += u64::from(late);
            f.cc.sent(at, MTU);
            if random() < path.loss {
                f.report.random_drops += 1;
            } else if queued_bytes + MTU > path.queue {
                f.report.queue_drops += 1;
                f.report.queue_drops_late += u64::from(late);
            } else {
                if queue.is_empty() {
                    push(&mut events, now + serialize(MTU), Event::Depart);
                }
                queue.push_back((i, pn));
                queued_bytes += MTU;
            }
        }
    }
    flows
        .into_iter()
        .map(|f| FlowReport {
            model: format!(
                "mode {:?} bw {} min_rtt {:?} window {} hi {:?} srtt {:?}",
                f.cc.mode(),
                f.cc.bandwidth(),
                f.cc.min_rtt(),
                f.cc_window(),
                f.cc.inflight_hi(),
                f.srtt
            ),
            ..f.report
        })
        .collect()
}

impl Sender {
    fn cc_window(&self) -> u64 {
        quinn::congestion::Controller::window(&self.cc)
    }

    fn detect_losses(&mut self, now: Duration, t0: Instant) {
        let Some(largest) = self.largest_acked else {
            return;
        };
        let srtt = self.srtt.unwrap_or(self.latest_rtt);
        let delay = srtt.max(self.latest_rtt) * 9 / 8;
        let lost: Vec<(u64, Duration)> = self
            .unacked
            .range(..largest)
            .filter(|&(&pn, &sent)| pn + 3 <= largest || now.saturating_sub(sent) > delay)
            .map(|(&pn, &sent)| (pn, sent))
            .collect();
        if let Some(&(_, last_sent)) = lost.last() {
            for (pn, _) in &lost {
                self.unacked.remove(pn);
            }
            let bytes = lost.len() as u64 * MTU;
            self.in_flight -= bytes;
            self.cc.lost(t0 + last_sent, bytes);
        }
    }

    /// quinn 0.11's `Pacer::delay`: `None` to send now, else when to try again.
    fn pacer_delay(&mut self, now: Duration, window: u64) -> Option<Duration> {
        let srtt = self.srtt.unwrap_or(Duration::from_millis(333));
        if window != self.last_window {
            self.capacity = pacer_capacity(srtt, window);
            self.tokens = self.tokens.min(self.capacity);
            self.last_window = window;
        }
        if self.tokens >= MTU {
            return None;
        }
        if window > u64::from(u32::MAX) {
            // quinn does not pace such a window.
            return None;
        }
        let elapsed = now.saturating_sub(self.prev);
        let new = window as f64 * 1.25 * elapsed.as_secs_f64() / srtt.as_secs_f64();
        self.tokens = (self.tokens + new as u64).min(self.capacity);
        self.prev = now;
        if self.tokens >= MTU {
            return None;
        }
        let missing = MTU.max(self.capacity) - self.tokens;
        let wait = srtt.as_secs_f64() * missing as f64 / window as f64 / 1.25;
        Some(now + Duration::from_secs_f64(wait).max(Duration::from_micros(1)))
    }
}

fn pacer_capacity(srtt: Duration, window: u64) -> u64 {
    let c = (u128::from(window) * 2_000_000 / srtt.as_nanos().max(1)) as u64;
    c.clamp(10 * MTU, 256 * MTU)
}

/// Jain's fairness index of `xs`: 1 when all are equal, 1/n when one has everything.
pub fn jain(xs: &[f64]) -> f64 {
    let sum: f64 = xs.iter().sum();
    let squares: f64 = xs.iter().map(|x| x * x).sum();
    sum * sum / (xs.len() as f64 * squares).max(f64::MIN_POSITIVE)
}
