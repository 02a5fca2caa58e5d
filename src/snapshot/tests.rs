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
