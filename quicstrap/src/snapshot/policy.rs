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

/// Until when a resume of a snapshot made at `created` is honoured, when a transfer of it was
/// interrupted at `now`: the resume window, never past the TTL (after which the snapshot is
/// replaced anyway).
pub fn resume_until(created: Instant, now: Instant, window: Duration, ttl: Duration) -> Instant {
    (now + window).min(created + ttl)
}

/// A resume of a snapshot is served at `now`: while it is in use (a transfer of it, perhaps
/// the very one being resumed, is not yet seen to be dead) or held until after `now`.
pub fn resumable(users: usize, held_until: Option<Instant>, now: Instant) -> bool {
    users > 0 || held_until.is_some_and(|until| now < until)
}
