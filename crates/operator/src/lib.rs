//! The DiffKeeper operator: one leader at a time reconciles Recordings, snapshots recorded
//! containers when they die, and keeps the implicit Recording for annotated pods.

#![warn(missing_docs)]

pub mod access;
pub mod controller;
#[cfg(test)]
mod fixtures;
pub mod implicit;
pub mod metrics;
pub mod snapshot;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use tracing::{info, warn};

pub use snapshot::SnapshotTemplate;

/// How the operator runs.
#[derive(Clone, Debug)]
pub struct OperatorConfig {
    /// The operator's own namespace: its leader Lease and the agents' CA Secret live there.
    pub operator_namespace: String,
    /// This replica's name in the Lease (the pod name in a cluster).
    pub identity: String,
    /// Reconcile only this namespace (a namespaced install, or one test among others); None
    /// watches the whole cluster.
    pub namespace: Option<String>,
    /// How snapshot Pods are made.
    pub snapshot: SnapshotTemplate,
}

/// Why the operator stopped.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    /// The leader Lease could not be read or written.
    #[error("leader election: {0}")]
    Lease(#[from] kube_lease_manager::LeaseManagerError),
    /// Another replica took the Lease.
    #[error("lost the leader Lease to another replica; exiting so only one replica reconciles")]
    LostLease,
    /// The agents' CA could not be made or read.
    #[error("provisioning the agents' CA: {0}")]
    Ca(#[from] access::AccessError),
    /// The metrics server failed.
    #[error("serving metrics on {addr}: {source}")]
    Http {
        /// Where it served.
        addr: SocketAddr,
        /// Why it stopped.
        source: std::io::Error,
    },
    /// The metrics socket passed in is not a usable TCP listener.
    #[error("the metrics listening socket: {0}")]
    HttpSocket(std::io::Error),
}

/// Runs, serving /metrics, /healthz and /readyz on `http`, until `shutdown` resolves (then
/// returns Ok) or leadership is lost (then errors, so the process exits and its replacement
/// waits its turn).
pub async fn run(
    client: Client,
    config: OperatorConfig,
    http: std::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), OperatorError> {
    let metrics = Arc::new(metrics::Metrics::default());
    let addr = http.local_addr().map_err(OperatorError::HttpSocket)?;
    let http = {
        let metrics = metrics.clone();
        tokio::spawn(async move {
            metrics::serve(http, metrics)
                .await
                .map_err(|source| OperatorError::Http { addr, source })
        })
    };
    info!(%addr, "serving /metrics, /healthz and /readyz");
    // A standby replica is healthy and ready: it is doing its job, which is to wait.
    metrics.ready.store(true, Ordering::Relaxed);

    let lease = LeaseManagerBuilder::new(client.clone(), "diffkeeper-operator")
        .with_namespace(&config.operator_namespace)
        .with_identity(&config.identity)
        .with_duration(15)
        .with_grace(5)
        .build()
        .await?;
    let (mut leading, lease_task) = lease.watch().await;
    info!(identity = %config.identity, namespace = %config.operator_namespace, "waiting for the leader Lease");
    let mut shutdown = std::pin::pin!(shutdown);
    tokio::select! {
        _ = &mut shutdown => return Ok(()),
        result = leading.wait_for(|leader| *leader) => {
            if result.is_err() {
                return Err(OperatorError::LostLease);
            }
        }
        result = http => return result.unwrap_or(Ok(())),
    }
    info!(identity = %config.identity, "leading: reconciling Recordings");
    metrics.leader.set(1);
    let ca_pem = access::ensure_ca(&client, &config.operator_namespace).await?;

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let reconciling = tokio::spawn(controller::run(
        client.clone(),
        config.namespace.clone(),
        metrics.clone(),
        config.snapshot.clone(),
        ca_pem,
        async {
            let _ = stop_rx.await;
        },
    ));
    let implicit = tokio::spawn(implicit::run(client, config.namespace.clone()));
    let outcome = tokio::select! {
        _ = &mut shutdown => Ok(()),
        _ = leading.wait_for(|leader| !*leader) => Err(OperatorError::LostLease),
    };
    implicit.abort();
    let _ = stop_tx.send(());
    if let Err(e) = reconciling.await {
        warn!(error = %e, "controller task ended abnormally");
    }
    // Dropping the receiver lets the lease task release the Lease for the next replica.
    drop(leading);
    let _ = lease_task.await;
    metrics.leader.set(0);
    outcome
}
