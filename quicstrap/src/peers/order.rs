//! The order peers are asked in: a pure function of the peers, where the node is, what was
//! measured of each peer, and a random source — so it is tested against tables and seeds.
//!
//! [`PeerOrder::Locality`] (the default) asks the node's own zone first, then the rest; within
//! that, lower tiers (SRV priority) first; within a tier, a weighted random order (RFC 2782)
//! whose weights are the SRV weight times how good the peer was measured: the handshake's
//! round-trip time and, once seen, the rate it delivered. Randomness stays on purpose: a peer
//! twice as far is asked first half as often, not never, so a fleet does not pile onto the one
//! best peer. [`PeerOrder::Shuffle`] is a uniform shuffle that ignores zones and tiers (what
//! Venice does, kept for comparison); [`PeerOrder::Listed`] keeps the order given (tests).

use std::str::FromStr;
use std::time::Duration;

use rand::Rng;
use serde::Serialize;

use super::Peer;

/// How the peers of a fetch are ordered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PeerOrder {
    /// Own zone first, then by tier, each tier weighted by SRV weight and measured speed.
    #[default]
    Locality,
    /// A uniform shuffle: zones, tiers and measurements ignored.
    Shuffle,
    /// As given (by hand, or SRV order: priority, then weight).
    Listed,
}

impl FromStr for PeerOrder {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "locality" => Ok(Self::Locality),
            "shuffle" => Ok(Self::Shuffle),
            "listed" => Ok(Self::Listed),
            other => Err(format!(
                "peer order {other:?}: expected locality, shuffle or listed"
            )),
        }
    }
}

/// Whether a peer's bytes cross zones: what the remote read limit and the per-zone counters
/// are about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ZoneClass {
    /// The node's own zone (or no zones configured: nothing is remote then).
    Local,
    /// Another zone, or a peer of unknown zone seen from a node that knows its own: counted
    /// and limited as remote, the safe side.
    Remote,
}

impl ZoneClass {
    /// The class of a peer in `peer` seen from a node in `node`.
    pub fn of(node: Option<&str>, peer: Option<&str>) -> Self {
        match node {
            None => Self::Local,
            Some(z) if peer == Some(z) => Self::Local,
            Some(_) => Self::Remote,
        }
    }

    /// The metrics label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Remote => "remote",
        }
    }
}

/// What was measured of a peer: used to prefer the better of a tier.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Measure {
    /// Round-trip time of its last handshake (or of its connection's estimate).
    pub rtt: Option<Duration>,
    /// Bytes/s it delivered in its last successful transfer to this node.
    pub rate: Option<f64>,
}

/// Where the node is and how it orders peers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Placement {
    /// The node's own zone; `None`: no zones in play.
    pub zone: Option<String>,
    /// The ordering rule.
    pub order: PeerOrder,
}

impl Placement {
    /// The zone class of `peer` seen from here.
    pub fn class(&self, peer: &Peer) -> ZoneClass {
        ZoneClass::of(self.zone.as_deref(), peer.zone.as_deref())
    }

    /// `peers` in the order they are asked. `measured` tells what is known of each peer;
    /// `rng` draws the random part.
    pub fn order(
        &self,
        peers: Vec<Peer>,
        measured: impl Fn(&Peer) -> Measure,
        rng: &mut impl Rng,
    ) -> Vec<Peer> {
        self.order_by(peers, |p| p, measured, rng)
    }

    /// [`Self::order`] of items that each carry a peer (`peer_of`), kept with it: a fetch
    /// orders its candidates with their connectivity verdicts.
    pub fn order_by<T>(
        &self,
        items: Vec<T>,
        peer_of: fn(&T) -> &Peer,
        measured: impl Fn(&Peer) -> Measure,
        rng: &mut impl Rng,
    ) -> Vec<T> {
        match self.order {
            PeerOrder::Listed => items,
            PeerOrder::Shuffle => {
                let mut items = items;
                rand::seq::SliceRandom::shuffle(items.as_mut_slice(), rng);
                items
            }
            PeerOrder::Locality => {
                let mut tiers: Vec<((ZoneClass, u16), Vec<T>)> = Vec::new();
                for item in items {
                    let p = peer_of(&item);
                    let key = (self.class(p), p.priority);
                    match tiers.iter_mut().find(|(k, _)| *k == key) {
                        Some((_, members)) => members.push(item),
                        None => tiers.push((key, vec![item])),
                    }
                }
                tiers
                    .sort_by_key(|((class, priority), _)| (*class == ZoneClass::Remote, *priority));
                tiers
                    .into_iter()
                    .flat_map(|(_, members)| weighted(members, peer_of, &measured, rng))
                    .collect()
            }
        }
    }
}

