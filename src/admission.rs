//! Admission before authentication: what one client address may hold of a server's
//! unauthenticated resources (handshakes in progress, TCP connections), shared by the QUIC
//! server and the HTTPS baseline so one flooding host cannot take every slot from the others.

use std::sync::{Arc, Mutex};

use crate::lock::unpoisoned as lock;

/// Counts what each IP address holds of a resource, up to a cap per address.
pub(crate) struct PerIpLimit {
    max: usize,
    held: Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
}

impl PerIpLimit {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            max: max.max(1),
            held: Mutex::default(),
        }
    }
}

/// One unit held by one address; given back when dropped.
pub(crate) struct PerIp {
    limit: Arc<PerIpLimit>,
    ip: std::net::IpAddr,
}

impl PerIp {
    /// Takes a unit for `ip`, or `None` when it already holds the most it may.
    pub(crate) fn enter(limit: &Arc<PerIpLimit>, ip: std::net::IpAddr) -> Option<Self> {
        let mut held = lock(&limit.held);
        let n = held.entry(ip).or_default();
        if *n >= limit.max {
            return None;
        }
        *n += 1;
        Some(Self {
            limit: limit.clone(),
            ip,
        })
    }
}

impl Drop for PerIp {
    fn drop(&mut self) {
        let mut held = lock(&self.limit.held);
        if let Some(n) = held.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.ip);
            }
        }
    }
}
