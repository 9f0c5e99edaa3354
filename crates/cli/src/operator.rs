//! `diffkeeper operator`: the cluster-wide controller (see the diffkeeper-operator crate).

use std::net::SocketAddr;

use anyhow::Context;
use diffkeeper_operator::{OperatorConfig, SnapshotTemplate};

#[derive(clap::Args)]
pub struct Args {
    /// Where /metrics, /healthz and /readyz are served; a socket passed by the service manager
    /// (LISTEN_FDS, systemd socket activation) is used instead when there is one.
    #[arg(long, default_value = "0.0.0.0:8080", value_name = "ADDR")]
    http_addr: SocketAddr,
    /// The operator's own namespace: its leader-election Lease and the agents' CA Secret.
    #[arg(long, env = "POD_NAMESPACE", default_value = "diffkeeper")]
    operator_namespace: String,
    /// This replica's identity in the Lease (defaults to the pod name, else host and pid).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Reconcile Recordings of this namespace only (default: every namespace).
    #[arg(long, value_name = "NAMESPACE")]
    watch_namespace: Option<String>,
    /// Image with the diffkeeper binary, run by snapshot Pods.
    #[arg(
        long,
        env = "DIFFKEEPER_IMAGE",
        default_value = "ghcr.io/diffkeeper/diffkeeper:latest"
    )]
    snapshot_image: String,
    /// ServiceAccount of snapshot Pods; the agent must let it `get recordings/export`.
    #[arg(long, default_value = "diffkeeper-snapshot")]
    snapshot_service_account: String,
    /// ConfigMap (in each Recording's namespace) holding the agents' CA as ca.crt.
    #[arg(long, default_value = "diffkeeper-agent-ca")]
    agent_ca_configmap: String,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let identity = args.identity.unwrap_or_else(|| {
        let host = nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default();
        format!("{host}-{}", std::process::id())
    });
    let http = crate::listen::listener(args.http_addr, "--http-addr")?;
    let config = OperatorConfig {
        operator_namespace: args.operator_namespace,
        identity,
        namespace: args.watch_namespace,
        snapshot: SnapshotTemplate {
            image: args.snapshot_image,
            service_account: args.snapshot_service_account,
            agent_ca_configmap: args.agent_ca_configmap,
        },
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let client = kube::Client::try_default()
            .await
            .context("connecting to the Kubernetes API (in a pod: its service account; else KUBECONFIG or ~/.kube/config)")?;
        diffkeeper_operator::run(client, config, http, shutdown_signal()).await.context("operator")
    })
}

/// SIGTERM (a pod being stopped) or Ctrl-C.
pub(crate) async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
