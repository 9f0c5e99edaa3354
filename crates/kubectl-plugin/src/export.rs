//! `kubectl diffkeeper export`: a recorded container's files at one moment, streamed by its
//! node's agent into a new directory (unpacked safely) or a tar.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use diffkeeper_rpc::{export_request::Tree, ExportRequest, ExportSummary, RpcError};
use indicatif::{ProgressBar, ProgressStyle};
use kube::ResourceExt;
use serde_json::json;

use crate::agent::AgentArgs;
use crate::cluster::ClusterArgs;
use crate::grpc_status::{explain, Call};
use crate::target::TargetArgs;

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("destination").required(true).args(["out", "tar"])))]
pub struct Args {
    #[command(flatten)]
    target: TargetArgs,
    /// The moment: exit, exit-5s (before the container's last change), 2m14s (from the start),
    /// -5s (before the end), an RFC 3339 time, start, end.
    #[arg(long, allow_hyphen_values = true, value_name = "TIME")]
    time: String,
    /// Unpack the files into DIR (new or empty); recorded absolute paths are mirrored below it.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Write the tar to FILE, or to stdout with `-`.
    #[arg(long, value_name = "FILE", allow_hyphen_values = true)]
    tar: Option<PathBuf>,
    /// Only paths matching this glob (e.g. '/var/log/**'); repeatable.
    #[arg(long = "path", value_name = "GLOB")]
    paths: Vec<String>,
    /// full: the container's whole view (image plus changes); changes: only what it changed.
    #[arg(long, value_enum, default_value = "full")]
    tree: TreeArg,
    /// Output format of the summary: json (on stdout).
    #[arg(short = 'o', long = "output", value_enum, value_name = "FORMAT")]
    output: Option<Output>,
    #[command(flatten)]
    agent: AgentArgs,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum TreeArg {
    Full,
    Changes,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Output {
    Json,
}

/// Where the files go.
enum Destination {
    Dir(PathBuf),
    TarFile(PathBuf),
    Stdout,
}

pub async fn run(cluster: &ClusterArgs, args: Args) -> anyhow::Result<()> {
    let destination = destination(&args)?;
    let (record, mut agent) = args.agent.reach(cluster, &args.target).await?;
    let call = Call {
        permission: "get recordings/export",
        granted_by: "the diffkeeper-snapshot or admin role",
        record: &record,
        route: &agent.route,
    };
    let request = ExportRequest {
        container: Some(crate::target::selector(&record)),
        time: args.time.clone(),
        path_globs: args.paths.clone(),
        tree: match args.tree {
            TreeArg::Full => Tree::Full,
            TreeArg::Changes => Tree::Changes,
        } as i32,
    };

    let progress = progress_bar();
    let on_progress = |received: u64| progress.set_position(received);
    let client = &mut agent.connection;
    let result = match &destination {
        Destination::Dir(dir) => {
            diffkeeper_rpc::export_to_dir(client, request, dir, on_progress).await
        }
        Destination::TarFile(path) => {
            // Created only now, so an agent that cannot be reached leaves no empty file behind.
            let file = std::fs::File::create(path)
                .with_context(|| format!("creating {}", path.display()))?;
            let result = diffkeeper_rpc::export_to_writer(
                client,
                request,
                std::io::BufWriter::new(file),
                on_progress,
            )
            .await;
            if result.is_err() {
                // Half a tar reads as a whole one with files missing: leave none.
                let _ = std::fs::remove_file(path);
            }
            result
        }
        Destination::Stdout => {
            diffkeeper_rpc::export_to_writer(client, request, std::io::stdout().lock(), on_progress)
                .await
        }
    };
    progress.finish_and_clear();
    let summary = result.map_err(|e| match e {
        RpcError::Status(status) => explain(&status, &call),
        RpcError::Unpack { .. } if matches!(destination, Destination::Dir(_)) => {
            anyhow::Error::new(e).context("the files unpacked so far are incomplete")
        }
        e => anyhow::Error::new(e),
    })?;

    let target = match &destination {
        Destination::Dir(dir) | Destination::TarFile(dir) => dir.display().to_string(),
        Destination::Stdout => "stdout".into(),
    };
    if args.output == Some(Output::Json) {
        println!("{}", summary_json(&summary, &record, &target));
    } else {
        eprintln!(
            "exported the files of {} at {} ({} tree) to {target}: {summary}",
            crate::target::describe(&record),
            summary.time,
            match args.tree {
                TreeArg::Full => "full",
                TreeArg::Changes => "changes",
            },
        );
    }
    if !summary.scope.is_empty() {
        eprintln!(
            "note: the Recording's spec.paths kept {}: other paths were not recorded, so the \
             export does not hold them",
            summary.scope
        );
    }
    if !summary.inexact.is_empty() {
        eprintln!(
            "warning: {} file(s) are exact only up to a gap in the recording at that moment \
             (`kubectl diffkeeper log` shows the gaps): {}",
            summary.inexact.len(),
            first_few(&summary.inexact)
        );
    }
    Ok(())
}

/// Checks the destination before anything is asked of the cluster.
fn destination(args: &Args) -> anyhow::Result<Destination> {
    if let Some(dir) = &args.out {
        if !is_new_or_empty(dir)? {
            bail!(
                "{} is not empty: export into a new or empty directory, so that the files you \
                 see are the container's and nothing else",
                dir.display()
            );
        }
        return Ok(Destination::Dir(dir.clone()));
    }
    let tar = args.tar.clone().expect("clap requires --out or --tar");
    if tar.as_os_str() != "-" {
        return Ok(Destination::TarFile(tar));
    }
    if std::io::stdout().is_terminal() {
        bail!("refusing to write a tar to the terminal: redirect stdout (`--tar=- > files.tar`) or give --tar FILE");
    }
    if args.output == Some(Output::Json) {
        bail!("--tar=- writes the tar to stdout, where -o json would print the summary: write the tar to a file with --tar FILE");
    }
    Ok(Destination::Stdout)
}

fn is_new_or_empty(dir: &Path) -> anyhow::Result<bool> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(e).with_context(|| format!("reading {}", dir.display())),
    }
}

/// Bytes received so far, on stderr; not drawn when stderr is not a terminal (logs, CI).
fn progress_bar() -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {bytes} received ({bytes_per_sec}, {elapsed})")
            .expect("a valid progress template"),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    bar
}

fn summary_json(
    s: &ExportSummary,
    record: &diffkeeper_api::ContainerRecord,
    target: &str,
) -> serde_json::Value {
    json!({
        "namespace": record.namespace(),
        "pod": record.spec.pod.name,
        "container": record.spec.container,
        "containerId": record.spec.container_id,
        "node": record.spec.node,
        "time": s.time,
        "to": target,
        "files": s.files,
        "dirs": s.dirs,
        "symlinks": s.symlinks,
        "bytes": s.bytes,
        "inexact": s.inexact,
        "scope": s.scope,
    })
}

fn first_few(paths: &[String]) -> String {
    let mut shown: Vec<String> = paths.iter().take(5).cloned().collect();
    if paths.len() > 5 {
        shown.push(format!("and {} more", paths.len() - 5));
    }
    shown.join(", ")
}
