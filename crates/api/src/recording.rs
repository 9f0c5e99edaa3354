//! `Recording`: which pods' containers to record, how long to keep their history, and what to
//! keep when one of them dies.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What to record: the containers of the pods `selector` picks in this namespace.
// kube-derive takes one printcolumn(...) per column, which clippy reads as repeated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "diffkeeper.io",
    version = "v1alpha1",
    kind = "Recording",
    namespaced,
    shortname = "rec",
    category = "diffkeeper",
    status = "RecordingStatus",
    doc = "Records the file changes of the containers of the selected pods, and keeps a snapshot \
           of a container's files when it dies.",
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Pods", type_ = "integer", json_path = ".status.matchedPods", description = "pods selected"),
    printcolumn(name = "Recording", type_ = "integer", json_path = ".status.recordingContainers", description = "containers being recorded now"),
    printcolumn(name = "Bytes", type_ = "integer", json_path = ".status.bytesRecorded", description = "bytes stored on the nodes"),
    printcolumn(name = "Snapshots", type_ = "integer", json_path = ".status.snapshotCount"),
    printcolumn(name = "Reason", type_ = "string", priority = 1, json_path = ".status.conditions[?(@.type==\"Ready\")].reason"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new(
        "(has(self.spec.requireAnnotation) && self.spec.requireAnnotation) || \
         (has(self.spec.selector.matchLabels) && size(self.spec.selector.matchLabels) > 0) || \
         (has(self.spec.selector.matchExpressions) && size(self.spec.selector.matchExpressions) > 0)"
    )
    .message(
        "spec.selector is empty, which would record every pod in the namespace: give it \
         matchLabels or matchExpressions, or set spec.requireAnnotation: true to record only pods \
         annotated diffkeeper.io/record: \"true\""
    )
    .field_path(".spec.selector"),
)]
#[serde(rename_all = "camelCase")]
pub struct RecordingSpec {
    /// The pods to record, by label. Required; an empty selector is refused unless
    /// requireAnnotation is set.
    pub selector: LabelSelector,

    /// Record a selected pod only if it is also annotated `diffkeeper.io/record: "true"`.
    #[serde(default)]
    pub require_annotation: bool,

    /// Names of the containers to record; empty records every container of a selected pod.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(validation = Rule::new("self.all(c, c.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$') && size(c) <= 63)")
        .message("spec.containers holds container names: lowercase letters, digits and '-', at most 63 characters"))]
    #[schemars(length(max = 64), inner(length(max = 63)))]
    pub containers: Vec<String>,

    /// Which paths (inside the container) to record.
    #[serde(default)]
    pub paths: PathFilter,

    /// How long the history is kept on the nodes.
    #[serde(default)]
    pub retention: Retention,

    /// What is kept when a recorded container dies.
    #[serde(default)]
    pub snapshot: SnapshotPolicy,

    /// The most bytes of one write() kept from the kernel event; larger writes are read back from
    /// the file. Unset: the agent's --max-write-capture (4Ki as the chart deploys it); at most 1Mi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("isQuantity(string(self)) && quantity(string(self)).compareTo(quantity('1Mi')) <= 0 && quantity(string(self)).compareTo(quantity('0')) >= 0")
        .message("spec.maxWriteCapture must be a byte quantity between 0 and 1Mi, such as 4Ki"))]
    pub max_write_capture: Option<Quantity>,
}

/// Paths to record, as globs on the path inside the container (`/var/log/**`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PathFilter {
    /// Record only paths matching one of these; empty means every path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(validation = Rule::new("self.all(g, g.startsWith('/') || g.startsWith('**'))")
        .message("spec.paths.include globs must be absolute paths inside the container, such as /var/log/**"))]
    #[schemars(length(max = 64), inner(length(max = 4096)))]
    pub include: Vec<String>,
    /// Never record paths matching one of these, even if included.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(validation = Rule::new("self.all(g, g.startsWith('/') || g.startsWith('**'))")
        .message("spec.paths.exclude globs must be absolute paths inside the container, such as /tmp/**"))]
    #[schemars(length(max = 64), inner(length(max = 4096)))]
    pub exclude: Vec<String>,
}

/// How long a container's history is kept on its node.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Retention {
    /// History older than this is dropped (a duration such as 72h, 30m, 7d).
    #[serde(default = "default_max_age")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(ms|s|m|h|d))+$')")
        .message("spec.retention.maxAge must be a duration such as 72h, 90m or 7d"))]
    pub max_age: String,
    /// The most bytes one container's history may take on its node; the oldest history goes
    /// first. Unset means no limit but maxAge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("isQuantity(string(self)) && quantity(string(self)).isGreaterThan(quantity('0'))")
        .message("spec.retention.maxBytes must be a positive byte quantity, such as 10Gi"))]
    pub max_bytes: Option<Quantity>,
    /// What happens to the history and the snapshots when the Recording is deleted.
    #[serde(default)]
    pub on_delete: OnDelete,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            max_age: default_max_age(),
            max_bytes: None,
            on_delete: OnDelete::default(),
        }
    }
}

fn default_max_age() -> String {
    "72h".into()
}

/// What deleting a Recording does to what it recorded.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnDelete {
    /// Node history, snapshot PVCs and snapshot Pods are removed.
    #[default]
    Delete,
    /// Recording stops, but node history (until maxAge) and snapshot PVCs are kept.
    Retain,
}

