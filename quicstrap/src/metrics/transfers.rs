//! The metrics of transfers: the serving side and the fetching side, each by outcome, with
//! the throttle factor and the buffer budget of its direction. `counter` and
//! `register_outcomes` are public so another transport over the same snapshots (the HTTPS
//! baseline) exports its counters the same way.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::{Kind, Registry};
use crate::client::{FetchStats, Fetcher};
use crate::control::budget::BufferBudget;
use crate::control::throttle::Throttler;
use crate::server::{Server, ServerStats};

/// Picks one counter out of a stats struct.
pub type Pick<S> = fn(&S) -> &AtomicU64;

/// Reads one counter of a shared stats struct: the reading of a counter metric.
pub fn counter<S: Send + Sync + 'static>(
    stats: &Arc<S>,
    pick: Pick<S>,
) -> impl Fn() -> f64 + Send + Sync + 'static {
    let stats = stats.clone();
    move || pick(&stats).load(Ordering::Relaxed) as f64
}

/// One series of counter `name` per outcome, each with `labels` plus its `outcome` label.
pub fn register_outcomes<S: Send + Sync + 'static>(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[(&str, &str)],
    stats: &Arc<S>,
    outcomes: &[(&str, Pick<S>)],
) {
    for &(outcome, pick) in outcomes {
        let mut l = labels.to_vec();
        l.push(("outcome", outcome));
        r.register(name, help, Kind::Counter, &l, counter(stats, pick));
    }
}

/// The adaptive throttle factor of one direction (100 when there is no throttler).
fn register_throttle(r: &Registry, direction: &str, throttler: Option<&Throttler>) {
    let factor = throttler.map(|t| t.percent_cell());
    r.register(
        "quicstrap_throttle_factor_percent",
        "Adaptive throttle factor in percent of the base rate (100 without throttling).",
        Kind::Gauge,
        &[("direction", direction)],
        move || {
            factor
                .as_ref()
                .map_or(100.0, |f| f.load(Ordering::Relaxed) as f64)
        },
    );
}

/// The serving side's metrics: bytes, transfers by outcome, snapshots, the throttle factor.
pub fn register_server(r: &Registry, server: &Server, throttler: Option<&Throttler>) {
    let stats = server.stats();
    r.register(
        "quicstrap_bytes_sent_total",
        "File payload bytes written to QUIC streams.",
        Kind::Counter,
        &[],
        counter(&stats, |s| &s.bytes_sent),
    );
    let outcomes: &[(&str, Pick<ServerStats>)] = &[
        ("accepted", |s| &s.accepted),
        ("resumed", |s| &s.resumed),
        ("completed", |s| &s.completed),
        ("failed", |s| &s.failed),
        ("rejected", |s| &s.rejected),
        ("busy", |s| &s.busy),
        ("busy_per_client", |s| &s.busy_per_client),
        ("connection_refused", |s| &s.refused),
        ("connection_refused_per_host", |s| &s.refused_per_host),
        ("connection_idle_closed", |s| &s.idle_closed),
        ("disabled", |s| &s.disabled),
        ("draining", |s| &s.draining),
        ("connection_revoked", |s| &s.revoked),
    ];
    register_outcomes(
        r,
        "quicstrap_server_transfers_total",
        "Requests served, by outcome (busy is also counted in rejected, busy_per_client in \
         busy, resumed in accepted); connections refused before authentication \
         (connection_refused_per_host also counted in connection_refused), connections \
         closed for carrying no transfer (connection_idle_closed) or because the allow list \
         dropped their client (connection_revoked); disabled (a store not served here) and \
         draining refusals are also counted in rejected.",
        &[],
        &stats,
        outcomes,
    );
    r.register(
        "quicstrap_connections_total",
        "QUIC connections that completed the handshake.",
        Kind::Counter,
        &[],
        counter(&stats, |s| &s.connections),
    );
    let snaps = server.snapshots().clone();
    r.register(
        "quicstrap_snapshot_users",
        "Transfers holding a snapshot right now.",
        Kind::Gauge,
        &[],
        move || snaps.users() as f64,
    );
    let snaps = server.snapshots().clone();
    r.register(
        "quicstrap_snapshots_created_total",
        "Checkpoints made.",
        Kind::Counter,
        &[],
        move || snaps.created() as f64,
    );
    register_throttle(r, "write", throttler);
    register_budget(
        r,
        "quicstrap_send_buffer",
        "queue for sending (send windows granted to connections with a transfer, plus \
         their file reads)",
        server.send_budget(),
    );
}

/// The bound a [`BufferBudget`] keeps (`<prefix>_bytes`) and its cap (`<prefix>_limit_bytes`).
fn register_budget(r: &Registry, prefix: &str, what: &str, budget: &Arc<BufferBudget>) {
    let b = budget.clone();
    r.register(
        &format!("{prefix}_bytes"),
        &format!("Most bytes the transfers of this process may {what} right now."),
        Kind::Gauge,
        &[],
        move || b.granted() as f64,
    );
    let cap = budget.cap() as f64;
    r.register(
        &format!("{prefix}_limit_bytes"),
        &format!("Process-wide cap on the bytes transfers may {what}."),
        Kind::Gauge,
        &[],
        move || cap,
    );
}

/// The fetching side's metrics: bytes received, fetches and attempts by outcome, the
/// connectivity cache, the read throttle factor.
pub fn register_client(r: &Registry, fetcher: &Arc<Fetcher>, throttler: Option<&Throttler>) {
    let stats = fetcher.stats();
    r.register(
        "quicstrap_bytes_received_total",
        "File payload bytes received (validated or not).",
        Kind::Counter,
        &[],
        counter(&stats, |s| &s.bytes_received),
    );
    let zones: &[(&str, Pick<FetchStats>)] = &[
        ("local", |s| &s.bytes_local),
        ("remote", |s| &s.bytes_remote),
    ];
    for &(zone, pick) in zones {
        r.register(
            "quicstrap_bytes_received_by_zone_total",
            "File payload bytes received, by whether the peer is in this node's zone (local; \
             every peer when the node has no zone) or another (remote).",
            Kind::Counter,
            &[("zone", zone)],
            counter(&stats, pick),
        );
    }
    let outcomes: &[(&str, Pick<FetchStats>)] = &[
        ("fetched", |s| &s.fetched),
        ("failed", |s| &s.failed),
        ("attempt_failed", |s| &s.attempts_failed),
        ("insufficient_space", |s| &s.insufficient_space),
        ("stale_snapshot", |s| &s.stale_snapshot),
        ("protocol_violation", |s| &s.protocol_violation),
        ("not_ready", |s| &s.not_ready),
    ];
    register_outcomes(
        r,
        "quicstrap_client_transfers_total",
        "Fetches by outcome, and failed attempts (each moved on to the next peer or gave up); \
         of those, the ones a bound ended: insufficient_space (the partition did not fit on \
         the disk), stale_snapshot (a snapshot the log cannot continue), protocol_violation \
         (a peer over a limit or lying), not_ready (still preparing after the prepare limit).",
        &[],
        &stats,
        outcomes,
    );
    let f = fetcher.clone();
    r.register(
        "quicstrap_connectivity_cache_size",
        "Peers with a fresh connectivity verdict.",
        Kind::Gauge,
        &[],
        move || f.connectivity_cache_len() as f64,
    );
    register_throttle(r, "read", throttler);
    register_budget(
        r,
        "quicstrap_recv_buffer",
        "hold received but unread (receive windows granted to connections with a \
         transfer, plus their receive buffers)",
        fetcher.recv_budget(),
    );
}
