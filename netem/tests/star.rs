//! The star: one hub namespace reaches each spoke's peer over that spoke's own link — a near
//! spoke answers no sooner than its own short round trip, a far one no sooner than its long
//! one, a cut spoke goes silent while the others still answer, and teardown leaves no
//! namespace behind.

mod common;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::{netns_list, supported};
use quicstrap_netem::{cleanup, in_netns, LinkParams, Loss, Spoke, Star, StarConfig};

/// Round trip of one datagram from the hub to an echo in spoke `i`; `None` when nothing
/// came back within `wait`.
fn round_trip(star: &Star, i: usize, wait: Duration) -> Option<Duration> {
    let peer = SocketAddr::from((star.addr_peer(i), 7100));
    let echo = in_netns(star.ns_peer(i), || UdpSocket::bind(peer))
        .unwrap()
        .unwrap();
    echo.set_read_timeout(Some(wait)).unwrap();
    let client = in_netns(star.ns_hub(), || {
        UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
    })
    .unwrap()
    .unwrap();
    client.set_read_timeout(Some(wait)).unwrap();
    let t0 = Instant::now();
    client.send_to(b"ping", peer).unwrap();
    let mut buf = [0u8; 16];
    let (n, from) = echo.recv_from(&mut buf).ok()?;
    assert_eq!(from.ip(), std::net::IpAddr::V4(star.addr_hub(i)));
    echo.send_to(&buf[..n], from).unwrap();
    client.recv(&mut buf).ok()?;
    Some(t0.elapsed())
}

#[test]
fn each_spoke_has_its_own_link() {
    if !supported("each_spoke_has_its_own_link") {
        return;
    }
    let prefix = "qsstar";
    cleanup(prefix).unwrap();
    let link = |rtt_ms: u64| {
        Spoke::symmetric(LinkParams::symmetric_rtt(
            Duration::from_millis(rtt_ms),
            Some(100_000_000),
            Loss::None,
        ))
    };
    let star = Star::start(StarConfig::new(
        prefix,
        89,
        vec![link(2), link(60), link(60)],
    ))
    .unwrap();
    assert_eq!(star.len(), 3);
    let near = round_trip(&star, 0, Duration::from_secs(2)).expect("near echo");
    let far = round_trip(&star, 1, Duration::from_secs(2)).expect("far echo");
    println!("star: near {near:?}, far {far:?}");
    assert!(near >= Duration::from_millis(2), "{near:?}");
    assert!(far >= Duration::from_millis(60), "{far:?}");
    // A cut spoke is silent; the others are not.
    star.set_blackhole(1, true);
    assert_eq!(round_trip(&star, 1, Duration::from_millis(300)), None);
    assert!(round_trip(&star, 2, Duration::from_secs(2)).is_some());
    star.set_blackhole(1, false);
    assert!(round_trip(&star, 1, Duration::from_secs(2)).is_some());
    star.check().unwrap();
    let (to_peer, to_hub) = star.stats(0);
    assert!(to_peer.packets_delivered >= 1 && to_hub.packets_delivered >= 1);
    star.stop().unwrap();
    assert!(
        !netns_list().iter().any(|n| n.starts_with(prefix)),
        "{:?}",
        netns_list()
    );
}