/// When a recorded container dies, keep its files in a PersistentVolumeClaim.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!self.onTermination || self.keep >= 1")
    .message("spec.snapshot.keep must be at least 1 when onTermination is true"))]
#[schemars(transform = crate::kubernetes_integer_formats)]
pub struct SnapshotPolicy {
    /// Take a snapshot when a recorded container dies (pod Failed, Succeeded or deleted, or a
    /// container restart).
    #[serde(default = "default_true")]
    pub on_termination: bool,
    /// The moment to keep: `exit` (the container's last recorded change) or a duration before
    /// it, such as `-5s`.
    #[serde(default = "default_at")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("self == 'exit' || self.matches('^-([0-9]+(ms|s|m|h))+$')")
        .message("spec.snapshot.at must be \"exit\" or a duration before death such as \"-5s\" or \"-1m30s\""))]
    pub at: String,
    /// The StorageClass of the snapshot PVCs; unset uses the cluster's default class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// The size of each snapshot PVC.
    #[serde(default = "default_size")]
    #[x_kube(validation = Rule::new("isQuantity(string(self)) && quantity(string(self)).isGreaterThan(quantity('0'))")
        .message("spec.snapshot.size must be a positive quantity such as 1Gi"))]
    pub size: Quantity,
    /// How many snapshots to keep per Recording; the oldest are deleted first.
    #[serde(default = "default_keep")]
    #[schemars(range(min = 0, max = 1000))]
    pub keep: u32,
    /// `Full`: the container's whole filesystem as it saw it. `Changes`: only files it changed.
    #[serde(default)]
    pub tree: TreeScope,
}

impl Default for SnapshotPolicy {
    fn default() -> Self {
        SnapshotPolicy {
            on_termination: true,
            at: default_at(),
            storage_class_name: None,
            size: default_size(),
            keep: default_keep(),
            tree: TreeScope::default(),
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_at() -> String {
    "exit".into()
}
fn default_size() -> Quantity {
    Quantity("1Gi".into())
}
fn default_keep() -> u32 {
    5
}

/// How much of a container's filesystem an export holds.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TreeScope {
    /// The container's whole view: image files plus its changes.
    #[default]
    Full,
    /// Only the files the container created or changed.
    Changes,
}

/// A moment relative to a container's death, parsed from `spec.snapshot.at`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotMoment {
    /// How long before the container's last recorded change.
    pub before_exit: std::time::Duration,
}

impl SnapshotMoment {
    /// Parses `exit` or `-5s`-style values (what the CRD's rule admits).
    pub fn parse(at: &str) -> Result<Self, String> {
        if at == "exit" {
            return Ok(SnapshotMoment {
                before_exit: std::time::Duration::ZERO,
            });
        }
        let Some(rest) = at.strip_prefix('-') else {
            return Err(format!("snapshot moment {at:?} must be \"exit\" or a duration before death such as \"-5s\""));
        };
        humantime::parse_duration(rest)
            .map(|before_exit| SnapshotMoment { before_exit })
            .map_err(|e| format!("snapshot moment {at:?}: {e}; use \"exit\" or e.g. \"-5s\""))
    }

    /// The form the agent's Export takes (`exit` or `exit-5s`).
    pub fn as_export_time(&self) -> String {
        if self.before_exit.is_zero() {
            "exit".into()
        } else {
            format!("exit-{}", humantime::format_duration(self.before_exit)).replace(' ', "")
        }
    }
}

/// What the operator reports about a Recording.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = crate::kubernetes_integer_formats)]
pub struct RecordingStatus {
    /// The generation the operator last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready (the Recording is valid and every selected container is recorded), Recording (at
    /// least one container is being recorded now), Degraded (something recorded is at risk).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Pods the selector picks now.
    #[serde(default)]
    pub matched_pods: u32,
    /// Containers being recorded now, on all nodes.
    #[serde(default)]
    pub recording_containers: u32,
    /// Bytes of history held on the nodes.
    #[serde(default)]
    pub bytes_recorded: u64,
    /// Times the kernel ring overflowed and the agent re-read the files it missed.
    #[serde(default)]
    pub drops_healed: u64,
    /// The number of entries in `snapshots`, for `kubectl get`.
    #[serde(default)]
    pub snapshot_count: u32,
    /// The snapshots taken of dead containers, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub snapshots: Vec<SnapshotRecord>,
}

/// One dead container's files, kept in a PVC.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = crate::kubernetes_integer_formats)]
pub struct SnapshotRecord {
    /// The dead container's pod, by name.
    pub pod: String,
    /// The pod's uid.
    pub pod_uid: String,
    /// The container's name in the pod.
    pub container: String,
    /// The node whose agent kept its history.
    pub node: String,
    /// The container id of the incarnation that died.
    pub container_id: String,
    /// When the container ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub died_at: Option<Time>,
    /// The moment kept, as given to the agent (`exit`, `exit-5s`).
    pub at: String,
    /// The PersistentVolumeClaim holding the files.
    pub pvc: String,
    /// The Pod that writes them.
    pub snapshot_pod: String,
    /// Files written into the PVC.
    #[serde(default)]
    pub files: u64,
    /// Bytes of file content written.
    #[serde(default)]
    pub bytes: u64,
    /// Where the snapshot is.
    pub phase: SnapshotPhase,
    /// Why the snapshot failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Where a snapshot is.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotPhase {
    /// The PVC and Pod exist; the Pod has not finished.
    Pending,
    /// The files are in the PVC.
    Succeeded,
    /// The snapshot Pod failed; `message` says why.
    Failed,
}
