//! The Recording controller, top to bottom: watch Recordings (and the pods, ContainerRecords and
//! snapshot Pods that change what they should say), reconcile each one behind a finalizer, snapshot
//! every recorded container death exactly once, and write the status by server-side apply.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use diffkeeper_api::{
    owning_recording, parse_bytes, ConditionReason, ConditionType, ContainerRecord, EventReason,
    OnDelete, RecordPhase, Recording, RecordingStatus, Selects, SnapshotPhase, SnapshotRecord,
    DEATH_LABEL, OPERATOR_MANAGER, RECORDING_FINALIZER, RECORDING_LABEL,
};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ObjectReference, PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::Selector;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{finalizer, Event as Finalizer};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use crate::access::{self, AccessError};
use crate::metrics::Metrics;
use crate::snapshot::{death_of, pod_for, pvc_for, snapshot_record, Death, SnapshotTemplate};

/// On a ContainerRecord: the snapshot made of its death. Written before the status, so an
/// operator restart finds the death handled and never makes a second snapshot of it.
pub const SNAPSHOT_ANNOTATION: &str = "diffkeeper.io/snapshot";

/// Why a reconcile did not finish.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed.
    #[error("Kubernetes API call failed: {0}")]
    Kube(#[from] kube::Error),
    /// Adding or removing the finalizer failed.
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    /// Agents still hold this many records of a deleted Recording (retried, not a failure).
    #[error("waiting for agents to release {0} ContainerRecord(s)")]
    AwaitingAgents(usize),
    /// Provisioning snapshot access failed.
    #[error("snapshot access: {0}")]
    Access(#[from] AccessError),
}

impl Error {
    fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Finalizer(_) => "finalizer",
            Error::AwaitingAgents(_) => "awaiting_agents",
            Error::Access(_) => "access",
        }
    }
}

/// What every reconcile shares.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// Publishes Events.
    pub recorder: Recorder,
    /// The operator's counters.
    pub metrics: Arc<Metrics>,
    /// How snapshot Pods are made.
    pub template: SnapshotTemplate,
    /// All Recordings, to pick the one owning a pod when several select it.
    pub recordings: Store<Recording>,
    /// The agents' CA certificate (PEM), published to every namespace with a Recording.
    pub ca_pem: String,
    /// Namespaces already given what snapshot Pods need, so a reconcile does not re-apply it.
    pub provisioned: Mutex<BTreeSet<String>>,
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    client: Client,
    namespace: Option<String>,
    metrics: Arc<Metrics>,
    template: SnapshotTemplate,
    ca_pem: String,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let (recordings, records, pods) = match &namespace {
        Some(ns) => (
            Api::<Recording>::namespaced(client.clone(), ns),
            Api::<ContainerRecord>::namespaced(client.clone(), ns),
            Api::<Pod>::namespaced(client.clone(), ns),
        ),
        None => (
            Api::all(client.clone()),
            Api::all(client.clone()),
            Api::all(client.clone()),
        ),
    };
    let controller = Controller::new(recordings, watcher::Config::default().any_semantic());
    let store = controller.store();
    let ctx = Arc::new(Context {
        client: client.clone(),
        recorder: Recorder::new(client, reporter()),
        metrics,
        template,
        recordings: store.clone(),
        ca_pem,
        provisioned: Mutex::new(BTreeSet::new()),
    });
    let selecting = store.clone();
    controller
        .owns(records, watcher::Config::default().any_semantic())
        .owns(
            pods.clone(),
            watcher::Config::default()
                .labels(DEATH_LABEL)
                .any_semantic(),
        )
        // A pod starting, changing labels or dying changes what its Recording should say.
        .watches(
            pods,
            watcher::Config::default().any_semantic(),
            move |pod| {
                let state = selecting.state();
                owning_recording(&pod, state.iter().map(|r| r.as_ref()))
                    .map(ObjectRef::from)
                    .into_iter()
            },
        )
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok(_) => {}
                // A Recording deleted while its reconcile was queued: nothing left to do.
                Err(kube::runtime::controller::Error::ObjectNotFound(obj)) => {
                    tracing::debug!(%obj, "reconcile of a deleted Recording skipped")
                }
                Err(e) => warn!(error = %e, "reconcile failed"),
            }
        })
        .await;
}

