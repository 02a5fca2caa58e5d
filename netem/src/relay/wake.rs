//! How a relay thread waits: what one `ppoll()` reported ([`Ready`]) and the aiming of
//! timed wake-ups ([`WakeAim`]) that keeps deliveries from being late by a timer's latency.

use std::time::{Duration, Instant};

/// What one `ppoll()` returned.
#[derive(Default)]
pub(super) struct Ready {
    /// Which inputs have packets (bit `k`: input `k`).
    pub(super) inputs: u8,
    /// Shutdown was requested.
    pub(super) wake: bool,
    /// The timeout expired with nothing ready.
    pub(super) timed_out: bool,
}

/// Cap on how early a timed wake-up is aimed (and so on how long one spin may last).
const MAX_AIM: Duration = Duration::from_micros(200);
/// Below this much time to spare a timer is not worth it; the thread spins instead.
const MIN_SLEEP: Duration = Duration::from_micros(2);
/// Spinning may take at most 1/SPIN_SHARE of the thread's wall time.
const SPIN_SHARE: u32 = 4;
/// Most spin time that can be saved up while idle.
const MAX_SPIN_CREDIT: Duration = Duration::from_micros(500);

/// How to wait for the next due packet.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Wait {
    /// Sleep in `ppoll()` this long (input may end it earlier).
    Sleep(Duration),
    /// Busy-wait until the packet is due.
    Spin,
}

/// Learns how late this thread's timed wake-ups arrive (tens of µs on a virtual machine,
/// even with 1 ns timer slack) and aims that much early, spinning away the rest. Without
/// it every delivery would be late by one wake-up latency, several percent of a 2 ms RTT.
///
/// Spinning is rationed to a quarter of the thread's time: when packets are due closer
/// together than a wake-up takes (around 500 Mbit/s and up), the thread sleeps anyway and
/// delivers what fell due in one batch, like a NIC coalescing interrupts, rather than
/// burning a core the endpoints need.
#[derive(Default)]
pub(super) struct WakeAim {
    /// Moving average of recent wake-up lateness.
    late: Duration,
    /// Spin time available now.
    credit: Duration,
    /// When `credit` was last topped up.
    refilled: Option<Instant>,
}

impl WakeAim {
    /// How to wait at `now` when the next packet is due in `remaining`.
    pub(super) fn plan(&mut self, now: Instant, remaining: Duration) -> Wait {
        let earned = self.refilled.map_or(Duration::ZERO, |t| {
            now.saturating_duration_since(t) / SPIN_SHARE
        });
        self.credit = (self.credit + earned).min(MAX_SPIN_CREDIT);
        self.refilled = Some(now);
        if remaining > self.late + MIN_SLEEP {
            Wait::Sleep(remaining - self.late)
        } else if remaining <= self.credit {
            self.credit -= remaining;
            Wait::Spin
        } else {
            Wait::Sleep(remaining)
        }
    }

    /// Records how late a timed wake-up was (exponential moving average, weight 1/8).
    pub(super) fn observe(&mut self, late: Duration) {
        let late = late.min(MAX_AIM);
        self.late = self.late - self.late / 8 + late / 8;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wake_aim_learns_lateness_and_spins_when_close() {
        let us = Duration::from_micros;
        let ms = Duration::from_millis(1);
        let mut t = Instant::now();
        let mut aim = WakeAim::default();
        assert_eq!(aim.plan(t, ms), Wait::Sleep(ms));
        for _ in 0..100 {
            aim.observe(us(40));
        }
        let late = aim.late.as_secs_f64() * 1e6;
        assert!((late - 40.0).abs() < 1.0, "{late}");
        // Far away: sleep, aimed early by the learnt lateness.
        t += ms;
        assert_eq!(aim.plan(t, ms), Wait::Sleep(ms - aim.late));
        // Close: spin (credit was earned during the last millisecond).
        assert_eq!(aim.plan(t, us(30)), Wait::Spin);
        // Outliers are capped.
        for _ in 0..100 {
            aim.observe(Duration::from_secs(1));
        }
        assert!(aim.late <= MAX_AIM);
    }

    #[test]
    fn spinning_is_rationed() {
        let us = Duration::from_micros;
        let mut aim = WakeAim {
            late: us(40),
            ..WakeAim::default()
        };
        let mut t = Instant::now();
        let mut spun = Duration::ZERO;
        // A packet due every 12 µs (1 Gbit/s of 1500-byte packets) for 100 ms.
        for _ in 0..8_333 {
            t += us(12);
            if aim.plan(t, us(12)) == Wait::Spin {
                spun += us(12);
            }
        }
        let share = spun.as_secs_f64() / 0.1;
        assert!(share <= 0.26, "spun {:.0} % of the time", share * 100.0);
        assert!(share >= 0.2, "spun only {:.0} % of the time", share * 100.0);
    }
}
