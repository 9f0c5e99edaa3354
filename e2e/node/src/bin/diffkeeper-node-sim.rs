//! `diffkeeper-node-sim`: plays kubelet's part for one node against a real API server, running
//! the node's pods in a containerd through the CRI. See e2e/node/README.md.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use diffkeeper_node_sim::kubelet::images::E2E_BUSYBOX_IMAGE;
use diffkeeper_node_sim::{ApiServerInfo, ImageAliases, Kubelet, KubeletConfig, Runtime};
use kube::config::{KubeConfigOptions, Kubeconfig};
use tracing_subscriber::EnvFilter;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Plays kubelet's part on one simulated node (end-to-end tests)"
)]
struct Args {
    /// The Node to register; pods with this spec.nodeName are run.
    #[arg(long)]
    node_name: String,
    /// The kubeconfig to reach the API server with (needs rights over nodes, pods, pods/status,
    /// PVCs, PVs, events, leases, configmaps, secrets, serviceaccounts/token).
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: PathBuf,
    /// containerd's socket (CONTAINERD_ADDRESS in scripts/e2e-runtime.sh's DIR/env).
    #[arg(long)]
    containerd_socket: PathBuf,
    /// Pod directories (emptyDirs, written volumes, termination messages) and container logs.
    #[arg(long)]
    state_dir: PathBuf,
    /// Where claims are provisioned, as VOLUMES/<namespace>/<claim> [default: STATE_DIR/volumes].
    #[arg(long)]
    volumes_dir: Option<PathBuf>,
    /// NAME=REF: run the runtime's image REF for pod images named NAME (repository NAME or
    /// ending in /NAME, any tag). Repeatable; wins over the default busybox=<e2e busybox image>.
    #[arg(long = "image-alias", value_name = "NAME=REF")]
    image_aliases: Vec<String>,
    /// A file whose contents are every pod's service account token [default: TokenRequest for
    /// the pod's service account, or no token when it does not exist].
    #[arg(long)]
    service_account_token_file: Option<PathBuf>,
    /// Seconds between Node status and Lease renewals.
    #[arg(long, default_value_t = 10)]
    heartbeat_seconds: u64,
    /// Milliseconds between looks at a pod's containers.
    #[arg(long, default_value_t = 500)]
    poll_ms: u64,
    /// The crash-loop back-off's first delay (the first restart is immediate).
    #[arg(long, default_value_t = 10)]
    crash_loop_backoff_seconds: u64,
    /// The most a pod gets to stop when the simulator is told to shut down (SIGTERM/SIGINT).
    #[arg(long, default_value_t = 10)]
    shutdown_grace_seconds: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();

    let kubeconfig = Kubeconfig::read_from(&args.kubeconfig)
        .with_context(|| format!("reading {}", args.kubeconfig.display()))?;
    let kube_config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .context("loading the kubeconfig")?;
    let api = ApiServerInfo::from_kube_config(&kube_config);
    let client = kube::Client::try_from(kube_config).context("building the API client")?;
    let runtime = Runtime::connect(&args.containerd_socket).await?;

    let mut config = KubeletConfig::new(&args.node_name, &args.state_dir);
    if let Some(dir) = args.volumes_dir {
        config.volumes_dir = dir;
    }
    let mut images = ImageAliases::default();
    for rule in &args.image_aliases {
        images.add_rule(rule)?;
    }
    config.images = images;
    if let Some(file) = &args.service_account_token_file {
        let token =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        config.service_account_token = Some(token.trim().to_string());
    }
    config.heartbeat_interval = Duration::from_secs(args.heartbeat_seconds);
    config.poll_interval = Duration::from_millis(args.poll_ms);
    config.crash_loop_backoff = Duration::from_secs(args.crash_loop_backoff_seconds);
    config.shutdown_grace = Duration::from_secs(args.shutdown_grace_seconds);
    tracing::info!(
        node = %args.node_name,
        busybox = E2E_BUSYBOX_IMAGE,
        "starting; images: {:?}",
        config.images
    );

    let shutdown = async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM"),
            _ = int.recv() => tracing::info!("SIGINT"),
        }
    };
    Kubelet::new(client, runtime, config, api)?
        .run(shutdown)
        .await?;
    tracing::info!("stopped");
    Ok(())
}
