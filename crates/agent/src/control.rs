//! What to record on this node, and the reports about it: the control loop.
//!
//! It watches the pods bound to the node, the Recordings and this node's ContainerRecords, and
//! once a second (or at once on a change) makes the node match them:
//! 1. a running container that a Recording owns and that is not recorded yet is located and
//!    handed to the capture thread (a history a killed agent left is continued after a gap);
//! 2. a recorded container the pod status says ended is closed, with its exit code;
//! 3. every history gets its ContainerRecord, and the record's status follows the history;
//! 4. a record being deleted (its Recording went, or retention asked) takes its history along,
//!    then the agent lifts its finalizer;
//! 5. retention: histories past the Recording's maxAge, or past maxBytes per container, go.

use crate::capture::{Attachment, Command, GapCause};
use crate::catalog::{Catalog, IncarnationMeta, Progress};
use crate::metrics::Metrics;
use crate::AgentError;
use diffkeeper_api::{
    owning_recording, parse_bytes, ContainerRecord, ContainerRecordSpec, ContainerRecordStatus,
    DeathKey, PodRef, RecordPhase, Recording, AGENT_MANAGER, NODE_DATA_FINALIZER, RECORDING_LABEL,
};
use diffkeeper_locate::{
    find_container_cgroup, init_pid, locate_container, mountinfo, ContainerId,
};
use diffkeeper_recorder::{monotonic_ns, wall_ns, PathScope};
use diffkeeper_store::{format_wall, RecordingInfo, Scope};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{self, Store as Cache};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{oneshot, Notify};

pub struct Control {
    client: Client,
    node: String,
    /// The gRPC endpoint written into each record (`https://host:port`).
    advertise: String,
    catalog: Catalog,
    capture: Sender<Command>,
    pods: Cache<Pod>,
    recordings: Cache<Recording>,
    records: Cache<ContainerRecord>,
    changed: Arc<Notify>,
    cgroup2_root: PathBuf,
    /// The last status sent per record, so unchanged ones are not written again.
    reported: HashMap<String, ContainerRecordStatus>,
    /// Interrupted histories found at start, not yet continued or closed.
    interrupted: BTreeMap<String, IncarnationMeta>,
    metrics: Arc<Metrics>,
    /// Running selected containers whose last attach failed, by history id: their records say
    /// why until an attach succeeds, and each is counted once in the metrics, not once per retry.
    failures: HashMap<String, AttachFailure>,
}

/// A selected container the agent could not attach to, as its ContainerRecord reports it.
#[derive(Clone, Debug)]
struct AttachFailure {
    namespace: String,
    record_name: String,
    spec: ContainerRecordSpec,
    /// The typed error's text: what the record's `status.message` says.
    message: String,
}

const TICK: Duration = Duration::from_secs(1);

