//! The emulator as a whole: two namespaces joined by a pair of TUN devices and the relay,
//! set up in one call and torn down on `stop` or drop.
//!
//! ```text
//!   namespace <prefix>-a                 calling process              namespace <prefix>-b
//!   10.X.Y.1 (qs0) ──TUN fd──▶ [A→B link model] ──TUN fd──▶ (qs0) 10.X.Y.2
//!                  ◀─────────── [B→A link model] ◀─────────
//! ```
//!
//! Every TUN device is created by a thread that has entered the namespace, so the device
//! lives there while its fd is held by the relay in the calling process.
//!
//! Opt-in ([`EmulatorConfig::second_client_interface`]), namespace A also gets a second TUN
//! device `qs1` with address 10.X.Y.3, relayed over the same two link models. Moving A's
//! route to B onto it ([`Emulator::move_client`]) changes the source address of everything
//! the client sends from then on, on a different interface, without touching its sockets:
//! what a phone switching from Wi-Fi to cellular looks like to a QUIC server.
//!
//! ```text
//!   10.X.Y.1 (qs0) ──┐
//!                    ├──▶ [A→B link model] ──────────────────────▶ (qs0) 10.X.Y.2
//!   10.X.Y.3 (qs1) ──┘
//!   (qs0 or qs1, by destination) ◀── [B→A link model] ◀──────────
//! ```

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::sync::{Mutex, PoisonError};

use crate::model::LinkParams;
use crate::netns::{in_netns, ip, ns_add, ns_del, ns_exists};
use crate::relay::{DirStats, IfaceStats, Relay};
use crate::tun::open_tun;
use crate::NetemError;

/// Name of the TUN interface inside each namespace (namespaces keep the two apart).
pub const TUN_NAME: &str = "qs0";
/// Name of the optional second TUN interface in namespace A (see
/// [`EmulatorConfig::second_client_interface`]): a second client address to migrate to.
pub const TUN2_NAME: &str = "qs1";
/// Default MTU of both TUN interfaces: a standard Ethernet-sized path.
pub const TUN_MTU: u32 = 1500;
/// Default second and third octets of the link's /24-ish subnet: 10.77.0.0.
pub const DEFAULT_SUBNET: [u8; 2] = [77, 0];
/// Longest accepted prefix, so namespace names stay short and readable.
const MAX_PREFIX: usize = 40;

/// A direction of the emulated link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// From namespace A (client side) to namespace B (server side).
    AtoB,
    /// From namespace B (server side) to namespace A (client side).
    BtoA,
}

impl Dir {
    fn index(self) -> usize {
        match self {
            Dir::AtoB => 0,
            Dir::BtoA => 1,
        }
    }
}

/// What to build: names, addresses, and the link model of each direction.
#[derive(Debug, Clone, PartialEq)]
pub struct EmulatorConfig {
    /// Namespaces are `<prefix>-a` and `<prefix>-b`; distinct prefixes let several
    /// emulators run at once.
    pub prefix: String,
    /// Octets X and Y of 10.X.Y.0: A is 10.X.Y.1, B is 10.X.Y.2. Distinct subnets keep
    /// concurrent emulators' addresses apart (they are in different namespaces anyway).
    pub subnet: [u8; 2],
    /// The link model from A to B.
    pub a_to_b: LinkParams,
    /// The link model from B to A.
    pub b_to_a: LinkParams,
    /// Seed of both directions' random streams, for repeatable experiments.
    pub seed: u64,
    /// Run the relay threads at real-time priority (`SCHED_FIFO` 1, best effort), as the
    /// kernel runs its own qdiscs ahead of processes, so a CPU-bound endpoint cannot stretch
    /// the link's delays. Off by default: when the relay's work (at high packet rates it
    /// also runs the receiving stack inside its `write`s) nears a whole core, the kernel's
    /// real-time throttling suspends it for the rest of a 1 s period, and the TUN queues
    /// overflow (visible in [`DirStats::kernel_dropped`](crate::DirStats)).
    pub realtime: bool,
    /// Give namespace A a second TUN device, [`TUN2_NAME`], with address 10.X.Y.3, carried
    /// over the same link models as the first, so a test can move the client to another
    /// address on another interface mid-connection ([`Emulator::move_client`]) and check
    /// that QUIC connection migration copes. Off by default: one interface per side is what
    /// everything else wants.
    pub second_client_interface: bool,
    /// MTU of the TUN interfaces (default [`TUN_MTU`], 1500). Jumbo frames (9000) exist
    /// inside and between datacenters; with them both QUIC and TCP move the same bytes in
    /// fewer, larger packets. The relay carries packets up to 64 KiB.
    pub mtu: u32,
}

