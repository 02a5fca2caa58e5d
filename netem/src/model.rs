//! The link model, sans-IO: given a packet's arrival time and length, decide whether the
//! link drops it and, if not, when it comes out of the far end.
//!
//! Nothing here touches a socket, a clock or a thread: time is whatever `now` the caller
//! passes, so every property (serialisation timing, drop-tail, delay, jitter, reordering,
//! loss statistics) is unit-tested with simulated time. The relay feeds it real packets.
//!
//! One [`Link`] models one direction. The stages run in a fixed order:
//! blackhole → random loss → bottleneck queue (drop-tail) → serialisation at the bottleneck
//! rate → propagation delay → jitter → optional reordering.

use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::NetemError;

/// Smallest queue the default sizing ever picks, so links with a tiny bandwidth-delay
/// product still absorb a burst of a few dozen full-size packets.
pub const MIN_DEFAULT_QUEUE_BYTES: usize = 64 * 1024;

/// How packets are lost at random, independently of congestion.
///
/// Loss is decided before the bottleneck queue, so a lost packet uses no bandwidth: it is
/// "lost on the wire" rather than dropped by a router.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Loss {
    /// No random loss; only the queue (if any) drops packets.
    #[default]
    None,
    /// Each packet is lost independently with this probability (0.0..=1.0).
    Bernoulli(f64),
    /// Two-state Gilbert–Elliott chain, for bursty loss: the chain moves between a good and a
    /// bad state once per packet, and each state loses packets with its own probability.
    GilbertElliott {
        /// Per-packet probability of moving from the good to the bad state.
        p_good_to_bad: f64,
        /// Per-packet probability of moving from the bad back to the good state.
        p_bad_to_good: f64,
        /// Loss probability while in the good state (usually 0).
        loss_good: f64,
        /// Loss probability while in the bad state (usually 1).
        loss_bad: f64,
    },
}

impl Loss {
    /// Bursty loss from the two numbers people actually know: the long-run loss rate and the
    /// mean number of consecutive packets lost in a burst.
    ///
    /// Builds the "simple Gilbert" chain (good state never loses, bad state always loses),
    /// so a burst is exactly a stay in the bad state: `p_bad_to_good = 1 / mean_burst` and
    /// `p_good_to_bad` is chosen so the stationary share of the bad state is `mean_loss`.
    /// Needs `0 <= mean_loss < 1` and `mean_burst >= 1`.
    pub fn bursty(mean_loss: f64, mean_burst: f64) -> Result<Loss, NetemError> {
        if !(0.0..1.0).contains(&mean_loss) {
            return Err(NetemError::InvalidConfig(format!(
                "mean loss {mean_loss} is not in [0, 1)"
            )));
        }
        if !(mean_burst >= 1.0 && mean_burst.is_finite()) {
            return Err(NetemError::InvalidConfig(format!(
                "mean burst length {mean_burst} must be a finite number >= 1"
            )));
        }
        let p_bad_to_good = 1.0 / mean_burst;
        let p_good_to_bad = mean_loss * p_bad_to_good / (1.0 - mean_loss);
        if p_good_to_bad > 1.0 {
            return Err(NetemError::InvalidConfig(format!(
                "mean loss {mean_loss} with bursts of {mean_burst} packets is not reachable \
                 (needs a good→bad probability above 1)"
            )));
        }
        Ok(Loss::GilbertElliott {
            p_good_to_bad,
            p_bad_to_good,
            loss_good: 0.0,
            loss_bad: 1.0,
        })
    }

    /// Long-run fraction of packets this model loses, so a harness can state what it
    /// configured in the same unit it measures.
    pub fn mean_rate(&self) -> f64 {
        match *self {
            Loss::None => 0.0,
            Loss::Bernoulli(p) => p,
            Loss::GilbertElliott {
                p_good_to_bad,
                p_bad_to_good,
                loss_good,
                loss_bad,
            } => {
                let total = p_good_to_bad + p_bad_to_good;
                if total == 0.0 {
                    // The chain never leaves the good state it starts in.
                    return loss_good;
                }
                let bad_share = p_good_to_bad / total;
                bad_share * loss_bad + (1.0 - bad_share) * loss_good
            }
        }
    }

