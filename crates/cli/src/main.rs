//! The diffkeeper command: record a workload's file changes, then export, log and diff any moment.

mod agent;
mod bisect;
mod diff;
mod export;
mod grep;
mod listen;
mod log;
mod mount;
mod operator;
mod pack;
mod quoted;
mod record;
mod report;
mod snapshot;
mod verify;

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
    /// List every moment a file's content started or stopped matching a pattern.
    Grep(grep::Args),
    /// Find the change to a file that made a check fail, by binary search over its changes.
    Bisect(bisect::Args),
    /// Write one self-contained HTML page: activity per file and process over time, gaps, the
    /// exit, and the log and diff of any moment clicked.
    Report(report::Args),
    /// Read every stored block against its checksum; name the files and moments any damage
    /// breaks.
    Verify(verify::Args),
    /// Show the files at a moment as a read-only directory tree (FUSE), read from the store as
    /// they are opened.
    Mount(mount::Args),
    /// Pack a finished recording into one checksummed file (to upload from a failed CI job).
    Pack(pack::PackArgs),
    /// Unpack a file made by `pack` into a new state dir, checking every byte.
    Unpack(pack::UnpackArgs),
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
        Command::Export(a) => export::run(a),
        Command::Log(a) => log::run(a).map(|()| 0),
        Command::Diff(a) => diff::run(a).map(|()| 0),
        Command::Grep(a) => grep::run(a).map(|()| 0),
        Command::Bisect(a) => bisect::run(a).map(|()| 0),
        Command::Report(a) => report::run(a).map(|()| 0),
        Command::Verify(a) => verify::run(a),
        Command::Mount(a) => mount::run(a).map(|()| 0),
        Command::Pack(a) => pack::pack(a).map(|()| 0),
        Command::Unpack(a) => pack::unpack(a).map(|()| 0),
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

/// Says on stderr what a recording does not hold: paths outside its scope, and the end of a
/// recording that is still being recorded (read through its live recorder, as of now) or whose
/// recorder was killed (kill -9, OOM, a node lost) before it finished, so the history stops at
/// its last commit.
fn note_what_is_missing(store: &diffkeeper_store::Store) {
    let scope = store.scope();
    if !scope.is_everything() {
        eprintln!(
            "diffkeeper: note: this recording kept {scope}: other paths were not recorded, so \
             they are not shown"
        );
    }
    let span = store.span();
    if let Some(pid) = store.live_recorder() {
        eprintln!(
            "diffkeeper: note: this recording is still running (recorder pid {pid}): shown as \
             committed at {} (@seq:{}); run again to see later changes",
            diffkeeper_store::format_wall(span.wall_of(span.end_mono_ns)),
            span.last_seq
        );
    } else if !span.finished {
        eprintln!(
            "diffkeeper: note: this recording was cut short: its recorder stopped without \
             finishing it (killed, or its disk full) after {} (@seq:{}); later changes were not \
             recorded",
            diffkeeper_store::format_wall(span.wall_of(span.end_mono_ns)),
            span.last_seq
        );
    }
}

/// Resolves a time expression against a recording. A moment just past the end is taken as
/// the end (people type the duration they saw), and said so.
fn moment(store: &diffkeeper_store::Store, expr: &str) -> anyhow::Result<diffkeeper_store::Point> {
    use diffkeeper_store::TimeExpr;
    let parsed: TimeExpr = expr.parse()?;
    let point = store.resolve(&parsed)?;
    let span = store.span();
    let asked = match parsed {
        TimeExpr::Offset(d) => u64::try_from(d.as_nanos())
            .ok()
            .map(|ns| span.start_mono_ns.saturating_add(ns)),
        TimeExpr::Absolute { wall_ns } => u64::try_from(wall_ns - span.started_wall_ns)
            .ok()
            .map(|ns| span.start_mono_ns.saturating_add(ns)),
        _ => None,
    };
    if asked.is_some_and(|asked| asked > span.end_mono_ns) {
        eprintln!(
            "diffkeeper: warning: {expr} is after the recording's end ({}, {}); using the end",
            offset_label(&span, span.end_mono_ns),
            diffkeeper_store::format_wall(span.wall_of(span.end_mono_ns)),
        );
    }
    Ok(point)
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
