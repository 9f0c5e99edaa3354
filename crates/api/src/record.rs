//! `ContainerRecord`: one recorded container incarnation on one node, written only by that node's
//! agent, owned by its Recording, summed by the operator.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One container incarnation (one container id) that an agent records or recorded. A restarted
/// container gets a new record, so every death has exactly one record to snapshot from.
// kube-derive takes one printcolumn(...) per column, which clippy reads as repeated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "diffkeeper.io",
    version = "v1alpha1",
    kind = "ContainerRecord",
    namespaced,
    shortname = "crec",
    category = "diffkeeper",
    status = "ContainerRecordStatus",
    doc = "The history one node's agent keeps of one container incarnation. Written by that agent only.",
    selectable = ".spec.node",
    selectable = ".spec.recording",
    printcolumn(name = "Pod", type_ = "string", json_path = ".spec.pod.name"),
    printcolumn(name = "Container", type_ = "string", json_path = ".spec.container"),
    printcolumn(name = "Node", type_ = "string", json_path = ".spec.node"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Bytes", type_ = "integer", json_path = ".status.bytes"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ContainerRecordSpec {
    /// The Recording this container is recorded for (same namespace).
    pub recording: String,
    /// The recorded container's pod.
    pub pod: PodRef,
    /// The container's name in the pod.
    pub container: String,
    /// The container runtime's id, `containerd://...`: one incarnation.
    pub container_id: String,
    /// The pod's restart count for this container when this incarnation started.
    #[serde(default)]
    pub restart_count: i32,
    /// The node whose agent records it and keeps its history.
    pub node: String,
}

/// A pod by name and uid: the uid tells two pods of the same name apart.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq, Hash)]
pub struct PodRef {
    /// The pod's name.
    pub name: String,
    /// The pod's uid.
    pub uid: String,
}

/// What the agent reports about a recorded container.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = crate::kubernetes_integer_formats)]
pub struct ContainerRecordStatus {
    /// Whether the agent records it, it ended, or attaching failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<RecordPhase>,
    /// The agent's gRPC endpoint that serves this history (`https://host:port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// The first and last recorded change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_event: Option<Time>,
    /// The last recorded change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_event: Option<Time>,
    /// When the container ended, and how.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<Time>,
    /// The container's exit code, once it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Changes recorded.
    #[serde(default)]
    pub events: u64,
    /// Bytes this history takes in the node's store.
    #[serde(default)]
    pub bytes: u64,
    /// Ring overflows the agent healed by re-reading files, and gaps it could not heal.
    #[serde(default)]
    pub drops_healed: u64,
    /// Holes in the history the agent could not heal (its own restarts).
    #[serde(default)]
    pub gaps: u64,
    /// Why attaching failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Where a container's recording is.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordPhase {
    /// The agent attached and is recording.
    Recording,
    /// The container ended; its history is complete and kept.
    Ended,
    /// The agent could not attach (e.g. no cgroup found); `message` says why.
    Failed,
}