    fn validate(&self) -> Result<(), NetemError> {
        let probs: &[(&str, f64)] = match self {
            Loss::None => &[],
            Loss::Bernoulli(p) => &[("loss", *p)],
            Loss::GilbertElliott {
                p_good_to_bad,
                p_bad_to_good,
                loss_good,
                loss_bad,
            } => &[
                ("p_good_to_bad", *p_good_to_bad),
                ("p_bad_to_good", *p_bad_to_good),
                ("loss_good", *loss_good),
                ("loss_bad", *loss_bad),
            ],
        };
        for (name, p) in probs {
            check_probability(name, *p)?;
        }
        Ok(())
    }
}

fn check_probability(name: &str, p: f64) -> Result<(), NetemError> {
    if (0.0..=1.0).contains(&p) {
        Ok(())
    } else {
        Err(NetemError::InvalidConfig(format!(
            "{name} = {p} is not a probability in [0, 1]"
        )))
    }
}

/// Everything that shapes one direction of the emulated link.
///
/// Fields are public so a harness can use struct-update syntax on one of the constructors;
/// [`LinkParams::validate`] (run by the emulator on every change) rejects nonsense.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkParams {
    /// One-way propagation delay added to every delivered packet.
    pub delay: Duration,
    /// Extra delay drawn uniformly from `0..=jitter` per packet. Jitter never reorders
    /// packets: a packet never leaves before the one offered just before it (only
    /// [`LinkParams::reorder`] reorders).
    pub jitter: Duration,
    /// Random loss on the wire, decided before the bottleneck queue.
    pub loss: Loss,
    /// Bottleneck rate in bits per second (counting whole IP packets); `None` is unlimited,
    /// in which case there is no queue either.
    pub rate_bps: Option<u64>,
    /// Drop-tail limit of the bottleneck queue, in bytes, including the packet being
    /// serialised. Should be at least one MTU, or full-size packets arriving at an idle
    /// link are all dropped.
    pub queue_bytes: usize,
    /// Probability (0..=1) that a packet is held back an extra `reorder_delay`, letting
    /// later packets overtake it.
    pub reorder: f64,
    /// How long a reordered packet is held back on top of its normal delivery time.
    pub reorder_delay: Duration,
    /// Drop every packet (a partition / cable pulled), whatever else is configured.
    pub blackhole: bool,
}

impl Default for LinkParams {
    fn default() -> Self {
        LinkParams::ideal()
    }
}

impl LinkParams {
    /// A perfect link: no delay, no loss, no rate limit, so a harness can start from it and
    /// change only what it tests.
    pub fn ideal() -> Self {
        LinkParams {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            loss: Loss::None,
            rate_bps: None,
            queue_bytes: MIN_DEFAULT_QUEUE_BYTES,
            reorder: 0.0,
            reorder_delay: Duration::ZERO,
            blackhole: false,
        }
    }

    /// One direction of a symmetric link with round-trip time `rtt`: the one-way delay is
    /// `rtt / 2`, and the queue is [`LinkParams::default_queue_bytes`] of that RTT and rate.
    /// Give both directions the result to emulate the usual symmetric path.
    pub fn symmetric_rtt(rtt: Duration, rate_bps: Option<u64>, loss: Loss) -> Self {
        LinkParams {
            delay: rtt / 2,
            loss,
            rate_bps,
            queue_bytes: Self::default_queue_bytes(rate_bps, rtt),
            ..LinkParams::ideal()
        }
    }

