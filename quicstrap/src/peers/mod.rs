//! Peers: how they are named, found and ordered.
//!
//! Discovery is a trait so a node can plug in its cluster metadata; a static list and DNS SRV
//! records ([`dns`]) are built in.
//! Peers are tried one at a time in the order [`order`] gives: the node's own zone first, then
//! by tier (SRV priority), each tier in a weighted random order that favours the peers measured
//! nearer and faster, so load spreads across the holders of a partition instead of every
//! recovering node hitting the first one listed, and the WAN is crossed only when no near peer
//! serves.

pub mod dns;
pub mod order;

use std::fmt;
use std::future::Future;
use std::net::{SocketAddr, ToSocketAddrs};
use std::pin::Pin;
use std::str::FromStr;

use crate::store::partition::PartitionId;

/// A peer that may hold partitions: where to reach it, the name its certificate carries, and
/// where it sits (its zone and tier), which decide how early it is asked.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Peer {
    /// UDP address.
    pub addr: SocketAddr,
    /// Name checked against the server certificate (DNS name or IP literal).
    pub server_name: String,
    /// The zone (datacenter, region) the peer is in, when known: peers of the node's own zone
    /// are asked first and their bytes count as local.
    pub zone: Option<String>,
    /// Its tier: lower is asked first (an SRV record's priority; 0 for peers named by hand).
    pub priority: u16,
    /// Its share within a tier, as an SRV record's weight (RFC 2782); 0 when not given.
    pub weight: u16,
}

impl Peer {
    /// A peer at `addr`, verified by its IP address, in no known zone.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            server_name: addr.ip().to_string(),
            zone: None,
            priority: 0,
            weight: 0,
        }
    }

    /// Overrides the name expected in the server certificate.
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = name.into();
        self
    }

    /// Places the peer in `zone`.
    pub fn in_zone(mut self, zone: impl Into<String>) -> Self {
        self.zone = Some(zone.into());
        self
    }

    /// Sets its tier and share within the tier (SRV priority and weight).
    pub fn with_rank(mut self, priority: u16, weight: u16) -> Self {
        self.priority = priority;
        self.weight = weight;
        self
    }

    /// The same peer, whatever zone or rank two discoveries gave it: address and name.
    pub fn same_as(&self, other: &Peer) -> bool {
        self.addr == other.addr && self.server_name == other.server_name
    }
}

impl Peer {
    /// Its identity for the fetch machine and the resume journal: the canonical text form,
    /// compared by value.
    pub fn id(&self) -> crate::protocol::fetch::PeerId {
        crate::protocol::fetch::PeerId::new(self.to_string())
    }
}

/// `name@addr`, or the bare address when the name is its IP: the peer's identity
/// ([`Peer::id`]) and what reports show. The zone is no part of it, so a peer placed in
/// another zone keeps its resume journal.
impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.server_name == self.addr.ip().to_string() {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}@{}", self.server_name, self.addr)
        }
    }
}

impl FromStr for Peer {
    type Err = String;
    /// `host:port`, or `name@host:port` to check the certificate against `name`, either one
    /// optionally after `zone/` to place the peer in a zone.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (zone, s) = match s.split_once('/') {
            Some(("", _)) => return Err(format!("peer {s:?}: empty zone before `/`")),
            Some((z, rest)) => (Some(z.to_owned()), rest),
            None => (None, s),
        };
        let (name, hostport) = match s.split_once('@') {
            Some((n, h)) => (Some(n), h),
            None => (None, s),
        };
        let addr = hostport
            .to_socket_addrs()
            .map_err(|e| format!("peer {s:?}: {e}"))?
            .next()
            .ok_or_else(|| format!("peer {s:?}: no address"))?;
        let host = hostport
            .rsplit_once(':')
            .map(|(h, _)| h.trim_matches(['[', ']']))
            .unwrap_or(hostport);
        let server_name = name.map(str::to_owned).unwrap_or_else(|| host.to_owned());
        Ok(Self {
            zone,
            ..Self::new(addr).with_name(server_name)
        })
    }
}

/// Why discovery found no peer: the caller falls back (Kafka from the beginning) or retries
/// later; it never means "the partition does not exist".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryError {
    /// The directory answered, and lists nobody for this partition.
    #[error("no peers listed under {0}")]
    NoPeers(String),
    /// The directory could not be asked (server down, timeout, malformed answer).
    #[error("lookup of {name} failed: {message}")]
    Lookup {
        /// What was looked up.
        name: String,
        /// Why it failed.
        message: String,
    },
}

impl DiscoveryError {
    /// Short stable label for reports.
    pub fn label(&self) -> &'static str {
        match self {
            Self::NoPeers(_) => "no_peers",
            Self::Lookup { .. } => "discovery_failed",
        }
    }
}

