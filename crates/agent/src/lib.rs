//! The node agent (`diffkeeper agent`): records the containers that Recordings select on one
//! node with one set of eBPF programs, keeps their histories after they die, and serves them
//! over gRPC.
//!
//! - [`control`]: what to record, from the node's pods and the Recordings; the ContainerRecords
//!   that report it; retention.
//! - [`capture`]: the thread that owns the probe and a recorder per container.
//! - [`catalog`]: the histories on disk, one per container incarnation, and the server's view.
//! - [`serving`]: the TLS identity and the gRPC server.

#![warn(missing_docs)]

mod capture;
mod catalog;
mod control;
mod metrics;
mod serving;

pub use catalog::{Catalog, IncarnationMeta};
pub use diffkeeper_capture::ProbeConfig;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// How the agent runs.
#[derive(Debug)]
pub struct AgentConfig {
    /// The node it records (its pods are those bound here).
    pub node_name: String,
    /// The endpoint clients reach this agent at: `https://HOST:PORT`.
    pub advertise: String,
    /// The host directory keeping the histories.
    pub state_dir: PathBuf,
    /// `NAMESPACE/NAME` of the CA Secret the operator keeps.
    pub ca_secret: String,
    /// Tunables of the kernel side.
    pub probe: ProbeConfig,
    /// Where /metrics and /healthz are served (plain HTTP); None serves no metrics.
    pub metrics: Option<std::net::TcpListener>,
}

/// Why the agent stopped, or could not record a container.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Loading or reading the eBPF programs failed.
    #[error(transparent)]
    Capture(#[from] diffkeeper_capture::CaptureError),
    /// Recording a container failed.
    #[error(transparent)]
    Record(#[from] diffkeeper_recorder::RecordError),
    /// A history's store failed.
    #[error(transparent)]
    Store(#[from] diffkeeper_store::StoreError),
    /// The gRPC server failed.
    #[error(transparent)]
    Rpc(#[from] diffkeeper_rpc::RpcError),
    /// The state dir is not usable.
    #[error("cannot use the state dir: {0}; check that --state-dir is a writable host directory")]
    StateDir(std::io::Error),
    /// /proc or cgroupfs could not be read.
    #[error("reading the host's cgroups and mounts: {0}")]
    Host(std::io::Error),
    /// The host has no cgroup v2 hierarchy.
    #[error("no cgroup2 hierarchy is mounted; the agent needs cgroup v2 (alone or beside v1) to tell containers apart")]
    NoCgroup2,
    /// A container's cgroup or overlay was not found.
    #[error("cannot locate the container: {0}")]
    Locate(String),
    /// A setting is wrong; the message says which and how to fix it.
    #[error("{0}")]
    Config(String),
    /// The gRPC socket passed in is not a usable TCP listener.
    #[error("the gRPC listening socket: {0}")]
    Listen(std::io::Error),
    /// The capture thread could not start.
    #[error("cannot start the capture thread: {0}")]
    Thread(std::io::Error),
    /// The metrics server failed.
    #[error("serving /metrics: {0}")]
    Metrics(std::io::Error),
    /// The capture thread stopped earlier; nothing more is recorded.
    #[error("capture on this node has stopped ({0}); restart the agent to record again")]
    CaptureStopped(String),
}

impl AgentError {
    /// The `reason` label of an attach failure in the metrics.
    pub fn attach_reason(&self) -> &'static str {
        match self {
            AgentError::Locate(_) | AgentError::Host(_) | AgentError::NoCgroup2 => "locate",
            AgentError::Capture(_) | AgentError::CaptureStopped(_) | AgentError::Thread(_) => {
                "capture"
            }
            AgentError::Record(_) | AgentError::Store(_) | AgentError::StateDir(_) => "store",
            _ => "other",
        }
    }
}

/// Runs the agent, serving gRPC on `listener`, until `shutdown` resolves. Histories of live
/// containers are left resumable: the next agent on this node continues them after a gap marker.
pub async fn run(
    client: kube::Client,
    config: AgentConfig,
    listener: std::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), AgentError> {
    let catalog = Catalog::open(&config.state_dir).map_err(AgentError::StateDir)?;
    let metrics = Arc::new(metrics::Metrics::default());
    if let Some(listener) = config.metrics {
        let addr = listener.local_addr().map_err(AgentError::Metrics)?;
        let metrics = metrics.clone();
        tokio::spawn(async move {
            if let Err(e) = metrics::serve(listener, metrics).await {
                tracing::error!(error = %e, "the metrics server stopped");
            }
        });
        tracing::info!(%addr, "serving /metrics and /healthz");
    }
    let (capture, capture_thread) =
        capture::spawn(&config.probe, catalog.clone(), metrics.clone())?;
    let identity = serving::identity(
        &client,
        &config.ca_secret,
        &config.advertise,
        &config.node_name,
    )
    .await?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let history = Arc::new(catalog::History {
        node: config.node_name.clone(),
        catalog: catalog.clone(),
        live: Box::new(capture::CaptureViews(Mutex::new(capture.clone()))),
        metrics: metrics.clone(),
    });
    let listen = listener.local_addr().map_err(AgentError::Listen)?;
    let listener = tokio::net::TcpListener::from_std(listener).map_err(AgentError::Listen)?;
    let server = {
        let mut stopped = stopped.clone();
        let authorizer = diffkeeper_rpc::Authorizer::kubernetes(client.clone());
        tokio::spawn(diffkeeper_rpc::serve_on(
            listener,
            history,
            authorizer,
            identity,
            diffkeeper_rpc::DEFAULT_MAX_REQUEST_BYTES,
            async move {
                let _ = stopped.wait_for(|s| *s).await;
            },
        ))
    };
    tracing::info!(%listen, advertise = %config.advertise, "serving histories");
    let control = control::Control::start(
        client,
        config.node_name.clone(),
        config.advertise.clone(),
        catalog,
        capture,
        metrics,
    )?;
    let mut stopped_control = stopped.clone();
    tokio::select! {
        () = control.run(async move { let _ = stopped_control.wait_for(|s| *s).await; }) => {}
        () = shutdown => {}
    }
    let _ = stop.send(true);
    match server.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e.into()),
        Err(e) => tracing::error!(error = %e, "the gRPC server panicked"),
    }
    // Every sender is gone with the control loop and the server: the thread flushes and ends.
    let _ = tokio::task::spawn_blocking(move || capture_thread.join()).await;
    Ok(())
}