    /// Default bottleneck queue: one bandwidth-delay product (`rate × rtt / 8` bytes), but
    /// never less than [`MIN_DEFAULT_QUEUE_BYTES`] (64 KiB). One BDP of buffer is what a
    /// loss-based congestion controller needs to keep the bottleneck busy after it backs
    /// off; with an unlimited rate the queue is unused and this returns the minimum.
    pub fn default_queue_bytes(rate_bps: Option<u64>, rtt: Duration) -> usize {
        let bdp = match rate_bps {
            Some(rate) => {
                let bytes = u128::from(rate) * rtt.as_nanos() / 8 / 1_000_000_000;
                usize::try_from(bytes).unwrap_or(usize::MAX)
            }
            None => 0,
        };
        bdp.max(MIN_DEFAULT_QUEUE_BYTES)
    }

    /// Rejects parameters the model cannot honour (probabilities outside 0..=1, a zero
    /// rate), so a typo fails loudly instead of emulating something else.
    pub fn validate(&self) -> Result<(), NetemError> {
        self.loss.validate()?;
        check_probability("reorder", self.reorder)?;
        if self.rate_bps == Some(0) {
            return Err(NetemError::InvalidConfig(
                "rate 0 would deliver nothing; use blackhole, or None for unlimited".into(),
            ));
        }
        Ok(())
    }
}

/// Why the link dropped a packet, so the statistics can tell congestion from random loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The link is blackholed.
    Blackhole,
    /// Random loss ([`Loss`]).
    Loss,
    /// The bottleneck queue was full (drop-tail).
    QueueFull,
}

/// The model's decision for one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Hand the packet to the far end at this instant.
    Deliver(Instant),
    /// The packet never arrives.
    Drop(DropReason),
}

/// Counters of one direction as the model sees it, so tests can compare what they measure
/// with what the emulator says it did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkCounters {
    /// Packets offered to the link.
    pub packets_in: u64,
    /// Bytes offered to the link.
    pub bytes_in: u64,
    /// Packets scheduled for delivery.
    pub packets_accepted: u64,
    /// Bytes scheduled for delivery.
    pub bytes_accepted: u64,
    /// Packets dropped because the link was blackholed.
    pub dropped_blackhole: u64,
    /// Packets dropped by random loss.
    pub dropped_loss: u64,
    /// Packets dropped because the bottleneck queue was full.
    pub dropped_queue: u64,
}

/// One direction of the emulated link: parameters plus the state that must survive a
/// parameter change (RNG, Gilbert–Elliott state, bottleneck occupancy, ordering floor).
#[derive(Debug, Clone)]
pub struct Link {
    params: LinkParams,
    rng: SmallRng,
    /// Gilbert–Elliott chain state: true while in the bad state.
    ge_bad: bool,
    /// When the bottleneck finishes serialising everything accepted so far.
    busy_until: Option<Instant>,
    /// Latest delivery time handed out to a packet that was not reordered; later packets
    /// never go before it.
    last_delivery: Option<Instant>,
    counters: LinkCounters,
}

impl Link {
    /// A link in its initial state (idle queue, good loss state). The same `seed` and the
    /// same sequence of offers give the same verdicts, so experiments are repeatable.
    pub fn new(params: LinkParams, seed: u64) -> Self {
        Link {
            params,
            rng: SmallRng::seed_from_u64(seed),
            ge_bad: false,
            busy_until: None,
            last_delivery: None,
            counters: LinkCounters::default(),
        }
    }

    /// Changes the parameters mid-run. Packets already accepted keep their delivery times;
    /// the RNG, the Gilbert–Elliott state and the queue backlog carry over, so a change does
    /// not reset the link's history.
    pub fn set_params(&mut self, params: LinkParams) {
        self.params = params;
    }

    /// The parameters in force, so a caller can change one field and set them back.
    pub fn params(&self) -> &LinkParams {
        &self.params
    }

    /// What the link has done so far.
    pub fn counters(&self) -> LinkCounters {
        self.counters
    }

