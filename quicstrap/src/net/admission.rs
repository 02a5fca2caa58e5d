//! Admission before authentication: what one client address may hold of a server's
//! unauthenticated resources (handshakes in progress, TCP connections), shared by the QUIC
//! server and the HTTPS baseline so one flooding host cannot take every slot from the others.
//!
//! An address means a host: an IPv4 address, or an IPv6 /64 — the smallest block a network
//! hands one host (SLAAC needs a whole /64), so one host holds every address in it and would
//! otherwise get a fresh allowance for each. An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`,
//! what a dual-stack socket reports for an IPv4 client) is that IPv4 address.
//!
//! The counting itself ([`PerKeyLimit`]) is shared with the per-client share of snapshot users
//! ([`crate::snapshot`]), whose key is an authenticated client.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};

use crate::store::lock::unpoisoned as lock;

/// The host `ip` belongs to, as admission counts hosts: an IPv4 address as is, an IPv6
/// address by its /64 prefix, an IPv4-mapped IPv6 address as its IPv4 address.
pub fn host(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(prefix))
            }
        },
    }
}

/// Counts what each key holds of a resource, up to a cap per key. A key holding nothing has
/// no entry: the map never grows with keys that came and went.
pub struct PerKeyLimit<K> {
    max: usize,
    held: Mutex<HashMap<K, usize>>,
}

impl<K: Eq + Hash + Clone> PerKeyLimit<K> {
    /// A limit of `max` per key (at least 1).
    pub fn new(max: usize) -> Self {
        Self {
            max: max.max(1),
            held: Mutex::default(),
        }
    }

    /// The cap per key.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Keys holding at least one unit right now.
    #[cfg(test)]
    pub fn keys(&self) -> usize {
        lock(&self.held).len()
    }
}

/// One unit held by one key; given back when dropped.
pub struct PerKey<K: Eq + Hash + Clone> {
    limit: Arc<PerKeyLimit<K>>,
    key: K,
}

impl<K: Eq + Hash + Clone> PerKey<K> {
    /// Takes a unit for `key`, or `None` when it already holds the most it may.
    pub fn take(limit: &Arc<PerKeyLimit<K>>, key: K) -> Option<Self> {
        let mut held = lock(&limit.held);
        let n = held.get(&key).copied().unwrap_or(0);
        if n >= limit.max {
            return None;
        }
        held.insert(key.clone(), n + 1);
        Some(Self {
            limit: limit.clone(),
            key,
        })
    }
}

impl<K: Eq + Hash + Clone> Drop for PerKey<K> {
    fn drop(&mut self) {
        let mut held = lock(&self.limit.held);
        if let Some(n) = held.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.key);
            }
        }
    }
}

/// What each host ([`host`]) holds of a resource, up to a cap per host.
pub type PerIpLimit = PerKeyLimit<IpAddr>;

/// One unit held by one host; given back when dropped.
pub type PerIp = PerKey<IpAddr>;

impl PerKey<IpAddr> {
    /// Takes a unit for the host of `ip` ([`host`]), or `None` when that host already holds
    /// the most it may.
    pub fn enter(limit: &Arc<PerIpLimit>, ip: IpAddr) -> Option<Self> {
        Self::take(limit, host(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        assert_eq!(host(ip("192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(
            host(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd")),
            ip("2001:db8:1:2::")
        );
        assert_eq!(
            host(ip("2001:db8:1:2::1")),
            host(ip("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(host(ip("2001:db8:1:2::1")), host(ip("2001:db8:1:3::1")));
        assert_eq!(host(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(host(ip("::1")), ip("::"));
    }

    #[test]
    fn one_64_shares_one_allowance() {
        let limit = Arc::new(PerIpLimit::new(2));
        let a = PerIp::enter(&limit, ip("2001:db8::1")).expect("first");
        let b = PerIp::enter(&limit, ip("2001:db8::2:3")).expect("second");
        // A third address of the same /64 is the same host, over its cap...
        assert!(PerIp::enter(&limit, ip("2001:db8::ffff:1")).is_none());
        // ...while another /64 is another host.
        let c = PerIp::enter(&limit, ip("2001:db8:0:1::1")).expect("another host");
        // An IPv4 client seen through a dual-stack socket is its IPv4 address.
        let d = PerIp::enter(&limit, ip("::ffff:10.0.0.1")).expect("v4");
        let e = PerIp::enter(&limit, ip("10.0.0.1")).expect("same v4");
        assert!(PerIp::enter(&limit, ip("::ffff:10.0.0.1")).is_none());
        drop(a);
        let _a = PerIp::enter(&limit, ip("2001:db8::9")).expect("a unit came back");
        drop((b, c, d, e, _a));
        assert_eq!(limit.keys(), 0, "hosts holding nothing leave no entry");
    }
}
