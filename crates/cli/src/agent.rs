//! `diffkeeper agent`: the per-node recorder of a cluster (see the diffkeeper-agent crate).

use anyhow::Context;
use diffkeeper_agent::{AgentConfig, ProbeConfig};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// The node this agent records (the DaemonSet passes spec.nodeName).
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// Where the gRPC server listens (TLS only); a socket passed by the service manager
    /// (LISTEN_FDS, systemd socket activation) is used instead when there is one.
    #[arg(long, default_value = "0.0.0.0:7443", value_name = "ADDR")]
    listen: SocketAddr,
    /// Where /metrics and /healthz are served (plain HTTP, for Prometheus and probes).
    #[arg(long, default_value = "0.0.0.0:9712", value_name = "ADDR")]
    metrics_addr: SocketAddr,
    /// The endpoint written into ContainerRecords for clients: https://NODE_IP:PORT.
    #[arg(long, value_name = "URL")]
    advertise: String,
    /// Host directory keeping the histories; they outlive the containers and this agent.
    #[arg(long, default_value = "/var/lib/diffkeeper", value_name = "DIR")]
    state_dir: PathBuf,
    /// NAMESPACE/NAME of the Secret with the CA (ca.crt, ca.key) the operator keeps.
    #[arg(long, default_value = "diffkeeper/diffkeeper-ca")]
    ca_secret: String,
    /// Kernel ring buffer size in bytes, shared by every recorded container of the node.
    #[arg(long, default_value_t = 64 << 20)]
    ring_size: u32,
    /// Writes larger than this are read back from the file instead of copied from the syscall.
    #[arg(long, default_value_t = 1 << 20)]
    max_write_capture: u64,
    /// Where the syscall programs attach: `syscalls` (a tracepoint per hooked syscall, so the
    /// node's other syscalls run no program; needs tracefs) or `raw` (the raw syscall
    /// tracepoints, which every syscall of the node passes). Default: `syscalls` where it
    /// works, else `raw`.
    #[arg(long, value_name = "POINT", env = "DIFFKEEPER_ATTACH_POINT")]
    attach_point: Option<diffkeeper_capture::AttachPoint>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    // glibc keeps freed heap below its mmap threshold for reuse, and that threshold grows
    // to 32 MiB after the first large free: every history's commit buffers and index cache
    // then stayed resident after use, 2.7 MiB per open history (store/examples/open_writers).
    // Buffers of 256 KiB and more come from mmap and go back to the kernel when freed:
    // 0.24 MiB per open history. One process-wide knob, set before any thread starts.
    // SAFETY: mallopt only changes allocator parameters; no other thread runs yet.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10);
    }
    let probe = ProbeConfig {
        ring_bytes: args.ring_size,
        max_write_capture: args.max_write_capture,
        attach: args.attach_point,
        ..ProbeConfig::default()
    };
    let listener = crate::listen::listener(args.listen, "--listen")?;
    let metrics = std::net::TcpListener::bind(args.metrics_addr).with_context(|| {
        format!(
            "cannot listen on --metrics-addr={}: is the port taken?",
            args.metrics_addr
        )
    })?;
    // tokio takes over only non-blocking sockets.
    metrics
        .set_nonblocking(true)
        .context("making the metrics socket non-blocking")?;
    let config = AgentConfig {
        node_name: args.node_name,
        advertise: args.advertise,
        state_dir: args.state_dir,
        ca_secret: args.ca_secret,
        probe,
        metrics: Some(metrics),
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let client = kube::Client::try_default()
            .await
            .context("connecting to the Kubernetes API (in a pod: its service account; else KUBECONFIG or ~/.kube/config)")?;
        diffkeeper_agent::run(client, config, listener, crate::operator::shutdown_signal())
            .await
            .context("agent")
    })
}