async fn reconcile(recording: Arc<Recording>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    ctx.metrics.reconciliations.inc();
    let namespace = recording.namespace().unwrap_or_default();
    let api: Api<Recording> = Api::namespaced(ctx.client.clone(), &namespace);
    let result = finalizer(&api, RECORDING_FINALIZER, recording, |event| async {
        match event {
            Finalizer::Apply(recording) => apply(&recording, &ctx).await,
            Finalizer::Cleanup(recording) => cleanup(&recording, &ctx).await,
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(inner)
        | kube::runtime::finalizer::Error::CleanupFailed(inner) => inner,
        other => Error::Finalizer(Box::new(other)),
    });
    ctx.metrics
        .reconcile_seconds
        .observe(started.elapsed().as_secs_f64());
    result
}

fn error_policy(recording: Arc<Recording>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.failure(error.metric_label());
    match error {
        // Expected while agents drop their node data: not a failure, just not done yet.
        Error::AwaitingAgents(_) => {
            info!(recording = %recording.name_any(), "{error}");
            Action::requeue(Duration::from_secs(2))
        }
        _ => {
            warn!(recording = %recording.name_any(), "{error}");
            Action::requeue(Duration::from_secs(5))
        }
    }
}

/// Brings one Recording's world in line, in the order controller-rs keeps: observe what is, act
/// on it (snapshots for new deaths, finished ones reported, old ones pruned), compute the status
/// from what was seen ([`desired_status`], pure), and write it if it changed.
async fn apply(recording: &Recording, ctx: &Context) -> Result<Action, Error> {
    let observed = observe_and_snapshot(recording, ctx).await?;
    let status = desired_status(
        recording,
        &observed,
        Time(k8s_openapi::jiff::Timestamp::now()),
    );
    if recording.status.as_ref() != Some(&status) {
        write_status(recording, &status, ctx).await?;
        // After the write, and judged from the written status: an operator restart finds the
        // failure already said and does not say it again.
        if let Some(note) = new_attach_failure(recording.status.as_ref(), &status) {
            publish(
                ctx,
                recording.object_ref(&()),
                EventType::Warning,
                EventReason::AttachFailed,
                &note,
            )
            .await;
        }
    }
    Ok(Action::requeue(requeue_after(&observed)))
}

/// The Degraded message when `now` says an attach failure that `before` did not (a new failure,
/// or another container failing), else None.
pub(crate) fn new_attach_failure(
    before: Option<&RecordingStatus>,
    now: &RecordingStatus,
) -> Option<String> {
    let attach_failed = |status: &RecordingStatus| {
        status
            .conditions
            .iter()
            .find(|c| {
                c.type_ == ConditionType::Degraded.as_str()
                    && c.status == "True"
                    && c.reason == ConditionReason::AttachFailed.as_str()
            })
            .map(|c| c.message.clone())
    };
    let said = attach_failed(now)?;
    (before.and_then(attach_failed).as_ref() != Some(&said)).then_some(said)
}

/// What one reconcile saw and did: everything the status is computed from.
#[derive(Debug, Default)]
pub(crate) struct Observed {
    /// What is wrong with the spec that the API server's schema cannot tell.
    pub problems: Option<String>,
    /// Pods this Recording records.
    pub matched_pods: usize,
    /// The Recording's ContainerRecords.
    pub records: Vec<ContainerRecord>,
    /// The snapshots that exist, oldest first.
    pub snapshots: Vec<SnapshotRecord>,
    /// `pod/container` of dead containers whose snapshot waits for their agent's endpoint.
    pub waiting_for_agent: Vec<String>,
}

/// Reads the Recording's pods and records, and acts on deaths: starts their snapshots, follows
/// them, prunes the oldest.
async fn observe_and_snapshot(recording: &Recording, ctx: &Context) -> Result<Observed, Error> {
    let name = recording.name_any();
    let namespace = recording.namespace().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let records: Api<ContainerRecord> = Api::namespaced(ctx.client.clone(), &namespace);
    let previous = recording.status.clone().unwrap_or_default();

    provision(&namespace, ctx).await?;
    let matched = matched_pods(recording, &pods, ctx).await?;
    let records = records
        .list(&ListParams::default().labels(&format!("{RECORDING_LABEL}={name}")))
        .await?
        .items;

    let mut deaths = Vec::new();
    let mut waiting_for_agent = Vec::new();
    for record in &records {
        // Most records' pods were just listed; only a pod that no longer matches (relabelled,
        // or gone) costs a GET of its own.
        let listed = matched
            .iter()
            .find(|p| p.uid().as_deref() == Some(&record.spec.pod.uid));
        let pod = match listed {
            Some(pod) => Some(pod.clone()),
            None => pods
                .get_opt(&record.spec.pod.name)
                .await?
                .filter(|p| p.uid().as_deref() == Some(&record.spec.pod.uid)),
        };
        // Nothing was recorded of a container its agent could not attach to: no snapshot.
        if record.status.as_ref().and_then(|s| s.phase) == Some(RecordPhase::Failed) {
            continue;
        }
        let Some(death) = death_of(record, pod.as_ref()) else {
            continue;
        };
        if !recording.spec.snapshot.on_termination {
            continue;
        }
        if !record.annotations().contains_key(SNAPSHOT_ANNOTATION) {
            match record.status.as_ref().and_then(|s| s.agent.clone()) {
                Some(agent) => {
                    start_snapshot(recording, record, &death, &agent, pod.as_ref(), ctx).await?
                }
                None => {
                    waiting_for_agent.push(format!("{}/{}", death.pod_name, death.key.container));
                    continue;
                }
            }
        }
        deaths.push(death);
    }
    let snapshots = snapshot_statuses(recording, &previous, deaths, ctx).await?;
    let snapshots = prune(recording, snapshots, ctx).await?;
    Ok(Observed {
        problems: spec_problems(recording),
        matched_pods: matched.len(),
        records,
        snapshots,
        waiting_for_agent,
    })
}

/// The status a Recording should have after a reconcile that observed `observed`. Pure: `now`
/// is the lastTransitionTime of a condition that changes.
pub(crate) fn desired_status(
    recording: &Recording,
    observed: &Observed,
    now: Time,
) -> RecordingStatus {
    let previous = recording.status.clone().unwrap_or_default();
    let records = &observed.records;
    let statuses = || records.iter().filter_map(|r| r.status.as_ref());
    let recording_now = statuses()
        .filter(|s| s.phase == Some(RecordPhase::Recording))
        .count();
    let failed_records: Vec<String> = records
        .iter()
        .filter(|r| r.status.as_ref().and_then(|s| s.phase) == Some(RecordPhase::Failed))
        .map(|r| {
            let why = r
                .status
                .as_ref()
                .and_then(|s| s.message.clone())
                .unwrap_or_default();
            format!("{}/{}: {why}", r.spec.pod.name, r.spec.container)
        })
        .collect();
    let gaps: u64 = statuses().map(|s| s.gaps).sum();
    let failed_snapshots: Vec<String> = observed
        .snapshots
        .iter()
        .filter(|s| s.phase == SnapshotPhase::Failed)
        .map(|s| format!("{}: {}", s.pvc, s.message.clone().unwrap_or_default()))
        .collect();

    use ConditionReason as R;
    use ConditionType as T;
    let generation = recording.metadata.generation;
    let condition = |type_: T, ok: bool, reason: R, message: String| {
        condition(
            &previous.conditions,
            generation,
            (type_, ok, reason, message),
            &now,
        )
    };
    let ready = match &observed.problems {
        None => condition(
            T::Ready,
            true,
            R::Valid,
            "the Recording is valid and reconciled".into(),
        ),
        Some(why) => condition(T::Ready, false, R::InvalidSpec, why.clone()),
    };
    let recording_condition = if recording_now > 0 {
        condition(
            T::Recording,
            true,
            R::ContainersRecording,
            format!("{recording_now} container(s) being recorded"),
        )
    } else if observed.matched_pods == 0 {
        condition(
            T::Recording,
            false,
            R::NoPodsSelected,
            "the selector matches no pod in this namespace".into(),
        )
    } else {
        condition(
            T::Recording,
            false,
            R::NoContainersRecording,
            "no agent reports recording a selected container".into(),
        )
    };
    let degraded = if !failed_records.is_empty() {
        condition(
            T::Degraded,
            true,
            R::AttachFailed,
            failed_records.join("; "),
        )
    } else if !failed_snapshots.is_empty() {
        condition(
            T::Degraded,
            true,
            R::SnapshotFailed,
            failed_snapshots.join("; "),
        )
    } else if !observed.waiting_for_agent.is_empty() {
        condition(
            T::Degraded,
            true,
            R::NoAgentEndpoint,
            format!(
                "no agent endpoint reported for {}; their snapshots wait",
                observed.waiting_for_agent.join(", ")
            ),
        )
    } else if gaps > 0 {
        condition(
            T::Degraded,
            true,
            R::Gaps,
            format!("{gaps} gap(s) in the history could not be healed"),
        )
    } else {
        condition(
            T::Degraded,
            false,
            R::Healthy,
            "nothing recorded is at risk".into(),
        )
    };
    RecordingStatus {
        observed_generation: generation,
        conditions: vec![ready, recording_condition, degraded],
        matched_pods: observed.matched_pods as u32,
        recording_containers: recording_now as u32,
        bytes_recorded: statuses().map(|s| s.bytes).sum(),
        drops_healed: statuses().map(|s| s.drops_healed).sum(),
        snapshot_count: observed.snapshots.len() as u32,
        snapshots: observed.snapshots.clone(),
    }
}

/// Soon while a snapshot is under way or waits for its agent, else a slow resync.
pub(crate) fn requeue_after(observed: &Observed) -> Duration {
    let pending = observed
        .snapshots
        .iter()
        .any(|s| s.phase == SnapshotPhase::Pending)
        || !observed.waiting_for_agent.is_empty();
    if pending {
        Duration::from_secs(5)
    } else {
        Duration::from_secs(300)
    }
}

/// Writes the status by server-side apply, as this operator's field manager.
async fn write_status(
    recording: &Recording,
    status: &RecordingStatus,
    ctx: &Context,
) -> Result<(), Error> {
    let namespace = recording.namespace().unwrap_or_default();
    let api: Api<Recording> = Api::namespaced(ctx.client.clone(), &namespace);
    let patch = json!({
        "apiVersion": Recording::api_version(&()),
        "kind": Recording::kind(&()),
        "status": status,
    });
    api.patch_status(
        &recording.name_any(),
        &PatchParams::apply(OPERATOR_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// Gives the namespace what its snapshot Pods need, once per operator run.
async fn provision(namespace: &str, ctx: &Context) -> Result<(), Error> {
    if ctx.provisioned.lock().unwrap().contains(namespace) {
        return Ok(());
    }
    let t = &ctx.template;
    access::ensure_namespace(
        &ctx.client,
        namespace,
        &t.service_account,
        &t.agent_ca_configmap,
        &ctx.ca_pem,
    )
    .await?;
    ctx.provisioned
        .lock()
        .unwrap()
        .insert(namespace.to_string());
    Ok(())
}

/// What the API server's schema cannot check: globs that do not compile.
fn spec_problems(recording: &Recording) -> Option<String> {
    let paths = &recording.spec.paths;
    let mut problems: Vec<String> = paths
        .include
        .iter()
        .chain(&paths.exclude)
        .filter_map(|g| {
            globset::Glob::new(g)
                .err()
                .map(|e| format!("path glob {g:?}: {e}"))
        })
        .collect();
    if let Some(q) = &recording.spec.max_write_capture {
        if let Err(e) = parse_bytes(q) {
            problems.push(format!("spec.maxWriteCapture: {e}"));
        }
    }
    (!problems.is_empty()).then(|| problems.join("; "))
}

/// The pods this Recording records: selected by it and not claimed by another one first.
async fn matched_pods(
    recording: &Recording,
    pods: &Api<Pod>,
    ctx: &Context,
) -> Result<Vec<Pod>, Error> {
    let selector = Selector::try_from(recording.spec.selector.clone())
        .map(|s| s.to_string())
        .unwrap_or_default();
    let candidates = pods
        .list(&ListParams::default().labels(&selector))
        .await?
        .items;
    let all = ctx.recordings.state();
    Ok(candidates
        .into_iter()
        .filter(|pod| recording.selects(pod))
        .filter(|pod| {
            owning_recording(pod, all.iter().map(|r| r.as_ref()))
                .is_none_or(|owner| owner.uid() == recording.uid())
        })
        .collect())
}

/// Creates the PVC and Pod of one death (finding them if they exist), then marks the record.
async fn start_snapshot(
    recording: &Recording,
    record: &ContainerRecord,
    death: &Death,
    agent: &str,
    dead_pod: Option<&Pod>,
    ctx: &Context,
) -> Result<(), Error> {
    let namespace = recording.namespace().unwrap_or_default();
    let name = death.key.object_name(&death.pod_name);
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &namespace);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    create_if_absent(&pvcs, &pvc_for(recording, death)).await?;
    create_if_absent(&pods, &pod_for(recording, death, agent, &ctx.template)).await?;
    info!(recording = %recording.name_any(), pod = %death.pod_name, container = %death.key.container,
          node = %death.node, cause = ?death.cause, snapshot = %name, "snapshot started");
    // Events before the mark: an operator that dies in between leaves the death unmarked, and
    // its successor starts (finds) the snapshot again and tells people again. After the mark,
    // nobody would.
    let note = format!(
        "container {} of pod {} died ({:?}) on node {}; keeping its files at {} in PVC {name}",
        death.key.container, death.pod_name, death.cause, death.node, recording.spec.snapshot.at
    );
    publish(
        ctx,
        recording.object_ref(&()),
        EventType::Normal,
        EventReason::SnapshotStarted,
        &note,
    )
    .await;
    if let Some(pod) = dead_pod {
        publish(
            ctx,
            pod.object_ref(&()),
            EventType::Normal,
            EventReason::SnapshotStarted,
            &note,
        )
        .await;
    }
    let records: Api<ContainerRecord> = Api::namespaced(ctx.client.clone(), &namespace);
    let mark = json!({ "metadata": { "annotations": { SNAPSHOT_ANNOTATION: name } } });
    records
        .patch(
            &record.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&mark),
        )
        .await?;
    ctx.metrics.snapshots_started.inc();
    Ok(())
}

async fn create_if_absent<K>(api: &Api<K>, obj: &K) -> Result<(), Error>
where
    K: Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.create(&PostParams::default(), obj).await {
        Ok(_) => Ok(()),
        // The same death seen again (repeated event, operator restart): the object is its own.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The status line of every snapshot whose PVC still exists, with Events on phase changes.
async fn snapshot_statuses(
    recording: &Recording,
    previous: &RecordingStatus,
    deaths: Vec<Death>,
    ctx: &Context,
) -> Result<Vec<SnapshotRecord>, Error> {
    let namespace = recording.namespace().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &namespace);
    let selector = format!("{RECORDING_LABEL}={}", recording.name_any());
    let kept: BTreeMap<String, PersistentVolumeClaim> = pvcs
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
        .into_iter()
        .map(|p| (p.name_any(), p))
        .collect();
    let snapshot_pods: BTreeMap<String, Pod> = pods
        .list(&ListParams::default().labels(&format!("{selector},{DEATH_LABEL}")))
        .await?
        .items
        .into_iter()
        .map(|p| (p.name_any(), p))
        .collect();
    let mut out = Vec::new();
    for death in deaths {
        let name = death.key.object_name(&death.pod_name);
        if !kept.contains_key(&name) {
            continue; // pruned by `keep`, or deleted by a person: no longer a snapshot to report
        }
        let before = previous.snapshots.iter().find(|s| s.pvc == name);
        let pod = snapshot_pods.get(&name);
        let mut line = snapshot_record(recording, &death, pod);
        if pod.is_none() {
            if let Some(before) = before.filter(|b| b.phase != SnapshotPhase::Pending) {
                line = before.clone(); // the Pod was cleaned up after it finished: keep its result
            }
        }
        if before.map(|b| b.phase) != Some(line.phase) {
            announce(recording, &line, ctx).await;
        }
        out.push(line);
    }
    out.sort_by(|a, b| {
        (a.died_at.as_ref().map(|t| t.0), &a.pvc).cmp(&(b.died_at.as_ref().map(|t| t.0), &b.pvc))
    });
    Ok(out)
}

async fn announce(recording: &Recording, line: &SnapshotRecord, ctx: &Context) {
    let (kind, reason, note) = match line.phase {
        SnapshotPhase::Pending => return,
        SnapshotPhase::Succeeded => (
            EventType::Normal,
            EventReason::SnapshotSucceeded,
            format!(
                "{} files, {} bytes of {}/{} in PVC {}",
                line.files, line.bytes, line.pod, line.container, line.pvc
            ),
        ),
        SnapshotPhase::Failed => {
            ctx.metrics.snapshots_failed.inc();
            (
                EventType::Warning,
                EventReason::SnapshotFailed,
                format!(
                    "snapshot of {}/{} into PVC {} failed: {}",
                    line.pod,
                    line.container,
                    line.pvc,
                    line.message.clone().unwrap_or_default()
                ),
            )
        }
    };
    publish(ctx, recording.object_ref(&()), kind, reason, &note).await;
    let snapshot_pod = ObjectReference {
        api_version: Some(Pod::api_version(&()).into_owned()),
        kind: Some(Pod::kind(&()).into_owned()),
        name: Some(line.snapshot_pod.clone()),
        namespace: recording.namespace(),
        ..Default::default()
    };
    publish(ctx, snapshot_pod, kind, reason, &note).await;
}

/// Deletes the oldest finished snapshots beyond `spec.snapshot.keep`.
async fn prune(
    recording: &Recording,
    mut snapshots: Vec<SnapshotRecord>,
    ctx: &Context,
) -> Result<Vec<SnapshotRecord>, Error> {
    let keep = recording.spec.snapshot.keep as usize;
    let namespace = recording.namespace().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &namespace);
    while snapshots.len() > keep {
        let Some(oldest) = snapshots
            .iter()
            .position(|s| s.phase != SnapshotPhase::Pending)
        else {
            break;
        };
        let gone = snapshots.remove(oldest);
        info!(recording = %recording.name_any(), pvc = %gone.pvc, keep, "pruning the oldest snapshot");
        delete_if_present(&pods, &gone.snapshot_pod).await?;
        delete_if_present(&pvcs, &gone.pvc).await?;
    }
    Ok(snapshots)
}

async fn delete_if_present<K>(api: &Api<K>, name: &str) -> Result<(), Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The finalizer: stop recording everywhere, then keep or remove what was recorded, leaving
/// nothing behind that nobody owns.
async fn cleanup(recording: &Recording, ctx: &Context) -> Result<Action, Error> {
    let name = recording.name_any();
    let namespace = recording.namespace().unwrap_or_default();
    let selector = ListParams::default().labels(&format!("{RECORDING_LABEL}={name}"));
    let records: Api<ContainerRecord> = Api::namespaced(ctx.client.clone(), &namespace);
    // Deleting a record is how every node learns to stop: its agent drops (or keeps, per
    // retention.onDelete) the history, then lifts its finalizer.
    let remaining = records.list(&selector).await?.items;
    for record in remaining
        .iter()
        .filter(|r| r.metadata.deletion_timestamp.is_none())
    {
        delete_if_present(&records, &record.name_any()).await?;
    }
    if !remaining.is_empty() {
        let still = records.list(&selector).await?.items.len();
        if still > 0 {
            return Err(Error::AwaitingAgents(still));
        }
    }
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &namespace);
    let snapshots =
        ListParams::default().labels(&format!("{RECORDING_LABEL}={name},{DEATH_LABEL}"));
    for pod in pods.list(&snapshots).await?.items {
        delete_if_present(&pods, &pod.name_any()).await?;
    }
    for pvc in pvcs.list(&snapshots).await?.items {
        match recording.spec.retention.on_delete {
            OnDelete::Delete => delete_if_present(&pvcs, &pvc.name_any()).await?,
            // Kept on purpose: cut the owner link so a garbage collector does not take them.
            OnDelete::Retain => {
                let orphan = json!({ "metadata": { "ownerReferences": null } });
                pvcs.patch(
                    &pvc.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&orphan),
                )
                .await?;
            }
        }
    }
    let others = ctx.recordings.state().iter().any(|r| {
        r.namespace().as_deref() == Some(namespace.as_str())
            && r.uid() != recording.uid()
            && r.metadata.deletion_timestamp.is_none()
    });
    if !others {
        let t = &ctx.template;
        access::remove_namespace(
            &ctx.client,
            &namespace,
            &t.service_account,
            &t.agent_ca_configmap,
        )
        .await?;
        ctx.provisioned.lock().unwrap().remove(&namespace);
    }
    info!(recording = %name, on_delete = ?recording.spec.retention.on_delete, "recording deleted, cleaned up");
    Ok(Action::await_change())
}

