//! A star of links: one client namespace (the hub) joined to several peer namespaces (the
//! spokes), each spoke over a link of its own — its own delay, loss and bottleneck — so a
//! test or benchmark can put one peer near and others far, as a node in one datacenter sees
//! replicas in its own and in another.
//!
//! ```text
//!                       ┌─ qs0 10.X.0.1 ─[link 0]─ 10.X.0.2 (qs0) namespace <prefix>-p0
//!   namespace <prefix>-c┼─ qs1 10.X.1.1 ─[link 1]─ 10.X.1.2 (qs0) namespace <prefix>-p1
//!                       └─ qs2 10.X.2.1 ─[link 2]─ 10.X.2.2 (qs0) namespace <prefix>-p2
//! ```
//!
//! Each spoke is a point-to-point pair of TUN devices with a relay of its own (the same
//! relay as [`crate::Emulator`]'s, two threads per spoke); the hub reaches spoke `i` at
//! 10.X.i.2 through device `qs<i>`, so its kernel routes each peer's packets over that
//! peer's link with no routing of our own.

use std::fs::File;
use std::net::Ipv4Addr;
use std::sync::Mutex;

use crate::emulator::{check_prefix, setup_device, teardown, tun_tx_dropped, CreatedNamespaces};
use crate::model::LinkParams;
use crate::netns::{ns_add, ns_exists};
use crate::relay::{DirStats, Relay};
use crate::{NetemError, TUN_MTU, TUN_NAME};

/// Most spokes a star may have (its devices are `qs0`..`qs15`, its subnets 10.X.0..15.0).
pub const MAX_SPOKES: usize = 16;

/// One spoke's link: the model of each direction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spoke {
    /// From the hub (the client) to the spoke (a peer).
    pub to_peer: LinkParams,
    /// From the spoke back to the hub.
    pub to_hub: LinkParams,
}

impl Spoke {
    /// The same model both ways.
    pub fn symmetric(params: LinkParams) -> Self {
        Self {
            to_peer: params,
            to_hub: params,
        }
    }
}

/// What to build.
#[derive(Debug, Clone, PartialEq)]
pub struct StarConfig {
    /// Namespaces are `<prefix>-c` (the hub) and `<prefix>-p<i>` (spoke `i`).
    pub prefix: String,
    /// Octet X of the spokes' subnets 10.X.i.0.
    pub subnet: u8,
    /// The spokes, in order.
    pub spokes: Vec<Spoke>,
    /// Seed of every link's random streams (each spoke derives its own).
    pub seed: u64,
    /// MTU of every device.
    pub mtu: u32,
}

impl StarConfig {
    /// A star of `spokes` under `prefix`, subnet 10.`subnet`.i.0, default MTU, seed 0.
    pub fn new(prefix: impl Into<String>, subnet: u8, spokes: Vec<Spoke>) -> Self {
        Self {
            prefix: prefix.into(),
            subnet,
            spokes,
            seed: 0,
            mtu: TUN_MTU,
        }
    }
}

/// A running star. Dropping it (or [`Star::stop`]) stops every relay and deletes every
/// namespace.
pub struct Star {
    hub: String,
    peers: Vec<String>,
    subnet: u8,
    relays: Vec<Relay>,
    /// `/proc/net/dev` of the hub and of each spoke, for the kernel's TUN drop counters.
    dev_hub: Mutex<File>,
    dev_peers: Vec<Mutex<File>>,
    torn_down: bool,
}

impl std::fmt::Debug for Star {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Star")
            .field("hub", &self.hub)
            .field("peers", &self.peers)
            .finish_non_exhaustive()
    }
}

