//! Delivery-rate samples and round trips, from what quinn tells a controller.
//!
//! quinn reports each batch of packets sent (`on_sent`, one call per send, a GSO batch of up to
//! ten packets sharing one send time) and each packet acknowledged with its send time. That is
//! enough for the delivery-rate estimate of BBR (draft-cardwell-iccrg-bbr-congestion-control,
//! "Delivery Rate Samples"): each send remembers how much had been delivered when it left, and
//! its acknowledgement yields the bytes delivered since over the time they took. A sample is
//! never faster than the sending that produced it (the send interval bounds it), so a burst of
//! acknowledgements arriving together does not read as a fast path.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// What the connection had delivered when a batch was sent.
#[derive(Clone, Copy, Debug)]
struct Sent {
    time: Instant,
    delivered: u64,
    delivered_time: Instant,
    first_sent_time: Instant,
    app_limited: bool,
    in_flight: u64,
}

/// One delivery-rate sample: `bytes` delivered over `interval`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateSample {
    /// Bytes delivered between the sampled packet's send and its acknowledgement.
    pub bytes: u64,
    /// The longer of the send and the acknowledgement intervals those bytes took.
    pub interval: Duration,
    /// Sent while the sender had less to send than it was allowed: a lower bound only.
    pub app_limited: bool,
}

impl RateSample {
    /// Bytes per second.
    pub fn rate(&self) -> u64 {
        let ns = self.interval.as_nanos().max(1);
        (u128::from(self.bytes) * 1_000_000_000 / ns).min(u128::from(u64::MAX)) as u64
    }
}

/// Tracks deliveries and packet-timed round trips.
#[derive(Clone, Debug)]
pub struct Sampler {
    delivered: u64,
    delivered_time: Instant,
    first_sent_time: Instant,
    sent: VecDeque<Sent>,
    app_limited: bool,
    in_flight: u64,
    round: u64,
    next_round_delivered: u64,
    round_started: bool,
    best: Option<(u64, RateSample)>,
}

/// Batches remembered at most: far more than any window in flight sends (a batch is up to ten
/// packets), so only a peer that stops acknowledging altogether reaches it.
const MAX_REMEMBERED: usize = 1 << 16;

impl Sampler {
    /// A sampler for a connection starting at `now`.
    pub fn new(now: Instant) -> Self {
        Self {
            delivered: 0,
            delivered_time: now,
            first_sent_time: now,
            sent: VecDeque::new(),
            app_limited: false,
            in_flight: 0,
            round: 0,
            next_round_delivered: 0,
            round_started: false,
            best: None,
        }
    }

    /// Bytes acknowledged so far.
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    /// Round trips counted so far: a round ends when a packet sent after it began is
    /// acknowledged.
    pub fn round(&self) -> u64 {
        self.round
    }

    /// Whether the sender is short of data (quinn's `app_limited`): samples taken from what it
    /// sends now are lower bounds.
    pub fn set_app_limited(&mut self, limited: bool) {
        self.app_limited = limited;
    }

    /// The bytes in flight as quinn counts them, after a batch of acknowledgements.
    pub fn set_in_flight(&mut self, in_flight: u64) {
        self.in_flight = in_flight;
    }

    /// A batch of `bytes` left at `now`.
    pub fn on_sent(&mut self, now: Instant, bytes: u64) {
        self.in_flight += bytes;
        if self.sent.is_empty() {
            // Nothing in flight that we know of: the next interval starts now, not at the last
            // acknowledgement before the pause.
            self.delivered_time = now;
            self.first_sent_time = now;
        }
        if let Some(last) = self.sent.back_mut().filter(|s| s.time == now) {
            last.in_flight = self.in_flight;
            return;
        }
        if self.sent.len() == MAX_REMEMBERED {
            self.sent.pop_front();
        }
        self.sent.push_back(Sent {
            time: now,
            delivered: self.delivered,
            delivered_time: self.delivered_time,
            first_sent_time: self.first_sent_time,
            app_limited: self.app_limited,
            in_flight: self.in_flight,
        });
    }

    /// A packet sent at `sent` was acknowledged at `now`.
    pub fn on_ack(&mut self, now: Instant, sent: Instant, bytes: u64) {
        self.delivered += bytes;
        self.delivered_time = now;
        // Earlier batches stay until declared lost (or forgotten, [`Self::forget_before`]):
        // a loss asks what was in flight when its packet left.
        let Ok(i) = self.sent.binary_search_by(|s| s.time.cmp(&sent)) else {
            return;
        };
        let p = self.sent[i];
        self.first_sent_time = p.time;
        if p.delivered >= self.next_round_delivered {
            self.next_round_delivered = self.delivered;
            self.round += 1;
            self.round_started = true;
        }
        let send_elapsed = p.time.saturating_duration_since(p.first_sent_time);
        let ack_elapsed = now.saturating_duration_since(p.delivered_time);
        let sample = RateSample {
            bytes: self.delivered - p.delivered,
            interval: send_elapsed.max(ack_elapsed),
            app_limited: p.app_limited,
        };
        // Of one batch of acknowledgements, the packet that left last says most.
        if self.best.map_or(true, |(d, _)| p.delivered >= d) {
            self.best = Some((p.delivered, sample));
        }
    }

