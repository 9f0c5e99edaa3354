//! containerd's CRI over its unix socket, driven as kubelet drives it: one host-network sandbox
//! per pod under `/kubepods/besteffort/pod<uid>`, then each container created and started in it.
//!
//! Every method takes `&self` and the client is cheap to clone, so a watch loop can run pods from
//! many tasks at once: `run_pod(&PodSpecLite) -> PodHandle`, then `status(&PodHandle)` until the
//! pod is done, `stop_pod` and `remove_pod`.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::container_location::{locate_container, ContainerLocation, LocateError};
use crate::pod_cgroups::{pod_cgroup_parent, remove_pod_cgroups};
use crate::pod_spec::{ContainerSpecLite, PodSpecLite};

/// How long a CRI call that does no waiting of its own may take; containerd answers these in
/// milliseconds, so hitting it means containerd is stuck.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Labels kubelet puts on sandboxes and containers; [`Runtime::list_pods`] rebuilds handles
/// from them.
const LABEL_POD_NAME: &str = "io.kubernetes.pod.name";
const LABEL_POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
const LABEL_POD_UID: &str = "io.kubernetes.pod.uid";
const LABEL_CONTAINER_NAME: &str = "io.kubernetes.container.name";

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot reach the CRI at {}: {source} (is containerd running? scripts/e2e-runtime.sh start DIR)", socket.display())]
    Connect {
        socket: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("CRI {call} failed: {} ({:?})", status.message(), status.code())]
    Call {
        call: &'static str,
        status: Box<tonic::Status>,
    },
    #[error("CRI {call} answered without {what}")]
    Incomplete {
        call: &'static str,
        what: &'static str,
    },
    #[error("image {image} is not in the runtime, and there is no registry to pull from: scripts/e2e-runtime.sh start imports the test images")]
    ImageMissing { image: String },
    #[error("container {id} has no running process to locate (state {state:?})")]
    NotRunning { id: String, state: ContainerState },
    #[error("locating container {id}: {source}")]
    Locate {
        id: String,
        #[source]
        source: LocateError,
    },
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn call_failed(call: &'static str) -> impl FnOnce(tonic::Status) -> RuntimeError {
    move |status| RuntimeError::Call {
        call,
        status: Box::new(status),
    }
}

