//! Adaptive throttling: turns a [`RateLimiter`]'s rate up or down around its base, once per
//! cycle, from signals of distress (slow local disk writes, peers answering `Busy`).
//!
//! The rule, after Venice's adaptive throttler: each cycle, if any signal reports overload the
//! factor drops one step (20 % of the base), never below 20 %; after `idle_cycles` (10) quiet
//! cycles in a row it rises one step, never above 200 %. Read and write directions each get a
//! throttler of their own. [`Throttle::on_cycle`] is the whole state machine, a pure function
//! of the signals, so it is tested without clocks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::control::pacing::RateLimiter;
use crate::store::lock::unpoisoned as lock;

/// Step of the factor, in percent of the base rate.
pub const STEP_PERCENT: u32 = 20;
/// Lowest factor, in percent of the base rate.
pub const MIN_PERCENT: u32 = 20;
/// Highest factor, in percent of the base rate.
pub const MAX_PERCENT: u32 = 200;
/// Cycle of [`Throttler::adaptive`]: short enough to react within seconds, long enough for a
/// signal's window to hold a few events.
pub const CYCLE: Duration = Duration::from_secs(1);
/// Quiet cycles before [`Throttler::adaptive`] steps back up.
pub const IDLE_CYCLES: u32 = 10;

/// A source of "slow down" advice, polled once per cycle.
pub trait Signal: Send + Sync {
    /// Short stable name, for logs and metrics.
    fn name(&self) -> &'static str;
    /// True when the resource this signal watches is overloaded right now; may reset the
    /// signal's window for the next cycle.
    fn overloaded(&self) -> bool;
}

/// The throttle's state machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Throttle {
    percent: u32,
    quiet: u32,
    idle_cycles: u32,
}

impl Throttle {
    /// Starts at 100 % of the base; steps up after `idle_cycles` quiet cycles.
    pub fn new(idle_cycles: u32) -> Self {
        Self {
            percent: 100,
            quiet: 0,
            idle_cycles: idle_cycles.max(1),
        }
    }

    /// The current factor in percent of the base.
    pub fn percent(&self) -> u32 {
        self.percent
    }

    /// One cycle: `overloaded` says whether any signal fired. Returns the new factor.
    pub fn on_cycle(&mut self, overloaded: bool) -> u32 {
        if overloaded {
            self.quiet = 0;
            self.percent = self.percent.saturating_sub(STEP_PERCENT).max(MIN_PERCENT);
        } else {
            self.quiet += 1;
            if self.quiet >= self.idle_cycles {
                self.quiet = 0;
                self.percent = (self.percent + STEP_PERCENT).min(MAX_PERCENT);
            }
        }
        self.percent
    }

    /// The rate for `base` bytes/s at the current factor (0 stays unlimited).
    pub fn rate(&self, base: u64) -> u64 {
        base.saturating_mul(u64::from(self.percent)) / 100
    }
}

/// Fires when any latency recorded during the cycle exceeded a threshold: e.g. the fsync of a
/// received file, a proxy for "the local disk is falling behind".
#[derive(Debug)]
pub struct LatencySignal {
    name: &'static str,
    threshold: Duration,
    worst_us: AtomicU64,
}

impl LatencySignal {
    /// A signal named `name` that fires above `threshold`.
    pub fn new(name: &'static str, threshold: Duration) -> Arc<Self> {
        Arc::new(Self {
            name,
            threshold,
            worst_us: AtomicU64::new(0),
        })
    }

    /// Records one observed latency.
    pub fn record(&self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.worst_us.fetch_max(us, Ordering::Relaxed);
    }

    /// Times `f` and records how long it took.
    pub fn time<T>(&self, f: impl FnOnce() -> T) -> T {
        let t0 = Instant::now();
        let r = f();
        self.record(t0.elapsed());
        r
    }
}

impl Signal for LatencySignal {
    fn name(&self) -> &'static str {
        self.name
    }

    fn overloaded(&self) -> bool {
        let worst = self.worst_us.swap(0, Ordering::Relaxed);
        Duration::from_micros(worst) > self.threshold
    }
}

/// A fresh signal of how long fsyncs of received files take: the client's "disk is falling
/// behind" signal (fires when one took over 500 ms during a cycle). Hand it to the fetch
/// policy ([`crate::client::FetchPolicy::fsync_latency`]) and to the throttler that reads it.
pub fn fsync_latency() -> Arc<LatencySignal> {
    LatencySignal::new("fsync_latency", Duration::from_millis(500))
}

