//! The diffkeeper command: record a workload's file changes, then export, log and diff any moment.

mod agent;
mod diff;
mod export;
mod listen;
mod log;
mod operator;
mod record;
mod snapshot;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "diffkeeper",
    version,
    about = "A flight recorder for file systems: record every file change a workload makes, \
             then rewind to any moment."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a command and record every file change it (and its descendants) makes.
    Record(record::Args),
    /// Rebuild the files as they were at a moment, into a directory or a tar.
    Export(export::Args),
    /// Show what changed, when, and by which process.
    Log(log::Args),
    /// Show the files added, removed and changed between two moments.
    Diff(diff::Args),
    /// Run the Kubernetes operator: reconcile Recordings, snapshot dead containers into PVCs.
    Operator(operator::Args),
    /// Fetch a recorded container's files at a moment from its node's agent into a directory
    /// (what the operator's snapshot Pods run).
    Snapshot(snapshot::Args),
    /// Run the node agent: record the containers Recordings select on this node, serve their
    /// histories over gRPC.
    Agent(agent::Args),
}

/// The state dir of a recording, shared by all subcommands.
#[derive(clap::Args)]
struct StateDir {
    /// Directory holding the recording.
    #[arg(long = "state-dir", value_name = "DIR")]
    state_dir: PathBuf,
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DIFFKEEPER_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Record(a) => record::run(a),
        Command::Export(a) => export::run(a).map(|()| 0),
        Command::Log(a) => log::run(a).map(|()| 0),
        Command::Diff(a) => diff::run(a).map(|()| 0),
        Command::Operator(a) => operator::run(a).map(|()| 0),
        Command::Snapshot(a) => snapshot::run(a).map(|()| 0),
        Command::Agent(a) => agent::run(a).map(|()| 0),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("diffkeeper: error: {e:#}");
            std::process::exit(2);
        }
    }
}

/// Opens a recording for reading, with the state dir named in any error.
fn open_store(state: &StateDir) -> anyhow::Result<diffkeeper_store::Store> {
    use anyhow::Context;
    diffkeeper_store::Store::open(&state.state_dir)
        .with_context(|| format!("opening recording {}", state.state_dir.display()))
}

/// Resolves a time expression against a recording.
fn moment(store: &diffkeeper_store::Store, expr: &str) -> anyhow::Result<diffkeeper_store::Point> {
    let parsed: diffkeeper_store::TimeExpr = expr.parse()?;
    Ok(store.resolve(&parsed)?)
}

/// "+2m14.123s": a moment as an offset from the recording's start.
fn offset_label(span: &diffkeeper_store::Span, mono_ns: u64) -> String {
    let ns = mono_ns.saturating_sub(span.start_mono_ns);
    let (secs, ms) = (ns / 1_000_000_000, (ns / 1_000_000) % 1000);
    if secs >= 60 {
        format!("+{}m{:02}.{:03}s", secs / 60, secs % 60, ms)
    } else {
        format!("+{secs}.{ms:03}s")
    }
}
