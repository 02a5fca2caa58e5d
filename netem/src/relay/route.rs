//! The TUN devices a relay thread reads and writes, and how a packet picks its output
//! device by IPv4 destination when side A has two.

use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::sync::Arc;

/// One TUN device as a relay thread uses it.
pub(super) struct Device {
    pub(super) fd: Arc<OwnedFd>,
    /// The address of the device's side, for picking the output of a B→A packet.
    pub(super) addr: Ipv4Addr,
    /// Index into the A-side interface counters, for A-side devices.
    pub(super) iface: Option<usize>,
}

/// The IPv4 destination of a raw IP packet, if it is one.
fn ipv4_destination(packet: &[u8]) -> Option<Ipv4Addr> {
    if packet.len() >= 20 && packet[0] >> 4 == 4 {
        Some(Ipv4Addr::new(
            packet[16], packet[17], packet[18], packet[19],
        ))
    } else {
        None
    }
}

/// The output device for `packet`: the one whose address is its destination, else the
/// first (the side's main device, which also gets anything that is not IPv4).
pub(super) fn route<'a>(outputs: &'a [Device], packet: &[u8]) -> &'a Device {
    if outputs.len() > 1 {
        if let Some(dst) = ipv4_destination(packet) {
            if let Some(dev) = outputs.iter().find(|d| d.addr == dst) {
                return dev;
            }
        }
    }
    &outputs[0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn b_to_a_packets_go_to_the_device_owning_their_destination() {
        let fd = || Arc::new(OwnedFd::from(std::fs::File::open("/dev/null").unwrap()));
        let main = Ipv4Addr::new(10, 1, 2, 1);
        let second = Ipv4Addr::new(10, 1, 2, 3);
        let outputs = [
            Device {
                fd: fd(),
                addr: main,
                iface: Some(0),
            },
            Device {
                fd: fd(),
                addr: second,
                iface: Some(1),
            },
        ];
        let packet = |dst: Ipv4Addr| {
            let mut p = vec![0u8; 28];
            p[0] = 0x45;
            p[16..20].copy_from_slice(&dst.octets());
            p
        };
        assert_eq!(route(&outputs, &packet(second)).iface, Some(1));
        assert_eq!(route(&outputs, &packet(main)).iface, Some(0));
        // Unknown destinations, runts and non-IPv4 go to the main device.
        assert_eq!(
            route(&outputs, &packet(Ipv4Addr::new(10, 9, 9, 9))).iface,
            Some(0)
        );
        assert_eq!(route(&outputs, &[0x45, 0, 0]).iface, Some(0));
        let mut v6 = packet(second);
        v6[0] = 0x60;
        assert_eq!(route(&outputs, &v6).iface, Some(0));
        assert_eq!(ipv4_destination(&packet(second)), Some(second));
    }
}