impl EmulatorConfig {
    /// The common case: the same link model in both directions.
    pub fn symmetric(prefix: impl Into<String>, subnet: [u8; 2], params: LinkParams) -> Self {
        EmulatorConfig {
            prefix: prefix.into(),
            subnet,
            a_to_b: params,
            b_to_a: params,
            seed: 0,
            realtime: false,
            second_client_interface: false,
            mtu: TUN_MTU,
        }
    }
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        EmulatorConfig::symmetric("qs", DEFAULT_SUBNET, LinkParams::ideal())
    }
}

/// Checks a namespace prefix: non-empty, short, and only `[A-Za-z0-9_.-]`, not starting with
/// `.` or `-`, so it is a safe file name and cannot match unrelated namespaces by accident.
pub(crate) fn check_prefix(prefix: &str) -> Result<(), NetemError> {
    let ok_chars = prefix
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if prefix.is_empty()
        || prefix.len() > MAX_PREFIX
        || !ok_chars
        || prefix.starts_with('.')
        || prefix.starts_with('-')
    {
        return Err(NetemError::InvalidConfig(format!(
            "prefix {prefix:?} must be 1..={MAX_PREFIX} characters of [A-Za-z0-9_.-], \
             not starting with '.' or '-'"
        )));
    }
    Ok(())
}

/// Deletes the namespaces it was told it created, unless disarmed: the "tear down what
/// was created" half of a failed start.
pub(crate) struct CreatedNamespaces(pub(crate) Vec<String>);

impl Drop for CreatedNamespaces {
    fn drop(&mut self) {
        for ns in self.0.drain(..) {
            // Best effort on an error path that already has an error to report.
            let _ = ns_del(&ns);
        }
    }
}

/// A running link emulator. Dropping it (or calling [`Emulator::stop`]) stops the relay and
/// deletes both namespaces, which removes the TUN devices and anything else in them.
pub struct Emulator {
    ns_a: String,
    ns_b: String,
    addr_a: Ipv4Addr,
    addr_b: Ipv4Addr,
    /// Address of namespace A's second device, if it has one.
    addr_a2: Option<Ipv4Addr>,
    relay: Relay,
    /// `/proc/net/dev` of namespace A and B, opened from inside each (the file keeps
    /// showing the namespace it was opened in), for the TUNs' kernel drop counters.
    dev_stats: [Mutex<File>; 2],
    torn_down: bool,
}

impl std::fmt::Debug for Emulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emulator")
            .field("ns_a", &self.ns_a)
            .field("ns_b", &self.ns_b)
            .field("addr_a", &self.addr_a)
            .field("addr_b", &self.addr_b)
            .field("addr_a2", &self.addr_a2)
            .finish_non_exhaustive()
    }
}

