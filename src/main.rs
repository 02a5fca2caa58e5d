//! `quicstrap`: a thin command-line front end over the engine (the `quicstrap` crate), which
//! also assembles what the engine leaves out: the HTTPS baseline (`quicstrap-baseline`), the
//! demo and its seed generator (`testkit`), the progress bar. This file parses, hands the
//! subcommand its options, and turns the outcome into the exit code: 0 done, 1 the work
//! failed, 2 bad arguments or input the command cannot use, 73 the partition does not fit on
//! the disk, 75 stopped by a signal with the work kept.

mod admin;
mod args;
mod config;
mod demo;
mod error;
mod fetch;
mod progress_bar;
mod recover;
mod report;
mod seed;
mod serve;
mod stop;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use error::CliError;

// The command line; `--config FILE` is spliced in by `config::expand` before parsing.
#[derive(Parser)]
#[command(
    name = "quicstrap",
    version,
    about = "Bootstrap RocksDB partitions from peers over QUIC"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the partitions under a data directory to allowed peers.
    Serve(serve::ServeArgs),
    /// Fetch one partition from the first peer that can serve it.
    Fetch(fetch::FetchArgs),
    /// Restore every partition a node is assigned: from discovered peers, then Kafka.
    Recover(recover::RecoverArgs),
    /// Create a source partition of N records (several SST files).
    Seed(seed::SeedArgs),
    /// Run the end-to-end demo on embedded defaults.
    Demo(demo::cli::DemoArgs),
    /// Check a configuration file: its syntax, keys and values.
    Config(admin::ConfigArgs),
    /// Show a serving node's live transfers, limits and draining state (its admin endpoint).
    Status(admin::StatusArgs),
    /// Change a serving node without restarting it: drain, set a limit, reload its file.
    Admin(admin::AdminArgs),
}

/// The command line's own tokens after the subcommand: what a reload puts after the file's.
fn argv_tail(argv: &[std::ffi::OsString]) -> Vec<std::ffi::OsString> {
    argv.get(2..).map(<[_]>::to_vec).unwrap_or_default()
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // Quiet by default: a failed command says one line; RUST_LOG tells more.
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never into a log file.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let original: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let (argv, file) = match config::expand(original.clone(), &Cli::command()) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("quicstrap: {e}");
            return ExitCode::from(2);
        }
    };
    let cli = Cli::parse_from(argv);
    // The per-store policy of the file, for `fetch` and `recover`.
    let stores = file.as_ref().map(|f| f.stores.clone()).unwrap_or_default();
    let runtime = tokio::runtime::Runtime::new();
    let outcome = match &runtime {
        Ok(rt) => rt.block_on(async move {
            match cli.cmd {
                Cmd::Serve(a) => {
                    serve::run(
                        a,
                        file.map(|f| serve::Reloadable::new(f, argv_tail(&original))),
                    )
                    .await
                }
                Cmd::Config(a) => admin::config(a, &Cli::command()),
                Cmd::Status(a) => admin::status(a).await,
                Cmd::Admin(a) => admin::admin(a).await,
                Cmd::Fetch(a) => fetch::run(a, stores).await,
                Cmd::Recover(a) => recover::run(a, stores).await,
                Cmd::Seed(a) => seed::run(a),
                Cmd::Demo(a) => demo::cli::run(a).await,
            }
        }),
        Err(e) => Err(CliError::Unusable(format!("cannot start runtime: {e}"))),
    };
    // The one exit point; said while the runtime still stands, since dropping it waits for
    // blocking work still running.
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("quicstrap: {}", e.message());
            e.exit_code()
        }
    }
}
