//! A userspace link emulator in the spirit of Mahimahi, for machines whose kernel has no
//! `tc netem`: two network namespaces, each with a TUN device, and a relay in the calling
//! process that carries IP packets between them through a link model (delay, jitter,
//! random or bursty loss, a rate-limited drop-tail bottleneck, reordering, blackhole).
//!
//! Benchmarks and tests run a server in namespace B and a client in namespace A (sockets
//! are made there with [`in_netns`]), so the traffic really crosses the emulated link:
//!
//! ```no_run
//! use std::time::Duration;
//! use quicstrap_netem::{in_netns, Emulator, EmulatorConfig, LinkParams, Loss};
//!
//! let link = LinkParams::symmetric_rtt(
//!     Duration::from_millis(150),
//!     Some(200_000_000),
//!     Loss::Bernoulli(0.01),
//! );
//! let emu = Emulator::start(EmulatorConfig::symmetric("bench", [77, 0], link))?;
//! let server = in_netns(emu.ns_b(), || std::net::UdpSocket::bind((emu.addr_b(), 4433)))??;
//! // ... run the client inside emu.ns_a() against emu.addr_b() ...
//! emu.stop()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! A [`Star`] joins one client namespace to several peer namespaces, each over a link of
//! its own (one near peer and several far ones).
//!
//! The link model itself ([`model`]) is sans-IO and can be used on its own.

#![warn(missing_docs)]

mod emulator;
mod error;
pub mod model;
mod netns;
mod relay;
mod star;
mod tun;
pub mod units;

pub use emulator::{Dir, Emulator, EmulatorConfig, DEFAULT_SUBNET, TUN2_NAME, TUN_MTU, TUN_NAME};
pub use error::NetemError;
pub use model::{DropReason, Link, LinkCounters, LinkParams, Loss, Verdict};
pub use netns::{cleanup, get_sysctl, in_netns, is_supported, set_sysctl, NETNS_DIR};
pub use relay::{DirStats, IfaceStats};
pub use star::{Spoke, Star, StarConfig, MAX_SPOKES};
