//! The registry: named readings, each a closure over counters the code keeps anyway, rendered
//! in the Prometheus text exposition format on scrape. Reading a metric costs nothing until
//! it is scraped, and there is no second bookkeeping to drift out of sync.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use crate::control::store_counts::Histogram;
use crate::store::lock::unpoisoned as lock;

type Reading = Box<dyn Fn() -> f64 + Send + Sync>;

/// Whether a metric only grows (counter), goes up and down (gauge), or counts observations
/// into buckets (histogram: its `_bucket`, `_sum` and `_count` series).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Monotonic since the process started.
    Counter,
    /// A current value.
    Gauge,
    /// Observations counted into cumulative buckets ([`Registry::register_histogram`]).
    Histogram,
}

struct Metric {
    /// The family: `# HELP` and `# TYPE` are written once per family.
    family: String,
    /// The series' own name: the family's, or with a histogram's suffix.
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
            family: name.to_owned(),
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

    /// Adds a histogram: its `<name>_bucket` series (one per bound and `+Inf`), `<name>_sum`
    /// and `<name>_count`, each with `labels`.
    pub fn register_histogram(
        &self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        h: &Arc<Histogram>,
    ) {
        let owned = |extra: Option<String>| {
            let mut l: Vec<(String, String)> = labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            if let Some(le) = extra {
                l.push(("le".to_owned(), le));
            }
            l
        };
        let mut metrics = lock(&self.metrics);
        let mut push = |suffix: &str, labels, read: Reading| {
            metrics.push(Metric {
                family: name.to_owned(),
                name: format!("{name}{suffix}"),
                help: help.to_owned(),
                kind: Kind::Histogram,
                labels,
                read,
            })
        };
        for i in 0..=h.bounds.len() {
            let le = h.bounds.get(i).map_or("+Inf".to_owned(), f64::to_string);
            let h = h.clone();
            push(
                "_bucket",
                owned(Some(le)),
                Box::new(move || h.cumulative(i)),
            );
        }
        let hs = h.clone();
        push(
            "_sum",
            owned(None),
            Box::new(move || hs.sum_micros.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1e6),
        );
        let hc = h.clone();
        push(
            "_count",
            owned(None),
            Box::new(move || hc.cumulative(hc.bounds.len())),
        );
    }

    /// The Prometheus text exposition of every metric, `# HELP`/`# TYPE` once per family.
    pub fn render(&self) -> String {
        let metrics = lock(&self.metrics);
        let mut out = String::new();
        let mut described = std::collections::HashSet::new();
        for m in metrics.iter() {
            if described.insert(m.family.as_str()) {
                let kind = match m.kind {
                    Kind::Counter => "counter",
                    Kind::Gauge => "gauge",
                    Kind::Histogram => "histogram",
                };
                let _ = writeln!(out, "# HELP {} {}", m.family, m.help);
                let _ = writeln!(out, "# TYPE {} {kind}", m.family);
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
