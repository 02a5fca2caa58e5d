//! quinn's BBR with a guard against the loss of real congestion (`--congestion bbr`): the
//! default before [`super::paced`], kept selectable for comparison.
//!
//! BBR (v1, as quinn implements it) ignores loss by design. That is what keeps a transfer at
//! the link's rate where random loss makes CUBIC collapse (BENCHMARKS.md). It also ignores the
//! loss of real congestion: twenty transfers sharing a 20 Mbit/s, 150 ms path each take the
//! path for their own and together send several times its rate. Measured on the emulated link:
//! 80–86 % of each connection's packets dropped at the bottleneck, MTU black-hole detection
//! falling back to 1200 bytes, and transfers starved for a minute until their clients gave up.
//!
//! The guard adds the response BBRv2 added (its `inflight_hi` bound) and leaves random loss
//! alone:
//! * a **round** lasts at least one smoothed RTT and [`MIN_ROUND_PACKETS`] packets of acks and
//!   losses, so a few unlucky packets on a short path never decide anything;
//! * a round that lost more than [`LOSS_THRESHOLD`] of its bytes — far above the random loss of
//!   any link worth transferring over, and what a shared bottleneck overrun by BBR shows at
//!   once — caps the window at [`BACKOFF`] of what was in flight;
//! * each round below the threshold raises the cap by [`REGROW`], and once BBR's own window fits
//!   well under it again the cap is gone.

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::congestion::{BbrConfig, Controller, ControllerFactory, ControllerMetrics};
use quinn_proto::RttEstimator;

/// A round losing more than this share of its bytes is congestion, not random loss.
pub const LOSS_THRESHOLD: f64 = 0.15;
/// The fewest packets (acked + lost) a round judges by.
pub const MIN_ROUND_PACKETS: u64 = 100;
/// On a congested round the window is capped at this share of the bytes in flight.
pub const BACKOFF: f64 = 0.75;
/// Each clean round raises the cap by this share.
pub const REGROW: f64 = 0.25;

/// The loss guard's state, apart from any controller: what a round saw, and the cap.
#[derive(Clone, Debug)]
pub struct LossGuard {
    mtu: u64,
    round_start: Option<Instant>,
    acked: u64,
    lost: u64,
    cap: Option<u64>,
}

impl LossGuard {
    /// A guard without a cap, for packets of `mtu` bytes.
    pub fn new(mtu: u16) -> Self {
        Self {
            mtu: u64::from(mtu),
            round_start: None,
            acked: 0,
            lost: 0,
            cap: None,
        }
    }

    /// Bytes acknowledged.
    pub fn on_acked(&mut self, now: Instant, bytes: u64) {
        self.round_start.get_or_insert(now);
        self.acked += bytes;
    }

    /// Bytes declared lost.
    pub fn on_lost(&mut self, now: Instant, bytes: u64) {
        self.round_start.get_or_insert(now);
        self.lost += bytes;
    }

    /// Closes the round if it is long enough: `srtt` the smoothed RTT, `in_flight` the bytes
    /// in flight now, `window` the controller's own window.
    pub fn on_end_acks(&mut self, now: Instant, srtt: Duration, in_flight: u64, window: u64) {
        let Some(start) = self.round_start else {
            return;
        };
        let seen = self.acked + self.lost;
        if now.duration_since(start) < srtt || seen < MIN_ROUND_PACKETS * self.mtu {
            return;
        }
        let floor = self.min_window();
        if self.lost as f64 > LOSS_THRESHOLD * seen as f64 {
            let base = self.cap.unwrap_or(u64::MAX).min(in_flight.max(floor));
            self.cap = Some(((base as f64 * BACKOFF) as u64).max(floor));
        } else if let Some(cap) = self.cap {
            let grown = cap + ((cap as f64 * REGROW) as u64).max(self.mtu);
            // Once the controller's window fits well under the cap, the cap has done its job.
            self.cap = (grown < window.saturating_mul(2)).then_some(grown);
        }
        self.round_start = Some(now);
        self.acked = 0;
        self.lost = 0;
    }

    /// The cap on the window, if congestion set one.
    pub fn cap(&self) -> Option<u64> {
        self.cap
    }

    /// `window`, capped.
    pub fn limit(&self, window: u64) -> u64 {
        self.cap.map_or(window, |c| window.min(c))
    }

    fn min_window(&self) -> u64 {
        4 * self.mtu
    }

    fn on_mtu_update(&mut self, mtu: u16) {
        self.mtu = u64::from(mtu);
    }
}

/// [`GuardedBbr`]'s factory: what [`crate::net::transport`] installs for `Congestion::Bbr`.
#[derive(Debug, Default)]
pub struct GuardedBbrConfig {
    bbr: Arc<BbrConfig>,
}

