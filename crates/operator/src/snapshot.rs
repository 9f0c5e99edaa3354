//! Deaths and their snapshots: when a recorded container incarnation has ended, and the PVC and
//! bare Pod that keep its files. Everything here is a pure function of objects read from the API,
//! so the same death always yields the same names and the same objects.

use std::collections::BTreeMap;

use diffkeeper_api::{
    ContainerRecord, DeathKey, RecordPhase, Recording, SnapshotMoment, SnapshotPhase,
    SnapshotRecord, SnapshotReport, TreeScope,
};
use k8s_openapi::api::core::v1::{
    ConfigMapVolumeSource, Container, ContainerStatus, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource, Pod, PodSpec, Toleration, Volume,
    VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::{Resource, ResourceExt};

/// Why a recorded incarnation counts as dead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// No pod with the record's uid exists any more.
    PodDeleted,
    /// The pod reached Failed or Succeeded.
    PodFinished,
    /// The container was restarted: its previous incarnation is `lastState.terminated`.
    Restarted,
    /// The container's current state is terminated (the pod may still run others).
    Terminated,
    /// The agent saw the container end.
    EndedOnNode,
}

/// One dead incarnation of a recorded container.
#[derive(Clone, Debug)]
pub struct Death {
    /// Which incarnation died: names its snapshot.
    pub key: DeathKey,
    /// The pod's name.
    pub pod_name: String,
    /// The node whose agent keeps its history.
    pub node: String,
    /// Why it counts as dead.
    pub cause: Cause,
    /// When it ended, if anyone said.
    pub died_at: Option<Time>,
}

/// The death of a record's incarnation, if it has died. `pod` is the live pod with the record's
/// uid, or None when no such pod exists.
pub fn death_of(record: &ContainerRecord, pod: Option<&Pod>) -> Option<Death> {
    let spec = &record.spec;
    let key = DeathKey::of_record(record);
    let agent_saw_end = record.status.as_ref().and_then(|s| s.ended_at.clone());
    let death = |cause, died_at: Option<Time>| {
        Some(Death {
            key: key.clone(),
            pod_name: spec.pod.name.clone(),
            node: spec.node.clone(),
            cause,
            died_at: died_at.or_else(|| agent_saw_end.clone()),
        })
    };
    let Some(pod) = pod else {
        return death(Cause::PodDeleted, None);
    };
    let status = pod.status.as_ref();
    let container = status.and_then(|s| {
        s.container_statuses
            .iter()
            .flatten()
            .chain(s.init_container_statuses.iter().flatten())
            .find(|c| c.name == spec.container)
    });
    if let Some(c) = container {
        if let Some(t) = terminated_incarnation(c, &spec.container_id) {
            let cause = if is_current(c, &spec.container_id) {
                Cause::Terminated
            } else {
                Cause::Restarted
            };
            return death(cause, t);
        }
    }
    if matches!(
        status.and_then(|s| s.phase.as_deref()),
        Some("Failed" | "Succeeded")
    ) {
        return death(Cause::PodFinished, None);
    }
    if record.status.as_ref().and_then(|s| s.phase) == Some(RecordPhase::Ended) {
        return death(Cause::EndedOnNode, None);
    }
    None
}

fn is_current(c: &ContainerStatus, container_id: &str) -> bool {
    c.container_id.as_deref() == Some(container_id)
}

/// `Some(finished_at)` when `container_id` is the incarnation that `c` reports terminated, as its
/// current state or as the last state before a restart.
fn terminated_incarnation(c: &ContainerStatus, container_id: &str) -> Option<Option<Time>> {
    let current = c.state.as_ref().and_then(|s| s.terminated.as_ref());
    let previous = c.last_state.as_ref().and_then(|s| s.terminated.as_ref());
    [current, previous]
        .into_iter()
        .flatten()
        .find(|t| t.container_id.as_deref() == Some(container_id))
        .map(|t| t.finished_at.clone())
}

/// How the operator runs snapshot Pods.
#[derive(Clone, Debug)]
pub struct SnapshotTemplate {
    /// The image holding the `diffkeeper` binary.
    pub image: String,
    /// The ServiceAccount whose token the agent checks (it must be allowed `get recordings/export`).
    pub service_account: String,
    /// The ConfigMap holding the agents' CA certificate (`ca.crt`).
    pub agent_ca_configmap: String,
}

