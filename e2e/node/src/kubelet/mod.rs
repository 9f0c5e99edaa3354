//! kubelet's part on one simulated node, against a real API server: the Node and its heartbeat
//! ([`node`]), the pods bound to it (watched by `spec.nodeName`) run through containerd's CRI
//! ([`crate::runtime`]) with their volumes ([`volumes`]), environment and mounts ([`spec`]),
//! their status reported back and their deletion carried out ([`worker`]); its streaming
//! port-forward endpoint, which the API server's `pods/portforward` reaches ([`port_forward`]).
//!
//! What it leaves out (see e2e/node/README.md): probes, resource limits (every pod is
//! BestEffort), image pulls (images are mapped to the runtime's, [`images`]), CNI (pods use the
//! host's network, IP 127.0.0.1), init and ephemeral containers, lifecycle hooks.

pub mod clock;
pub mod events;
pub mod images;
pub mod node;
pub mod port_forward;
pub mod spec;
pub mod volumes;
pub mod worker;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use base64::Engine as _;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, ResourceExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::runtime::{PodHandle, Runtime};
pub use images::ImageAliases;
pub use node::NodeFacts;
use worker::Seen;

/// How the simulated kubelet behaves.
#[derive(Debug, Clone)]
pub struct KubeletConfig {
    pub node_name: String,
    /// Pod directories (`pods/<uid>`: emptyDirs, written volumes, termination message files)
    /// and container logs (`logs/`).
    pub state_dir: PathBuf,
    /// Where claims are provisioned: `<volumes_dir>/<namespace>/<claim>`.
    pub volumes_dir: PathBuf,
    pub images: ImageAliases,
    /// The token every pod's service account volume gets; `None`: ask the TokenRequest API.
    pub service_account_token: Option<String>,
    /// How often the Node status and Lease are renewed.
    pub heartbeat_interval: Duration,
    /// How often a pod's containers are looked at (kubelet's PLEG relists every second).
    pub poll_interval: Duration,
    /// kubelet's crash-loop back-off: the first restart is at once, the next after this,
    /// doubling to 5 minutes.
    pub crash_loop_backoff: Duration,
    /// First retry of a pod that cannot start (failed mount, missing image), doubling...
    pub retry_interval: Duration,
    /// ...up to this.
    pub max_retry_interval: Duration,
    /// The most a pod gets to stop when the simulator shuts down.
    pub shutdown_grace: Duration,
    /// Where kubelet's streaming endpoint (port-forward) listens; the Node reports its port in
    /// `status.daemonEndpoints.kubeletEndpoint`.
    pub streaming_address: SocketAddr,
}

impl KubeletConfig {
    pub fn new(node_name: impl Into<String>, state_dir: impl Into<PathBuf>) -> KubeletConfig {
        let state_dir = state_dir.into();
        KubeletConfig {
            node_name: node_name.into(),
            volumes_dir: state_dir.join("volumes"),
            state_dir,
            images: ImageAliases::default(),
            service_account_token: None,
            heartbeat_interval: Duration::from_secs(10),
            poll_interval: Duration::from_millis(500),
            crash_loop_backoff: Duration::from_secs(10),
            retry_interval: Duration::from_secs(1),
            max_retry_interval: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(10),
            streaming_address: SocketAddr::from(([127, 0, 0, 1], 0)),
        }
    }
}

/// The API server as pods see it: where in-cluster clients connect, and its CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiServerInfo {
    pub host: String,
    pub port: u16,
    /// PEM; `ca.crt` in the service account volume.
    pub ca_pem: Option<String>,
}

impl ApiServerInfo {
    pub fn from_kube_config(config: &kube::Config) -> ApiServerInfo {
        let url = &config.cluster_url;
        let ca_pem = config.root_cert.as_ref().map(|certs| {
            certs
                .iter()
                .map(|der| {
                    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
                    let lines: Vec<&str> = b64
                        .as_bytes()
                        .chunks(64)
                        .map(|c| std::str::from_utf8(c).unwrap_or_default())
                        .collect();
                    format!(
                        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
                        lines.join("\n")
                    )
                })
                .collect()
        });
        ApiServerInfo {
            host: url
                .host()
                .unwrap_or("127.0.0.1")
                .trim_matches(['[', ']'])
                .to_string(),
            port: url.port_u16().unwrap_or(443),
            ca_pem,
        }
    }
}

/// What every part of the simulator shares.
pub struct Ctx {
    pub client: Client,
    pub runtime: Runtime,
    pub config: KubeletConfig,
    pub api: ApiServerInfo,
    pub facts: NodeFacts,
    /// The streaming endpoint's port, as bound.
    pub streaming_port: u16,
}