impl Control {
    pub fn start(
        client: Client,
        node: String,
        advertise: String,
        catalog: Catalog,
        capture: Sender<Command>,
        metrics: Arc<Metrics>,
    ) -> Result<Control, AgentError> {
        let mounts = mountinfo::read_mountinfo(None).map_err(AgentError::Host)?;
        let cgroup2_root = mountinfo::cgroup2_mount(&mounts)
            .ok_or(AgentError::NoCgroup2)?
            .to_path_buf();
        let changed = Arc::new(Notify::new());
        let on_node = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
        let pods = reflect(Api::<Pod>::all(client.clone()), on_node, &changed);
        let recordings = reflect(
            Api::<Recording>::all(client.clone()),
            watcher::Config::default(),
            &changed,
        );
        let mine = watcher::Config::default().fields(&format!("spec.node={node}"));
        let records = reflect(Api::<ContainerRecord>::all(client.clone()), mine, &changed);
        let interrupted = catalog.interrupted().into_iter().collect();
        Ok(Control {
            client,
            node,
            advertise,
            catalog,
            capture,
            pods,
            recordings,
            records,
            changed,
            cgroup2_root,
            reported: HashMap::new(),
            interrupted,
            metrics,
            failures: HashMap::new(),
        })
    }

    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        for (what, ready) in [
            ("pods", self.pods.wait_until_ready().await.is_ok()),
            (
                "recordings",
                self.recordings.wait_until_ready().await.is_ok(),
            ),
            ("records", self.records.wait_until_ready().await.is_ok()),
        ] {
            if !ready {
                tracing::error!(what, "a watch never became ready");
            }
        }
        tracing::info!(node = %self.node, "watching the node's pods");
        loop {
            self.pass().await;
            tokio::select! {
                _ = &mut shutdown => break,
                _ = self.changed.notified() => {}
                _ = tokio::time::sleep(TICK) => {}
            }
        }
    }

    /// One pass over everything; errors are per container and logged, never fatal.
    async fn pass(&mut self) {
        let pods = self.pods.state();
        let recordings = self.recordings.state();
        let mut running = HashMap::new();
        for pod in &pods {
            let Some(rec) = owning_recording(pod, recordings.iter().map(|r| r.as_ref())) else {
                continue;
            };
            for status in container_statuses(pod) {
                if !rec.spec.containers.is_empty() && !rec.spec.containers.contains(&status.name) {
                    continue;
                }
                let Some(cid) = status.container_id.clone() else {
                    continue;
                };
                if status
                    .state
                    .as_ref()
                    .and_then(|s| s.running.as_ref())
                    .is_none()
                {
                    continue;
                }
                let key = DeathKey {
                    pod_uid: pod.uid().unwrap_or_default(),
                    container: status.name.clone(),
                    container_id: cid,
                };
                running.insert(key.id(), (key, pod.clone(), rec.clone(), status.clone()));
            }
        }
        for (id, (key, pod, rec, status)) in &running {
            let resume = self.interrupted.remove(id);
            if self.catalog.is_live(id) || (self.catalog.contains(id) && resume.is_none()) {
                continue;
            }
            let resumed = resume.clone();
            match self.attach(id, key, pod, rec, status, resume).await {
                Ok(()) => {
                    self.failures.remove(id);
                }
                Err(e) => {
                    let failure = attach_failure(key, pod, rec, status, &self.node, &e);
                    let earlier = self.failures.insert(id.clone(), failure);
                    if earlier.is_none() {
                        self.metrics.attach_failed(e.attach_reason());
                    }
                    if let Some(meta) = resumed {
                        self.interrupted.insert(id.clone(), meta);
                    }
                    tracing::warn!(pod = %pod.name_any(), container = %key.container, error = %e, "not recording yet");
                }
            }
        }
        // A container that stopped running (or stopped being selected) is no longer attached
        // to: its failure is over, and [`Control::report`] drops a record left without history.
        self.failures.retain(|id, _| running.contains_key(id));
        // Histories a killed agent left whose container did not survive it: closed as they are.
        let gone: Vec<String> = self
            .interrupted
            .keys()
            .filter(|id| !running.contains_key(*id))
            .cloned()
            .collect();
        for id in gone {
            self.interrupted.remove(&id);
            self.close_interrupted(&id);
        }
        self.notice_ends(&pods);
        self.report(&recordings).await;
        self.retention(&recordings).await;
    }

    async fn attach(
        &mut self,
        id: &str,
        key: &DeathKey,
        pod: &Pod,
        rec: &Recording,
        status: &ContainerStatus,
        resume: Option<IncarnationMeta>,
    ) -> Result<(), AgentError> {
        let cid = ContainerId::parse(&key.container_id).ok_or_else(|| {
            AgentError::Locate(format!("unusable container id {:?}", key.container_id))
        })?;
        let cgroup_dir = find_container_cgroup(&self.cgroup2_root, &key.pod_uid, &cid)
            .map_err(AgentError::Host)?
            .ok_or_else(|| {
                AgentError::Locate(format!(
                    "no cgroup for container {} of pod {} below {}",
                    cid.id,
                    key.pod_uid,
                    self.cgroup2_root.display()
                ))
            })?;
        let pid = init_pid(&cgroup_dir)
            .map_err(AgentError::Host)?
            .ok_or_else(|| {
                AgentError::Locate(format!(
                    "{} has no init process (pid 1 of its namespace): the container is ending",
                    cgroup_dir.display()
                ))
            })?;
        let location = locate_container(pid).map_err(|e| AgentError::Locate(e.to_string()))?;
        let level = location
            .cgroup_path
            .split('/')
            .filter(|c| !c.is_empty())
            .count() as u32;
        let namespace = pod.namespace().unwrap_or_default();
        let resuming = resume.is_some();
        let (meta, resume_after) = match resume {
            Some(mut meta) => {
                meta.gaps += 1;
                let gap = GapCause {
                    detail: format!(
                        "the agent was not running (it restarted); changes made meanwhile were \
                         read back from the container's files at {}, so their exact order and \
                         intermediate states are missing",
                        format_wall(wall_ns())
                    ),
                };
                (meta, Some(gap))
            }
            None => {
                let meta = IncarnationMeta {
                    namespace: namespace.clone(),
                    pod_name: pod.name_any(),
                    pod_uid: key.pod_uid.clone(),
                    container: key.container.clone(),
                    container_id: key.container_id.clone(),
                    restart_count: status.restart_count,
                    recording: rec.name_any(),
                    record_name: key.record_name(&pod.name_any()),
                    started_wall_ns: wall_ns(),
                    started_mono_ns: monotonic_ns(),
                    ended_wall_ns: None,
                    exit_code: None,
                    image_layers: location.lower_dirs.clone(),
                    upper_dir: location.upper_dir.clone(),
                    gaps: 0,
                };
                (meta, None)
            }
        };
        let info = RecordingInfo {
            command: vec![
                format!("{namespace}/{}", meta.pod_name),
                key.container.clone(),
            ],
            started_wall_ns: meta.started_wall_ns,
            started_mono_ns: meta.started_mono_ns,
            hostname: self.node.clone(),
            labels: BTreeMap::from([
                ("namespace".into(), namespace.clone()),
                ("pod".into(), meta.pod_name.clone()),
                ("pod-uid".into(), key.pod_uid.clone()),
                ("container".into(), key.container.clone()),
                ("container-id".into(), key.container_id.clone()),
                ("recording".into(), meta.recording.clone()),
            ]),
        };
        let (scope, max_write_capture) = recording_settings(rec)?;
        let attachment = Attachment {
            id: id.to_string(),
            store_dir: self.catalog.store_dir(id),
            info,
            cgroup_id: location.cgroup_id,
            cgroup_level: level,
            cgroup_dir,
            root: PathBuf::from(format!("/proc/{pid}/root")),
            upper_dir: location.upper_dir,
            lower_dirs: location.lower_dirs,
            resume_after,
            scope,
            max_write_capture,
        };
        self.catalog
            .insert(id, meta)
            .map_err(AgentError::StateDir)?;
        let (reply, answer) = oneshot::channel();
        let _ = self.capture.send(Command::Attach {
            attachment: Box::new(attachment),
            reply,
        });
        match answer.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                if resuming {
                    // The history stays; the next pass tries to continue it again.
                    self.catalog.set_live(id, false);
                } else {
                    // Nothing usable was written: forget it, so the next pass tries afresh.
                    let _ = self.catalog.remove(id);
                }
                Err(e)
            }
            Err(_) => Err(AgentError::Locate("the capture thread stopped".into())),
        }
    }

    /// A history whose container ended while no agent ran: its last part is missing, and says so.
    fn close_interrupted(&mut self, id: &str) {
        let dir = self.catalog.store_dir(id);
        let result = diffkeeper_store::Writer::resume(&dir).and_then(|mut writer| {
            let now = monotonic_ns();
            writer.append(diffkeeper_store::Event {
                time: now,
                process: None,
                op: diffkeeper_store::Op::Marker {
                    kind: diffkeeper_store::MarkerKind::Gap,
                    detail: "the agent was not running when the container ended: its last \
                             changes are missing"
                        .into(),
                },
            })?;
            writer.finish(now)
        });
        if let Err(e) = result {
            tracing::error!(%id, error = %e, "closing a history left by a previous agent");
        }
        self.catalog.update(id, |meta| meta.gaps += 1);
        self.catalog.mark_ended(id, wall_ns());
    }

    /// Ends live histories whose container the pod status says is over, and takes exit codes.
    fn notice_ends(&mut self, pods: &[Arc<Pod>]) {
        for id in self.catalog.ids() {
            let Some(meta) = self.catalog.meta(&id) else {
                continue;
            };
            let pod = pods
                .iter()
                .find(|p| p.uid().as_deref() == Some(meta.pod_uid.as_str()));
            let statuses = pod.map(|p| container_statuses(p)).unwrap_or_default();
            let status = statuses.iter().find(|s| s.name == meta.container);
            let terminated = status.and_then(|s| {
                let now = s.state.as_ref().and_then(|st| st.terminated.as_ref());
                let last = s.last_state.as_ref().and_then(|st| st.terminated.as_ref());
                [now, last].into_iter().flatten().find(|t| {
                    t.container_id.as_deref() == Some(meta.container_id.as_str())
                        || (t.container_id.is_none()
                            && s.container_id.as_deref() == Some(meta.container_id.as_str()))
                })
            });
            let replaced = status
                .is_some_and(|s| s.container_id.as_deref() != Some(meta.container_id.as_str()));
            if let Some(t) = terminated {
                self.catalog
                    .update(&id, |m| m.exit_code = Some(t.exit_code));
            }
            if !self.catalog.is_live(&id) {
                continue;
            }
            let note = if let Some(t) = terminated {
                format!("exited with code {}", t.exit_code)
            } else if pod.is_none() {
                "its pod was deleted".to_string()
            } else if replaced {
                "it was replaced by a new incarnation".to_string()
            } else {
                continue;
            };
            let _ = self.capture.send(Command::End { id, note });
        }
    }

    /// Every history's record exists and tells where it stands; records being deleted take their
    /// history with them.
    async fn report(&mut self, recordings: &[Arc<Recording>]) {
        let records: HashMap<String, Arc<ContainerRecord>> = self
            .records
            .state()
            .into_iter()
            .map(|r| {
                (
                    format!("{}/{}", r.namespace().unwrap_or_default(), r.name_any()),
                    r,
                )
            })
            .collect();
        for (key, record) in &records {
            if record.metadata.deletion_timestamp.is_some() {
                self.purge(key, record).await;
            }
        }
        for id in self.catalog.ids() {
            let Some(meta) = self.catalog.meta(&id) else {
                continue;
            };
            let key = format!("{}/{}", meta.namespace, meta.record_name);
            let recording = recordings.iter().find(|r| {
                r.name_any() == meta.recording && r.namespace().as_deref() == Some(&meta.namespace)
            });
            match (records.get(&key), recording) {
                (Some(record), _) if record.metadata.deletion_timestamp.is_some() => continue,
                (Some(_), _) => {}
                (None, Some(recording)) => {
                    if let Err(e) = self.create_record(&meta, recording).await {
                        tracing::warn!(record = %key, error = %e, "creating the ContainerRecord");
                        continue;
                    }
                }
                // The Recording is gone and with it the record: nobody can ask for this
                // history any more.
                (None, None) if !self.catalog.is_live(&id) => {
                    tracing::info!(%id, "its Recording is gone: removing the history");
                    let _ = self.catalog.remove(&id);
                    continue;
                }
                (None, None) => continue,
            }
            self.report_status(&id, &meta).await;
        }
        let failures: Vec<(String, AttachFailure)> = self
            .failures
            .iter()
            .filter(|(id, _)| !self.catalog.contains(id))
            .map(|(id, f)| (id.clone(), f.clone()))
            .collect();
        for (id, failure) in failures {
            let key = format!("{}/{}", failure.namespace, failure.record_name);
            match records.get(&key) {
                Some(record) if record.metadata.deletion_timestamp.is_some() => continue,
                Some(_) => {}
                None => {
                    let Some(recording) = recordings.iter().find(|r| {
                        r.name_any() == failure.spec.recording
                            && r.namespace().as_deref() == Some(&failure.namespace)
                    }) else {
                        continue;
                    };
                    let record = record_of(&failure.record_name, failure.spec.clone(), recording);
                    if let Err(e) = self.apply_record(&failure.namespace, &record).await {
                        tracing::warn!(record = %key, error = %e, "creating the ContainerRecord");
                        continue;
                    }
                }
            }
            let status = failed_status(None, &failure.message);
            self.write_status(&id, &failure.namespace, &failure.record_name, status)
                .await;
        }
        // A Failed record with neither a history nor a current failure (its container stopped
        // before any attach succeeded, or a previous agent wrote it): nothing was recorded, so
        // nothing is kept, and its Recording stops reporting a failure that is over.
        for (key, record) in &records {
            let id = DeathKey::of_record(record).id();
            let failed = record.status.as_ref().and_then(|s| s.phase) == Some(RecordPhase::Failed);
            if !failed
                || record.metadata.deletion_timestamp.is_some()
                || self.catalog.contains(&id)
                || self.failures.contains_key(&id)
            {
                continue;
            }
            tracing::info!(record = %key, "its container is no longer running and was never recorded: deleting the record");
            self.reported.remove(&id);
            let api: Api<ContainerRecord> =
                Api::namespaced(self.client.clone(), &record.namespace().unwrap_or_default());
            match api.delete(&record.name_any(), &Default::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => tracing::warn!(record = %key, error = %e, "deleting a Failed record"),
            }
        }
    }

    async fn create_record(
        &self,
        meta: &IncarnationMeta,
        recording: &Recording,
    ) -> Result<(), kube::Error> {
        let record = record_of(&meta.record_name, spec_of(meta, &self.node), recording);
        self.apply_record(&meta.namespace, &record).await
    }

    async fn apply_record(
        &self,
        namespace: &str,
        record: &ContainerRecord,
    ) -> Result<(), kube::Error> {
        let api: Api<ContainerRecord> = Api::namespaced(self.client.clone(), namespace);
        api.patch(
            &record.name_any(),
            &PatchParams::apply(AGENT_MANAGER).force(),
            &Patch::Apply(record),
        )
        .await?;
        Ok(())
    }

    async fn report_status(&mut self, id: &str, meta: &IncarnationMeta) {
        let status = status_of(
            meta,
            self.catalog.progress(id),
            self.catalog.is_live(id),
            &self.advertise,
        );
        // A kept history the agent fails to continue: still served, but not being recorded.
        let status = match self.failures.get(id) {
            Some(failure) => failed_status(Some(status), &failure.message),
            None => status,
        };
        self.write_status(id, &meta.namespace, &meta.record_name, status)
            .await;
    }

    /// Applies `status` to the record, unless it is what was last sent.
    async fn write_status(
        &mut self,
        id: &str,
        namespace: &str,
        record_name: &str,
        status: ContainerRecordStatus,
    ) {
        if self.reported.get(id) == Some(&status) {
            return;
        }
        let api: Api<ContainerRecord> = Api::namespaced(self.client.clone(), namespace);
        // Only the status goes to the status subresource: a whole typed object would make this
        // field manager claim the spec there too.
        let patch = json!({
            "apiVersion": ContainerRecord::api_version(&()),
            "kind": ContainerRecord::kind(&()),
            "status": status,
        });
        match api
            .patch_status(
                record_name,
                &PatchParams::apply(AGENT_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await
        {
            Ok(_) => {
                self.reported.insert(id.to_string(), status);
            }
            Err(e) => tracing::warn!(record = %record_name, error = %e, "reporting status"),
        }
    }

    /// The record is being deleted: stop, drop the history, then let the record go.
    async fn purge(&mut self, key: &str, record: &ContainerRecord) {
        let id = DeathKey::of_record(record).id();
        if self.catalog.is_live(&id) {
            let _ = self.capture.send(Command::Detach { id: id.clone() });
        }
        if let Err(e) = self.catalog.remove(&id) {
            tracing::error!(record = %key, error = %e, "removing a history");
            return;
        }
        self.reported.remove(&id);
        let finalizers: Vec<String> = record
            .finalizers()
            .iter()
            .filter(|f| *f != NODE_DATA_FINALIZER)
            .cloned()
            .collect();
        let api: Api<ContainerRecord> =
            Api::namespaced(self.client.clone(), &record.namespace().unwrap_or_default());
        let patch = json!({ "metadata": { "finalizers": finalizers } });
        match api
            .patch(
                &record.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => tracing::info!(record = %key, "history removed with its record"),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => tracing::warn!(record = %key, error = %e, "lifting the finalizer"),
        }
    }

    /// Retention asks for deletion of the record; [`Control::purge`] then removes the history,
    /// so the operator sees the same path as any other deletion.
    async fn retention(&mut self, recordings: &[Arc<Recording>]) {
        let now = wall_ns();
        // (pod uid, container) -> its histories as (start, id, maxBytes), oldest first.
        let mut per_container: BTreeMap<(String, String), Vec<SizedHistory>> = BTreeMap::new();
        for id in self.catalog.ids() {
            let Some(meta) = self.catalog.meta(&id) else {
                continue;
            };
            let Some(rec) = recordings.iter().find(|r| {
                r.name_any() == meta.recording && r.namespace().as_deref() == Some(&meta.namespace)
            }) else {
                continue;
            };
            let max_age = humantime::parse_duration(&rec.spec.retention.max_age).ok();
            if let (Some(ended), Some(max_age)) = (meta.ended_wall_ns, max_age) {
                if now - ended > max_age.as_nanos() as i128 {
                    self.expire(&meta, "older than the Recording's retention.maxAge")
                        .await;
                    continue;
                }
            }
            if let Some(max) = rec
                .spec
                .retention
                .max_bytes
                .as_ref()
                .and_then(|q| parse_bytes(q).ok())
            {
                per_container
                    .entry((meta.pod_uid.clone(), meta.container.clone()))
                    .or_default()
                    .push((meta.started_wall_ns, id.clone(), max));
            }
        }
        for (_, mut histories) in per_container {
            histories.sort();
            let mut total: u64 = histories
                .iter()
                .map(|(_, id, _)| self.catalog.progress(id).bytes)
                .sum();
            for (_, id, max) in &histories {
                if total <= *max || self.catalog.is_live(id) {
                    break;
                }
                total -= self.catalog.progress(id).bytes;
                if let Some(meta) = self.catalog.meta(id) {
                    self.expire(&meta, "over the Recording's retention.maxBytes")
                        .await;
                }
            }
        }
    }

    async fn expire(&self, meta: &IncarnationMeta, why: &str) {
        let api: Api<ContainerRecord> = Api::namespaced(self.client.clone(), &meta.namespace);
        match api.delete(&meta.record_name, &Default::default()).await {
            Ok(_) => {
                tracing::info!(record = %meta.record_name, why, "retention: deleting a history")
            }
            Err(e) => tracing::warn!(record = %meta.record_name, error = %e, "retention"),
        }
    }
}

/// A history under a byte limit: (when it started, its id, the limit).
type SizedHistory = (i128, String, u64);

fn container_statuses(pod: &Pod) -> Vec<ContainerStatus> {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.clone())
        .unwrap_or_default()
}

