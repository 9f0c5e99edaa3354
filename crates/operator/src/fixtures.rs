//! Objects as the API server hands them to a reconcile, for the unit tests of the pure parts
//! (kube-rs controller-rs keeps its test objects the same way).

use diffkeeper_api::{ContainerRecord, Recording, SnapshotPhase, SnapshotRecord};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::json;

/// A valid Recording `rec` in namespace `shop`, at generation 2, with no status yet.
pub fn recording() -> Recording {
    serde_json::from_value(json!({
        "apiVersion": "diffkeeper.io/v1alpha1", "kind": "Recording",
        "metadata": { "name": "rec", "namespace": "shop", "uid": "rec-uid", "generation": 2 },
        "spec": { "selector": { "matchLabels": { "app": "web" } } },
    }))
    .unwrap()
}

/// A ContainerRecord of `rec` for pod `pod`, with status `status` (camelCase JSON).
pub fn record(pod: &str, status: serde_json::Value) -> ContainerRecord {
    serde_json::from_value(json!({
        "apiVersion": "diffkeeper.io/v1alpha1", "kind": "ContainerRecord",
        "metadata": { "name": format!("{pod}-app"), "namespace": "shop" },
        "spec": { "recording": "rec", "pod": { "name": pod, "uid": format!("{pod}-uid") },
                  "container": "app", "containerId": format!("containerd://{pod}"), "node": "n1" },
        "status": status,
    }))
    .unwrap()
}

/// A snapshot line in `phase`, with `message`.
pub fn snapshot(pvc: &str, phase: SnapshotPhase, message: Option<&str>) -> SnapshotRecord {
    SnapshotRecord {
        pod: "web-1".into(),
        pod_uid: "web-1-uid".into(),
        container: "app".into(),
        node: "n1".into(),
        container_id: "containerd://web-1".into(),
        died_at: None,
        at: "exit".into(),
        pvc: pvc.into(),
        snapshot_pod: pvc.into(),
        files: 0,
        bytes: 0,
        phase,
        message: message.map(String::from),
    }
}

/// A fixed moment, `seconds` past 2026-01-01T00:00:00Z.
pub fn at(seconds: i64) -> Time {
    Time(k8s_openapi::jiff::Timestamp::from_second(1_767_225_600 + seconds).unwrap())
}
