//! Retry timing of log reads: exponential backoff, bounded by a deadline since the last clean
//! read. Pure (time is passed in), so it is tested without sleeping.

use std::time::{Duration, Instant};

/// Retry state for log reads: exponential backoff, bounded by a deadline since the last
/// clean read. Pure: time is passed in.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    first: Duration,
    max: Duration,
    failing_since: Option<Instant>,
}

impl Backoff {
    /// A fresh backoff.
    pub fn new(first: Duration, max: Duration) -> Self {
        Self {
            next: first,
            first,
            max,
            failing_since: None,
        }
    }

    /// A read succeeded without error. A read that brought records and then failed is not a
    /// success: a flapping broker must still reach the deadline.
    pub fn success(&mut self) {
        self.next = self.first;
        self.failing_since = None;
    }

    /// A read failed at `now`: how long to wait, or `None` when failing for longer than
    /// `deadline` (give up).
    pub fn failure(&mut self, now: Instant, deadline: Duration) -> Option<Duration> {
        let since = *self.failing_since.get_or_insert(now);
        if now.saturating_duration_since(since) >= deadline {
            return None;
        }
        let wait = self.next;
        self.next = (self.next * 2).min(self.max);
        Some(wait)
    }

    /// How long reads have been failing, as of `now`.
    pub fn failing_for(&self, now: Instant) -> Duration {
        self.failing_since
            .map(|s| now.saturating_duration_since(s))
            .unwrap_or_default()
    }
}