/// A tier in weighted random order: drawn one by one, each with a chance proportional to its
/// weight among those left (RFC 2782's selection, repeated).
fn weighted<T>(
    mut members: Vec<T>,
    peer_of: fn(&T) -> &Peer,
    measured: &impl Fn(&Peer) -> Measure,
    rng: &mut impl Rng,
) -> Vec<T> {
    let measures: Vec<Measure> = members.iter().map(|m| measured(peer_of(m))).collect();
    let mut weights: Vec<f64> = members
        .iter()
        .zip(&measures)
        .map(|(m, measure)| share(peer_of(m).weight) * speed(measure, &measures))
        .collect();
    let mut out = Vec::with_capacity(members.len());
    while !members.is_empty() {
        let total: f64 = weights.iter().sum();
        let mut pick = rng.random::<f64>() * total;
        let mut at = members.len() - 1;
        for (i, w) in weights.iter().enumerate() {
            if pick < *w {
                at = i;
                break;
            }
            pick -= w;
        }
        out.push(members.remove(at));
        weights.remove(at);
    }
    out
}

/// An SRV weight as a share: 0 is a very small chance beside any weight given (RFC 2782), and
/// an even one among peers all of weight 0.
fn share(weight: u16) -> f64 {
    if weight == 0 {
        0.01
    } else {
        f64::from(weight)
    }
}

/// RTTs are compared from this floor up: below it (peers of one rack or one host) the
/// differences are noise at the time scale of a transfer, and must not skew the shares.
pub const RTT_FLOOR: Duration = Duration::from_millis(2);

