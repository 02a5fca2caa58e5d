//! What the commands print besides their own lines: a report as JSON or as a human line, the
//! JSON of a failed fetch, and the progress bar on a terminal.

use std::io::IsTerminal;
use std::sync::Arc;

use crate::progress_bar::ProgressBar;
use quicstrap::client::Progress;

use crate::error::CliError;

/// The version of every JSON document the commands print (docs/report.md).
pub use quicstrap::jobs::admin::REPORT_SCHEMA;

/// `v` (an object) with the fields every report starts with: `schema`, `kind` (`fetch`,
/// `bootstrap`, `recover`, `status`, `demo`) and `ok`, so a program can tell a success from a
/// failure without knowing each kind's fields.
pub fn envelope(kind: &str, ok: bool, v: serde_json::Value) -> serde_json::Value {
    let mut out = serde_json::json!({
        "schema": REPORT_SCHEMA,
        "kind": kind,
        "ok": ok,
    });
    if let (serde_json::Value::Object(fields), Some(obj)) = (v, out.as_object_mut()) {
        for (k, val) in fields {
            obj.entry(k).or_insert(val);
        }
    }
    out
}

/// Prints a successful `report` of `kind` as pretty JSON (in its [`envelope`]) when asked,
/// else the human text; a report that cannot be serialised is an error (exit 2).
pub fn print_report<T: serde::Serialize>(
    json: bool,
    kind: &str,
    report: &T,
    human: impl FnOnce() -> String,
) -> Result<(), CliError> {
    if json {
        let v = serde_json::to_value(report).map_err(CliError::unusable)?;
        println!("{:#}", envelope(kind, true, v));
    } else {
        print!("{}", human());
    }
    Ok(())
}

/// The JSON report of a fetch that failed, on stdout: which partition, what failed
/// (`error_kind`), and the `details` (attempts, the bootstrap so far) — so a script reading
/// `--json` gets a report for every outcome, also a failure before any attempt.
pub fn print_fetch_failed(
    report_kind: &str,
    partition: &str,
    error: &str,
    kind: &str,
    details: Option<serde_json::Value>,
) {
    let mut v = envelope(
        report_kind,
        false,
        serde_json::json!({
            "partition": partition,
            "error": error,
            "error_kind": kind,
        }),
    );
    if let (Some(serde_json::Value::Object(d)), Some(obj)) = (details, v.as_object_mut()) {
        for (k, val) in d {
            obj.entry(k).or_insert(val);
        }
    }
    println!("{v:#}");
}

/// A fetch's progress bar, drawn only for a person at a terminal: never into a log file.
pub struct Bar(Option<ProgressBar>);

impl Bar {
    /// Starts drawing `progress` when stderr is a terminal.
    pub fn on_terminal(progress: &Arc<Progress>) -> Self {
        Self(
            std::io::stderr()
                .is_terminal()
                .then(|| ProgressBar::spawn(progress.clone())),
        )
    }

    /// Clears the bar, so the report printed next is not drawn over.
    pub async fn finish(self) {
        if let Some(bar) = self.0 {
            bar.finish().await;
        }
    }
}