impl ControllerFactory for GuardedBbrConfig {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(GuardedBbr {
            bbr: self.bbr.clone().build(now, current_mtu),
            guard: LossGuard::new(current_mtu),
            // quinn's initial RTT, until the first ack measures one.
            srtt: Duration::from_millis(333),
        })
    }
}

/// quinn's BBR with a [`LossGuard`] on its window.
pub struct GuardedBbr {
    bbr: Box<dyn Controller>,
    guard: LossGuard,
    srtt: Duration,
}

impl Controller for GuardedBbr {
    fn on_sent(&mut self, now: Instant, bytes: u64, last_packet_number: u64) {
        self.bbr.on_sent(now, bytes, last_packet_number);
    }

    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        rtt: &RttEstimator,
    ) {
        self.guard.on_acked(now, bytes);
        self.srtt = rtt.get();
        self.bbr.on_ack(now, sent, bytes, app_limited, rtt);
    }

    fn on_end_acks(
        &mut self,
        now: Instant,
        in_flight: u64,
        app_limited: bool,
        largest_packet_num_acked: Option<u64>,
    ) {
        self.bbr
            .on_end_acks(now, in_flight, app_limited, largest_packet_num_acked);
        let window = self.bbr.window();
        self.guard.on_end_acks(now, self.srtt, in_flight, window);
    }

    fn on_congestion_event(
        &mut self,
        now: Instant,
        sent: Instant,
        is_persistent_congestion: bool,
        lost_bytes: u64,
    ) {
        self.guard.on_lost(now, lost_bytes);
        self.bbr
            .on_congestion_event(now, sent, is_persistent_congestion, lost_bytes);
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.guard.on_mtu_update(new_mtu);
        self.bbr.on_mtu_update(new_mtu);
    }

    fn window(&self) -> u64 {
        self.guard.limit(self.bbr.window())
    }

    fn metrics(&self) -> ControllerMetrics {
        let mut m = self.bbr.metrics();
        m.congestion_window = self.window();
        m
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(GuardedBbr {
            bbr: self.bbr.clone_box(),
            guard: self.guard.clone(),
            srtt: self.srtt,
        })
    }

    fn initial_window(&self) -> u64 {
        self.bbr.initial_window()
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MTU: u16 = 1452;
    const RTT: Duration = Duration::from_millis(100);

    /// One round of `packets` packets of which `lost` were lost, ending `RTT` after `t`.
    fn round(g: &mut LossGuard, t: &mut Instant, packets: u64, lost: u64, in_flight: u64) {
        let mtu = u64::from(MTU);
        g.on_lost(*t, lost * mtu);
        g.on_acked(*t, (packets - lost) * mtu);
        *t += RTT;
        g.on_end_acks(*t, RTT, in_flight, 10_000_000);
    }

    #[test]
    fn random_loss_never_caps_the_window() {
        let (mut g, mut t) = (LossGuard::new(MTU), Instant::now());
        for _ in 0..100 {
            // 3 % loss, the worst row of the link benchmark.
            round(&mut g, &mut t, 1000, 30, 5_000_000);
            assert_eq!(g.cap(), None);
        }
        assert_eq!(g.limit(10_000_000), 10_000_000);
    }

    #[test]
    fn congestion_caps_the_window_and_clean_rounds_lift_the_cap() {
        let (mut g, mut t) = (LossGuard::new(MTU), Instant::now());
        round(&mut g, &mut t, 1000, 800, 4_000_000);
        assert_eq!(g.cap(), Some(3_000_000));
        // Still congested: the cap keeps shrinking, never below four packets.
        for _ in 0..100 {
            round(&mut g, &mut t, 1000, 500, 4_000_000);
        }
        assert_eq!(g.cap(), Some(4 * u64::from(MTU)));
        assert_eq!(g.limit(10_000_000), 4 * u64::from(MTU));
        // Clean rounds regrow it until the controller's own window (10 MB) fits under it.
        let mut rounds = 0;
        while g.cap().is_some() {
            round(&mut g, &mut t, 1000, 0, 4_000_000);
            rounds += 1;
            assert!(rounds < 500, "the cap never lifts");
        }
    }

    #[test]
    fn short_rounds_and_few_packets_decide_nothing() {
        let (mut g, t) = (LossGuard::new(MTU), Instant::now());
        let mtu = u64::from(MTU);
        // Heavy loss, but less than a round trip of time...
        g.on_lost(t, 900 * mtu);
        g.on_acked(t, 100 * mtu);
        g.on_end_acks(t + RTT / 2, RTT, 1_000_000, 10_000_000);
        assert_eq!(g.cap(), None);
        // ...or too few packets, however long.
        let mut g = LossGuard::new(MTU);
        g.on_lost(t, 5 * mtu);
        g.on_acked(t, 5 * mtu);
        g.on_end_acks(t + 10 * RTT, RTT, 1_000_000, 10_000_000);
        assert_eq!(g.cap(), None);
    }
}
