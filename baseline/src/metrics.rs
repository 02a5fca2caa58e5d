//! The HTTPS listeners' Prometheus metrics, beside the engine's own in one registry.

use quicstrap::metrics::{counter, register_outcomes, Kind, Pick, Registry};

use crate::{HttpServer, HttpStats};

/// An HTTPS baseline listener's metrics, labelled with its address: a server may run one
/// listener per TCP congestion controller, and comparing transports needs each apart.
pub fn register(r: &Registry, server: &HttpServer) {
    let stats = server.stats();
    let addr = server.local_addr().to_string();
    r.register(
        "quicstrap_https_bytes_sent_total",
        "File payload bytes written into HTTPS response bodies.",
        Kind::Counter,
        &[("listener", &addr)],
        counter(&stats, |s| &s.bytes_sent),
    );
    let outcomes: &[(&str, Pick<HttpStats>)] = &[
        ("started", |s| &s.started),
        ("completed", |s| &s.completed),
        ("rejected", |s| &s.rejected),
        ("busy_per_client", |s| &s.busy_per_client),
        ("handshake_refused", |s| &s.handshakes_refused),
        ("connection_refused", |s| &s.connections_refused),
        ("connection_refused_per_host", |s| {
            &s.connections_refused_per_host
        }),
    ];
    register_outcomes(
        r,
        "quicstrap_https_transfers_total",
        "HTTPS baseline transfers by outcome (started: manifest served; completed: \
             metadata served; rejected: requests refused, busy_per_client of them over the \
             client's share of snapshot users); connections refused at accept \
             (connection_refused_per_host also counted in connection_refused).",
        &[("listener", &addr)],
        &stats,
        outcomes,
    );
}
