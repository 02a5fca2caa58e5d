//! `quicstrap demo`: the end-to-end demonstration, no flags and no services needed.

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::Args;

use crate::error::CliError;
use crate::report::print_report;

// The options of `quicstrap demo`.
#[derive(Args)]
pub struct DemoArgs {
    /// Work here instead of a temp dir (kept afterwards).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
    /// Run the real path against these Kafka brokers: the source is built from Kafka and the
    /// fetched partition catches up from Kafka.
    #[arg(long)]
    pub kafka: Option<String>,
}

/// Runs the demo and prints its summary.
pub async fn run(a: DemoArgs) -> Result<(), CliError> {
    let opts = super::DemoOptions {
        work_dir: a.work_dir,
        progress: std::io::stderr().is_terminal(),
        kafka: a.kafka,
        ..Default::default()
    };
    eprintln!("quicstrap demo: seeding a ~256 MB partition, starting 3 peers on loopback ...");
    let s = super::run(opts).await.map_err(CliError::failed)?;
    print_report(a.json, "demo", &s, || super::render(&s))
}
