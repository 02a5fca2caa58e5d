//! DNS SRV discovery against a real DNS server: dnsmasq on 127.0.0.1 with a records file,
//! started by the test. Peers found in DNS are fetched from (their certificate name is the
//! SRV target), a partition nobody publishes is a typed `NoPeers`, and TTLs are honoured: a
//! cached answer survives the server going away within its TTL, a changed record shows after.

use crate::common;

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::time::Duration;

use crate::common::*;
use quicstrap::peers::dns::{srv_name, DnsSrv};
use quicstrap::peers::{Discovery, DiscoveryError};

pub const DOMAIN: &str = "quicstrap.test";

pub use testkit::Dnsmasq;

pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The records file: one SRV record per (port, priority), all on the server's certificate
/// name, which resolves to 127.0.0.1.
fn records(dir: &Path, id: &quicstrap::PartitionId, peers: &[(u16, u16)]) -> std::path::PathBuf {
    let name = srv_name(id, DOMAIN);
    // `local=`: this server is the authority for the domain, so unknown names are NXDOMAIN.
    let mut text = format!("local=/{DOMAIN}/\nhost-record=server.quicstrap.test,127.0.0.1\n");
    for (port, priority) in peers {
        text.push_str(&format!(
            "srv-host={},server.quicstrap.test,{port},{priority},10\n",
            name.trim_end_matches('.')
        ));
    }
    let path = dir.join(format!("records-{}.conf", peers.len()));
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_found_in_dns_serve_the_partition_and_ttls_are_honoured() {
    let _turn = turn(Needs::Nothing).await;
    let empty = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let conf = tempfile::tempdir().unwrap();
    let (src, id) = seeded(60, (3_000, 200, 1_000));
    let missing = server(empty.path(), |_| {}).await;
    let good = server(src.path(), |_| {}).await;
    let (pm, pg) = (peer(&missing).addr.port(), peer(&good).addr.port());

    let port = free_udp_port();
    let dns = Dnsmasq::start_on(port, &records(conf.path(), &id, &[(pm, 0), (pg, 10)]), 4).unwrap();
    let discovery = DnsSrv::new(
        &[SocketAddr::from(([127, 0, 0, 1], port))],
        DOMAIN,
        Duration::from_secs(1),
    );
    let found = discovery.peers(&id).await.unwrap();
    let ports: Vec<u16> = found.iter().map(|p| p.addr.port()).collect();
    assert_eq!(ports, [pm, pg], "SRV priority order");
    assert!(found
        .iter()
        .all(|p| p.server_name == "server.quicstrap.test"));

    // Nobody published partition 61.
    let other = common::id(61);
    assert_eq!(
        discovery.peers(&other).await.unwrap_err(),
        DiscoveryError::NoPeers(srv_name(&other, DOMAIN))
    );

    // Within the TTL the answer is served from cache, even with the DNS server gone
    // (looked up right away: the 4 s TTL must not run out on a slow host) ...
    drop(dns);
    let cached = discovery.peers(&id).await.unwrap();
    assert_eq!(cached.len(), 2);

    // The peers DNS named are fetched from, their certificates checked against the SRV target.
    let report = fetcher(|_| {})
        .fetch(&id, &found, dst.path())
        .await
        .unwrap();
    let outcomes: Vec<_> = report.attempts.iter().map(|a| a.outcome.as_str()).collect();
    assert_eq!(outcomes, ["not_found", "ok"]);
    assert_same(&id.dir(src.path()), &id.dir(dst.path()));

    // ... and once the TTL has passed, the changed record is what counts.
    let _dns = Dnsmasq::start_on(port, &records(conf.path(), &id, &[(pg, 0)]), 4).unwrap();
    tokio::time::sleep(Duration::from_millis(4_500)).await;
    let fresh = discovery.peers(&id).await.unwrap();
    let ports: Vec<u16> = fresh.iter().map(|p| p.addr.port()).collect();
    assert_eq!(ports, [pg]);
    missing.shutdown().await;
    good.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_dns_server_is_a_typed_lookup_error() {
    let _turn = turn(Needs::Nothing).await;
    let port = free_udp_port();
    let discovery = DnsSrv::new(
        &[SocketAddr::from(([127, 0, 0, 1], port))],
        DOMAIN,
        Duration::from_millis(300),
    );
    match discovery.peers(&id(62)).await {
        Err(DiscoveryError::Lookup { name, .. }) => assert_eq!(name, srv_name(&id(62), DOMAIN)),
        other => panic!("expected a lookup error, got {other:?}"),
    }
}