/// Fires when a counter of bad events grew by more than `max_ratio` of a counter of all
/// events since the last cycle: e.g. `Busy` answers against requests, read from a server's
/// stats.
pub struct CounterRatioSignal {
    name: &'static str,
    max_ratio: f64,
    bad: Box<dyn Fn() -> u64 + Send + Sync>,
    total: Box<dyn Fn() -> u64 + Send + Sync>,
    last: std::sync::Mutex<(u64, u64)>,
}

impl CounterRatioSignal {
    /// A signal over two monotonic counters.
    pub fn new(
        name: &'static str,
        max_ratio: f64,
        bad: impl Fn() -> u64 + Send + Sync + 'static,
        total: impl Fn() -> u64 + Send + Sync + 'static,
    ) -> Arc<Self> {
        let start = (bad(), total());
        Arc::new(Self {
            name,
            max_ratio,
            bad: Box::new(bad),
            total: Box::new(total),
            last: std::sync::Mutex::new(start),
        })
    }
}

impl Signal for CounterRatioSignal {
    fn name(&self) -> &'static str {
        self.name
    }

    fn overloaded(&self) -> bool {
        let now = ((self.bad)(), (self.total)());
        let mut last = lock(&self.last);
        let bad = now.0.saturating_sub(last.0);
        let total = now.1.saturating_sub(last.1);
        *last = now;
        total > 0 && bad as f64 / total as f64 > self.max_ratio
    }
}

/// Fires when more than `max_ratio` of the events counted during the cycle were bad ones: e.g.
/// the share of requests a server answered `Busy`.
#[derive(Debug)]
pub struct RatioSignal {
    name: &'static str,
    max_ratio: f64,
    total: AtomicU64,
    bad: AtomicU64,
}

impl RatioSignal {
    /// A signal named `name` that fires above `max_ratio` (0..=1) bad events.
    pub fn new(name: &'static str, max_ratio: f64) -> Arc<Self> {
        Arc::new(Self {
            name,
            max_ratio,
            total: AtomicU64::new(0),
            bad: AtomicU64::new(0),
        })
    }

