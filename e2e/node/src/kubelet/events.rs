//! core/v1 Events about a pod, as kubelet posts them (`source.component: kubelet`); a repeated
//! event (same type, reason and message) bumps the first one's `count` and `lastTimestamp`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, Patch, PatchParams};
use kube::ResourceExt;
use serde_json::{json, Value};

use super::clock;
use super::volumes::MANAGER;
use super::Ctx;

pub struct Recorder {
    ctx: Arc<Ctx>,
    namespace: String,
    pod_name: String,
    involved: Value,
    /// (type, reason, message) → (event name, count, firstTimestamp)
    seen: HashMap<(String, String, String), (String, i32, String)>,
}

impl Recorder {
    pub fn new(ctx: Arc<Ctx>, pod: &Pod) -> Recorder {
        let namespace = pod.namespace().unwrap_or_default();
        Recorder {
            involved: json!({
                "apiVersion": "v1",
                "kind": "Pod",
                "namespace": namespace,
                "name": pod.name_any(),
                "uid": pod.uid().unwrap_or_default(),
            }),
            ctx,
            namespace,
            pod_name: pod.name_any(),
            seen: HashMap::new(),
        }
    }

    pub async fn normal(&mut self, reason: &str, message: &str) {
        self.record("Normal", reason, message).await;
    }

    pub async fn warning(&mut self, reason: &str, message: &str) {
        self.record("Warning", reason, message).await;
    }

    async fn record(&mut self, kind: &str, reason: &str, message: &str) {
        let now = clock::now();
        let key = (kind.to_string(), reason.to_string(), message.to_string());
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let entry = self
            .seen
            .entry(key)
            .and_modify(|(_, count, _)| *count += 1)
            .or_insert_with(|| (format!("{}.{nanos:x}", self.pod_name), 1, now.clone()));
        let (name, count, first) = entry.clone();
        let event = json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": self.namespace},
            "involvedObject": self.involved,
            "type": kind,
            "reason": reason,
            "message": message,
            "source": {"component": "kubelet", "host": self.ctx.config.node_name},
            "reportingComponent": "kubelet",
            "reportingInstance": self.ctx.config.node_name,
            "firstTimestamp": first,
            "lastTimestamp": now,
            "count": count,
        });
        let events: Api<Event> = Api::namespaced(self.ctx.client.clone(), &self.namespace);
        if let Err(error) = events
            .patch(
                &name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(event),
            )
            .await
        {
            tracing::debug!(pod = %self.pod_name, "posting event {reason}: {error}");
        }
    }
}