impl Emulator {
    /// Creates both namespaces, their TUN devices and addresses, and starts the relay.
    /// On any failure, whatever this call had created is removed again before it returns;
    /// namespaces that already existed are reported ([`NetemError::NamespaceExists`]) and
    /// left alone.
    pub fn start(cfg: EmulatorConfig) -> Result<Emulator, NetemError> {
        check_prefix(&cfg.prefix)?;
        cfg.a_to_b.validate()?;
        cfg.b_to_a.validate()?;
        let [x, y] = cfg.subnet;
        let addr_a = Ipv4Addr::new(10, x, y, 1);
        let addr_b = Ipv4Addr::new(10, x, y, 2);
        let ns_a = format!("{}-a", cfg.prefix);
        let ns_b = format!("{}-b", cfg.prefix);
        for ns in [&ns_a, &ns_b] {
            if ns_exists(ns) {
                return Err(NetemError::NamespaceExists(ns.clone()));
            }
        }

        let mut created = CreatedNamespaces(Vec::new());
        for ns in [&ns_a, &ns_b] {
            ns_add(ns).map_err(|e| {
                if ns_exists(ns) {
                    // Lost a race with someone else creating it.
                    NetemError::NamespaceExists(ns.clone())
                } else {
                    e
                }
            })?;
            created.0.push(ns.clone());
        }
        let (fd_a, dev_a) = setup_side(&ns_a, addr_a, addr_b, cfg.mtu)?;
        let (fd_b, dev_b) = setup_side(&ns_b, addr_b, addr_a, cfg.mtu)?;
        let mut side_a = vec![(fd_a, addr_a)];
        let addr_a2 = if cfg.second_client_interface {
            let addr_a2 = Ipv4Addr::new(10, x, y, 3);
            let fd = setup_second_client(&ns_a, &ns_b, addr_a2, addr_b, cfg.mtu)?;
            side_a.push((fd, addr_a2));
            Some(addr_a2)
        } else {
            None
        };
        let relay = Relay::start(
            side_a,
            (fd_b, addr_b),
            [cfg.a_to_b, cfg.b_to_a],
            cfg.seed,
            cfg.realtime,
        )?;
        // From here on the emulator owns the namespaces.
        created.0.clear();
        Ok(Emulator {
            ns_a,
            ns_b,
            addr_a,
            addr_b,
            addr_a2,
            relay,
            dev_stats: [Mutex::new(dev_a), Mutex::new(dev_b)],
            torn_down: false,
        })
    }

    /// Address of the client side (in namespace A), for servers in B to talk to.
    pub fn addr_a(&self) -> Ipv4Addr {
        self.addr_a
    }

    /// Address of the server side (in namespace B), for clients in A to connect to.
    pub fn addr_b(&self) -> Ipv4Addr {
        self.addr_b
    }

    /// Address of namespace A's second interface ([`TUN2_NAME`], 10.X.Y.3), where the client
    /// moves to with [`Emulator::move_client`]; `None` unless
    /// [`EmulatorConfig::second_client_interface`] was set.
    pub fn addr_a2(&self) -> Option<Ipv4Addr> {
        self.addr_a2
    }

    /// Moves namespace A's route to B onto the second interface (`to_second`, source
    /// address 10.X.Y.3) or back onto the first (10.X.Y.1), by replacing the route. Sockets
    /// in A that are not bound to an address (a QUIC client's usually are not) send their
    /// next packet from the new address over the new interface, without noticing: the
    /// client-side half of a connection migration. Packets already in flight, and B's
    /// replies to the old address, are still delivered (unless namespace A inherited strict
    /// reverse-path filtering from the host). `Err` without a second interface.
    pub fn move_client(&self, to_second: bool) -> Result<(), NetemError> {
        let Some(addr_a2) = self.addr_a2 else {
            return Err(NetemError::InvalidConfig(
                "move_client needs EmulatorConfig::second_client_interface".into(),
            ));
        };
        let (dev, src) = if to_second {
            (TUN2_NAME, addr_a2)
        } else {
            (TUN_NAME, self.addr_a)
        };
        let dst = format!("{}/32", self.addr_b);
        let src = src.to_string();
        ip(&[
            "-n", &self.ns_a, "route", "replace", &dst, "dev", dev, "src", &src,
        ])
        .map(|_| ())
    }

    /// Traffic through namespace A's first (`second == false`) or second interface, as the
    /// relay saw it: the evidence of which client address was in use, and which one B
    /// answered (B→A packets reach an interface only when addressed to it). `None` for the
    /// second interface when there is none.
    pub fn client_iface_stats(&self, second: bool) -> Option<IfaceStats> {
        self.relay.iface_stats(usize::from(second))
    }

    /// Name of namespace A, for [`crate::in_netns`] or `ip netns exec`.
    pub fn ns_a(&self) -> &str {
        &self.ns_a
    }

    /// Name of namespace B, for [`crate::in_netns`] or `ip netns exec`.
    pub fn ns_b(&self) -> &str {
        &self.ns_b
    }

    /// Changes one direction's link model while traffic flows; packets already in flight
    /// keep their schedule, and the loss state and queue backlog carry over.
    pub fn set_params(&self, dir: Dir, p: LinkParams) -> Result<(), NetemError> {
        p.validate()?;
        self.relay.set_params(dir.index(), p);
        Ok(())
    }