impl Ctx {
    pub fn pod_dir(&self, uid: &str) -> PathBuf {
        self.config.state_dir.join("pods").join(uid)
    }

    pub fn log_root(&self) -> PathBuf {
        self.config.state_dir.join("logs")
    }

    /// The pod's container log directory (the runtime's layout: `<ns>_<name>_<uid>`).
    pub fn log_dir(&self, pod: &Pod) -> PathBuf {
        self.log_root().join(format!(
            "{}_{}_{}",
            pod.namespace().unwrap_or_default(),
            pod.name_any(),
            pod.uid().unwrap_or_default()
        ))
    }

    fn remove_pod_dirs(&self, pod: &Pod) {
        for dir in [
            self.pod_dir(&pod.uid().unwrap_or_default()),
            self.log_dir(pod),
        ] {
            remove_dir(&dir);
        }
    }
}

fn remove_dir(dir: &std::path::Path) {
    if let Err(error) = std::fs::remove_dir_all(dir) {
        if error.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!("removing {}: {error}", dir.display());
        }
    }
}

struct Worker {
    tx: watch::Sender<Seen>,
    task: JoinHandle<()>,
}

/// The simulated kubelet.
pub struct Kubelet {
    ctx: Arc<Ctx>,
    streaming: std::net::TcpListener,
}

impl Kubelet {
    pub fn new(
        client: Client,
        runtime: Runtime,
        config: KubeletConfig,
        api: ApiServerInfo,
    ) -> anyhow::Result<Kubelet> {
        let facts = NodeFacts::gather(&config.state_dir);
        let runtime = runtime.with_log_root(config.state_dir.join("logs"));
        // Bound before the Node is registered, so the port it reports is already served.
        let streaming = std::net::TcpListener::bind(config.streaming_address)
            .with_context(|| format!("listening on {}", config.streaming_address))?;
        streaming.set_nonblocking(true)?;
        let streaming_port = streaming.local_addr()?.port();
        Ok(Kubelet {
            ctx: Arc::new(Ctx {
                client,
                runtime,
                config,
                api,
                facts,
                streaming_port,
            }),
            streaming,
        })
    }

    /// Registers the node, resynchronizes with the runtime, then runs the node's pods until
    /// `shutdown` completes; then stops and removes every pod and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let ctx = self.ctx;
        let streaming = tokio::spawn(port_forward::serve(
            ctx.clone(),
            tokio::net::TcpListener::from_std(self.streaming)?,
        ));
        let config = &ctx.config;
        for dir in [&config.state_dir, &config.volumes_dir, &ctx.pod_dir("")] {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let version = ctx
            .runtime
            .version()
            .await
            .context("asking the CRI its version")?;
        let runtime_version = node::runtime_version_uri(&version);
        let ready_since = clock::now();
        let node_uid = node::register(&ctx, &runtime_version, &ready_since)
            .await
            .context("registering the Node")?;
        tracing::info!(node = %config.node_name, %runtime_version, "registered");
        let heartbeat = tokio::spawn(node::heartbeat(
            ctx.clone(),
            runtime_version,
            node_uid,
            ready_since,
        ));

        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let mut workers: HashMap<String, Worker> = HashMap::new();
        let pods: Api<Pod> = Api::all(ctx.client.clone());
        let selector = format!("spec.nodeName={}", config.node_name);
        let result = async {
            resync(&ctx, &pods, &selector, &shutdown_rx, &mut workers).await?;
            watch_pods(&ctx, &pods, &selector, &shutdown_rx, &mut workers, shutdown).await;
            anyhow::Ok(())
        }
        .await;

        tracing::info!(pods = workers.len(), "shutting down: stopping every pod");
        let _ = shutdown_tx.send(true);
        let wait = config.shutdown_grace + Duration::from_secs(60);
        for (uid, worker) in workers {
            if tokio::time::timeout(wait, worker.task).await.is_err() {
                tracing::warn!(%uid, "pod worker did not finish in {wait:?}");
            }
        }
        heartbeat.abort();
        streaming.abort();
        result
    }
}