/// A pod the runtime runs: what every later call about it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodHandle {
    pub sandbox_id: String,
    pub name: String,
    pub namespace: String,
    pub uid: String,
    /// `/kubepods/besteffort/pod<uid>`, relative to each cgroup hierarchy's root.
    pub cgroup_parent: String,
    /// In the order they were started.
    pub containers: Vec<ContainerHandle>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerHandle {
    pub name: String,
    pub id: String,
    /// Kubernetes' restart count for this incarnation: 0 for the first, one more per restart.
    pub attempt: u32,
    /// The container's stdout and stderr in CRI log format, when the runtime keeps logs.
    pub log_path: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerState {
    Created,
    Running,
    Exited,
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerStatusLite {
    pub id: String,
    pub name: String,
    pub state: ContainerState,
    /// Set once the container exited.
    pub exit_code: Option<i32>,
    pub started_at: Option<SystemTime>,
    pub finished_at: Option<SystemTime>,
    /// containerd's word for why it exited: `Completed`, `Error`, `OOMKilled`.
    pub reason: String,
    /// The image the container runs, as the runtime resolved it (kubelet's `imageID`).
    pub image_ref: String,
    /// The incarnation (`ContainerMetadata.attempt`).
    pub attempt: u32,
    pub message: String,
    /// The container's init process in the host's pid namespace, while it runs.
    pub pid: Option<u32>,
    /// The cgroup path the runtime gave the container (cgroupfs form,
    /// `/kubepods/besteffort/pod<uid>/<id>`).
    pub cgroups_path: Option<String>,
}

/// A pod's phase as kubelet computes it for `restartPolicy: Never`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodPhaseLite {
    Pending,
    Running,
    Succeeded,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodStatusLite {
    pub sandbox_ready: bool,
    /// In the handle's order.
    pub containers: Vec<ContainerStatusLite>,
}

impl PodStatusLite {
    pub fn phase(&self) -> PodPhaseLite {
        let exited = |c: &ContainerStatusLite| c.state == ContainerState::Exited;
        if !self.containers.is_empty() && self.containers.iter().all(exited) {
            if self.containers.iter().all(|c| c.exit_code == Some(0)) {
                PodPhaseLite::Succeeded
            } else {
                PodPhaseLite::Failed
            }
        } else if self
            .containers
            .iter()
            .any(|c| matches!(c.state, ContainerState::Running | ContainerState::Exited))
        {
            PodPhaseLite::Running
        } else {
            PodPhaseLite::Pending
        }
    }

    pub fn container(&self, name: &str) -> Option<&ContainerStatusLite> {
        self.containers.iter().find(|c| c.name == name)
    }
}

/// A CRI client for one containerd.
#[derive(Clone)]
pub struct Runtime {
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
    /// Where pod log directories go (`<namespace>_<name>_<uid>/<container>/0.log`, kubelet's
    /// layout); no container logs are kept when `None`.
    log_root: Option<PathBuf>,
}

impl Runtime {
    /// Connects to the CRI served on containerd's socket (`CONTAINERD_ADDRESS` in DIR/env).
    pub async fn connect(socket: impl AsRef<Path>) -> Result<Runtime, RuntimeError> {
        let socket = socket.as_ref().to_path_buf();
        let dialed = socket.clone();
        // gRPC needs an http URI, which a unix socket lacks: tonic dials through the connector
        // and only uses the URI for the :authority header.
        let channel = Endpoint::from_static("http://containerd.invalid")
            .connect_timeout(Duration::from_secs(5))
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let socket = dialed.clone();
                async move { Ok::<_, io::Error>(TokioIo::new(UnixStream::connect(socket).await?)) }
            }))
            .await
            .map_err(|source| RuntimeError::Connect { socket, source })?;
        Ok(Runtime {
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
            log_root: None,
        })
    }

    /// Keeps each container's output under `log_root`, as kubelet does under /var/log/pods.
    pub fn with_log_root(mut self, log_root: impl Into<PathBuf>) -> Runtime {
        self.log_root = Some(log_root.into());
        self
    }

    /// The runtime's name and version, e.g. `containerd 1.6.20~ds1` (also proves the CRI answers).
    pub async fn version(&self) -> Result<String, RuntimeError> {
        let version = self
            .runtime
            .clone()
            .version(request(cri::VersionRequest::default(), CALL_TIMEOUT))
            .await
            .map_err(call_failed("Version"))?
            .into_inner();
        Ok(format!(
            "{} {}",
            version.runtime_name, version.runtime_version
        ))
    }

    /// Whether the image is in the runtime's store (CRI normalizes short names such as
    /// `busybox:e2e` to `docker.io/library/busybox:e2e`).
    pub async fn has_image(&self, image: &str) -> Result<bool, RuntimeError> {
        let status = self
            .images
            .clone()
            .image_status(request(
                cri::ImageStatusRequest {
                    image: Some(image_spec(image)),
                    verbose: false,
                },
                CALL_TIMEOUT,
            ))
            .await
            .map_err(call_failed("ImageStatus"))?
            .into_inner();
        Ok(status.image.is_some())
    }

    /// Runs the pod: its sandbox, then each container created and started in order. If any step
    /// fails, what was already started is removed again, so a failed call leaves nothing behind.
    pub async fn run_pod(&self, pod: &PodSpecLite) -> Result<PodHandle, RuntimeError> {
        // Checked first: there is no registry, so a missing image can only be a setup mistake,
        // and a sandbox started for nothing would only need cleaning up.
        for container in &pod.containers {
            if !self.has_image(&container.image).await? {
                return Err(RuntimeError::ImageMissing {
                    image: container.image.clone(),
                });
            }
        }
        let cgroup_parent = pod_cgroup_parent(&pod.uid);
        let log_dir = self.log_dir(pod);
        let sandbox_config = sandbox_config(pod, &cgroup_parent, log_dir.as_deref());
        let sandbox_id = self
            .runtime
            .clone()
            .run_pod_sandbox(request(
                cri::RunPodSandboxRequest {
                    config: Some(sandbox_config.clone()),
                    runtime_handler: String::new(),
                },
                CALL_TIMEOUT,
            ))
            .await
            .map_err(call_failed("RunPodSandbox"))?
            .into_inner()
            .pod_sandbox_id;
        let mut handle = PodHandle {
            sandbox_id,
            name: pod.name.clone(),
            namespace: pod.namespace.clone(),
            uid: pod.uid.clone(),
            cgroup_parent,
            containers: Vec::new(),
        };
        for spec in &pod.containers {
            let started = self
                .start_container(&handle, &sandbox_config, pod, spec, log_dir.as_deref(), 0)
                .await;
            match started {
                Ok(container) => handle.containers.push(container),
                Err(error) => {
                    // The first error is the one worth reporting; a failing cleanup would only
                    // hide it, and `scripts/e2e-runtime.sh stop` removes whatever is left.
                    let _ = self.remove_pod(&handle).await;
                    return Err(error);
                }
            }
        }
        Ok(handle)
    }

    /// Creates and starts one more incarnation (`attempt`) of a container in the pod's running
    /// sandbox, as kubelet does when it restarts a container: the old one is left for the caller
    /// to remove (kubelet keeps the last dead incarnation). `pod` is what `run_pod` was given.
    pub async fn restart_container(
        &self,
        handle: &PodHandle,
        pod: &PodSpecLite,
        spec: &ContainerSpecLite,
        attempt: u32,
    ) -> Result<ContainerHandle, RuntimeError> {
        if !self.has_image(&spec.image).await? {
            return Err(RuntimeError::ImageMissing {
                image: spec.image.clone(),
            });
        }
        let log_dir = self.log_dir(pod);
        let sandbox_config = sandbox_config(pod, &handle.cgroup_parent, log_dir.as_deref());
        self.start_container(
            handle,
            &sandbox_config,
            pod,
            spec,
            log_dir.as_deref(),
            attempt,
        )
        .await
    }

    fn log_dir(&self, pod: &PodSpecLite) -> Option<PathBuf> {
        self.log_root
            .as_ref()
            .map(|root| root.join(format!("{}_{}_{}", pod.namespace, pod.name, pod.uid)))
    }

    /// Removes one (stopped) container.
    pub async fn remove_container(&self, id: &str) -> Result<(), RuntimeError> {
        self.runtime
            .clone()
            .remove_container(request(
                cri::RemoveContainerRequest {
                    container_id: id.to_string(),
                },
                CALL_TIMEOUT,
            ))
            .await
            .map_err(call_failed("RemoveContainer"))?;
        Ok(())
    }

    async fn start_container(
        &self,
        pod: &PodHandle,
        sandbox_config: &cri::PodSandboxConfig,
        spec_pod: &PodSpecLite,
        spec: &ContainerSpecLite,
        log_dir: Option<&Path>,
        attempt: u32,
    ) -> Result<ContainerHandle, RuntimeError> {
        // containerd opens the log file but does not create its directory (kubelet does).
        let log_path = match log_dir {
            Some(dir) => {
                let container_dir = dir.join(&spec.name);
                std::fs::create_dir_all(&container_dir).map_err(|source| RuntimeError::Io {
                    what: "creating the log directory",
                    path: container_dir.clone(),
                    source,
                })?;
                Some(container_dir.join(format!("{attempt}.log")))
            }
            None => None,
        };
        let config = container_config(spec_pod, spec, log_path.is_some(), attempt);
        let id = self
            .runtime
            .clone()
            .create_container(request(
                cri::CreateContainerRequest {
                    pod_sandbox_id: pod.sandbox_id.clone(),
                    config: Some(config),
                    sandbox_config: Some(sandbox_config.clone()),
                },
                CALL_TIMEOUT,
            ))
            .await
            .map_err(call_failed("CreateContainer"))?
            .into_inner()
            .container_id;
        let handle = ContainerHandle {
            name: spec.name.clone(),
            id,
            attempt,
            log_path,
        };
        self.runtime
            .clone()
            .start_container(request(
                cri::StartContainerRequest {
                    container_id: handle.id.clone(),
                },
                CALL_TIMEOUT,
            ))
            .await
            .map_err(call_failed("StartContainer"))?;
        Ok(handle)
    }

    /// The sandbox's readiness and every container's status.
    pub async fn status(&self, pod: &PodHandle) -> Result<PodStatusLite, RuntimeError> {
        let sandbox = self
            .runtime
            .clone()
            .pod_sandbox_status(request(
                cri::PodSandboxStatusRequest {
                    pod_sandbox_id: pod.sandbox_id.clone(),
                    verbose: false,
                },
                CALL_TIMEOUT,
            ))
            .await
            .map_err(call_failed("PodSandboxStatus"))?
            .into_inner()
            .status
            .ok_or(RuntimeError::Incomplete {
                call: "PodSandboxStatus",
                what: "a status",
            })?;
        let mut containers = Vec::with_capacity(pod.containers.len());
        for container in &pod.containers {
            containers.push(self.container_status(&container.id).await?);
        }
        Ok(PodStatusLite {
            sandbox_ready: sandbox.state == cri::PodSandboxState::SandboxReady as i32,
            containers,
        })
    }

    /// One container's status. Asks verbosely: containerd then adds its own view (pid, runtime
    /// spec), a few kilobytes of JSON over a local socket.
    pub async fn container_status(&self, id: &str) -> Result<ContainerStatusLite, RuntimeError> {
        let response = self
            .runtime
            .clone()
            .container_status(request(
                cri::ContainerStatusRequest {
                    container_id: id.to_string(),
                    verbose: true,
                },
                CALL_TIMEOUT,
            ))
            .await
            .map_err(call_failed("ContainerStatus"))?
            .into_inner();
        let status = response.status.ok_or(RuntimeError::Incomplete {
            call: "ContainerStatus",
            what: "a status",
        })?;
        let state = match cri::ContainerState::try_from(status.state) {
            Ok(cri::ContainerState::ContainerCreated) => ContainerState::Created,
            Ok(cri::ContainerState::ContainerRunning) => ContainerState::Running,
            Ok(cri::ContainerState::ContainerExited) => ContainerState::Exited,
            _ => ContainerState::Unknown,
        };
        let verbose = VerboseInfo::parse(&response.info);
        let (name, attempt) = status
            .metadata
            .map(|m| (m.name, m.attempt))
            .unwrap_or_default();
        Ok(ContainerStatusLite {
            id: status.id,
            name,
            attempt,
            image_ref: status.image_ref,
            exit_code: (state == ContainerState::Exited).then_some(status.exit_code),
            started_at: time_from_nanos(status.started_at),
            finished_at: time_from_nanos(status.finished_at),
            reason: status.reason,
            message: status.message,
            // containerd keeps reporting the last pid after exit; it names no process then.
            pid: verbose.pid.filter(|_| state == ContainerState::Running),
            cgroups_path: verbose.cgroups_path,
            state,
        })
    }

    /// The running container's cgroup v2 id and overlay layers (see
    /// [`crate::container_location`]). Only a running container has a process to read them from.
    pub async fn locate(&self, container_id: &str) -> Result<ContainerLocation, RuntimeError> {
        let status = self.container_status(container_id).await?;
        let pid = status.pid.ok_or(RuntimeError::NotRunning {
            id: container_id.to_string(),
            state: status.state,
        })?;
        locate_container(pid).map_err(|source| RuntimeError::Locate {
            id: container_id.to_string(),
            source,
        })
    }

    /// Stops the pod: each container gets SIGTERM and `grace` before SIGKILL (kubelet's
    /// terminationGracePeriodSeconds), then the sandbox goes.
    pub async fn stop_pod(&self, pod: &PodHandle, grace: Duration) -> Result<(), RuntimeError> {
        for container in &pod.containers {
            self.runtime
                .clone()
                .stop_container(request(
                    cri::StopContainerRequest {
                        container_id: container.id.clone(),
                        timeout: i64::try_from(grace.as_secs()).unwrap_or(i64::MAX),
                    },
                    grace + CALL_TIMEOUT,
                ))
                .await
                .map_err(call_failed("StopContainer"))?;
        }
        self.stop_sandbox(&pod.sandbox_id).await
    }

    /// Stops the sandbox and kills whatever still runs in it (kubelet does this once a pod is
    /// done); its containers stay until `remove_pod`.
    pub async fn stop_sandbox(&self, sandbox_id: &str) -> Result<(), RuntimeError> {
        self.runtime
            .clone()
            .stop_pod_sandbox(request(
                cri::StopPodSandboxRequest {
                    pod_sandbox_id: sandbox_id.to_string(),
                },
                CALL_TIMEOUT,
            ))
            .await
            .map_err(call_failed("StopPodSandbox"))?;
        Ok(())
    }

    /// Removes the pod: whatever still runs is killed (no grace: `stop_pod` first for that), the
    /// sandbox and containers are removed, then the pod's cgroups, which the runtime leaves.
    pub async fn remove_pod(&self, pod: &PodHandle) -> Result<(), RuntimeError> {
        self.stop_sandbox(&pod.sandbox_id).await?;
        self.runtime
            .clone()
            .remove_pod_sandbox(request(
                cri::RemovePodSandboxRequest {
                    pod_sandbox_id: pod.sandbox_id.clone(),
                },
                CALL_TIMEOUT,
            ))
            .await
            .map_err(call_failed("RemovePodSandbox"))?;
        remove_pod_cgroups(&pod.cgroup_parent).map_err(|source| RuntimeError::Io {
            what: "removing the pod cgroups under",
            path: PathBuf::from(&pod.cgroup_parent),
            source,
        })
    }

    /// Every pod the runtime has, rebuilt from the labels `run_pod` set: what a restarted
    /// kubelet stand-in resynchronizes from. `containers` holds every container still in the
    /// runtime, dead incarnations included, oldest first.
    pub async fn list_pods(&self) -> Result<Vec<PodHandle>, RuntimeError> {
        let sandboxes = self
            .runtime
            .clone()
            .list_pod_sandbox(request(cri::ListPodSandboxRequest::default(), CALL_TIMEOUT))
            .await
            .map_err(call_failed("ListPodSandbox"))?
            .into_inner()
            .items;
        let mut pods = Vec::with_capacity(sandboxes.len());
        for sandbox in sandboxes {
            let mut containers = self
                .runtime
                .clone()
                .list_containers(request(
                    cri::ListContainersRequest {
                        filter: Some(cri::ContainerFilter {
                            pod_sandbox_id: sandbox.id.clone(),
                            ..Default::default()
                        }),
                    },
                    CALL_TIMEOUT,
                ))
                .await
                .map_err(call_failed("ListContainers"))?
                .into_inner()
                .containers;
            containers.sort_by_key(|c| c.created_at);
            let label = |key: &str| sandbox.labels.get(key).cloned().unwrap_or_default();
            let uid = label(LABEL_POD_UID);
            pods.push(PodHandle {
                name: label(LABEL_POD_NAME),
                namespace: label(LABEL_POD_NAMESPACE),
                cgroup_parent: pod_cgroup_parent(&uid),
                uid,
                containers: containers
                    .into_iter()
                    .map(|c| ContainerHandle {
                        name: c
                            .labels
                            .get(LABEL_CONTAINER_NAME)
                            .cloned()
                            .unwrap_or_default(),
                        attempt: c.metadata.as_ref().map_or(0, |m| m.attempt),
                        id: c.id,
                        // The path is not in the listing; ContainerStatus has it if needed.
                        log_path: None,
                    })
                    .collect(),
                sandbox_id: sandbox.id,
            });
        }
        Ok(pods)
    }
}

