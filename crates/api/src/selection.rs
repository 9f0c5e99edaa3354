//! Which Recording owns a pod, and how a container's death is named. The operator and every agent
//! call these same functions, so they can never disagree on who records what or on which death a
//! snapshot belongs to.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use kube::core::{Selector, SelectorExt};
use kube::ResourceExt;

use crate::{Recording, IMPLICIT_RECORDING, RECORD_ANNOTATION};

/// Whether a Recording selects a pod.
pub trait Selects {
    /// True when `pod` is one this Recording records (label selector, annotation rule).
    fn selects(&self, pod: &Pod) -> bool;
}

impl Selects for Recording {
    fn selects(&self, pod: &Pod) -> bool {
        if self.namespace() != pod.namespace() {
            return false;
        }
        if self.spec.require_annotation && !pod_is_annotated(pod) {
            return false;
        }
        // A selector the API server admitted always converts; one that somehow does not selects
        // nothing rather than everything.
        match Selector::try_from(self.spec.selector.clone()) {
            Ok(selector) => selector.matches(pod.labels()),
            Err(_) => false,
        }
    }
}

/// Whether the pod asks to be recorded through its annotation.
pub fn pod_is_annotated(pod: &Pod) -> bool {
    pod.annotations()
        .get(RECORD_ANNOTATION)
        .is_some_and(|v| v == "true")
}

/// The one Recording that records a pod's containers, if any: a container is recorded once even
/// when several Recordings select it. Explicit Recordings win over the implicit one, then the
/// first by name, so every reader picks the same. Recordings being deleted select nothing.
pub fn owning_recording<'a>(
    pod: &Pod,
    recordings: impl IntoIterator<Item = &'a Recording>,
) -> Option<&'a Recording> {
    recordings
        .into_iter()
        .filter(|r| r.metadata.deletion_timestamp.is_none() && r.selects(pod))
        .min_by_key(|r| (r.name_any() == IMPLICIT_RECORDING, r.name_any()))
}

/// One container death: a pod uid, a container name and the id of the incarnation that ended.
/// Its [`id`](DeathKey::id) names the snapshot PVC and Pod, so seeing the same death twice (a
/// repeated event, an operator restart) can only find the objects already made.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct DeathKey {
    /// The dead container's pod, by uid.
    pub pod_uid: String,
    /// The container's name in the pod.
    pub container: String,
    /// The incarnation that died (`containerd://...`).
    pub container_id: String,
}

impl DeathKey {
    /// The incarnation a ContainerRecord reports on.
    pub fn of_record(record: &crate::ContainerRecord) -> DeathKey {
        DeathKey {
            pod_uid: record.spec.pod.uid.clone(),
            container: record.spec.container.clone(),
            container_id: record.spec.container_id.clone(),
        }
    }

    /// A stable 16-hex-digit id (FNV-1a 64 of the three parts); stable across releases because it
    /// is part of object names.
    pub fn id(&self) -> String {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for part in [&self.pod_uid, &self.container, &self.container_id] {
            for byte in part.bytes().chain([0u8]) {
                hash ^= u64::from(byte);
                hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
        format!("{hash:016x}")
    }

    /// The name of the snapshot PVC and Pod: readable prefix, unique suffix, a valid DNS label.
    pub fn object_name(&self, pod_name: &str) -> String {
        format!("snap-{}", self.record_name(pod_name))
    }

    /// The name of the incarnation's ContainerRecord (the agent's report): the same id, so one
    /// look at a record finds its snapshot.
    pub fn record_name(&self, pod_name: &str) -> String {
        let readable: String = format!("{pod_name}-{}", self.container)
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .take(63 - "snap--".len() - 16)
            .collect();
        format!("{}-{}", readable.trim_matches('-'), self.id())
    }

    /// The labels that find a death's objects.
    pub fn labels(&self, recording: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            (crate::RECORDING_LABEL.to_string(), recording.to_string()),
            (crate::DEATH_LABEL.to_string(), self.id()),
        ])
    }
}
