//! What an operator changes on a running server without restarting it: the allow list, the
//! per-store policy (serving on or off, each store's write limit) and draining. Every
//! listener of a node and the HTTPS baseline hold the same [`LivePolicy`], so one reload
//! reaches all of them; the process-wide write limit is its [`RateLimiter`]'s own knob.
//!
//! A client taken off the allow list must not keep copying data over a connection it opened
//! while allowed: a change wakes each connection's watcher ([`LivePolicy::changed`]), which
//! ends its transfers and closes it with `REVOKED`, and every request checks the list again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use rustls_pki_types::CertificateDer;
use tokio::sync::watch;

use crate::control::pacing::RateLimiter;
use crate::control::stores::{StorePolicy, StoreTable};
use crate::net::tls::AllowList;
use crate::store::lock::unpoisoned as lock;

/// The settings of a server that change while it runs. Shared behind an `Arc`.
#[derive(Debug)]
pub struct LivePolicy {
    allow: RwLock<AllowList>,
    stores: RwLock<StoreTable>,
    /// One limiter per store that has a write limit, kept across reloads so running
    /// transfers feel a new rate at once.
    limiters: Mutex<HashMap<String, Arc<RateLimiter>>>,
    draining: AtomicBool,
    /// Bumped on every change of the allow list.
    generation: watch::Sender<u64>,
}

impl LivePolicy {
    /// A policy allowing `allow`, every store served, not draining.
    pub fn new(allow: AllowList) -> Arc<Self> {
        Self::with_stores(allow, StoreTable::default())
    }

    /// A policy allowing `allow`, with per-store settings.
    pub fn with_stores(allow: AllowList, stores: StoreTable) -> Arc<Self> {
        let live = Self {
            allow: RwLock::new(allow),
            stores: RwLock::new(StoreTable::default()),
            limiters: Mutex::new(HashMap::new()),
            draining: AtomicBool::new(false),
            generation: watch::Sender::new(0),
        };
        live.set_stores(stores);
        Arc::new(live)
    }

    /// The allow list now.
    pub fn allow(&self) -> AllowList {
        read(&self.allow).clone()
    }

    /// Whether a client presenting `cert` (its end-entity certificate) is allowed now.
    pub fn permits(&self, cert: &CertificateDer<'_>) -> bool {
        read(&self.allow).permits(cert)
    }

    /// Replaces the allow list: new handshakes and requests are checked against it at once,
    /// and connections of clients it drops are closed by their server's watcher.
    pub fn set_allow(&self, allow: AllowList) {
        *self.allow.write().unwrap_or_else(|e| e.into_inner()) = allow;
        self.generation.send_modify(|g| *g += 1);
    }

    /// Wakes when the allow list changes.
    pub fn changed(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// The per-store settings now.
    pub fn stores(&self) -> StoreTable {
        read(&self.stores).clone()
    }

    /// The settings of one store now.
    pub fn store(&self, store: &str) -> StorePolicy {
        read(&self.stores).get(store)
    }

    /// Replaces the per-store settings: a store turned off is refused from its next request,
    /// a store's new write limit holds for its running transfers too (they look their
    /// store's limiter up for every chunk).
    pub fn set_stores(&self, stores: StoreTable) {
        let mut limiters = lock(&self.limiters);
        for (name, limiter) in limiters.iter() {
            limiter.set_rate(stores.get(name).write_limit.unwrap_or(0));
        }
        for (name, p) in &stores.0 {
            if let Some(rate) = p.write_limit {
                limiters
                    .entry(name.clone())
                    .or_insert_with(|| RateLimiter::new(rate));
            }
        }
        *self.stores.write().unwrap_or_else(|e| e.into_inner()) = stores;
    }

    /// Sets one store's write limit (0: none beyond the process's), until the next reload.
    pub fn set_store_write_limit(&self, store: &str, rate: u64) {
        let mut stores = self.stores();
        stores.0.entry(store.to_owned()).or_default().write_limit = Some(rate);
        self.set_stores(stores);
    }

    /// The limiter of `store`'s transfers, if it has a write limit of its own.
    pub fn store_limiter(&self, store: &str) -> Option<Arc<RateLimiter>> {
        lock(&self.limiters).get(store).cloned()
    }

    /// Stops starting transfers: new requests are refused as `draining`, running ones finish.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Whether [`Self::drain`] was called.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}

impl crate::net::tls::Allow for LivePolicy {
    fn permits(&self, cert: &CertificateDer<'_>) -> bool {
        LivePolicy::permits(self, cert)
    }
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::stores::StorePolicy;

    #[test]
    fn a_reload_moves_the_limit_of_a_running_store_limiter() {
        let mut t = StoreTable::default();
        t.0.insert(
            "orders".into(),
            StorePolicy {
                write_limit: Some(1000),
                ..Default::default()
            },
        );
        let live = LivePolicy::with_stores(AllowList::AnyAuthenticated, t);
        let held = live.store_limiter("orders").expect("orders has a limit");
        assert!(live.store_limiter("users").is_none());
        live.set_store_write_limit("orders", 50);
        assert_eq!(held.rate(), 50, "the limiter a transfer holds moved");
        live.set_stores(StoreTable::default());
        assert_eq!(held.rate(), 0, "a store no longer limited is unlimited");
        let g = live.changed();
        live.set_allow(AllowList::Names(vec!["a".into()]));
        assert!(g.has_changed().unwrap());
        assert!(!live.draining());
        live.drain();
        assert!(live.draining());
    }
}
