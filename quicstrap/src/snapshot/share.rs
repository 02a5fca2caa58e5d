//! Who holds snapshot users: the per-client share. A server allows `max_users` transfers at
//! once in total and `max_users_per_client` of them to any one client, so one allowed client
//! — hostile, broken, or a node recovering everything at once — that asks for many
//! partitions and reads them slowly cannot hold every slot for the server-side time limit.

use std::net::IpAddr;

/// Who asks for a snapshot, as the per-client share counts clients: the certificate the
/// client authenticated with (mutual TLS: every client of a server has one) and the host it
/// comes from (an IPv4 address or an IPv6 /64, as admission counts hosts).
///
/// Both, not either: a fleet whose nodes share one certificate gets a share per node, and
/// nodes behind one NAT address get a share per certificate, while one node with one
/// certificate — the client the share bounds — gets one share however many transfers it
/// asks for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClientKey {
    /// A digest of the client's end-entity certificate (`None`: it presented none).
    cert: Option<[u8; 16]>,
    /// The client's host.
    host: IpAddr,
}

impl ClientKey {
    /// The client that presented the DER certificate `cert` (its end-entity one) from `ip`.
    pub fn new(cert: Option<&[u8]>, ip: IpAddr) -> Self {
        let cert = cert.map(|der| {
            let mut out = [0u8; 16];
            out.copy_from_slice(&blake3::hash(der).as_bytes()[..16]);
            out
        });
        Self {
            cert,
            host: crate::net::admission::host(ip),
        }
    }

    /// The client of a TLS session that presented `certs` (end-entity first) from `ip`.
    pub fn from_chain(certs: Option<&[rustls_pki_types::CertificateDer<'_>]>, ip: IpAddr) -> Self {
        Self::new(certs.and_then(|c| c.first()).map(|c| c.as_ref()), ip)
    }
}