/// A cache kept by a background watch that pokes `changed` on every change.
fn reflect<K>(api: Api<K>, config: watcher::Config, changed: &Arc<Notify>) -> Cache<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (cache, writer) = reflector::store();
    let changed = changed.clone();
    let stream = watcher(api, config)
        .default_backoff()
        .reflect(writer)
        .touched_objects();
    tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(item) = stream.next().await {
            match item {
                Ok(_) => changed.notify_one(),
                Err(e) => tracing::warn!(error = %e, "watch"),
            }
        }
    });
    cache
}

/// What the record of `meta`'s history says it records.
fn spec_of(meta: &IncarnationMeta, node: &str) -> ContainerRecordSpec {
    ContainerRecordSpec {
        recording: meta.recording.clone(),
        pod: PodRef {
            name: meta.pod_name.clone(),
            uid: meta.pod_uid.clone(),
        },
        container: meta.container.clone(),
        container_id: meta.container_id.clone(),
        restart_count: meta.restart_count,
        node: node.to_string(),
    }
}

/// The failure of attaching to the container `status` reports, for its record: the same record
/// (name and spec) that the history would have had.
fn attach_failure(
    key: &DeathKey,
    pod: &Pod,
    rec: &Recording,
    status: &ContainerStatus,
    node: &str,
    error: &AgentError,
) -> AttachFailure {
    let pod_name = pod.name_any();
    AttachFailure {
        namespace: pod.namespace().unwrap_or_default(),
        record_name: key.record_name(&pod_name),
        spec: ContainerRecordSpec {
            recording: rec.name_any(),
            pod: PodRef {
                name: pod_name,
                uid: key.pod_uid.clone(),
            },
            container: key.container.clone(),
            container_id: key.container_id.clone(),
            restart_count: status.restart_count,
            node: node.to_string(),
        },
        message: error.to_string(),
    }
}