impl Star {
    /// Creates the hub, every spoke and its link, and starts the relays. On failure
    /// whatever this call created is removed before it returns.
    pub fn start(cfg: StarConfig) -> Result<Star, NetemError> {
        check_prefix(&cfg.prefix)?;
        if cfg.spokes.is_empty() || cfg.spokes.len() > MAX_SPOKES {
            return Err(NetemError::InvalidConfig(format!(
                "a star needs 1..={MAX_SPOKES} spokes, not {}",
                cfg.spokes.len()
            )));
        }
        for s in &cfg.spokes {
            s.to_peer.validate()?;
            s.to_hub.validate()?;
        }
        let hub = format!("{}-c", cfg.prefix);
        let peers: Vec<String> = (0..cfg.spokes.len())
            .map(|i| format!("{}-p{i}", cfg.prefix))
            .collect();
        for ns in std::iter::once(&hub).chain(&peers) {
            if ns_exists(ns) {
                return Err(NetemError::NamespaceExists(ns.clone()));
            }
        }
        let mut created = CreatedNamespaces(Vec::new());
        for ns in std::iter::once(&hub).chain(&peers) {
            ns_add(ns)?;
            created.0.push(ns.clone());
        }
        let mut relays = Vec::new();
        let mut dev_hub = None;
        let mut dev_peers = Vec::new();
        for (i, spoke) in cfg.spokes.iter().enumerate() {
            let (hub_addr, peer_addr) = addrs(cfg.subnet, i);
            let (fd_hub, dev) = setup_device(&hub, &device(i), hub_addr, peer_addr, cfg.mtu)?;
            dev_hub.get_or_insert(dev);
            let (fd_peer, dev) = setup_device(&peers[i], TUN_NAME, peer_addr, hub_addr, cfg.mtu)?;
            dev_peers.push(Mutex::new(dev));
            relays.push(Relay::start(
                vec![(fd_hub, hub_addr)],
                (fd_peer, peer_addr),
                [spoke.to_peer, spoke.to_hub],
                cfg.seed.wrapping_add(i as u64 * 0x9e37_79b9),
                false,
            )?);
        }
        created.0.clear();
        Ok(Star {
            hub,
            peers,
            subnet: cfg.subnet,
            relays,
            dev_hub: Mutex::new(dev_hub.expect("at least one spoke")),
            dev_peers,
            torn_down: false,
        })
    }

    /// The hub's namespace, where the client runs.
    pub fn ns_hub(&self) -> &str {
        &self.hub
    }

    /// Spoke `i`'s namespace, where its peer runs.
    pub fn ns_peer(&self, i: usize) -> &str {
        &self.peers[i]
    }

    /// Spoke `i`'s address, for the client to reach its peer.
    pub fn addr_peer(&self, i: usize) -> Ipv4Addr {
        addrs(self.subnet, i).1
    }

    /// The hub's address on spoke `i`, as its peer sees the client.
    pub fn addr_hub(&self, i: usize) -> Ipv4Addr {
        addrs(self.subnet, i).0
    }

    /// How many spokes.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Always false: a star has at least one spoke.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// Cuts (or restores) spoke `i` both ways, keeping its other parameters.
    pub fn set_blackhole(&self, i: usize, on: bool) {
        for dir in 0..2 {
            self.relays[i].update_params(dir, |p| p.blackhole = on);
        }
    }

    /// Spoke `i`'s counters, (to peer, to hub), with the kernel's drops at each sending TUN.
    pub fn stats(&self, i: usize) -> (DirStats, DirStats) {
        let mut to_peer = self.relays[i].stats(0);
        let mut to_hub = self.relays[i].stats(1);
        to_peer.kernel_dropped = tun_tx_dropped(&self.dev_hub, &[&device(i)]);
        to_hub.kernel_dropped = tun_tx_dropped(&self.dev_peers[i], &[TUN_NAME]);
        (to_peer, to_hub)
    }

    /// `Err` if any relay thread died.
    pub fn check(&self) -> Result<(), NetemError> {
        match self.relays.iter().find_map(Relay::error) {
            Some(e) => Err(NetemError::Relay(e)),
            None => Ok(()),
        }
    }

    /// Stops every relay and deletes every namespace, reporting the first failure.
    pub fn stop(mut self) -> Result<(), NetemError> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<(), NetemError> {
        if self.torn_down {
            return Ok(());
        }
        self.torn_down = true;
        teardown(
            &mut self.relays,
            std::iter::once(&self.hub).chain(&self.peers),
        )
    }
}

impl Drop for Star {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("quicstrap-netem: teardown of star {}: {e}", self.hub);
        }
    }
}

/// The hub's device for spoke `i`.
fn device(i: usize) -> String {
    format!("qs{i}")
}

/// (hub, peer) addresses of spoke `i`: 10.X.i.1 and 10.X.i.2.
fn addrs(subnet: u8, i: usize) -> (Ipv4Addr, Ipv4Addr) {
    let i = i as u8;
    (
        Ipv4Addr::new(10, subnet, i, 1),
        Ipv4Addr::new(10, subnet, i, 2),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spokes_get_a_subnet_and_a_device_each() {
        assert_eq!(
            addrs(88, 2),
            (Ipv4Addr::new(10, 88, 2, 1), Ipv4Addr::new(10, 88, 2, 2))
        );
        assert_eq!(device(3), "qs3");
    }

    #[test]
    fn a_star_without_spokes_or_with_too_many_is_refused() {
        let none = StarConfig::new("star-none", 88, vec![]);
        assert!(matches!(
            Star::start(none),
            Err(NetemError::InvalidConfig(_))
        ));
        let many = StarConfig::new(
            "star-many",
            88,
            vec![Spoke::symmetric(LinkParams::ideal()); MAX_SPOKES + 1],
        );
        assert!(matches!(
            Star::start(many),
            Err(NetemError::InvalidConfig(_))
        ));
    }
}