fn request<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}

fn image_spec(image: &str) -> cri::ImageSpec {
    cri::ImageSpec {
        image: image.to_string(),
        ..Default::default()
    }
}

fn pod_labels(pod: &PodSpecLite) -> HashMap<String, String> {
    let mut labels: HashMap<String, String> = pod.labels.clone().into_iter().collect();
    labels.insert(LABEL_POD_NAME.into(), pod.name.clone());
    labels.insert(LABEL_POD_NAMESPACE.into(), pod.namespace.clone());
    labels.insert(LABEL_POD_UID.into(), pod.uid.clone());
    labels
}

/// Host network (no CNI is needed, nothing on the host is rewired), a pid namespace per container
/// (each container's init is its own pid 1, as in a pod without shareProcessNamespace), IPC shared
/// in the pod.
fn namespace_options() -> cri::NamespaceOption {
    cri::NamespaceOption {
        network: cri::NamespaceMode::Node as i32,
        pid: cri::NamespaceMode::Container as i32,
        ipc: cri::NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

fn sandbox_config(
    pod: &PodSpecLite,
    cgroup_parent: &str,
    log_dir: Option<&Path>,
) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: pod.name.clone(),
            uid: pod.uid.clone(),
            namespace: pod.namespace.clone(),
            attempt: 0,
        }),
        // Empty for a host-network pod: containerd would otherwise write the host's hostname
        // files for it, and the UTS namespace is the host's anyway.
        hostname: String::new(),
        log_directory: log_dir
            .map(|dir| dir.to_string_lossy().into_owned())
            .unwrap_or_default(),
        labels: pod_labels(pod),
        annotations: pod.annotations.clone().into_iter().collect(),
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: cgroup_parent.to_string(),
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(namespace_options()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn container_config(
    pod: &PodSpecLite,
    spec: &ContainerSpecLite,
    keep_log: bool,
    attempt: u32,
) -> cri::ContainerConfig {
    let mut labels = pod_labels(pod);
    // Pod labels belong on the sandbox; a container carries kubelet's identity labels only.
    labels.retain(|key, _| key.starts_with("io.kubernetes."));
    labels.insert(LABEL_CONTAINER_NAME.into(), spec.name.clone());
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: spec.name.clone(),
            attempt,
        }),
        image: Some(image_spec(&spec.image)),
        command: spec.command.clone(),
        args: spec.args.clone(),
        working_dir: spec.working_dir.clone().unwrap_or_default(),
        envs: spec
            .env
            .iter()
            .map(|(key, value)| cri::KeyValue {
                key: key.clone(),
                value: value.clone(),
            })
            .collect(),
        mounts: spec
            .mounts
            .iter()
            .map(|mount| cri::Mount {
                container_path: mount.container_path.clone(),
                host_path: mount.host_path.to_string_lossy().into_owned(),
                readonly: mount.read_only,
                propagation: cri::MountPropagation::PropagationPrivate as i32,
                ..Default::default()
            })
            .collect(),
        labels,
        // Relative to the sandbox's log directory.
        log_path: if keep_log {
            format!("{}/{attempt}.log", spec.name)
        } else {
            String::new()
        },
        linux: Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                // containerd takes a container's namespaces from its own config, not the
                // sandbox's: without these the container would join the pause process's pid
                // namespace.
                namespace_options: Some(namespace_options()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn time_from_nanos(nanos: i64) -> Option<SystemTime> {
    u64::try_from(nanos)
        .ok()
        .filter(|nanos| *nanos > 0)
        .map(|nanos| UNIX_EPOCH + Duration::from_nanos(nanos))
}

/// The parts of containerd's verbose status (`info["info"]`, JSON) this crate uses.
#[derive(Debug, Default)]
struct VerboseInfo {
    pid: Option<u32>,
    cgroups_path: Option<String>,
}

impl VerboseInfo {
    fn parse(info: &HashMap<String, String>) -> VerboseInfo {
        let Some(json) = info
            .get("info")
            .and_then(|text| serde_json::from_str::<serde_json::Value>(text).ok())
        else {
            return VerboseInfo::default();
        };
        VerboseInfo {
            pid: json["pid"]
                .as_u64()
                .and_then(|pid| u32::try_from(pid).ok())
                .filter(|pid| *pid > 0),
            cgroups_path: json["runtimeSpec"]["linux"]["cgroupsPath"]
                .as_str()
                .map(str::to_string),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exited(code: i32) -> ContainerStatusLite {
        ContainerStatusLite {
            id: "c".into(),
            name: "c".into(),
            state: ContainerState::Exited,
            exit_code: Some(code),
            started_at: None,
            finished_at: None,
            reason: String::new(),
            image_ref: String::new(),
            attempt: 0,
            message: String::new(),
            pid: None,
            cgroups_path: None,
        }
    }

    #[test]
    fn phase_follows_kubelet_for_restart_policy_never() {
        let status = |containers| PodStatusLite {
            sandbox_ready: true,
            containers,
        };
        let running = ContainerStatusLite {
            state: ContainerState::Running,
            exit_code: None,
            ..exited(0)
        };
        let created = ContainerStatusLite {
            state: ContainerState::Created,
            ..running.clone()
        };
        assert_eq!(status(vec![created]).phase(), PodPhaseLite::Pending);
        assert_eq!(
            status(vec![running, exited(1)]).phase(),
            PodPhaseLite::Running
        );
        assert_eq!(
            status(vec![exited(0), exited(0)]).phase(),
            PodPhaseLite::Succeeded
        );
        assert_eq!(
            status(vec![exited(0), exited(1)]).phase(),
            PodPhaseLite::Failed
        );
    }

    #[test]
    fn verbose_info_yields_pid_and_cgroups_path() {
        let info = HashMap::from([(
            "info".to_string(),
            r#"{"pid": 42, "runtimeSpec": {"linux": {"cgroupsPath": "/kubepods/besteffort/podu/c"}}}"#
                .to_string(),
        )]);
        let parsed = VerboseInfo::parse(&info);
        assert_eq!(parsed.pid, Some(42));
        assert_eq!(
            parsed.cgroups_path.as_deref(),
            Some("/kubepods/besteffort/podu/c")
        );
        assert_eq!(VerboseInfo::parse(&HashMap::new()).pid, None);
    }

    /// A kube-rs watch loop spawns pod work onto tokio tasks: the client and its futures must be
    /// shareable and sendable.
    #[allow(dead_code)]
    fn runtime_futures_are_send(runtime: &Runtime, pod: &PodSpecLite, handle: &PodHandle) {
        fn send<T: Send + Sync + Clone + 'static>(_: &T) {}
        fn send_future<F: std::future::Future + Send>(_: F) {}
        send(runtime);
        send_future(runtime.run_pod(pod));
        send_future(runtime.status(handle));
        send_future(runtime.stop_pod(handle, Duration::ZERO));
        send_future(runtime.remove_pod(handle));
        send_future(runtime.list_pods());
        send_future(runtime.locate("id"));
    }
}
