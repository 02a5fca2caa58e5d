//! Operating a running node: what it does right now, and the changes an operator makes
//! without restarting it (a restart would end every transfer it serves).
//!
//! [`NodeControl`] is the one place those changes go through — the admin endpoint, a
//! SIGHUP reload and an embedding process all call it — so a limit set by hand and one read
//! from the configuration file cannot disagree on how they apply.
//!
//! The admin endpoint (`--admin-listen`) has no authentication of its own: it binds to
//! loopback unless told otherwise, like Cassandra's JMX port behind `nodetool`. So that a web
//! page in a browser on the same host cannot drive it (cross-site requests, DNS rebinding), it
//! answers only requests whose `Host` is an address or `localhost`, that carry no `Origin`,
//! and — for every change — the header [`ADMIN_HEADER`], which a browser does not send
//! cross-site without a preflight this endpoint never grants.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use crate::control::pacing::RateLimiter;
use crate::control::stores::StoreTable;
use crate::control::throttle::Throttler;
use crate::metrics::{Answer, Call, Handler};
use crate::net::tls::AllowList;
use crate::server::{LivePolicy, TransferStatus};
use crate::snapshot::SnapshotManager;

/// The header every changing call (`POST`) must carry, with any value.
pub const ADMIN_HEADER: &str = "x-quicstrap-admin";

/// The version of the JSON documents quicstrap prints and serves (`fetch`, `recover`,
/// `status`): a program reading them checks `schema` and `kind` first (docs/report.md).
pub const REPORT_SCHEMA: u32 = 1;

/// What can change on a running node: the live part of its configuration.
#[derive(Clone, Debug)]
pub struct LiveSettings {
    /// Clients allowed to fetch.
    pub allow: AllowList,
    /// Per-store policy.
    pub stores: StoreTable,
    /// The process's write limit, bytes/s (0: unlimited).
    pub write_limit: u64,
}

/// The node as an operator sees it.
#[derive(Clone, Debug, Serialize)]
pub struct NodeStatus {
    /// [`REPORT_SCHEMA`].
    pub schema: u32,
    /// `"status"`.
    pub kind: &'static str,
    /// Always true: the node answered.
    pub ok: bool,
    /// New transfers are refused (`draining`), running ones finish.
    pub draining: bool,
    /// Draining and nothing holds a snapshot any more (QUIC and HTTPS alike): safe to stop.
    pub drained: bool,
    /// Transfers holding a snapshot, every listener together.
    pub snapshot_users: usize,
    /// The write limit set (bytes/s, 0: unlimited), before the adaptive throttle's factor.
    pub write_limit: u64,
    /// The write limit in force right now, after the throttle's factor.
    pub write_rate_now: u64,
    /// The allow list: `*` or the names.
    pub allow: Vec<String>,
    /// Per store configured: whether it is served, and its write limit.
    pub stores: BTreeMap<String, StoreView>,
    /// QUIC transfers running, oldest first.
    pub transfers: Vec<TransferStatus>,
}

/// One configured store in [`NodeStatus`].
#[derive(Clone, Debug, Serialize)]
pub struct StoreView {
    /// Served to peers.
    pub serve: bool,
    /// Its own write limit, bytes/s.
    pub write_limit: Option<u64>,
}

/// What a reload changed, and what it could not.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Reloaded {
    /// Settings now in force that differ from before.
    pub applied: Vec<String>,
    /// Settings that differ in the file but need a restart (logged).
    pub need_restart: Vec<String>,
}

/// Re-reads the configuration and applies its live part (the CLI's: the config file).
pub type Reload = Arc<dyn Fn(&NodeControl) -> Result<Reloaded, String> + Send + Sync>;

/// The handle on a running node every operator action goes through. Cheap to clone.
#[derive(Clone)]
pub struct NodeControl {
    pub(crate) live: Arc<LivePolicy>,
    pub(crate) write_limiter: Arc<RateLimiter>,
    pub(crate) throttler: Option<Arc<Throttler>>,
    pub(crate) snapshots: SnapshotManager,
    pub(crate) transfers: Arc<dyn Fn() -> Vec<TransferStatus> + Send + Sync>,
}

impl NodeControl {
    /// The node now.
    pub fn status(&self) -> NodeStatus {
        let stores = self
            .live
            .stores()
            .0
            .into_iter()
            .map(|(name, p)| {
                let view = StoreView {
                    serve: p.serve,
                    write_limit: p.write_limit,
                };
                (name, view)
            })
            .collect();
        let allow = match self.live.allow() {
            AllowList::AnyAuthenticated => vec!["*".to_owned()],
            AllowList::Names(n) => n,
        };
        let users = self.snapshots.users();
        NodeStatus {
            schema: REPORT_SCHEMA,
            kind: "status",
            ok: true,
            draining: self.live.draining(),
            drained: self.live.draining() && users == 0,
            snapshot_users: users,
            write_limit: self.write_limit(),
            write_rate_now: self.write_limiter.rate(),
            allow,
            stores,
            transfers: (self.transfers)(),
        }
    }

    /// The write limit set, before the throttle's factor.
    pub fn write_limit(&self) -> u64 {
        match &self.throttler {
            Some(t) => t.base(),
            None => self.write_limiter.rate(),
        }
    }

    /// Sets the process's write limit (bytes/s, 0: unlimited): running transfers feel it
    /// within the limiter's burst (0.1 s of the old rate).
    pub fn set_write_limit(&self, rate: u64) {
        match &self.throttler {
            Some(t) => t.set_base(&self.write_limiter, rate),
            None => self.write_limiter.set_rate(rate),
        }
    }

