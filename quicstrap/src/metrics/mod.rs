//! Prometheus metrics: a tiny registry of named readings, rendered in the text exposition
//! format, and the HTTP endpoint behind `--metrics-listen`.
//!
//! Each metric is a closure over counters the code keeps anyway (server stats, throttle
//! factors, snapshot users), so reading a metric costs nothing until it is scraped and there
//! is no second bookkeeping to drift out of sync.
//!
//! # Layout
//!
//! * `registry` — [`Registry`]: named readings and their text rendering.
//! * `endpoint` — [`serve`]: the bounded HTTP listener.
//! * `transfers` — the server's and the client's metrics, and the helpers of counters by
//!   outcome any other transport uses for its own.
//! * `node` — process memory and ingestion health.
//! * `stores` — [`StoreMetrics`]: transfers, bytes and durations per store.

mod endpoint;
mod node;
mod registry;
mod stores;
#[cfg(test)]
mod tests;
mod transfers;

pub use crate::control::store_counts::Histogram;
pub use endpoint::{
    serve, serve_calls, Answer, Call, Handler, METRICS_CONNECTION_TIMEOUT, METRICS_MAX_CONNECTIONS,
};
pub use node::{register_ingest, register_process};
pub use registry::{Kind, Registry};
pub use stores::{StoreMetrics, DURATION_BUCKETS, FETCH_OUTCOMES, SERVE_OUTCOMES};
pub use transfers::{counter, register_client, register_outcomes, register_server, Pick};
