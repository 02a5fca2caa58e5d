//! The second client interface: an unbound socket in namespace A keeps working across
//! `move_client`, the server sees its source address change to 10.X.Y.3 and back, the
//! per-interface counters show which device carried the traffic, and teardown removes the
//! extra device with the rest.

mod common;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{netns_list, quiet, supported};
use quicstrap_netem::{
    cleanup, in_netns, Emulator, EmulatorConfig, IfaceStats, LinkParams, Loss, NetemError,
};

/// A UDP server in namespace B that answers every datagram with the source address it came
/// from, as text: what the far end sees of the client's address.
struct WhoAmI {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl WhoAmI {
    fn start(emu: &Emulator, port: u16) -> WhoAmI {
        let sock = in_netns(emu.ns_b(), || UdpSocket::bind((emu.addr_b(), port)))
            .unwrap()
            .unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let addr = sock.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while !flag.load(Ordering::Relaxed) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    // The question's token, then the answer.
                    let token = String::from_utf8_lossy(&buf[..n]);
                    let _ = sock.send_to(format!("{token} {from}").as_bytes(), from);
                }
            }
        });
        WhoAmI {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for WhoAmI {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

/// Asks the server who we are, retrying a few times, and returns the source address it saw
/// in answer to this question (`token`): a late answer to an earlier one is skipped.
fn who_am_i(sock: &UdpSocket, server: SocketAddr, token: &str) -> SocketAddr {
    let mut buf = [0u8; 64];
    for _ in 0..10 {
        sock.send_to(token.as_bytes(), server).unwrap();
        while let Ok(n) = sock.recv(&mut buf) {
            let answer = std::str::from_utf8(&buf[..n]).unwrap();
            if let Some(addr) = answer.strip_prefix(token).and_then(|a| a.strip_prefix(' ')) {
                return addr.parse().unwrap();
            }
        }
    }
    panic!("no answer from {server}");
}

/// Both client interfaces' counters once the link is idle ([`quiet`]).
fn ifaces(emu: &Emulator) -> (IfaceStats, IfaceStats) {
    quiet(
        || {
            (
                emu.client_iface_stats(false).unwrap(),
                emu.client_iface_stats(true).unwrap(),
            )
        },
        |_| true,
    )
}

#[test]
fn an_unbound_client_socket_moves_to_the_second_address_and_back() {
    if !supported("an_unbound_client_socket_moves_to_the_second_address_and_back") {
        return;
    }
    let prefix = "qsn-mv";
    cleanup(prefix).unwrap();
    let params =
        LinkParams::symmetric_rtt(Duration::from_millis(10), Some(100_000_000), Loss::None);
    let mut cfg = EmulatorConfig::symmetric(prefix, [83, 0], params);
    cfg.second_client_interface = true;
    let emu = Emulator::start(cfg).unwrap();
    let a2 = emu.addr_a2().expect("second client address");
    assert_eq!(a2, Ipv4Addr::new(10, 83, 0, 3));
    let server = WhoAmI::start(&emu, 7400);
    // Bound to the unspecified address, like a QUIC client's socket: the route picks the
    // source of every packet.
    let sock = in_netns(emu.ns_a(), || UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)))
        .unwrap()
        .unwrap();
    // Long enough that a slow host answers before a retry, which would leave an answer
    // behind to cross the link later.
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let port = sock.local_addr().unwrap().port();

    let seen = who_am_i(&sock, server.addr, "before");
    assert_eq!(seen, SocketAddr::from((emu.addr_a(), port)));
    let (first, second) = ifaces(&emu);
    assert!(
        first.packets_sent >= 1 && first.packets_received >= 1,
        "{first:?}"
    );
    assert_eq!(
        second,
        IfaceStats::default(),
        "qs1 carried traffic before the move"
    );

    emu.move_client(true).unwrap();
    let seen = who_am_i(&sock, server.addr, "moved");
    assert_eq!(
        seen,
        SocketAddr::from((a2, port)),
        "same socket, new address"
    );
    let (first_after, second_after) = ifaces(&emu);
    let moved = second_after.since(&second);
    assert!(
        moved.packets_sent >= 1 && moved.packets_received >= 1,
        "{moved:?}"
    );
    assert_eq!(
        first_after.since(&first),
        IfaceStats::default(),
        "qs0 still carried traffic after the move"
    );

    emu.move_client(false).unwrap();
    let seen = who_am_i(&sock, server.addr, "back");
    assert_eq!(seen, SocketAddr::from((emu.addr_a(), port)), "moved back");
    let (first_back, second_back) = ifaces(&emu);
    assert!(first_back.since(&first_after).packets_received >= 1);
    assert_eq!(second_back.since(&second_after), IfaceStats::default());

    let (ab, ba) = emu.stats();
    assert_eq!(
        ab.packets_in,
        first_back.packets_sent + second_back.packets_sent
    );
    assert_eq!(
        ba.packets_delivered,
        first_back.packets_received + second_back.packets_received
    );
    drop(server);
    let names = [emu.ns_a().to_owned(), emu.ns_b().to_owned()];
    emu.stop().unwrap();
    let listed = netns_list();
    for name in names {
        assert!(!listed.contains(&name), "{name} left behind: {listed:?}");
    }
}

#[test]
fn moving_needs_a_second_interface() {
    if !supported("moving_needs_a_second_interface") {
        return;
    }
    let prefix = "qsn-mv1";
    cleanup(prefix).unwrap();
    let emu = Emulator::start(EmulatorConfig::symmetric(
        prefix,
        [83, 1],
        LinkParams::ideal(),
    ))
    .unwrap();
    assert_eq!(emu.addr_a2(), None);
    assert!(emu.client_iface_stats(true).is_none());
    assert!(emu.client_iface_stats(false).is_some());
    assert!(matches!(
        emu.move_client(true),
        Err(NetemError::InvalidConfig(_))
    ));
    emu.stop().unwrap();
}