/// The ContainerRecord `record_name` with `spec`, owned by its Recording.
fn record_of(
    record_name: &str,
    spec: ContainerRecordSpec,
    recording: &Recording,
) -> ContainerRecord {
    let recording_name = spec.recording.clone();
    let mut record = ContainerRecord::new(record_name, spec);
    record.metadata = ObjectMeta {
        name: Some(record_name.to_string()),
        labels: Some(BTreeMap::from([(
            RECORDING_LABEL.to_string(),
            recording_name,
        )])),
        finalizers: Some(vec![NODE_DATA_FINALIZER.to_string()]),
        owner_references: Some(vec![OwnerReference {
            api_version: Recording::api_version(&()).into_owned(),
            kind: Recording::kind(&()).into_owned(),
            name: recording.name_any(),
            uid: recording.uid().unwrap_or_default(),
            controller: Some(true),
            ..Default::default()
        }]),
        ..Default::default()
    };
    record
}

/// What the record's status says of a history (times at the API's second precision).
fn status_of(
    meta: &IncarnationMeta,
    progress: Progress,
    live: bool,
    advertise: &str,
) -> ContainerRecordStatus {
    let wall_of =
        |mono: u64| meta.started_wall_ns + i128::from(mono) - i128::from(meta.started_mono_ns);
    ContainerRecordStatus {
        phase: Some(if live {
            RecordPhase::Recording
        } else {
            RecordPhase::Ended
        }),
        agent: Some(advertise.to_string()),
        first_event: Some(time(meta.started_wall_ns)),
        last_event: progress.last_event_mono_ns.map(|mono| time(wall_of(mono))),
        ended_at: meta.ended_wall_ns.map(time),
        exit_code: meta.exit_code,
        events: progress.events,
        bytes: progress.bytes,
        drops_healed: progress.drops_healed,
        gaps: meta.gaps,
        message: None,
    }
}

