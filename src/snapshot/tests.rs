//! Unit tests of snapshot timing.

use super::policy::*;
use std::time::{Duration, Instant};

#[test]
fn reuse_and_collection_follow_the_ttl() {
    let t0 = Instant::now();
    let ttl = Duration::from_secs(3600);
    assert!(reusable(t0, t0 + Duration::from_secs(3599), ttl));
    assert!(!reusable(t0, t0 + ttl, ttl));
    assert!(!collectable(t0, t0 + Duration::from_secs(10), ttl, 0));
    assert!(!collectable(t0, t0 + ttl * 2, ttl, 1));
    assert!(collectable(t0, t0 + ttl * 2, ttl, 0));
}

#[test]
fn a_resume_is_served_while_in_use_or_within_the_window_never_past_the_ttl() {
    let t0 = Instant::now();
    let (window, ttl) = (Duration::from_secs(600), Duration::from_secs(3600));
    // Interrupted early: the whole window.
    let until = resume_until(t0, t0 + Duration::from_secs(60), window, ttl);
    assert_eq!(until, t0 + Duration::from_secs(660));
    assert!(resumable(0, Some(until), t0 + Duration::from_secs(659)));
    assert!(!resumable(0, Some(until), until));
    // Interrupted near the end of the TTL: only until the TTL.
    let late = resume_until(t0, t0 + Duration::from_secs(3500), window, ttl);
    assert_eq!(late, t0 + ttl);
    // Never held (or released by an Abort): only while in use.
    assert!(!resumable(0, None, t0));
    assert!(resumable(1, None, t0));
    assert!(resumable(2, Some(until), until + window));
}
