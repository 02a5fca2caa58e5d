//! The connectivity check: before trying peers one by one, handshake with all of them at once.
//!
//! A node recovering many partitions asks the same peers again and again, and a dead peer
//! costs a full connect timeout each time it is tried. So candidates are checked in parallel
//! (bounded), each verdict — good or bad, with when it was made — is cached for a freshness
//! window (30 s), entries older than that are purged, and the whole check is capped (1 min).
//! A good check leaves its QUIC connection warm in the fetcher, so the transfer that follows
//! starts without a handshake.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::error::AttemptError;
use crate::peers::Peer;
use crate::store::lock::unpoisoned as lock;

type Key = (SocketAddr, String);
/// A verdict and when it was made.
type Entry = (Instant, Result<(), AttemptError>);

/// Verdicts of recent handshakes, by peer.
#[derive(Debug)]
pub struct ConnectivityCache {
    freshness: Duration,
    entries: Mutex<HashMap<Key, Entry>>,
}

fn key(p: &Peer) -> Key {
    (p.addr, p.server_name.clone())
}

impl ConnectivityCache {
    /// A cache whose verdicts count for `freshness`.
    pub fn new(freshness: Duration) -> Self {
        Self {
            freshness,
            entries: Mutex::default(),
        }
    }

    /// The fresh verdict on `peer` at `now`, if any.
    pub fn get(&self, peer: &Peer, now: Instant) -> Option<Result<(), AttemptError>> {
        let entries = lock(&self.entries);
        let (at, verdict) = entries.get(&key(peer))?;
        (now.saturating_duration_since(*at) < self.freshness).then(|| verdict.clone())
    }

    /// Records a verdict made at `at`.
    pub fn record(&self, peer: &Peer, verdict: Result<(), AttemptError>, at: Instant) {
        lock(&self.entries).insert(key(peer), (at, verdict));
    }

    /// Drops every verdict older than the freshness window at `now`; returns how many.
    pub fn purge(&self, now: Instant) -> usize {
        let mut entries = lock(&self.entries);
        let before = entries.len();
        let freshness = self.freshness;
        entries.retain(|_, (at, _)| now.saturating_duration_since(*at) < freshness);
        before - entries.len()
    }

    /// Peers with a verdict (good or bad) in the cache.
    pub fn len(&self) -> usize {
        lock(&self.entries).len()
    }

    /// True when no verdict is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets `peer`: its next check handshakes again (after a transfer from it failed on
    /// the connection, say).
    pub fn forget(&self, peer: &Peer) {
        lock(&self.entries).remove(&key(peer));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(port: u16) -> Peer {
        Peer::new(SocketAddr::from(([127, 0, 0, 1], port)))
    }

    #[test]
    fn verdicts_count_for_the_freshness_window_and_are_purged_after() {
        let c = ConnectivityCache::new(Duration::from_secs(30));
        let t0 = Instant::now();
        c.record(&p(1), Ok(()), t0);
        c.record(
            &p(2),
            Err(AttemptError::ConnectTimeout),
            t0 + Duration::from_secs(20),
        );
        assert_eq!(c.get(&p(1), t0 + Duration::from_secs(29)), Some(Ok(())));
        assert_eq!(c.get(&p(1), t0 + Duration::from_secs(30)), None, "stale");
        assert_eq!(
            c.get(&p(2), t0 + Duration::from_secs(30)),
            Some(Err(AttemptError::ConnectTimeout))
        );
        assert_eq!(c.get(&p(3), t0), None);
        assert_eq!(c.len(), 2);
        assert_eq!(c.purge(t0 + Duration::from_secs(31)), 1);
        assert_eq!(c.len(), 1);
        c.forget(&p(2));
        assert!(c.is_empty());
    }
}