    /// Counts one event; `bad` marks it as a sign of overload.
    pub fn record(&self, bad: bool) {
        self.total.fetch_add(1, Ordering::Relaxed);
        if bad {
            self.bad.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Signal for RatioSignal {
    fn name(&self) -> &'static str {
        self.name
    }

    fn overloaded(&self) -> bool {
        let total = self.total.swap(0, Ordering::Relaxed);
        let bad = self.bad.swap(0, Ordering::Relaxed);
        total > 0 && bad as f64 / total as f64 > self.max_ratio
    }
}

/// A running throttler: owns the cycle task; its factor is readable for metrics.
pub struct Throttler {
    percent: Arc<AtomicU64>,
    base: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Throttler {
    /// Every `cycle`, polls `signals` and sets `limiter` to `base × factor`. A base of 0
    /// (unlimited) is left alone: there is nothing to scale.
    pub fn spawn(
        limiter: Arc<RateLimiter>,
        base: u64,
        signals: Vec<Arc<dyn Signal>>,
        cycle: Duration,
        idle_cycles: u32,
    ) -> Self {
        let percent = Arc::new(AtomicU64::new(100));
        let shown = percent.clone();
        let base = Arc::new(AtomicU64::new(base));
        let base_now = base.clone();
        let task = tokio::spawn(async move {
            let mut state = Throttle::new(idle_cycles);
            let mut tick = tokio::time::interval(cycle.max(Duration::from_millis(10)));
            // After a stall, one cycle, not a burst of the missed ones: a cycle must span a
            // cycle's worth of signals, or a stalled node would count idle cycles it never
            // observed and step its rate back up.
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                // Poll every signal (each resets its window), not just up to the first that fires.
                let fired: Vec<&'static str> = signals
                    .iter()
                    .filter(|s| s.overloaded())
                    .map(|s| s.name())
                    .collect();
                let before = state.percent();
                let now = state.on_cycle(!fired.is_empty());
                shown.store(u64::from(now), Ordering::Relaxed);
                let base = base_now.load(Ordering::Relaxed);
                if base > 0 {
                    limiter.set_rate(state.rate(base));
                }
                if now != before {
                    tracing::info!(from = before, to = now, signals = ?fired, "throttle factor changed");
                }
            }
        });
        Self {
            percent,
            base,
            task,
        }
    }

    /// [`Throttler::spawn`] on the schedule `--adaptive-throttle` documents: one cycle a
    /// second, a step back up after [`IDLE_CYCLES`] quiet cycles.
    pub fn adaptive(limiter: Arc<RateLimiter>, base: u64, signals: Vec<Arc<dyn Signal>>) -> Self {
        Self::spawn(limiter, base, signals, CYCLE, IDLE_CYCLES)
    }

    /// The current factor in percent of the base.
    pub fn percent(&self) -> u64 {
        self.percent.load(Ordering::Relaxed)
    }

    /// Moves the base rate (an operator's new limit): the limiter follows at once, at the
    /// current factor, and every later cycle scales the new base.
    pub fn set_base(&self, limiter: &RateLimiter, base: u64) {
        self.base.store(base, Ordering::Relaxed);
        limiter.set_rate(base.saturating_mul(self.percent()) / 100);
    }

    /// The base rate now.
    pub fn base(&self) -> u64 {
        self.base.load(Ordering::Relaxed)
    }

    /// A live handle on the factor, for a metric that outlives borrows.
    pub fn percent_cell(&self) -> Arc<AtomicU64> {
        self.percent.clone()
    }
}

impl Drop for Throttler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_down_on_signal_and_stops_at_20_percent() {
        let mut t = Throttle::new(10);
        let seen: Vec<u32> = (0..6).map(|_| t.on_cycle(true)).collect();
        assert_eq!(seen, [80, 60, 40, 20, 20, 20]);
        assert_eq!(t.rate(150_000_000), 30_000_000);
    }

    #[test]
    fn steps_up_only_after_ten_quiet_cycles_and_stops_at_200_percent() {
        let mut t = Throttle::new(10);
        for _ in 0..9 {
            assert_eq!(t.on_cycle(false), 100);
        }
        assert_eq!(t.on_cycle(false), 120);
        // A signal resets the quiet count: the next step up needs ten more quiet cycles.
        assert_eq!(t.on_cycle(true), 100);
        for _ in 0..9 {
            assert_eq!(t.on_cycle(false), 100);
        }
        assert_eq!(t.on_cycle(false), 120);
        for _ in 0..200 {
            t.on_cycle(false);
        }
        assert_eq!(t.percent(), 200);
        assert_eq!(t.rate(150), 300);
        assert_eq!(t.rate(0), 0);
    }

    #[test]
    fn signals_fire_on_their_window_and_reset() {
        let lat = LatencySignal::new("disk", Duration::from_millis(50));
        lat.record(Duration::from_millis(10));
        assert!(!lat.overloaded());
        lat.record(Duration::from_millis(80));
        lat.record(Duration::from_millis(10));
        assert!(lat.overloaded());
        assert!(!lat.overloaded(), "the window resets every cycle");

        let busy = RatioSignal::new("busy", 0.5);
        assert!(!busy.overloaded(), "no events is not overload");
        busy.record(true);
        busy.record(false);
        assert!(!busy.overloaded());
        busy.record(true);
        busy.record(true);
        busy.record(false);
        assert!(busy.overloaded());
        assert!(!busy.overloaded());
    }

    #[tokio::test]
    async fn a_running_throttler_scales_the_limiter() {
        async fn until(what: &str, mut cond: impl FnMut() -> bool) {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !cond() {
                assert!(Instant::now() < deadline, "timed out waiting for {what}");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        let limiter = RateLimiter::new(1000);
        let disk = LatencySignal::new("disk", Duration::from_millis(1));
        let t = Throttler::spawn(
            limiter.clone(),
            1000,
            vec![disk.clone() as Arc<dyn Signal>],
            Duration::from_millis(50),
            10,
        );
        disk.record(Duration::from_millis(5));
        until("a step down", || t.percent() == 80).await;
        assert_eq!(limiter.rate(), 800);
        // Ten quiet cycles later it steps back up.
        until("a step up", || t.percent() == 100).await;
        assert_eq!(limiter.rate(), 1000);
    }
}