/// Adopts the runtime's sandboxes of pods that still exist, removes the others, and sweeps pod
/// directories nothing owns.
async fn resync(
    ctx: &Arc<Ctx>,
    pods: &Api<Pod>,
    selector: &str,
    shutdown: &watch::Receiver<bool>,
    workers: &mut HashMap<String, Worker>,
) -> anyhow::Result<()> {
    let listed = pods
        .list(&ListParams::default().fields(selector))
        .await
        .context("listing the node's pods")?;
    let by_uid: HashMap<String, Pod> = listed
        .items
        .into_iter()
        .map(|pod| (pod.uid().unwrap_or_default(), pod))
        .collect();
    let sandboxes = ctx
        .runtime
        .list_pods()
        .await
        .context("listing the runtime's pods")?;
    let mut adopted: HashMap<String, PodHandle> = HashMap::new();
    for sandbox in sandboxes {
        let keep = by_uid.contains_key(&sandbox.uid) && !adopted.contains_key(&sandbox.uid);
        if keep {
            adopted.insert(sandbox.uid.clone(), sandbox);
            continue;
        }
        tracing::info!(pod = %sandbox.name, uid = %sandbox.uid, "removing a sandbox no pod owns");
        if let Err(error) = ctx.runtime.remove_pod(&sandbox).await {
            tracing::warn!(sandbox = %sandbox.sandbox_id, "removing: {error}");
        }
        remove_dir(&ctx.pod_dir(&sandbox.uid));
        remove_dir(&ctx.log_root().join(format!(
            "{}_{}_{}",
            sandbox.namespace, sandbox.name, sandbox.uid
        )));
    }
    for (uid, handle) in adopted {
        let pod = by_uid[&uid].clone();
        spawn_worker(ctx, shutdown, workers, pod, Some(handle));
    }
    if let Ok(entries) = std::fs::read_dir(ctx.pod_dir("")) {
        for entry in entries.flatten() {
            let uid = entry.file_name().to_string_lossy().into_owned();
            if !by_uid.contains_key(&uid) {
                remove_dir(&entry.path());
            }
        }
    }
    Ok(())
}

fn spawn_worker(
    ctx: &Arc<Ctx>,
    shutdown: &watch::Receiver<bool>,
    workers: &mut HashMap<String, Worker>,
    pod: Pod,
    adopted: Option<PodHandle>,
) {
    let uid = pod.uid().unwrap_or_default();
    let (tx, rx) = watch::channel(Seen::Present(Arc::new(pod)));
    let task = tokio::spawn(worker::run(ctx.clone(), rx, shutdown.clone(), adopted));
    workers.insert(uid, Worker { tx, task });
}

async fn watch_pods(
    ctx: &Arc<Ctx>,
    pods: &Api<Pod>,
    selector: &str,
    shutdown_rx: &watch::Receiver<bool>,
    workers: &mut HashMap<String, Worker>,
    shutdown: impl Future<Output = ()>,
) {
    let stream =
        watcher(pods.clone(), watcher::Config::default().fields(selector)).default_backoff();
    futures::pin_mut!(stream);
    futures::pin_mut!(shutdown);
    let mut listing: Option<HashSet<String>> = None;
    loop {
        let event = tokio::select! {
            _ = &mut shutdown => return,
            event = stream.next() => event,
        };
        let event = match event {
            None => return,
            Some(Err(error)) => {
                tracing::warn!("watching pods: {error}");
                continue;
            }
            Some(Ok(event)) => event,
        };
        match event {
            watcher::Event::Init => listing = Some(HashSet::new()),
            watcher::Event::InitApply(pod) => {
                if let Some(seen) = &mut listing {
                    seen.insert(pod.uid().unwrap_or_default());
                }
                apply(ctx, shutdown_rx, workers, pod);
            }
            watcher::Event::InitDone => {
                // Pods that went away while the watch was down.
                if let Some(seen) = listing.take() {
                    for (uid, worker) in workers.iter() {
                        if !seen.contains(uid) {
                            worker.tx.send_replace(Seen::Gone);
                        }
                    }
                }
            }
            watcher::Event::Apply(pod) => apply(ctx, shutdown_rx, workers, pod),
            watcher::Event::Delete(pod) => {
                if let Some(worker) = workers.get(&pod.uid().unwrap_or_default()) {
                    worker.tx.send_replace(Seen::Gone);
                }
            }
        }
        workers.retain(|_, worker| !worker.task.is_finished());
    }
}

fn apply(
    ctx: &Arc<Ctx>,
    shutdown: &watch::Receiver<bool>,
    workers: &mut HashMap<String, Worker>,
    pod: Pod,
) {
    let uid = pod.uid().unwrap_or_default();
    match workers.get(&uid) {
        Some(worker) if !worker.task.is_finished() => {
            worker.tx.send_replace(Seen::Present(Arc::new(pod)));
        }
        _ => spawn_worker(ctx, shutdown, workers, pod, None),
    }
}