    /// Sets one store's write limit (0: none beyond the process's).
    pub fn set_store_write_limit(&self, store: &str, rate: u64) {
        self.live.set_store_write_limit(store, rate);
    }

    /// Refuses new transfers as `draining` from now on; running ones finish. Watch
    /// [`NodeStatus::drained`].
    pub fn drain(&self) {
        tracing::info!("draining: new transfers are refused, running ones finish");
        self.live.drain();
    }

    /// Applies `new`: the names of the settings that changed. A client no longer allowed is
    /// refused from its next request and its open transfers end (`revoked`); a store turned
    /// off is refused from its next request.
    pub fn apply(&self, new: LiveSettings) -> Vec<String> {
        let mut changed = Vec::new();
        if self.live.allow() != new.allow {
            self.live.set_allow(new.allow);
            changed.push("allow".to_owned());
        }
        let old = self.live.stores();
        if old != new.stores {
            for (name, p) in &new.stores.0 {
                if old.0.get(name) != Some(p) {
                    changed.push(format!("stores.{name}"));
                }
            }
            for name in old.0.keys().filter(|n| !new.stores.0.contains_key(*n)) {
                changed.push(format!("stores.{name}"));
            }
            self.live.set_stores(new.stores);
        }
        if self.write_limit() != new.write_limit {
            self.set_write_limit(new.write_limit);
            changed.push("write-limit".to_owned());
        }
        changed
    }

    /// The admin endpoint's calls, `reload` behind `POST /reload`:
    /// `GET /status`; `POST /drain`; `POST /limit?write=N[&store=S]`; `POST /reload`.
    pub fn handler(&self, reload: Option<Reload>) -> Handler {
        let me = self.clone();
        Arc::new(move |call: Call<'_>| me.answer(call, reload.as_ref()))
    }

    fn answer(&self, call: Call<'_>, reload: Option<&Reload>) -> Answer {
        let fail = |status, msg: String| {
            let v = serde_json::json!({"schema": REPORT_SCHEMA, "kind": "error", "ok": false, "error": msg});
            (status, "application/json", v.to_string().into_bytes())
        };
        let local_host = call.header("host").is_some_and(|h| {
            let name = h.rsplit_once(':').map_or(h, |(n, port)| {
                if port.chars().all(|c| c.is_ascii_digit()) {
                    n
                } else {
                    h
                }
            });
            name == "localhost"
                || name
                    .trim_matches(['[', ']'])
                    .parse::<std::net::IpAddr>()
                    .is_ok()
        });
        if !local_host || call.header("origin").is_some() {
            return fail(
                "403 Forbidden",
                "not from a browser page: no Origin, Host an address".into(),
            );
        }
        if call.method == "POST" && call.header(ADMIN_HEADER).is_none() {
            return fail(
                "403 Forbidden",
                format!("a change needs the {ADMIN_HEADER} header"),
            );
        }
        match (call.method, call.path) {
            ("GET", "/status") => json_answer("200 OK", &self.status()),
            ("POST", "/drain") => {
                self.drain();
                json_answer("200 OK", &self.status())
            }
            ("POST", "/limit") => {
                let mut rate = None;
                let mut store = None;
                for pair in call.query.split('&').filter(|p| !p.is_empty()) {
                    match pair.split_once('=') {
                        Some(("write", v)) => match v.parse::<u64>() {
                            Ok(r) => rate = Some(r),
                            Err(_) => {
                                return fail(
                                    "400 Bad Request",
                                    format!("write={v}: not a rate in bytes/s"),
                                )
                            }
                        },
                        // A store name as partitions are named, so no label of odd text
                        // reaches the status and the logs.
                        Some(("store", s))
                            if crate::store::partition::PartitionId::new(s, 1, 0).is_ok() =>
                        {
                            store = Some(s.to_owned())
                        }
                        _ => return fail("400 Bad Request", format!("unknown parameter {pair:?}")),
                    }
                }
                let Some(rate) = rate else {
                    return fail("400 Bad Request", "write=BYTES_PER_SEC is required".into());
                };
                match &store {
                    Some(s) => self.set_store_write_limit(s, rate),
                    None => self.set_write_limit(rate),
                }
                tracing::info!(
                    rate,
                    store = store.as_deref().unwrap_or("*"),
                    "write limit set by the admin endpoint"
                );
                json_answer("200 OK", &self.status())
            }
            ("POST", "/reload") => match reload {
                None => fail(
                    "404 Not Found",
                    "this node has no configuration file to reload".into(),
                ),
                Some(r) => match r(self) {
                    Ok(done) => {
                        let v = serde_json::json!({
                            "schema": REPORT_SCHEMA, "kind": "reload", "ok": true,
                            "applied": done.applied, "need_restart": done.need_restart,
                        });
                        json_answer("200 OK", &v)
                    }
                    Err(e) => fail("400 Bad Request", e),
                },
            },
            ("GET" | "POST", _) => fail(
                "404 Not Found",
                "GET /status, POST /drain, POST /limit?write=N[&store=S], POST /reload".into(),
            ),
            _ => fail("405 Method Not Allowed", "GET or POST".into()),
        }
    }
}

/// A JSON answer of the admin endpoint.
fn json_answer<T: Serialize>(status: &'static str, v: &T) -> Answer {
    let body = serde_json::to_vec_pretty(v).unwrap_or_default();
    (status, "application/json", body)
}
