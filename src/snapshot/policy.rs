//! Timing rules of snapshots, as pure functions of `now`, so reuse and collection are tested
//! without sleeping.

use std::time::{Duration, Instant};

/// A snapshot made at `created` may serve a new request at `now`.
pub fn reusable(created: Instant, now: Instant, ttl: Duration) -> bool {
    now.saturating_duration_since(created) < ttl
}

/// A snapshot may be deleted by the sweep: stale and nobody reading it.
pub fn collectable(created: Instant, now: Instant, ttl: Duration, users: usize) -> bool {
    users == 0 && !reusable(created, now, ttl)
}
