//! What the commands print besides their own lines: a report as JSON or as a human line, the
//! JSON of a failed fetch, and the progress bar on a terminal.

use std::io::IsTerminal;
use std::sync::Arc;

use crate::progress_bar::ProgressBar;
use quicstrap::client::Progress;

use crate::error::CliError;

/// Prints `report` as pretty JSON when asked, else the human text; a report that cannot be
/// serialised is an error (exit 2).
pub fn print_report<T: serde::Serialize>(
    json: bool,
    report: &T,
    human: impl FnOnce() -> String,
) -> Result<(), CliError> {
    if json {
        let s = serde_json::to_string_pretty(report).map_err(CliError::unusable)?;
        println!("{s}");
    } else {
        print!("{}", human());
    }
    Ok(())
}

/// The JSON report of a fetch that failed, on stdout: which partition, what failed
/// (`error_kind`), and the `details` (attempts, the bootstrap so far) — so a script reading
/// `--json` gets a report for every outcome, also a failure before any attempt.
pub fn print_fetch_failed(
    partition: &str,
    error: &str,
    kind: &str,
    details: Option<serde_json::Value>,
) {
    let mut v = serde_json::json!({
        "partition": partition,
        "ok": false,
        "error": error,
        "error_kind": kind,
    });
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
