//! The network level: QUIC endpoints tuned for long fat pipes ([`transport`]) with their
//! congestion control ([`congestion`]), mutual TLS and the allow list ([`tls`]), frames over
//! streams ([`wire`]), and the server's admission before authentication ([`admission`]).
//! Nothing here knows partitions or snapshots.

pub mod admission;
pub mod congestion;
pub mod tls;
pub mod transport;
pub mod wire;
