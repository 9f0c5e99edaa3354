//! The node simulator of the end-to-end tests: kubelet's part on one node, played against a real
//! containerd through the CRI (see `scripts/e2e-runtime.sh` for the containerd it talks to).
//!
//! - [`runtime`]: the CRI client — run a pod, read its status, stop and remove it.
//! - [`pod_spec`]: what a pod to run is, free of Kubernetes API types.
//! - [`container_location`]: a running container's cgroup v2 id and overlay upper directory, read
//!   from /proc only (the recording agent's view; meant to move into the agent crate).
//! - [`pod_cgroups`]: the pod cgroup cleanup kubelet does and the runtime does not.
//! - [`runtime_env`]: the `DIR/env` file the runtime script writes.

pub mod container_location;
pub mod mountinfo;
pub mod pod_cgroups;
pub mod pod_spec;
pub mod runtime;
pub mod runtime_env;

pub use container_location::{locate_container, ContainerLocation, LocateError};
pub use pod_spec::{BindMount, ContainerSpecLite, PodSpecLite};
pub use runtime::{
    ContainerHandle, ContainerState, ContainerStatusLite, PodHandle, PodPhaseLite, PodStatusLite,
    Runtime, RuntimeError,
};
pub use runtime_env::RuntimeEnv;