    /// Bytes waiting in (or being serialised by) the bottleneck at `now`.
    pub fn backlog_bytes(&self, now: Instant) -> usize {
        match (self.params.rate_bps, self.busy_until) {
            (Some(rate), Some(busy)) if busy > now => {
                let ns = (busy - now).as_nanos();
                let bytes = ns * u128::from(rate) / 8 / 1_000_000_000;
                usize::try_from(bytes).unwrap_or(usize::MAX)
            }
            _ => 0,
        }
    }

    /// Offers a packet of `len` bytes arriving at `now` and returns its fate. Calls must come
    /// with non-decreasing `now` (arrival order); that is what keeps delivery order sane.
    pub fn offer(&mut self, now: Instant, len: usize) -> Verdict {
        let c = &mut self.counters;
        c.packets_in += 1;
        c.bytes_in += len as u64;

        if self.params.blackhole {
            self.counters.dropped_blackhole += 1;
            return Verdict::Drop(DropReason::Blackhole);
        }

        if self.lose() {
            self.counters.dropped_loss += 1;
            return Verdict::Drop(DropReason::Loss);
        }

        if self.params.rate_bps.is_some()
            && self.backlog_bytes(now).saturating_add(len) > self.params.queue_bytes
        {
            self.counters.dropped_queue += 1;
            return Verdict::Drop(DropReason::QueueFull);
        }

        match self.schedule(now, len) {
            Some(at) => {
                self.counters.packets_accepted += 1;
                self.counters.bytes_accepted += len as u64;
                Verdict::Deliver(at)
            }
            None => {
                // Only reachable with absurd parameters (a backlog of centuries): the
                // delivery time does not fit in an `Instant`, so the packet cannot be queued.
                self.counters.dropped_queue += 1;
                Verdict::Drop(DropReason::QueueFull)
            }
        }
    }

    /// Bottleneck, delay, jitter and reordering for an accepted packet; `None` if its time
    /// would overflow.
    fn schedule(&mut self, now: Instant, len: usize) -> Option<Instant> {
        let departure = match self.params.rate_bps {
            None => now,
            Some(rate) => {
                let start = match self.busy_until {
                    Some(busy) if busy > now => busy,
                    _ => now,
                };
                let tx_ns = (len as u128 * 8 * 1_000_000_000).div_ceil(u128::from(rate));
                let done = start.checked_add(Duration::from_nanos(u64::try_from(tx_ns).ok()?))?;
                self.busy_until = Some(done);
                done
            }
        };

        let mut at = departure.checked_add(self.params.delay)?;
        if !self.params.jitter.is_zero() {
            let max = u64::try_from(self.params.jitter.as_nanos()).unwrap_or(u64::MAX);
            at = at.checked_add(Duration::from_nanos(self.rng.random_range(0..=max)))?;
        }
        // Jitter must not reorder: never leave before the previous in-order packet.
        if let Some(last) = self.last_delivery {
            at = at.max(last);
        }
        self.last_delivery = Some(at);

        if self.params.reorder > 0.0 && self.rng.random::<f64>() < self.params.reorder {
            // Held back without moving the ordering floor, so the packets behind it pass.
            at = at.checked_add(self.params.reorder_delay)?;
        }
        Some(at)
    }