    /// The link model in force for one direction.
    pub fn params(&self, dir: Dir) -> LinkParams {
        self.relay.params(dir.index())
    }

    /// Cuts (or restores) both directions at once, keeping every other parameter: the
    /// partition switch. Packets already in flight when the cut starts are still delivered
    /// (they had left the sender's side); everything offered afterwards is dropped.
    pub fn set_blackhole(&self, on: bool) {
        for dir in [Dir::AtoB, Dir::BtoA] {
            self.relay.update_params(dir.index(), |p| p.blackhole = on);
        }
    }

    /// Counters of (A→B, B→A), including the kernel's drops at each sending TUN.
    pub fn stats(&self) -> (DirStats, DirStats) {
        let mut ab = self.relay.stats(0);
        let mut ba = self.relay.stats(1);
        // A counter that cannot be read stays 0; the relay's own counters are what matter.
        let a_devices: &[&str] = match self.addr_a2 {
            Some(_) => &[TUN_NAME, TUN2_NAME],
            None => &[TUN_NAME],
        };
        ab.kernel_dropped = tun_tx_dropped(&self.dev_stats[0], a_devices);
        ba.kernel_dropped = tun_tx_dropped(&self.dev_stats[1], &[TUN_NAME]);
        (ab, ba)
    }

    /// `Err` if a relay thread has died (the link no longer carries packets), so a
    /// harness can tell a broken emulator from a broken system under test.
    pub fn check(&self) -> Result<(), NetemError> {
        match self.relay.error() {
            Some(e) => Err(NetemError::Relay(e)),
            None => Ok(()),
        }
    }

    /// Stops the relay and deletes both namespaces, reporting any failure (dropping the
    /// emulator does the same, silently).
    pub fn stop(mut self) -> Result<(), NetemError> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<(), NetemError> {
        if self.torn_down {
            return Ok(());
        }
        self.torn_down = true;
        teardown(std::iter::once(&mut self.relay), [&self.ns_a, &self.ns_b])
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!(
                "quicstrap-netem: teardown of {}/{}: {e}",
                self.ns_a, self.ns_b
            );
        }
    }
}

/// Stops `relays` (joining their threads closes the TUN fds, which deletes the devices),
/// then deletes `namespaces`; every step runs, the first failure is reported.
pub(crate) fn teardown<'a>(
    relays: impl IntoIterator<Item = &'a mut Relay>,
    namespaces: impl IntoIterator<Item = &'a String>,
) -> Result<(), NetemError> {
    let mut result = Ok(());
    for relay in relays {
        let r = relay.shutdown();
        if result.is_ok() {
            result = r;
        }
    }
    for ns in namespaces {
        if let Err(e) = ns_del(ns) {
            if result.is_ok() {
                result = Err(e);
            }
        }
    }
    result
}

/// Sum of `TX dropped` of the named TUN devices from a `/proc/net/dev` file: packets the
/// kernel could not queue for the relay to read (a counter that cannot be read counts 0).
pub(crate) fn tun_tx_dropped(dev: &Mutex<File>, names: &[&str]) -> u64 {
    let mut file = dev.lock().unwrap_or_else(PoisonError::into_inner);
    let mut text = String::new();
    if file.seek(SeekFrom::Start(0)).is_err() || file.read_to_string(&mut text).is_err() {
        return 0;
    }
    names
        .iter()
        .filter_map(|name| parse_tx_dropped(&text, name))
        .sum()
}

/// Finds device `name`'s transmit drop counter in the text of `/proc/net/dev`.
fn parse_tx_dropped(text: &str, name: &str) -> Option<u64> {
    let prefix = format!("{name}:");
    let line = text
        .lines()
        .map(str::trim_start)
        .find(|l| l.starts_with(&prefix))?;
    // After the name: 8 receive counters, then bytes, packets, errs, drop, ... of transmit.
    line[prefix.len()..]
        .split_whitespace()
        .nth(11)
        .and_then(|v| v.parse().ok())
}

