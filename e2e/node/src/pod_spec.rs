//! What the node simulator is asked to run: the part of a Kubernetes Pod that reaches the CRI.
//!
//! Deliberately free of Kubernetes API types, so the CRI side can be tested without an API server;
//! the kubelet stand-in turns a bound `k8s_openapi` Pod into a [`PodSpecLite`] (volumes already
//! resolved to host directories), the same field names mapping one to one.

use std::collections::BTreeMap;
use std::path::PathBuf;

/// A pod to run: its identity (which also names its cgroup) and its containers, started in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSpecLite {
    pub name: String,
    pub namespace: String,
    /// The API object's `metadata.uid`: the pod cgroup is `/kubepods/besteffort/pod<uid>`.
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub containers: Vec<ContainerSpecLite>,
}

impl PodSpecLite {
    pub fn new(
        name: impl Into<String>,
        namespace: impl Into<String>,
        uid: impl Into<String>,
    ) -> Self {
        PodSpecLite {
            name: name.into(),
            namespace: namespace.into(),
            uid: uid.into(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            containers: Vec::new(),
        }
    }

    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    pub fn annotation(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.annotations.insert(key.into(), value.into());
        self
    }

    pub fn container(mut self, container: ContainerSpecLite) -> Self {
        self.containers.push(container);
        self
    }
}

/// One container of a pod, with Kubernetes' meaning for `command` and `args`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSpecLite {
    pub name: String,
    /// An image already in the runtime (there is no registry to pull from).
    pub image: String,
    /// Replaces the image's entrypoint when not empty (Kubernetes `command`).
    pub command: Vec<String>,
    /// Replaces the image's cmd when not empty (Kubernetes `args`).
    pub args: Vec<String>,
    /// In order, as Kubernetes passes them.
    pub env: Vec<(String, String)>,
    /// The image's working directory when `None`.
    pub working_dir: Option<String>,
    pub mounts: Vec<BindMount>,
}

impl ContainerSpecLite {
    pub fn new(name: impl Into<String>, image: impl Into<String>) -> Self {
        ContainerSpecLite {
            name: name.into(),
            image: image.into(),
            command: Vec::new(),
            args: Vec::new(),
            env: Vec::new(),
            working_dir: None,
            mounts: Vec::new(),
        }
    }

    pub fn command<S: Into<String>>(mut self, command: impl IntoIterator<Item = S>) -> Self {
        self.command = command.into_iter().map(Into::into).collect();
        self
    }

    pub fn args<S: Into<String>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.args = args.into_iter().map(Into::into).collect();
        self
    }

    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }

    pub fn working_dir(mut self, dir: impl Into<String>) -> Self {
        self.working_dir = Some(dir.into());
        self
    }

    pub fn mount(mut self, mount: BindMount) -> Self {
        self.mounts.push(mount);
        self
    }
}

/// A host directory or file bound into the container: what hostPath volumes and PVCs backed by
/// local directories become on a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    pub host_path: PathBuf,
    pub container_path: String,
    pub read_only: bool,
}

impl BindMount {
    pub fn read_write(host_path: impl Into<PathBuf>, container_path: impl Into<String>) -> Self {
        BindMount {
            host_path: host_path.into(),
            container_path: container_path.into(),
            read_only: false,
        }
    }

    pub fn read_only(host_path: impl Into<PathBuf>, container_path: impl Into<String>) -> Self {
        BindMount {
            read_only: true,
            ..BindMount::read_write(host_path, container_path)
        }
    }
}