    /// Decides random loss for one packet and advances the Gilbert–Elliott chain.
    fn lose(&mut self) -> bool {
        match self.params.loss {
            Loss::None => false,
            Loss::Bernoulli(p) => p > 0.0 && self.rng.random::<f64>() < p,
            Loss::GilbertElliott {
                p_good_to_bad,
                p_bad_to_good,
                loss_good,
                loss_bad,
            } => {
                let p_loss = if self.ge_bad { loss_bad } else { loss_good };
                let lost = self.rng.random::<f64>() < p_loss;
                let p_move = if self.ge_bad {
                    p_bad_to_good
                } else {
                    p_good_to_bad
                };
                if self.rng.random::<f64>() < p_move {
                    self.ge_bad = !self.ge_bad;
                }
                lost
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn deliver(v: Verdict) -> Instant {
        match v {
            Verdict::Deliver(at) => at,
            Verdict::Drop(r) => panic!("expected delivery, got drop {r:?}"),
        }
    }

    #[test]
    fn ideal_link_delivers_immediately() {
        let t0 = Instant::now();
        let mut link = Link::new(LinkParams::ideal(), 1);
        assert_eq!(link.offer(t0, 1500), Verdict::Deliver(t0));
        assert_eq!(link.counters().packets_accepted, 1);
    }

    #[test]
    fn delay_is_added() {
        let t0 = Instant::now();
        let p = LinkParams {
            delay: 25 * MS,
            ..LinkParams::ideal()
        };
        let mut link = Link::new(p, 1);
        for i in 0..10u32 {
            let now = t0 + i * MS;
            assert_eq!(deliver(link.offer(now, 100)), now + 25 * MS);
        }
    }

    #[test]
    fn symmetric_rtt_halves_the_rtt_and_sizes_the_queue() {
        let p = LinkParams::symmetric_rtt(150 * MS, Some(200_000_000), Loss::Bernoulli(0.01));
        assert_eq!(p.delay, 75 * MS);
        // 200 Mbit/s × 150 ms = 3.75 MB.
        assert_eq!(p.queue_bytes, 3_750_000);
        let small = LinkParams::symmetric_rtt(2 * MS, Some(10_000_000), Loss::None);
        assert_eq!(small.queue_bytes, MIN_DEFAULT_QUEUE_BYTES);
        assert_eq!(
            LinkParams::symmetric_rtt(2 * MS, None, Loss::None).queue_bytes,
            MIN_DEFAULT_QUEUE_BYTES
        );
    }

    #[test]
    fn rate_limit_serialises_back_to_back_packets() {
        let t0 = Instant::now();
        // 12 Mbit/s: a 1500-byte packet takes exactly 1 ms.
        let p = LinkParams {
            rate_bps: Some(12_000_000),
            queue_bytes: 1_000_000,
            delay: 10 * MS,
            ..LinkParams::ideal()
        };
        let mut link = Link::new(p, 1);
        for i in 0..5u32 {
            // All five arrive at once: the k-th leaves after k+1 serialisation times.
            assert_eq!(deliver(link.offer(t0, 1500)), t0 + (i + 1) * MS + 10 * MS);
        }
        // An arrival after the queue drained starts afresh.
        let later = t0 + 100 * MS;
        assert_eq!(deliver(link.offer(later, 1500)), later + 11 * MS);
        // Half a packet time: 750 bytes at 12 Mbit/s = 0.5 ms.
        let later2 = later + 50 * MS;
        assert_eq!(
            deliver(link.offer(later2, 750)),
            later2 + Duration::from_micros(500) + 10 * MS
        );
    }

    #[test]
    fn sustained_rate_matches_configuration() {
        let t0 = Instant::now();
        let rate = 200_000_000u64;
        let p = LinkParams {
            rate_bps: Some(rate),
            queue_bytes: 100_000_000,
            ..LinkParams::ideal()
        };
        let mut link = Link::new(p, 1);
        let n = 10_000u64;
        let mut last = t0;
        for _ in 0..n {
            last = deliver(link.offer(t0, 1500));
        }
        let secs = (last - t0).as_secs_f64();
        let measured = (n * 1500 * 8) as f64 / secs;
        assert!(
            (measured - rate as f64).abs() / (rate as f64) < 1e-6,
            "{measured}"
        );
    }

    #[test]
    fn drop_tail_at_queue_bytes() {
        let t0 = Instant::now();
        let p = LinkParams {
            rate_bps: Some(12_000_000), // 1 ms per 1500-byte packet
            queue_bytes: 4 * 1500,
            ..LinkParams::ideal()
        };
        let mut link = Link::new(p, 1);
        for _ in 0..4 {
            assert!(matches!(link.offer(t0, 1500), Verdict::Deliver(_)));
        }
        assert_eq!(link.backlog_bytes(t0), 6000);
        assert_eq!(link.offer(t0, 1500), Verdict::Drop(DropReason::QueueFull));
        // A packet that still fits is accepted even when a bigger one was not.
        let small_fits = t0 + Duration::from_micros(100);
        assert!(matches!(link.offer(small_fits, 50), Verdict::Deliver(_)));
        // Once one packet time has passed, there is room for one more full packet.
        let t1 = t0 + Duration::from_micros(1100);
        assert!(matches!(link.offer(t1, 1500), Verdict::Deliver(_)));
        assert_eq!(link.offer(t1, 1500), Verdict::Drop(DropReason::QueueFull));
        let c = link.counters();
        assert_eq!(c.dropped_queue, 2);
        assert_eq!(c.packets_accepted, 6);
        assert_eq!(c.packets_in, 8);
    }

    #[test]
    fn unlimited_rate_has_no_queue() {
        let t0 = Instant::now();
        let p = LinkParams {
            queue_bytes: 0,
            ..LinkParams::ideal()
        };
        let mut link = Link::new(p, 1);
        for _ in 0..1000 {
            assert_eq!(link.offer(t0, 1500), Verdict::Deliver(t0));
        }
    }

    #[test]
    fn jitter_spreads_but_never_reorders() {
        let t0 = Instant::now();
        let p = LinkParams {
            delay: 10 * MS,
            jitter: 5 * MS,
            ..LinkParams::ideal()
        };
        let mut link = Link::new(p, 7);
        let mut prev = t0;
        let mut max_extra = Duration::ZERO;
        let mut clamped = 0;
        for i in 0..10_000u32 {
            let now = t0 + i * Duration::from_micros(100);
            let at = deliver(link.offer(now, 100));
            assert!(at >= prev, "packet {i} would overtake its predecessor");
            assert!(at >= now + 10 * MS);
            let extra = at - (now + 10 * MS);
            if at == prev {
                clamped += 1;
            }
            max_extra = max_extra.max(extra);
            prev = at;
        }
        // Jitter is really applied (spread close to its bound) ...
        assert!(max_extra > 4 * MS, "max extra {max_extra:?}");
        // ... and the clamp really did work.
        assert!(clamped > 0);
    }

    #[test]
    fn jitter_mean_is_half_the_bound_when_sparse() {
        // Packets far apart are never clamped, so the extra delay is uniform on 0..=jitter.
        let t0 = Instant::now();
        let p = LinkParams {
            jitter: 4 * MS,
            ..LinkParams::ideal()
        };
        let mut link = Link::new(p, 3);
        let n = 20_000u32;
        let mut sum = 0.0;
        for i in 0..n {
            let now = t0 + i * 10 * MS;
            sum += (deliver(link.offer(now, 100)) - now).as_secs_f64();
        }
        let mean_ms = sum / f64::from(n) * 1e3;
        assert!((mean_ms - 2.0).abs() < 0.05, "mean jitter {mean_ms} ms");
    }

    #[test]
    fn reorder_probability_and_delay() {
        let t0 = Instant::now();
        let p = LinkParams {
            delay: 10 * MS,
            reorder: 0.1,
            reorder_delay: 5 * MS,
            ..LinkParams::ideal()
        };
        let mut link = Link::new(p, 11);
        let n = 20_000u32;
        let mut held = 0u32;
        let mut overtaken = 0u32;
        let mut times = Vec::new();
        for i in 0..n {
            let now = t0 + i * Duration::from_micros(100);
            let at = deliver(link.offer(now, 100));
            let extra = at - (now + 10 * MS);
            if extra == 5 * MS {
                held += 1;
            } else {
                assert_eq!(extra, Duration::ZERO);
            }
            times.push(at);
        }
        for w in times.windows(2) {
            if w[1] < w[0] {
                overtaken += 1;
            }
        }
        let share = f64::from(held) / f64::from(n);
        // 4 sigma of a binomial(20000, 0.1) is 0.0085.
        assert!((share - 0.1).abs() < 0.0085, "reorder share {share}");
        // Held-back packets are overtaken (sent 100 µs apart, held 5 ms).
        assert!(overtaken > 0);
    }

    #[test]
    fn no_reordering_without_reorder() {
        let t0 = Instant::now();
        let p = LinkParams {
            delay: 10 * MS,
            jitter: 20 * MS,
            rate_bps: Some(100_000_000),
            queue_bytes: 10_000_000,
            reorder: 0.0,
            reorder_delay: 50 * MS,
            ..LinkParams::ideal()
        };
        let mut link = Link::new(p, 5);
        let mut prev = t0;
        for i in 0..10_000u32 {
            let at = deliver(link.offer(t0 + i * Duration::from_micros(50), 1200));
            assert!(at >= prev);
            prev = at;
        }
    }

    fn loss_pattern(loss: Loss, n: usize, seed: u64) -> Vec<bool> {
        let t0 = Instant::now();
        let p = LinkParams {
            loss,
            ..LinkParams::ideal()
        };
        let mut link = Link::new(p, seed);
        (0..n)
            .map(|_| matches!(link.offer(t0, 100), Verdict::Drop(DropReason::Loss)))
            .collect()
    }

    fn mean_run(lost: &[bool]) -> f64 {
        let mut runs = 0u32;
        let mut total = 0u32;
        let mut prev = false;
        for &l in lost {
            if l {
                total += 1;
                if !prev {
                    runs += 1;
                }
            }
            prev = l;
        }
        f64::from(total) / f64::from(runs.max(1))
    }

    #[test]
    fn bernoulli_loss_rate() {
        let n = 200_000;
        for p in [0.01, 0.03, 0.2] {
            let lost = loss_pattern(Loss::Bernoulli(p), n, 42);
            let rate = lost.iter().filter(|&&l| l).count() as f64 / n as f64;
            let sigma = (p * (1.0 - p) / n as f64).sqrt();
            assert!((rate - p).abs() < 4.0 * sigma, "p={p} measured {rate}");
            assert!(mean_run(&lost) < 1.0 / (1.0 - p) + 0.1);
        }
        assert!(loss_pattern(Loss::Bernoulli(0.0), 1000, 1)
            .iter()
            .all(|&l| !l));
        assert!(loss_pattern(Loss::Bernoulli(1.0), 1000, 1)
            .iter()
            .all(|&l| l));
    }

    #[test]
    fn gilbert_elliott_rate_and_burst_length() {
        let n = 1_000_000;
        for (p, burst) in [(0.01, 4.0), (0.03, 2.0), (0.05, 10.0)] {
            let loss = Loss::bursty(p, burst).unwrap();
            assert!((loss.mean_rate() - p).abs() < 1e-12);
            let lost = loss_pattern(loss, n, 9);
            let rate = lost.iter().filter(|&&l| l).count() as f64 / n as f64;
            // Loss indicators are correlated: the variance grows by (1+λ)/(1-λ),
            // λ = 1 - p_gb - p_bg.
            let Loss::GilbertElliott {
                p_good_to_bad,
                p_bad_to_good,
                ..
            } = loss
            else {
                unreachable!()
            };
            let lambda = 1.0 - p_good_to_bad - p_bad_to_good;
            let sigma = (p * (1.0 - p) / n as f64 * (1.0 + lambda) / (1.0 - lambda)).sqrt();
            assert!((rate - p).abs() < 4.0 * sigma, "p={p} measured {rate}");
            let run = mean_run(&lost);
            assert!(
                (run - burst).abs() / burst < 0.1,
                "burst {burst}: mean run {run}"
            );
        }
    }

    #[test]
    fn bursty_rejects_impossible_parameters() {
        assert!(Loss::bursty(1.0, 2.0).is_err());
        assert!(Loss::bursty(-0.1, 2.0).is_err());
        assert!(Loss::bursty(0.01, 0.5).is_err());
        assert!(Loss::bursty(0.9, 1.0).is_err());
        assert!(Loss::bursty(0.0, 1.0).is_ok());
    }

    #[test]
    fn blackhole_drops_everything_first() {
        let t0 = Instant::now();
        let p = LinkParams {
            blackhole: true,
            loss: Loss::Bernoulli(1.0),
            rate_bps: Some(1_000_000),
            queue_bytes: 1,
            ..LinkParams::ideal()
        };
        let mut link = Link::new(p, 1);
        for _ in 0..100 {
            assert_eq!(link.offer(t0, 1500), Verdict::Drop(DropReason::Blackhole));
        }
        let c = link.counters();
        assert_eq!(c.dropped_blackhole, 100);
        assert_eq!(c.dropped_loss + c.dropped_queue + c.packets_accepted, 0);
        // Lifting the blackhole restores delivery.
        link.set_params(LinkParams::ideal());
        assert_eq!(link.offer(t0, 1500), Verdict::Deliver(t0));
    }

    #[test]
    fn loss_happens_before_the_queue() {
        // A lost packet must not take bandwidth: with everything lost, the queue stays idle.
        let t0 = Instant::now();
        let p = LinkParams {
            loss: Loss::Bernoulli(1.0),
            rate_bps: Some(12_000_000),
            queue_bytes: 1500,
            ..LinkParams::ideal()
        };
        let mut link = Link::new(p, 1);
        for _ in 0..10 {
            assert_eq!(link.offer(t0, 1500), Verdict::Drop(DropReason::Loss));
        }
        assert_eq!(link.backlog_bytes(t0), 0);
    }

    #[test]
    fn set_params_keeps_state() {
        let t0 = Instant::now();
        let p = LinkParams {
            rate_bps: Some(12_000_000),
            queue_bytes: 1_000_000,
            ..LinkParams::ideal()
        };
        let mut link = Link::new(p, 1);
        for _ in 0..10 {
            link.offer(t0, 1500);
        }
        // The backlog survives a change of delay.
        link.set_params(LinkParams { delay: 5 * MS, ..p });
        assert_eq!(link.backlog_bytes(t0), 15_000);
        assert_eq!(deliver(link.offer(t0, 1500)), t0 + 11 * MS + 5 * MS);
        assert_eq!(link.counters().packets_in, 11);
    }

    #[test]
    fn absurd_parameters_never_panic() {
        let t0 = Instant::now();
        let p = LinkParams {
            delay: Duration::MAX,
            rate_bps: Some(1),
            queue_bytes: usize::MAX,
            ..LinkParams::ideal()
        };
        let mut link = Link::new(p, 1);
        for _ in 0..3 {
            assert_eq!(link.offer(t0, 65_535), Verdict::Drop(DropReason::QueueFull));
        }
    }

    #[test]
    fn same_seed_same_verdicts() {
        let a = loss_pattern(Loss::Bernoulli(0.1), 10_000, 77);
        let b = loss_pattern(Loss::Bernoulli(0.1), 10_000, 77);
        let c = loss_pattern(Loss::Bernoulli(0.1), 10_000, 78);
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn validate_rejects_nonsense() {
        let ok = LinkParams::ideal();
        assert!(ok.validate().is_ok());
        for bad in [
            LinkParams {
                loss: Loss::Bernoulli(1.5),
                ..ok
            },
            LinkParams {
                loss: Loss::Bernoulli(f64::NAN),
                ..ok
            },
            LinkParams {
                reorder: -0.1,
                ..ok
            },
            LinkParams {
                rate_bps: Some(0),
                ..ok
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