fn reporter() -> Reporter {
    Reporter {
        controller: OPERATOR_MANAGER.into(),
        instance: None,
    }
}

async fn publish(
    ctx: &Context,
    regarding: ObjectReference,
    type_: EventType,
    reason: EventReason,
    note: &str,
) {
    let action = match reason {
        EventReason::AttachFailed => "Record",
        _ => "Snapshot",
    };
    let event = KubeEvent {
        type_,
        reason: reason.as_str().into(),
        note: Some(note.chars().take(1000).collect()),
        action: action.into(),
        secondary: None,
    };
    // kube's Recorder folds an Event into the series of an earlier one with the same reason
    // and action, and keeps that one's note: a second container failing would be announced
    // with the first one's message. An attach failure is published only when its message
    // changes, so it needs no folding: a Recorder of its own, with nothing to fold into.
    let published = match reason {
        EventReason::AttachFailed => {
            let fresh = Recorder::new(ctx.client.clone(), reporter());
            fresh.publish(&event, &regarding).await
        }
        _ => ctx.recorder.publish(&event, &regarding).await,
    };
    // Events are for people; losing one must not fail or repeat the reconcile.
    if let Err(e) = published {
        warn!(error = %e, %reason, "could not publish an Event");
    }
}

/// A condition (type, status, reason, message) that keeps its lastTransitionTime while its
/// status does not change, and takes `now` when it does.
fn condition(
    previous: &[Condition],
    generation: Option<i64>,
    (type_, ok, reason, message): (ConditionType, bool, ConditionReason, String),
    now: &Time,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    let since = previous
        .iter()
        .find(|c| c.type_ == type_.as_str() && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    Condition {
        type_: type_.as_str().into(),
        status: status.into(),
        reason: reason.as_str().into(),
        message,
        last_transition_time: since,
        observed_generation: generation,
    }
}

#[cfg(test)]
mod tests {
    //! The status computation, without a cluster.

    use super::*;
    use crate::fixtures::{at, record, recording, snapshot};
    use serde_json::json;

    fn find(status: &RecordingStatus, type_: ConditionType) -> &Condition {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == type_.as_str())
            .unwrap()
    }

    /// Each condition as (type, status, reason), in order.
    fn said(status: &RecordingStatus) -> Vec<(&str, &str, &str)> {
        status
            .conditions
            .iter()
            .map(|c| (c.type_.as_str(), c.status.as_str(), c.reason.as_str()))
            .collect()
    }

    #[test]
    fn a_valid_recording_of_no_pods_is_ready_not_recording_and_healthy() {
        let status = desired_status(&recording(), &Observed::default(), at(0));
        assert_eq!(
            said(&status),
            [
                ("Ready", "True", "Valid"),
                ("Recording", "False", "NoPodsSelected"),
                ("Degraded", "False", "Healthy")
            ]
        );
        assert_eq!(status.observed_generation, Some(2));
        assert_eq!(
            requeue_after(&Observed::default()),
            Duration::from_secs(300)
        );
    }

    #[test]
    fn records_are_summed_and_the_worst_problem_is_said() {
        let observed = Observed {
            matched_pods: 3,
            records: vec![
                record(
                    "web-1",
                    json!({ "phase": "Recording", "bytes": 100, "dropsHealed": 1, "gaps": 1 }),
                ),
                record("web-2", json!({ "phase": "Recording", "bytes": 20 })),
                record(
                    "web-3",
                    json!({ "phase": "Failed", "message": "no cgroup" }),
                ),
            ],
            snapshots: vec![snapshot("snap-a", SnapshotPhase::Failed, Some("denied"))],
            ..Default::default()
        };
        let status = desired_status(&recording(), &observed, at(0));
        assert_eq!(
            (
                status.matched_pods,
                status.recording_containers,
                status.bytes_recorded,
                status.drops_healed,
                status.snapshot_count
            ),
            (3, 2, 120, 1, 1)
        );
        // A failed attach outranks the failed snapshot and the gap.
        assert_eq!(
            said(&status)[1..],
            [
                ("Recording", "True", "ContainersRecording"),
                ("Degraded", "True", "AttachFailed")
            ]
        );
        assert_eq!(
            find(&status, ConditionType::Degraded).message,
            "web-3/app: no cgroup"
        );

        let mut fixed = observed;
        fixed.records.pop();
        let status = desired_status(&recording(), &fixed, at(0));
        assert_eq!(said(&status)[2], ("Degraded", "True", "SnapshotFailed"));
        fixed.snapshots.clear();
        let status = desired_status(&recording(), &fixed, at(0));
        assert_eq!(said(&status)[2], ("Degraded", "True", "Gaps"));
    }

    #[test]
    fn a_snapshot_waiting_for_its_agent_is_said_and_looked_at_again_soon() {
        let observed = Observed {
            matched_pods: 1,
            waiting_for_agent: vec!["web-1/app".into()],
            ..Default::default()
        };
        let status = desired_status(&recording(), &observed, at(0));
        assert_eq!(
            said(&status)[1..],
            [
                ("Recording", "False", "NoContainersRecording"),
                ("Degraded", "True", "NoAgentEndpoint")
            ]
        );
        assert!(find(&status, ConditionType::Degraded)
            .message
            .contains("web-1/app"));
        assert_eq!(requeue_after(&observed), Duration::from_secs(5));
        let pending = Observed {
            snapshots: vec![snapshot("snap-a", SnapshotPhase::Pending, None)],
            ..Default::default()
        };
        assert_eq!(requeue_after(&pending), Duration::from_secs(5));
    }

    #[test]
    fn an_invalid_spec_is_not_ready() {
        let mut bad = recording();
        bad.spec.paths.include = vec!["/var/[log".into()];
        let observed = Observed {
            problems: spec_problems(&bad),
            ..Default::default()
        };
        let status = desired_status(&bad, &observed, at(0));
        assert_eq!(said(&status)[0], ("Ready", "False", "InvalidSpec"));
        assert!(find(&status, ConditionType::Ready)
            .message
            .contains("/var/[log"));
    }

    #[test]
    fn a_condition_keeps_its_transition_time_until_its_status_flips() {
        let mut rec = recording();
        let first = desired_status(&rec, &Observed::default(), at(0));
        rec.status = Some(first.clone());
        // Same status later: the same status object, so nothing is written.
        let again = desired_status(&rec, &Observed::default(), at(60));
        assert_eq!(again, first);
        // Degraded flips: only it takes the new time.
        let waiting = Observed {
            waiting_for_agent: vec!["web-1/app".into()],
            ..Default::default()
        };
        let flipped = desired_status(&rec, &waiting, at(120));
        assert_eq!(
            find(&flipped, ConditionType::Degraded).last_transition_time,
            at(120)
        );
        assert_eq!(
            find(&flipped, ConditionType::Ready).last_transition_time,
            at(0)
        );
    }

    #[test]
    fn an_attach_failure_is_announced_once_and_again_when_it_changes() {
        let failing = |message: &str| Observed {
            matched_pods: 1,
            records: vec![record(
                "web-1",
                json!({ "phase": "Failed", "message": message }),
            )],
            ..Default::default()
        };
        let mut rec = recording();
        let first = desired_status(&rec, &failing("read-only state dir"), at(0));
        assert_eq!(
            new_attach_failure(None, &first).as_deref(),
            Some("web-1/app: read-only state dir")
        );
        rec.status = Some(first.clone());
        let same = desired_status(&rec, &failing("read-only state dir"), at(60));
        assert_eq!(new_attach_failure(Some(&first), &same), None);
        let other = desired_status(&rec, &failing("no cgroup"), at(60));
        assert_eq!(
            new_attach_failure(Some(&first), &other).as_deref(),
            Some("web-1/app: no cgroup")
        );
        let healthy = desired_status(&rec, &Observed::default(), at(120));
        assert_eq!(new_attach_failure(Some(&first), &healthy), None);
    }
}
