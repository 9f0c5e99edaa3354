//! kubectl-diffkeeper: the kubectl plugin that lists recorded containers and reads their history
//! (change log, files at any moment) from the node agent that keeps it, even after the pod is gone.

mod agent;
mod cluster;
mod export;
mod grpc_status;
mod log;
mod ls;
mod target;
mod tunnel;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "kubectl-diffkeeper",
    bin_name = "kubectl diffkeeper",
    version,
    about = "Read what DiffKeeper recorded of a cluster's containers: which ones, every file \
             change, and their files at any moment, even after the pod is gone.",
    after_help = "Examples:\n  \
        kubectl diffkeeper ls -n ci\n  \
        kubectl diffkeeper log pod/flaky-7d9 -c app --from=-30s --to=exit\n  \
        kubectl diffkeeper export pod/flaky-7d9 --time=exit-5s --out=./flaky"
)]
struct Cli {
    #[command(flatten)]
    cluster: cluster::ClusterArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the recorded containers (from the ContainerRecords; no agent is asked).
    Ls(ls::Args),
    /// Show every file change of a recorded container, oldest first.
    Log(log::Args),
    /// Write a recorded container's files at one moment into a directory or a tar.
    Export(export::Args),
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
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Ls(a) => ls::run(&cli.cluster, a).await,
            Command::Log(a) => log::run(&cli.cluster, a).await,
            Command::Export(a) => export::run(&cli.cluster, a).await,
        }
    });
    // Dropping the runtime would wait for port-forward tasks still draining their WebSockets; the
    // answer is complete, so leave without them.
    runtime.shutdown_background();
    if let Err(e) = result {
        // kubectl's own form: "error: ..." and exit status 1.
        eprintln!("error: {}", sentence(&e));
        std::process::exit(1);
    }
}

/// The error and its causes in one line. Some causes (the agent client's) already quote their
/// own sources; each text is said once.
fn sentence(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}