/// What [`Discovery::peers`] returns: a boxed future, so discoveries can sit behind `dyn`.
pub type PeersFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Vec<Peer>, DiscoveryError>> + Send + 'a>>;

/// Finds the peers that hold a partition.
pub trait Discovery: Send + Sync {
    /// Candidate peers for `id`, most preferred first (the fetcher puts them in its own order: [`order`]).
    fn peers<'a>(&'a self, id: &'a PartitionId) -> PeersFuture<'a>;
}

/// A fixed list of peers, assumed to hold every partition.
#[derive(Clone, Debug, Default)]
pub struct StaticPeers(pub Vec<Peer>);

impl Discovery for StaticPeers {
    fn peers<'a>(&'a self, _id: &'a PartitionId) -> PeersFuture<'a> {
        Box::pin(async move { Ok(self.0.clone()) })
    }
}

/// Several discoveries asked together (peers named by hand and DNS, say): every peer any of
/// them names, each once, in the order asked. A lookup that fails matters only when no other
/// names anybody; then the failure is reported rather than "nobody listed".
pub struct AnyOf(pub Vec<Box<dyn Discovery>>);

impl Discovery for AnyOf {
    fn peers<'a>(&'a self, id: &'a PartitionId) -> PeersFuture<'a> {
        Box::pin(async move {
            let answers = futures_util::future::join_all(self.0.iter().map(|d| d.peers(id))).await;
            let (mut peers, mut error) = (Vec::<Peer>::new(), None);
            for answer in answers {
                match answer {
                    Ok(found) => {
                        for p in found {
                            if !peers.iter().any(|q| q.same_as(&p)) {
                                peers.push(p);
                            }
                        }
                    }
                    Err(e @ DiscoveryError::Lookup { .. }) => error = Some(e),
                    Err(e) => {
                        error.get_or_insert(e);
                    }
                }
            }
            match error {
                Some(e) if peers.is_empty() => Err(e),
                _ if peers.is_empty() => Err(DiscoveryError::NoPeers(id.to_string())),
                _ => Ok(peers),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_addresses_and_names() {
        let p: Peer = "127.0.0.1:7000".parse().unwrap();
        assert_eq!(p.server_name, "127.0.0.1");
        let p: Peer = "peer-a@127.0.0.1:7000".parse().unwrap();
        assert_eq!(p.server_name, "peer-a");
        assert_eq!(p.to_string(), "peer-a@127.0.0.1:7000");
        assert_eq!(p.zone, None);
        let p: Peer = "dc2/peer-a@127.0.0.1:7000".parse().unwrap();
        assert_eq!(
            (p.zone.as_deref(), p.server_name.as_str()),
            (Some("dc2"), "peer-a")
        );
        assert_eq!(
            p.id().as_str(),
            "peer-a@127.0.0.1:7000",
            "the zone is no part of its identity"
        );
        let p: Peer = "dc1/[::1]:7000".parse().unwrap();
        assert_eq!(
            (p.zone.as_deref(), p.server_name.as_str()),
            (Some("dc1"), "::1")
        );
        assert!("/127.0.0.1:7000".parse::<Peer>().is_err());
        let p: Peer = "localhost:7000".parse().unwrap();
        assert_eq!(p.server_name, "localhost");
        assert!("nonsense".parse::<Peer>().is_err());
    }

    #[tokio::test]
    async fn any_of_merges_answers_and_reports_a_failed_lookup_only_alone() {
        let id = PartitionId::new("s", 1, 0).unwrap();
        let a: Peer = "127.0.0.1:7000".parse().unwrap();
        let b: Peer = "127.0.0.1:7001".parse().unwrap();
        struct Failing;
        impl Discovery for Failing {
            fn peers<'a>(&'a self, id: &'a PartitionId) -> PeersFuture<'a> {
                Box::pin(async move {
                    Err(DiscoveryError::Lookup {
                        name: id.to_string(),
                        message: "timed out".into(),
                    })
                })
            }
        }
        let both = AnyOf(vec![
            Box::new(StaticPeers(vec![a.clone(), b.clone()])),
            Box::new(Failing),
            Box::new(StaticPeers(vec![b.clone()])),
        ]);
        assert_eq!(both.peers(&id).await.unwrap(), vec![a, b]);
        let lonely = AnyOf(vec![Box::new(StaticPeers(vec![])), Box::new(Failing)]);
        assert!(matches!(
            lonely.peers(&id).await,
            Err(DiscoveryError::Lookup { .. })
        ));
        let empty = AnyOf(vec![Box::new(StaticPeers(vec![]))]);
        assert!(matches!(
            empty.peers(&id).await,
            Err(DiscoveryError::NoPeers(_))
        ));
    }
}
