//! The connectivity check: before trying peers one by one, handshake with all of them at once.
//!
//! A node recovering many partitions asks the same peers again and again, and a dead peer
//! costs a full connect timeout each time it is tried. So candidates are checked in parallel
//! (bounded), each verdict — good or bad, with when it was made — is cached for a freshness
//! window (30 s), entries older than that are purged, and the whole check is capped (1 min).
//! A good check leaves its QUIC connection warm in the fetcher, so the transfer that follows
//! starts without a handshake.
//!
//! The cache also keeps what was measured of each peer — the round-trip time of its
//! connection and the rate its last transfer delivered — for the peer order to prefer the
//! better peer of a tier ([`crate::peers::order`]). Measures live longer than verdicts (an
//! RTT is still a fair guess after 30 s) and are forgotten after [`MEASURE_LIFETIME`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::error::AttemptError;
use crate::peers::order::Measure;
use crate::peers::Peer;
use crate::store::lock::unpoisoned as lock;

type Key = (SocketAddr, String);
/// A verdict and when it was made.
type Entry = (Instant, Result<(), AttemptError>);

/// How long a peer's measured RTT and rate are kept without being measured again.
pub const MEASURE_LIFETIME: Duration = Duration::from_secs(10 * 60);

/// Verdicts of recent handshakes and measures of recent peers.
#[derive(Debug)]
pub struct ConnectivityCache {
    freshness: Duration,
    entries: Mutex<HashMap<Key, Entry>>,
    measures: Mutex<HashMap<Key, (Instant, Measure)>>,
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
            measures: Mutex::default(),
        }
    }

    /// What is known of `peer`.
    pub fn measure(&self, peer: &Peer) -> Measure {
        lock(&self.measures)
            .get(&key(peer))
            .map(|(_, m)| *m)
            .unwrap_or_default()
    }

    /// Records `peer`'s round-trip time, measured at `at`.
    pub fn note_rtt(&self, peer: &Peer, rtt: Duration, at: Instant) {
        self.note(peer, at, |m| m.rtt = Some(rtt));
    }

    /// Records the rate, bytes/s, `peer` delivered in a transfer that ended at `at`.
    pub fn note_rate(&self, peer: &Peer, rate: f64, at: Instant) {
        self.note(peer, at, |m| m.rate = Some(rate));
    }

    /// Updates `peer`'s measure with `set`, as of `at`.
    fn note(&self, peer: &Peer, at: Instant, set: impl FnOnce(&mut Measure)) {
        let mut measures = lock(&self.measures);
        let entry = measures
            .entry(key(peer))
            .or_insert((at, Measure::default()));
        entry.0 = at;
        set(&mut entry.1);
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
        lock(&self.measures)
            .retain(|_, (at, _)| now.saturating_duration_since(*at) < MEASURE_LIFETIME);
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

    #[test]
    fn measures_add_up_per_peer_and_expire_after_their_lifetime() {
        let c = ConnectivityCache::new(Duration::from_secs(30));
        let t0 = Instant::now();
        assert_eq!(c.measure(&p(1)), Measure::default());
        c.note_rtt(&p(1), Duration::from_millis(12), t0);
        c.note_rate(&p(1), 5e6, t0 + Duration::from_secs(1));
        let m = c.measure(&p(1));
        assert_eq!(
            (m.rtt, m.rate),
            (Some(Duration::from_millis(12)), Some(5e6))
        );
        assert_eq!(c.measure(&p(2)), Measure::default());
        // Outlives a verdict's freshness, not its own lifetime.
        c.purge(t0 + Duration::from_secs(60));
        assert_eq!(c.measure(&p(1)).rate, Some(5e6));
        c.purge(t0 + MEASURE_LIFETIME + Duration::from_secs(2));
        assert_eq!(c.measure(&p(1)), Measure::default());
    }
}
