//! DNS SRV discovery: the ready peers of a partition, published as SRV records.
//!
//! Naming: `_quicstrap._udp.p<partition>.<store>-v<version>.<domain>`, e.g.
//! `_quicstrap._udp.p7.users-v3.cluster.example.` One SRV record per peer that holds the
//! partition and is ready to serve it; its target is the peer's host name — the name on its
//! certificate — and its port the QUIC port. A node (or the cluster's controller) adds the
//! record when the partition is ready and removes it when it is not, so DNS answers "who can
//! serve p7 of users v3" directly. TTLs are honoured by the resolver's cache: a removed peer
//! disappears from answers within one TTL.
//!
//! Records are returned in SRV order (lowest priority first, then highest weight), each peer
//! carrying its record's priority (its tier) and weight (its share of the tier), which the
//! fetcher's order honours ([`super::order`]). A peer's zone can be read from its target name
//! ([`DnsSrv::with_zone_label`]: `peer3.dc2.cluster.example` is in `dc2` with label 1). Targets are resolved to addresses through the same
//! DNS server (A/AAAA records, or the additional section of the SRV answer).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::TokioResolver;

use super::{Discovery, DiscoveryError, Peer, PeersFuture};
use crate::store::partition::PartitionId;

/// Discovery through SRV records under a domain.
pub struct DnsSrv {
    resolver: TokioResolver,
    domain: String,
    zone_label: Option<usize>,
}

impl DnsSrv {
    /// Asks the DNS servers at `servers` (e.g. the cluster's, or a test's) for records under
    /// `domain`, with a per-query `timeout`.
    pub fn new(servers: &[SocketAddr], domain: &str, timeout: Duration) -> Self {
        let mut group = NameServerConfigGroup::new();
        for s in servers {
            let one = NameServerConfigGroup::from_ips_clear(&[s.ip()], s.port(), true);
            group.merge(one);
        }
        let config = ResolverConfig::from_parts(None, vec![], group);
        let mut opts = ResolverOpts::default();
        opts.timeout = timeout;
        opts.attempts = 2;
        // Answers come from the cluster's DNS only, never from /etc/hosts.
        opts.use_hosts_file = hickory_resolver::config::ResolveHosts::Never;
        let resolver =
            TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
                .with_options(opts)
                .build();
        Self {
            resolver,
            domain: domain.trim_end_matches('.').to_owned(),
            zone_label: None,
        }
    }

    /// Reads each peer's zone from label `n` (0-based) of its target name: with 1,
    /// `peer3.dc2.cluster.example` is in zone `dc2`. Names too short get no zone.
    pub fn with_zone_label(mut self, n: usize) -> Self {
        self.zone_label = Some(n);
        self
    }

    /// The SRV name of a partition under this domain.
    pub fn name_of(&self, id: &PartitionId) -> String {
        srv_name(id, &self.domain)
    }

    async fn lookup(&self, id: &PartitionId) -> Result<Vec<Peer>, DiscoveryError> {
        let name = self.name_of(id);
        let failed = |e: &dyn std::fmt::Display| DiscoveryError::Lookup {
            name: name.clone(),
            message: e.to_string(),
        };
        // ASCII as is: store names may hold `_`, which IDNA parsing of a `&str` refuses.
        let query = hickory_resolver::Name::from_ascii(&name).map_err(|e| failed(&e))?;
        let srv = match self.resolver.srv_lookup(query).await {
            Ok(s) => s,
            Err(e) if e.is_no_records_found() => return Err(DiscoveryError::NoPeers(name)),
            Err(e) => return Err(failed(&e)),
        };
        let mut records: Vec<_> = srv
            .iter()
            .map(|r| (r.priority(), r.weight(), r.port(), r.target().clone()))
            .collect();
        records.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        let mut peers = Vec::new();
        for (priority, weight, port, target_name) in records {
            let target = target_name.to_ascii().trim_end_matches('.').to_owned();
            let ip: IpAddr = match target.parse() {
                Ok(ip) => ip,
                Err(_) => match self.resolver.lookup_ip(target_name.clone()).await {
                    Ok(ips) => match ips.iter().next() {
                        Some(ip) => ip,
                        None => continue,
                    },
                    // A peer whose name does not resolve cannot be reached: skip it.
                    Err(e) => {
                        tracing::info!(%target, error = %e, "SRV target does not resolve");
                        continue;
                    }
                },
            };
            let zone = self.zone_label.and_then(|n| zone_of(&target, n));
            let peer = Peer::new(SocketAddr::new(ip, port))
                .with_name(target)
                .with_rank(priority, weight);
            peers.push(match zone {
                Some(z) => peer.in_zone(z),
                None => peer,
            });
        }
        if peers.is_empty() {
            return Err(DiscoveryError::NoPeers(name));
        }
        Ok(peers)
    }
}

impl Discovery for DnsSrv {
    fn peers<'a>(&'a self, id: &'a PartitionId) -> PeersFuture<'a> {
        Box::pin(self.lookup(id))
    }
}

/// The name servers this host asks (`nameserver` lines of `/etc/resolv.conf`, port 53):
/// where a `--discover` without `--dns-server` looks.
pub fn system_name_servers() -> std::io::Result<Vec<SocketAddr>> {
    Ok(parse_resolv_conf(&std::fs::read_to_string(
        "/etc/resolv.conf",
    )?))
}

/// The `nameserver` addresses in the text of a resolv.conf.
fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver")).then(|| words.next())?
        })
        // A scoped IPv6 address (`fe80::1%eth0`) does not parse and is skipped.
        .filter_map(|ip| ip.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// Label `n` of a host name, the zone under [`DnsSrv::with_zone_label`]; none for an IP
/// literal or a name too short.
fn zone_of(host: &str, n: usize) -> Option<String> {
    if host.parse::<IpAddr>().is_ok() {
        return None;
    }
    host.split('.')
        .nth(n)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
}

/// `_quicstrap._udp.p<partition>.<store>-v<version>.<domain>.`
pub fn srv_name(id: &PartitionId, domain: &str) -> String {
    format!(
        "_quicstrap._udp.p{}.{}-v{}.{}.",
        id.partition,
        id.store,
        id.version,
        domain.trim_end_matches('.')
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_name_servers_are_read_and_the_rest_ignored() {
        let text = "# comment\nsearch example\nnameserver 10.0.0.2\nnameserver ::1\n\
                    nameserver fe80::1%eth0\noptions ndots:2\n";
        let want: Vec<SocketAddr> =
            vec!["10.0.0.2:53".parse().unwrap(), "[::1]:53".parse().unwrap()];
        assert_eq!(parse_resolv_conf(text), want);
    }

    #[test]
    fn zones_come_from_the_chosen_label() {
        assert_eq!(
            zone_of("peer3.dc2.cluster.example", 1).as_deref(),
            Some("dc2")
        );
        assert_eq!(
            zone_of("peer3.dc2.cluster.example", 0).as_deref(),
            Some("peer3")
        );
        assert_eq!(zone_of("peer3", 1), None);
        assert_eq!(zone_of("10.0.0.1", 1), None);
    }

    #[test]
    fn names_follow_the_documented_scheme() {
        let id = PartitionId::new("users", 3, 7).unwrap();
        assert_eq!(
            srv_name(&id, "cluster.example."),
            "_quicstrap._udp.p7.users-v3.cluster.example."
        );
    }
}