/// How good a peer was measured against the best of its tier, in (0, 1]: the best RTT over
/// its RTT (each at least [`RTT_FLOOR`]), times its rate over the best rate. What was not
/// measured counts as the best, so a new peer gets tried.
fn speed(m: &Measure, tier: &[Measure]) -> f64 {
    let floor = |rtt: Duration| rtt.max(RTT_FLOOR);
    let best_rtt = tier.iter().filter_map(|m| m.rtt.map(floor)).min();
    let best_rate = tier.iter().filter_map(|m| m.rate).fold(0.0, f64::max);
    let by_rtt = match (m.rtt.map(floor), best_rtt) {
        (Some(rtt), Some(best)) => (best.as_secs_f64() / rtt.as_secs_f64()).max(1e-3),
        _ => 1.0,
    };
    let by_rate = match m.rate {
        Some(rate) if best_rate > 0.0 => (rate / best_rate).max(1e-3),
        _ => 1.0,
    };
    by_rtt * by_rate
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use std::collections::HashMap;
    use std::net::SocketAddr;

    fn peer(port: u16, zone: Option<&str>, priority: u16, weight: u16) -> Peer {
        let p = Peer::new(SocketAddr::from(([127, 0, 0, 1], port))).with_rank(priority, weight);
        match zone {
            Some(z) => p.in_zone(z),
            None => p,
        }
    }

    fn ports(peers: &[Peer]) -> Vec<u16> {
        peers.iter().map(|p| p.addr.port()).collect()
    }

    fn locality(zone: Option<&str>) -> Placement {
        Placement {
            zone: zone.map(str::to_owned),
            order: PeerOrder::Locality,
        }
    }

    /// How often each port comes first over `n` seeded draws.
    fn firsts(
        placement: &Placement,
        peers: &[Peer],
        measured: impl Fn(&Peer) -> Measure,
        n: u64,
    ) -> HashMap<u16, u64> {
        let mut count = HashMap::new();
        for seed in 0..n {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let order = placement.order(peers.to_vec(), &measured, &mut rng);
            *count.entry(order[0].addr.port()).or_default() += 1;
        }
        count
    }

    #[test]
    fn zone_classes_follow_the_table() {
        // (node zone, peer zone) → class.
        let table = [
            (None, None, ZoneClass::Local),
            (None, Some("a"), ZoneClass::Local),
            (Some("a"), Some("a"), ZoneClass::Local),
            (Some("a"), Some("b"), ZoneClass::Remote),
            (Some("a"), None, ZoneClass::Remote),
        ];
        for (node, peer, want) in table {
            assert_eq!(ZoneClass::of(node, peer), want, "{node:?} {peer:?}");
        }
    }

    #[test]
    fn the_own_zone_comes_first_then_tiers_in_order_whatever_the_draw() {
        let peers = vec![
            peer(1, Some("far"), 0, 0),
            peer(2, Some("near"), 1, 0),
            peer(3, None, 0, 0),
            peer(4, Some("near"), 0, 0),
            peer(5, Some("far"), 1, 0),
            peer(6, Some("near"), 0, 0),
        ];
        let near = locality(Some("near"));
        for seed in 0..200 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let order = ports(&near.order(peers.clone(), |_| Measure::default(), &mut rng));
            // Own zone tier 0 (4, 6 in some order), own zone tier 1 (2), then the rest by
            // tier: tier 0 of the others (1, 3), tier 1 (5).
            let mut head = order[..2].to_vec();
            head.sort();
            assert_eq!(head, [4, 6], "{order:?}");
            assert_eq!(order[2], 2, "{order:?}");
            let mut next = order[3..5].to_vec();
            next.sort();
            assert_eq!(next, [1, 3], "{order:?}");
            assert_eq!(order[5], 5, "{order:?}");
        }
        // A node with no zone orders by tier alone.
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let order = ports(&locality(None).order(peers, |_| Measure::default(), &mut rng));
        let mut tier0 = order[..4].to_vec();
        tier0.sort();
        assert_eq!(tier0, [1, 3, 4, 6], "{order:?}");
    }

    #[test]
    fn srv_weights_share_a_tier_as_rfc_2782_says() {
        // Weights 60 / 30 / 10: first 60 %, 30 %, 10 % of the time (±3 points over 4000).
        let peers = vec![
            peer(1, None, 0, 60),
            peer(2, None, 0, 30),
            peer(3, None, 0, 10),
        ];
        let n = 4000;
        let count = firsts(&locality(None), &peers, |_| Measure::default(), n);
        for (port, want) in [(1, 0.6), (2, 0.3), (3, 0.1)] {
            let got = count[&port] as f64 / n as f64;
            assert!((got - want).abs() < 0.03, "port {port}: {got} vs {want}");
        }
        // Weight 0 beside a weight: almost never first.
        let peers = vec![peer(1, None, 0, 0), peer(2, None, 0, 10)];
        let count = firsts(&locality(None), &peers, |_| Measure::default(), n);
        assert!(count.get(&1).copied().unwrap_or(0) < n / 100, "{count:?}");
    }

    #[test]
    fn a_nearer_peer_is_preferred_yet_not_always_chosen() {
        let peers = vec![peer(1, None, 0, 0), peer(2, None, 0, 0)];
        let rtt = |p: &Peer| Measure {
            rtt: Some(Duration::from_millis(if p.addr.port() == 1 {
                10
            } else {
                40
            })),
            rate: None,
        };
        let n = 4000;
        let count = firsts(&locality(None), &peers, rtt, n);
        // 1/10 against 1/40: the near one first 80 % of the time.
        let near = count[&1] as f64 / n as f64;
        assert!((near - 0.8).abs() < 0.03, "{count:?}");
        // A faster delivered rate counts too: same RTT, a quarter of the rate.
        let rate = |p: &Peer| Measure {
            rtt: Some(Duration::from_millis(10)),
            rate: Some(if p.addr.port() == 1 { 100e6 } else { 25e6 }),
        };
        let count = firsts(&locality(None), &peers, rate, n);
        assert!(
            (count[&1] as f64 / n as f64 - 0.8).abs() < 0.03,
            "{count:?}"
        );
        // A peer not measured yet is tried as if it were the best.
        let unmeasured = |p: &Peer| Measure {
            rtt: (p.addr.port() == 1).then_some(Duration::from_millis(10)),
            rate: None,
        };
        let count = firsts(&locality(None), &peers, unmeasured, n);
        assert!(
            (count[&1] as f64 / n as f64 - 0.5).abs() < 0.03,
            "{count:?}"
        );
        // Below the floor, RTTs count as equal: 0.1 ms against 1 ms is noise.
        let close = |p: &Peer| Measure {
            rtt: Some(Duration::from_micros(if p.addr.port() == 1 {
                100
            } else {
                1000
            })),
            rate: None,
        };
        let count = firsts(&locality(None), &peers, close, n);
        assert!(
            (count[&1] as f64 / n as f64 - 0.5).abs() < 0.03,
            "{count:?}"
        );
    }

    #[test]
    fn shuffle_ignores_zones_and_listed_keeps_the_order() {
        let peers = vec![
            peer(1, Some("near"), 0, 0),
            peer(2, Some("far"), 5, 0),
            peer(3, Some("far"), 9, 0),
        ];
        let shuffle = Placement {
            zone: Some("near".into()),
            order: PeerOrder::Shuffle,
        };
        let n = 3000;
        let count = firsts(&shuffle, &peers, |_| Measure::default(), n);
        for port in 1..=3 {
            let got = count[&port] as f64 / n as f64;
            assert!((got - 1.0 / 3.0).abs() < 0.04, "{count:?}");
        }
        let listed = Placement {
            zone: Some("far".into()),
            order: PeerOrder::Listed,
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        let order = listed.order(peers.clone(), |_| Measure::default(), &mut rng);
        assert_eq!(ports(&order), [1, 2, 3]);
        // Every mode keeps every peer exactly once.
        for order in [PeerOrder::Locality, PeerOrder::Shuffle, PeerOrder::Listed] {
            let placement = Placement {
                zone: Some("near".into()),
                order,
            };
            let mut got = ports(&placement.order(peers.clone(), |_| Measure::default(), &mut rng));
            got.sort();
            assert_eq!(got, [1, 2, 3]);
        }
    }

    #[test]
    fn orders_parse_and_a_typo_is_refused() {
        assert_eq!("locality".parse(), Ok(PeerOrder::Locality));
        assert_eq!("shuffle".parse(), Ok(PeerOrder::Shuffle));
        assert_eq!("listed".parse(), Ok(PeerOrder::Listed));
        assert!("nearest".parse::<PeerOrder>().is_err());
    }
}
