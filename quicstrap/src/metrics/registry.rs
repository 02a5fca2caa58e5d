//! The registry: named readings, each a closure over counters the code keeps anyway, rendered
//! in the Prometheus text exposition format on scrape. Reading a metric costs nothing until
//! it is scraped, and there is no second bookkeeping to drift out of sync.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use crate::store::lock::unpoisoned as lock;

type Reading = Box<dyn Fn() -> f64 + Send + Sync>;

/// Whether a metric only grows (counter) or goes up and down (gauge).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Monotonic since the process started.
    Counter,
    /// A current value.
    Gauge,
}

struct Metric {
    name: String,
    help: String,
    kind: Kind,
    labels: Vec<(String, String)>,
    read: Reading,
}

/// Named readings, rendered on scrape.
#[derive(Clone, Default)]
pub struct Registry {
    metrics: Arc<Mutex<Vec<Metric>>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a reading; `labels` distinguish series of one metric name (e.g. an outcome).
    pub fn register(
        &self,
        name: &str,
        help: &str,
        kind: Kind,
        labels: &[(&str, &str)],
        read: impl Fn() -> f64 + Send + Sync + 'static,
    ) {
        lock(&self.metrics).push(Metric {
            name: name.to_owned(),
            help: help.to_owned(),
            kind,
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            read: Box::new(read),
        });
    }

    /// The Prometheus text exposition of every metric, `# HELP`/`# TYPE` once per name.
    pub fn render(&self) -> String {
        let metrics = lock(&self.metrics);
        let mut out = String::new();
        let mut described = std::collections::HashSet::new();
        for m in metrics.iter() {
            if described.insert(m.name.as_str()) {
                let kind = match m.kind {
                    Kind::Counter => "counter",
                    Kind::Gauge => "gauge",
                };
                let _ = writeln!(out, "# HELP {} {}", m.name, m.help);
                let _ = writeln!(out, "# TYPE {} {kind}", m.name);
            }
            let labels = if m.labels.is_empty() {
                String::new()
            } else {
                let inner: Vec<String> = m
                    .labels
                    .iter()
                    .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                    .collect();
                format!("{{{}}}", inner.join(","))
            };
            let _ = writeln!(out, "{}{labels} {}", m.name, (m.read)());
        }
        out
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
