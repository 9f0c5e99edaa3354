//! The node simulator of the end-to-end tests: kubelet's part on one node, played against a real
//! API server and a real containerd through the CRI (see `scripts/e2e-runtime.sh` for the
//! containerd it talks to, and README.md for what it does and does not do).
//!
//! - [`kubelet`]: the kubelet stand-in — Node registration and heartbeat, the node's pods run,
//!   reported on and deleted; the `diffkeeper-node-sim` binary runs it.
//! - [`runtime`]: the CRI client — run a pod, read its status, restart, stop and remove it.
//! - [`pod_spec`]: what a pod to run is, free of Kubernetes API types.
//! - [`container_location`], [`mountinfo`]: re-exported from `diffkeeper-locate`, the agent's
//!   view of a running container (cgroup v2 id, overlay layers), read from /proc only.
//! - [`pod_cgroups`]: the pod cgroup cleanup kubelet does and the runtime does not.
//! - [`runtime_env`]: the `DIR/env` file the runtime script writes.

pub mod kubelet;
pub mod pod_cgroups;
pub mod pod_spec;
pub mod runtime;
pub mod runtime_env;

pub use diffkeeper_locate::{container_location, mountinfo};
pub use diffkeeper_locate::{locate_container, ContainerLocation, LocateError};
pub use kubelet::{ApiServerInfo, ImageAliases, Kubelet, KubeletConfig};
pub use pod_spec::{BindMount, ContainerSpecLite, PodSpecLite};
pub use runtime::{
    ContainerHandle, ContainerState, ContainerStatusLite, PodHandle, PodPhaseLite, PodStatusLite,
    Runtime, RuntimeError,
};
pub use runtime_env::RuntimeEnv;
