//! Pacing: a byte-rate limiter shared by every transfer of a process.
//!
//! One limiter per direction and process (the server's writes, the client's reads; 150 MB/s
//! each by default), shared by every connection and partition. Where Venice's global traffic
//! shaping checks its counters once a second, this bucket accounts continuously with 100 ms of
//! credit, so the aggregate holds over any second, not just on average.
//!
//! The receiver waits for tokens *before* reading more, so on QUIC the limit turns into
//! flow-control back-pressure on the sender rather than into buffering. The bucket arithmetic
//! is a pure function of `now` ([`Bucket::take`]) so it is tested without sleeping.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::store::lock::unpoisoned as lock;

/// Default limit of each direction, bytes/s (150 MB/s ≈ 1.2 Gbit/s): a recovering node
/// must not take its NIC, its disk or its peers away from live traffic. 0 lifts it.
pub const DEFAULT_RATE: u64 = 150_000_000;

/// Token bucket state: bytes that may pass now (negative: debt to wait off).
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// A bucket starting empty at `now`.
    pub fn new(now: Instant) -> Self {
        Self {
            tokens: 0.0,
            last: now,
        }
    }

    /// Takes `n` bytes at `now` under `rate` bytes/s with `burst` bytes of credit at most;
    /// returns how long the caller must wait before using them.
    pub fn take(&mut self, n: u64, rate: u64, burst: u64, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * rate as f64).min(burst as f64);
        self.tokens -= n as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / rate as f64)
        }
    }
}

/// A shared byte-rate limit; 0 means unlimited. Cheap to clone behind an `Arc`.
#[derive(Debug)]
pub struct RateLimiter {
    rate: AtomicU64,
    bucket: Mutex<Bucket>,
}

impl RateLimiter {
    /// A limiter of `rate` bytes/s (0 = unlimited).
    pub fn new(rate: u64) -> Arc<Self> {
        Arc::new(Self {
            rate: AtomicU64::new(rate),
            bucket: Mutex::new(Bucket::new(Instant::now())),
        })
    }

    /// A limiter that never waits.
    pub fn unlimited() -> Arc<Self> {
        Self::new(0)
    }

    /// Current rate in bytes/s (0 = unlimited).
    pub fn rate(&self) -> u64 {
        self.rate.load(Ordering::Relaxed)
    }

    /// Changes the rate at run time (an adaptive throttle turns this knob).
    pub fn set_rate(&self, rate: u64) {
        self.rate.store(rate, Ordering::Relaxed);
    }

    /// Waits until `n` bytes may pass.
    pub async fn acquire(&self, n: u64) {
        let rate = self.rate();
        if rate == 0 {
            return;
        }
        // Up to 100 ms worth of credit: smooth, yet not one wake-up per packet.
        let burst = (rate / 10).max(n);
        let wait = {
            let mut b = lock(&self.bucket);
            b.take(n, rate, burst, Instant::now())
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_holds_the_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(t0);
        // 1 MB/s: taking 1 MB at once means waiting a second.
        assert_eq!(
            b.take(1_000_000, 1_000_000, 100_000, t0),
            Duration::from_secs(1)
        );
        // A second later the debt is paid; 0.5 s later half a megabyte more is free.
        assert_eq!(
            b.take(0, 1_000_000, 100_000, t0 + Duration::from_secs(1)),
            Duration::ZERO
        );
        let w = b.take(
            500_000,
            1_000_000,
            1_000_000,
            t0 + Duration::from_millis(1500),
        );
        assert_eq!(w, Duration::ZERO);
        // Credit is capped at the burst.
        let mut b = Bucket::new(t0);
        let w = b.take(300_000, 1_000_000, 100_000, t0 + Duration::from_secs(100));
        assert_eq!(w, Duration::from_millis(200));
    }
}