/// Opens TUN device `name` in the calling thread's namespace with IPv6 off, so the kernel
/// sends nothing of its own across the link.
fn open_tun_without_ipv6(name: &str) -> Result<OwnedFd, NetemError> {
    let fd = open_tun(name)?;
    // Resolved in this thread's namespace. Absent when the kernel has no IPv6: fine.
    let path = format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6");
    if std::path::Path::new(&path).exists() {
        std::fs::write(&path, "1").map_err(|e| NetemError::io(format!("writing {path}"), e))?;
    }
    Ok(fd)
}

/// Brings TUN device `name` of namespace `ns` up with the link's MTU.
fn tun_up(ns: &str, name: &str, mtu: u32) -> Result<(), NetemError> {
    let mtu = mtu.to_string();
    ip(&[
        "-n",
        ns,
        "link",
        "set",
        "dev",
        name,
        "mtu",
        &mtu,
        "txqueuelen",
        "1000",
        "up",
    ])
    .map(drop)
}

/// Creates and configures one side: TUN device (IPv6 off, so the kernel sends nothing of
/// its own across the link), loopback up, point-to-point address `local` peer `peer`.
/// Also returns that namespace's `/proc/net/dev`, for the TUN's drop counter.
fn setup_side(
    ns: &str,
    local: Ipv4Addr,
    peer: Ipv4Addr,
    mtu: u32,
) -> Result<(OwnedFd, File), NetemError> {
    setup_device(ns, TUN_NAME, local, peer, mtu)
}

/// [`setup_side`] for a device called `name`: a star's hub has one per spoke.
pub(crate) fn setup_device(
    ns: &str,
    name: &str,
    local: Ipv4Addr,
    peer: Ipv4Addr,
    mtu: u32,
) -> Result<(OwnedFd, File), NetemError> {
    let (fd, dev) = in_netns(ns, || -> Result<(OwnedFd, File), NetemError> {
        let fd = open_tun_without_ipv6(name)?;
        let dev = File::open("/proc/thread-self/net/dev")
            .map_err(|e| NetemError::io("opening /proc/thread-self/net/dev", e))?;
        Ok((fd, dev))
    })??;
    let local_s = format!("{local}/32");
    let peer_s = format!("{peer}/32");
    ip(&["-n", ns, "link", "set", "dev", "lo", "up"])?;
    tun_up(ns, name, mtu)?;
    ip(&[
        "-n", ns, "addr", "add", &local_s, "peer", &peer_s, "dev", name,
    ])?;
    Ok((fd, dev))
}

/// Adds namespace A's second device: TUN [`TUN2_NAME`] (IPv6 off, like the first) with the
/// bare address `addr_a2`/32, so no route uses it until [`Emulator::move_client`] moves
/// one there, and a route in namespace B back to `addr_a2` over B's only device, so B can
/// answer the new address (B's point-to-point address only routes to 10.X.Y.1).
fn setup_second_client(
    ns_a: &str,
    ns_b: &str,
    addr_a2: Ipv4Addr,
    addr_b: Ipv4Addr,
    mtu: u32,
) -> Result<OwnedFd, NetemError> {
    let fd = in_netns(ns_a, || open_tun_without_ipv6(TUN2_NAME))??;
    let local_s = format!("{addr_a2}/32");
    tun_up(ns_a, TUN2_NAME, mtu)?;
    ip(&["-n", ns_a, "addr", "add", &local_s, "dev", TUN2_NAME])?;
    let src_b = addr_b.to_string();
    ip(&[
        "-n", ns_b, "route", "add", &local_s, "dev", TUN_NAME, "src", &src_b,
    ])?;
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tun_tx_drops_from_proc_net_dev() {
        let text = "\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:       0       0    0    0    0     0          0         0        0       0    0    0    0     0       0          0
   qs0: 6409636  123326    0    7    0     0          0         0 1243306664  828874    0 8105    0     0       0          0
";
        assert_eq!(parse_tx_dropped(text, TUN_NAME), Some(8105));
        assert_eq!(parse_tx_dropped(text, TUN2_NAME), None);
        assert_eq!(parse_tx_dropped("nothing here", TUN_NAME), None);
    }

    #[test]
    fn prefixes_are_checked() {
        for ok in ["qs", "bench-1", "a.b_c"] {
            assert!(check_prefix(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-x", ".x", "a/b", "a b", &"x".repeat(41)] {
            assert!(check_prefix(bad).is_err(), "{bad}");
        }
    }
}