    /// Packets sent up to `sent` were declared lost: they will never be acknowledged. Returns
    /// the bytes that were in flight when the last of them left (BBRv2's `tx_in_flight`), if
    /// that send is still known: what the path could not hold.
    pub fn on_lost(&mut self, sent: Instant, bytes: u64) -> Option<u64> {
        self.in_flight = self.in_flight.saturating_sub(bytes);
        let mut at_send = None;
        while let Some(s) = self.sent.front().filter(|s| s.time <= sent) {
            if s.time == sent {
                at_send = Some(s.in_flight);
            }
            self.sent.pop_front();
        }
        at_send
    }

    /// Forgets batches sent before `before`: acknowledged, or long since declared lost.
    pub fn forget_before(&mut self, before: Instant) {
        while self.sent.front().is_some_and(|s| s.time < before) {
            self.sent.pop_front();
        }
    }

    /// Ends a batch of acknowledgements: the best sample of the batch, and whether a round
    /// ended in it. Samples shorter than `min_interval` (less than a round trip) are dropped:
    /// they measure how acknowledgements bunch, not the path.
    pub fn end_acks(&mut self, min_interval: Duration) -> (Option<RateSample>, bool) {
        let sample = self
            .best
            .take()
            .map(|(_, s)| s)
            .filter(|s| s.interval >= min_interval && !s.interval.is_zero());
        (sample, std::mem::take(&mut self.round_started))
    }
}

/// The largest value seen over the last `len` rounds.
#[derive(Clone, Debug)]
pub struct WindowedMax {
    len: u64,
    best: VecDeque<(u64, u64)>,
}

impl WindowedMax {
    /// Remembers `len` rounds.
    pub fn new(len: u64) -> Self {
        Self {
            len,
            best: VecDeque::new(),
        }
    }

    /// Offers `value` in round `round`.
    pub fn update(&mut self, round: u64, value: u64) {
        while self
            .best
            .front()
            .is_some_and(|&(r, _)| r + self.len <= round)
        {
            self.best.pop_front();
        }
        // A monotone queue: a value never beats a newer, larger one.
        while self.best.back().is_some_and(|&(_, v)| v <= value) {
            self.best.pop_back();
        }
        self.best.push_back((round, value));
    }

    /// The largest value of the window (0 before any).
    pub fn get(&self) -> u64 {
        self.best.front().map_or(0, |&(_, v)| v)
    }

    /// Forgets every value.
    pub fn reset(&mut self) {
        self.best.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_paced_flow_samples_its_sending_rate() {
        let t0 = Instant::now();
        let mut s = Sampler::new(t0);
        // One 1000-byte batch per ms, each acknowledged 50 ms later: 1 MB/s.
        for i in 0..200u32 {
            s.on_sent(t0 + MS * i, 1000);
            if i >= 50 {
                s.on_ack(t0 + MS * i, t0 + MS * (i - 50), 1000);
            }
        }
        let (sample, _) = s.end_acks(Duration::from_millis(10));
        let rate = sample.expect("a sample").rate();
        assert!((950_000..=1_050_000).contains(&rate), "{rate}");
        assert!(s.round() >= 3, "{}", s.round());
    }

    #[test]
    fn bunched_acknowledgements_do_not_read_as_a_fast_path() {
        let t0 = Instant::now();
        let mut s = Sampler::new(t0);
        // Sent over 100 ms, all acknowledged in the same instant at 150 ms.
        for i in 0..100u32 {
            s.on_sent(t0 + MS * i, 1000);
        }
        for i in 0..100u32 {
            s.on_ack(t0 + MS * 150, t0 + MS * i, 1000);
        }
        let rate = s.end_acks(MS).0.expect("a sample").rate();
        // The send interval bounds it: 100 kB over 99 ms, not over 0 s.
        assert!(rate < 1_100_000, "{rate}");
    }

    #[test]
    fn lost_batches_are_forgotten_and_short_samples_dropped() {
        let t0 = Instant::now();
        let mut s = Sampler::new(t0);
        for i in 0..10u32 {
            s.on_sent(t0 + MS * i, 1000);
        }
        assert_eq!(s.on_lost(t0 + MS * 4, 1000), Some(5000));
        s.on_ack(t0 + MS * 20, t0 + MS * 5, 1000);
        assert_eq!(s.end_acks(Duration::from_secs(1)).0, None);
        s.on_ack(t0 + MS * 21, t0 + MS * 6, 1000);
        assert!(s.end_acks(MS).0.is_some());
    }

    #[test]
    fn windowed_max_forgets_old_rounds() {
        let mut m = WindowedMax::new(3);
        m.update(0, 10);
        m.update(1, 5);
        assert_eq!(m.get(), 10);
        m.update(2, 7);
        assert_eq!(m.get(), 10);
        m.update(3, 1);
        assert_eq!(m.get(), 7);
        m.update(5, 2);
        assert_eq!(m.get(), 2);
    }
}