/// The PVC that keeps one death's files, owned by the Recording.
pub fn pvc_for(recording: &Recording, death: &Death) -> PersistentVolumeClaim {
    let snapshot = &recording.spec.snapshot;
    PersistentVolumeClaim {
        metadata: owned_meta(recording, death),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: snapshot.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    snapshot.size.clone(),
                )])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: None,
    }
}

/// The bare Pod that asks the node's agent for the tree at the chosen moment and writes it into
/// the PVC. Bare (not a Job) so it works where no controllers run, pinned by nodeName because the
/// history lives only on that node.
pub fn pod_for(
    recording: &Recording,
    death: &Death,
    agent: &str,
    template: &SnapshotTemplate,
) -> Pod {
    let name = death.key.object_name(&death.pod_name);
    let at = SnapshotMoment::parse(&recording.spec.snapshot.at)
        .map(|m| m.as_export_time())
        .unwrap_or_else(|_| "exit".into());
    let tree = match recording.spec.snapshot.tree {
        TreeScope::Full => "full",
        TreeScope::Changes => "changes",
    };
    let args: Vec<String> = [
        "snapshot",
        "--agent",
        agent,
        "--agent-ca",
        "/etc/diffkeeper/agent-ca/ca.crt",
        "--namespace",
        &recording.namespace().unwrap_or_default(),
        "--pod-uid",
        &death.key.pod_uid,
        "--container",
        &death.key.container,
        "--container-id",
        &death.key.container_id,
        "--time",
        &at,
        "--tree",
        tree,
        "--out",
        "/snapshot",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    Pod {
        metadata: owned_meta(recording, death),
        spec: Some(PodSpec {
            node_name: Some(death.node.clone()),
            restart_policy: Some("Never".into()),
            service_account_name: Some(template.service_account.clone()),
            // The node may be tainted (it may be why the pod died); the snapshot must still run.
            tolerations: Some(vec![Toleration {
                operator: Some("Exists".into()),
                ..Default::default()
            }]),
            containers: vec![Container {
                name: "snapshot".into(),
                image: Some(template.image.clone()),
                command: Some(vec!["diffkeeper".into()]),
                args: Some(args),
                termination_message_policy: Some("File".into()),
                volume_mounts: Some(vec![
                    VolumeMount {
                        name: "snapshot".into(),
                        mount_path: "/snapshot".into(),
                        ..Default::default()
                    },
                    VolumeMount {
                        name: "agent-ca".into(),
                        mount_path: "/etc/diffkeeper/agent-ca".into(),
                        read_only: Some(true),
                        ..Default::default()
                    },
                ]),
                ..Default::default()
            }],
            volumes: Some(vec![
                Volume {
                    name: "snapshot".into(),
                    persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                        claim_name: name.clone(),
                        read_only: None,
                    }),
                    ..Default::default()
                },
                Volume {
                    name: "agent-ca".into(),
                    config_map: Some(ConfigMapVolumeSource {
                        name: template.agent_ca_configmap.clone(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        }),
        status: None,
    }
}

fn owned_meta(recording: &Recording, death: &Death) -> ObjectMeta {
    ObjectMeta {
        name: Some(death.key.object_name(&death.pod_name)),
        namespace: recording.namespace(),
        labels: Some(death.key.labels(&recording.name_any())),
        annotations: Some(BTreeMap::from([
            ("diffkeeper.io/pod".to_string(), death.pod_name.clone()),
            (
                "diffkeeper.io/container".to_string(),
                death.key.container.clone(),
            ),
            (
                "diffkeeper.io/container-id".to_string(),
                death.key.container_id.clone(),
            ),
        ])),
        owner_references: recording.controller_owner_ref(&()).map(|o| vec![o]),
        ..Default::default()
    }
}

/// The status line of one snapshot, from its death and (if it still exists) its Pod.
pub fn snapshot_record(recording: &Recording, death: &Death, pod: Option<&Pod>) -> SnapshotRecord {
    let name = death.key.object_name(&death.pod_name);
    let at = SnapshotMoment::parse(&recording.spec.snapshot.at)
        .map(|m| m.as_export_time())
        .unwrap_or_else(|_| "exit".into());
    let status = pod.and_then(|p| p.status.as_ref());
    let terminated = status
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.first())
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.terminated.as_ref());
    let result: SnapshotReport = terminated
        .and_then(|t| t.message.as_deref())
        .and_then(|m| serde_json::from_str(m).ok())
        .unwrap_or_default();
    let (phase, message) = match (pod, status.and_then(|s| s.phase.as_deref())) {
        (None, _) => (
            SnapshotPhase::Failed,
            Some("the snapshot Pod is gone before it finished".to_string()),
        ),
        (_, Some("Succeeded")) => (SnapshotPhase::Succeeded, None),
        (_, Some("Failed")) => (
            SnapshotPhase::Failed,
            Some(
                result
                    .error
                    .clone()
                    .or_else(|| terminated.and_then(|t| t.message.clone()))
                    .unwrap_or_else(|| {
                        terminated
                            .and_then(|t| t.reason.clone())
                            .unwrap_or_else(|| "the snapshot Pod failed".into())
                    }),
            ),
        ),
        _ => (SnapshotPhase::Pending, None),
    };
    SnapshotRecord {
        pod: death.pod_name.clone(),
        pod_uid: death.key.pod_uid.clone(),
        container: death.key.container.clone(),
        node: death.node.clone(),
        container_id: death.key.container_id.clone(),
        died_at: death.died_at.clone(),
        at,
        pvc: name.clone(),
        snapshot_pod: name,
        files: result.files,
        bytes: result.bytes,
        phase,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(phase: Option<&str>) -> ContainerRecord {
        serde_json::from_value(json!({
            "apiVersion": "diffkeeper.io/v1alpha1", "kind": "ContainerRecord",
            "metadata": { "name": "r", "namespace": "ns" },
            "spec": { "recording": "rec", "pod": { "name": "p", "uid": "u1" }, "container": "app",
                      "containerId": "containerd://old", "node": "n1" },
            "status": { "phase": phase },
        }))
        .unwrap()
    }

    fn pod(phase: &str, status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": { "name": "p", "namespace": "ns", "uid": "u1" },
            "status": { "phase": phase, "containerStatuses": [status] },
        }))
        .unwrap()
    }

    #[test]
    fn a_running_incarnation_is_alive() {
        let p = pod(
            "Running",
            json!({ "name": "app", "image": "", "imageID": "", "ready": true, "restartCount": 0,
            "containerID": "containerd://old", "state": { "running": {} } }),
        );
        assert!(death_of(&record(Some("Recording")), Some(&p)).is_none());
    }

    #[test]
    fn a_restart_is_the_death_of_the_previous_incarnation_only() {
        let p = pod(
            "Running",
            json!({ "name": "app", "image": "", "imageID": "", "ready": true, "restartCount": 1,
            "containerID": "containerd://new", "state": { "running": {} },
            "lastState": { "terminated": { "exitCode": 1, "containerID": "containerd://old",
                                           "finishedAt": "2026-11-25T10:00:04Z" } } }),
        );
        let death = death_of(&record(Some("Recording")), Some(&p)).expect("old incarnation died");
        assert_eq!(death.cause, Cause::Restarted);
        assert_eq!(death.key.container_id, "containerd://old");
        assert!(death.died_at.is_some());
        // The new incarnation's own record is alive.
        let mut current = record(Some("Recording"));
        current.spec.container_id = "containerd://new".into();
        assert!(death_of(&current, Some(&p)).is_none());
    }

    #[test]
    fn a_deleted_pod_or_a_finished_one_or_an_agent_report_is_a_death() {
        assert_eq!(
            death_of(&record(None), None).unwrap().cause,
            Cause::PodDeleted
        );
        let finished = pod(
            "Failed",
            json!({ "name": "other", "image": "", "imageID": "", "ready": false, "restartCount": 0 }),
        );
        assert_eq!(
            death_of(&record(None), Some(&finished)).unwrap().cause,
            Cause::PodFinished
        );
        let running = pod(
            "Running",
            json!({ "name": "other", "image": "", "imageID": "", "ready": true, "restartCount": 0 }),
        );
        assert_eq!(
            death_of(&record(Some("Ended")), Some(&running))
                .unwrap()
                .cause,
            Cause::EndedOnNode
        );
    }

    #[test]
    fn the_same_death_always_has_the_same_valid_name() {
        let d = death_of(&record(None), None).unwrap();
        let name = d
            .key
            .object_name("a-very-long-pod-name-that-goes-on-and-on-and-on-and-on-and-on");
        assert_eq!(
            name,
            death_of(&record(None), None)
                .unwrap()
                .key
                .object_name("a-very-long-pod-name-that-goes-on-and-on-and-on-and-on-and-on")
        );
        assert!(
            name.len() <= 63 && name.starts_with("snap-") && !name.contains("--"),
            "{name}"
        );
    }
}