/// The status of a record whose container the agent could not attach to: `history` is what the
/// status of a kept history says (one a previous agent left), None when nothing was recorded.
fn failed_status(history: Option<ContainerRecordStatus>, message: &str) -> ContainerRecordStatus {
    ContainerRecordStatus {
        phase: Some(RecordPhase::Failed),
        message: Some(message.to_string()),
        ..history.unwrap_or_default()
    }
}

/// A wall-clock time in ns since the epoch as the API's Time (out of range: the epoch).
fn time(wall_ns: i128) -> Time {
    Time(k8s_openapi::jiff::Timestamp::from_nanosecond(wall_ns).unwrap_or_default())
}

/// What a Recording asks of each container's capture: the paths kept (`spec.paths`) and the
/// largest write copied (`spec.maxWriteCapture`). The operator reports these problems on the
/// Recording too; here they keep the container from being recorded against its spec.
fn recording_settings(rec: &Recording) -> Result<(PathScope, Option<u64>), AgentError> {
    let name = rec.name_any();
    let paths = &rec.spec.paths;
    let scope = PathScope::new(Scope {
        include: paths.include.clone(),
        exclude: paths.exclude.clone(),
    })
    .map_err(|e| AgentError::Config(format!("Recording {name}: spec.paths: {e}")))?;
    let max_write_capture = rec
        .spec
        .max_write_capture
        .as_ref()
        .map(parse_bytes)
        .transpose()
        .map_err(|e| AgentError::Config(format!("Recording {name}: spec.maxWriteCapture: {e}")))?;
    Ok((scope, max_write_capture))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn meta() -> IncarnationMeta {
        IncarnationMeta {
            namespace: "shop".into(),
            pod_name: "web-1".into(),
            pod_uid: "uid-1".into(),
            container: "app".into(),
            container_id: "containerd://abc".into(),
            restart_count: 2,
            recording: "rec".into(),
            record_name: "web-1-app-abc".into(),
            started_wall_ns: 1_767_225_600_000_000_000,
            started_mono_ns: 5_000_000_000,
            ended_wall_ns: None,
            exit_code: None,
            image_layers: vec![],
            upper_dir: "/upper".into(),
            gaps: 1,
        }
    }

    #[test]
    fn the_record_is_owned_by_its_recording_and_says_what_it_records() {
        let recording: Recording = serde_json::from_value(json!({
            "apiVersion": "diffkeeper.io/v1alpha1", "kind": "Recording",
            "metadata": { "name": "rec", "namespace": "shop", "uid": "rec-uid" },
            "spec": { "selector": {} },
        }))
        .unwrap();
        let meta = meta();
        let record = record_of(&meta.record_name, spec_of(&meta, "node-a"), &recording);
        let record = serde_json::to_value(record).unwrap();
        assert_eq!(record["apiVersion"], "diffkeeper.io/v1alpha1");
        assert_eq!(record["kind"], "ContainerRecord");
        assert_eq!(record["metadata"]["labels"][RECORDING_LABEL], "rec");
        assert_eq!(record["metadata"]["finalizers"][0], NODE_DATA_FINALIZER);
        let owner = &record["metadata"]["ownerReferences"][0];
        assert_eq!(
            (&owner["kind"], &owner["uid"], &owner["controller"]),
            (&json!("Recording"), &json!("rec-uid"), &json!(true))
        );
        assert_eq!(
            record["spec"],
            json!({ "recording": "rec", "pod": { "name": "web-1", "uid": "uid-1" },
                    "container": "app", "containerId": "containerd://abc", "restartCount": 2,
                    "node": "node-a" })
        );
        // Applied as the agent's own fields only: no status in the record's body.
        assert!(record.get("status").is_none(), "{record}");
    }

    #[test]
    fn the_status_follows_the_history() {
        let progress = Progress {
            events: 10,
            bytes: 4096,
            drops_healed: 3,
            last_event_mono_ns: Some(7_000_000_000),
        };
        let live = status_of(&meta(), progress, true, "https://10.0.0.5:7443");
        assert_eq!(live.phase, Some(RecordPhase::Recording));
        assert_eq!(live.agent.as_deref(), Some("https://10.0.0.5:7443"));
        assert_eq!(
            serde_json::to_value(&live).unwrap()["lastEvent"],
            "2026-01-01T00:00:02Z",
            "two seconds of monotonic time after the start"
        );
        assert_eq!(
            (live.events, live.bytes, live.drops_healed, live.gaps),
            (10, 4096, 3, 1)
        );
        let mut ended = meta();
        ended.ended_wall_ns = Some(1_767_225_660_000_000_000);
        ended.exit_code = Some(1);
        let done = status_of(&ended, progress, false, "https://10.0.0.5:7443");
        assert_eq!(done.phase, Some(RecordPhase::Ended));
        assert_eq!(done.exit_code, Some(1));
        assert_eq!(
            serde_json::to_value(&done).unwrap()["endedAt"],
            "2026-01-01T00:01:00Z"
        );
    }

    #[test]
    fn a_failed_attach_is_reported_as_failed_with_the_errors_text() {
        let read_only = std::io::Error::new(
            std::io::ErrorKind::ReadOnlyFilesystem,
            "creating /var/lib/diffkeeper/containers/x: Read-only file system (os error 30)",
        );
        let error = AgentError::StateDir(read_only);
        let pod: Pod = serde_json::from_value(json!({
            "metadata": { "name": "web-1", "namespace": "shop", "uid": "uid-1" },
        }))
        .unwrap();
        let recording: Recording = serde_json::from_value(json!({
            "apiVersion": "diffkeeper.io/v1alpha1", "kind": "Recording",
            "metadata": { "name": "rec", "namespace": "shop", "uid": "rec-uid" },
            "spec": { "selector": {} },
        }))
        .unwrap();
        let status: ContainerStatus = serde_json::from_value(json!({
            "name": "app", "image": "busybox", "imageID": "", "ready": true,
            "restartCount": 2, "containerID": "containerd://abc",
        }))
        .unwrap();
        let key = DeathKey {
            pod_uid: "uid-1".into(),
            container: "app".into(),
            container_id: "containerd://abc".into(),
        };
        let failure = attach_failure(&key, &pod, &recording, &status, "node-a", &error);
        // The record a successful attach would have made: the same name and spec.
        assert_eq!(failure.record_name, key.record_name("web-1"));
        assert_eq!(failure.spec, spec_of(&meta(), "node-a"));
        assert_eq!(
            failure.message,
            "cannot use the state dir: creating /var/lib/diffkeeper/containers/x: Read-only file \
             system (os error 30); check that --state-dir is a writable host directory"
        );

        let fresh = failed_status(None, &failure.message);
        assert_eq!(fresh.phase, Some(RecordPhase::Failed));
        assert_eq!(fresh.message.as_deref(), Some(failure.message.as_str()));
        assert_eq!(fresh.agent, None, "no history to serve");

        // A history a previous agent left that cannot be continued: still served, but Failed.
        let kept = status_of(&meta(), Progress::default(), false, "https://10.0.0.5:7443");
        let locate = AgentError::Locate("no cgroup for container abc".into());
        let failed = failed_status(Some(kept), &locate.to_string());
        assert_eq!(failed.phase, Some(RecordPhase::Failed));
        assert_eq!(failed.agent.as_deref(), Some("https://10.0.0.5:7443"));
        assert_eq!(
            failed.message.as_deref(),
            Some("cannot locate the container: no cgroup for container abc")
        );
        assert_eq!(failed.gaps, 1);
    }

    #[test]
    fn a_recordings_paths_and_cap_reach_the_capture_or_say_what_is_wrong() {
        let recording = |spec: serde_json::Value| -> Recording {
            serde_json::from_value(json!({
                "apiVersion": "diffkeeper.io/v1alpha1", "kind": "Recording",
                "metadata": { "name": "rec", "namespace": "shop" },
                "spec": spec,
            }))
            .unwrap()
        };
        let (scope, cap) = recording_settings(&recording(json!({
            "selector": {},
            "paths": { "include": ["/data"], "exclude": ["**/*.tmp"] },
            "maxWriteCapture": "4Ki",
        })))
        .unwrap();
        assert_eq!(cap, Some(4096));
        assert_eq!(scope.scope().to_string(), "only /data; not **/*.tmp");
        let (scope, cap) = recording_settings(&recording(json!({ "selector": {} }))).unwrap();
        assert!(scope.is_everything() && cap.is_none());
        let bad = recording_settings(&recording(json!({
            "selector": {}, "paths": { "exclude": ["/tmp/[a"] },
        })))
        .unwrap_err();
        assert!(
            bad.to_string()
                .starts_with("Recording rec: spec.paths: path glob \"/tmp/[a\" does not compile"),
            "{bad}"
        );
    }
}
