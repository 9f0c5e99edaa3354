//! One pod's life on the node, as kubelet's pod worker lives it: volumes and container configs
//! (retried while they fail, the pod `Pending`), the sandbox and containers, restarts by
//! `restartPolicy` with kubelet's crash-loop back-off, the status written back after every
//! change, and the end: graceful stop on deletion, then the object deleted for good.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::ResourceExt;
use serde_json::{json, Value};
use tokio::sync::watch;

use super::clock;
use super::events::Recorder;
use super::spec::{plan_containers, spec_for_attempt, termination_message, ContainerPlan, HOST_IP};
use super::volumes::{prepare, PrepKind};
use super::Ctx;
use crate::pod_spec::PodSpecLite;
use crate::runtime::{
    ContainerHandle, ContainerState, ContainerStatusLite, PodHandle, RuntimeError,
};

/// What the watch last said about the pod.
#[derive(Debug, Clone)]
pub enum Seen {
    Present(Arc<Pod>),
    /// The object is gone from the API.
    Gone,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Interrupt {
    /// `metadata.deletionTimestamp` is set: stop gracefully, then delete the object.
    Deleted,
    /// The object is gone: stop and clean up.
    Gone,
    /// The node simulator is shutting down: stop, mark the pod failed, clean up.
    Shutdown,
}

/// kubelet's minimum grace period when the object is already gone (force deletion).
const GONE_GRACE: Duration = Duration::from_secs(2);
const MAX_RESTART_DELAY: Duration = Duration::from_secs(300);

/// A container of the pod, through its incarnations.
struct Slot {
    plan: ContainerPlan,
    current: Option<ContainerHandle>,
    /// The last dead incarnation, kept (as kubelet keeps it) until the next restart.
    previous: Option<ContainerHandle>,
    status: Option<ContainerStatusLite>,
    /// The current incarnation's `terminated` state, once it exited.
    current_terminated: Option<Value>,
    /// `lastState.terminated`: the previous incarnation's.
    last_terminated: Option<Value>,
    restart_at: Option<Instant>,
    /// Exited and will not be restarted.
    done: bool,
}

impl Slot {
    fn new(plan: ContainerPlan) -> Slot {
        Slot {
            plan,
            current: None,
            previous: None,
            status: None,
            current_terminated: None,
            last_terminated: None,
            restart_at: None,
            done: false,
        }
    }

    fn exit_code(&self) -> Option<i32> {
        self.current_terminated
            .as_ref()
            .and_then(|t| t["exitCode"].as_i64())
            .map(|c| c as i32)
    }
}

pub struct PodWorker {
    ctx: Arc<Ctx>,
    uid: String,
    name: String,
    namespace: String,
    rx: watch::Receiver<Seen>,
    shutdown: watch::Receiver<bool>,
    pod: Arc<Pod>,
    handle: Option<PodHandle>,
    /// The pod as given to the runtime (what restarts rebuild the sandbox config from).
    run_spec: Option<PodSpecLite>,
    slots: Vec<Slot>,
    /// Why containers are still waiting before they first start: (reason, message).
    pending: Option<(String, String)>,
    start_time: String,
    conditions: BTreeMap<&'static str, (String, String)>,
    last_sent: Option<Value>,
    events: Recorder,
    sandbox_stopped: bool,
}

/// Runs the pod's worker until the pod is gone, deleted or the node shuts down. `adopted` is
/// the pod's sandbox found in the runtime at start (resync).
pub async fn run(
    ctx: Arc<Ctx>,
    rx: watch::Receiver<Seen>,
    shutdown: watch::Receiver<bool>,
    adopted: Option<PodHandle>,
) {
    let pod = match &*rx.borrow() {
        Seen::Present(pod) => pod.clone(),
        Seen::Gone => return,
    };
    let worker = PodWorker {
        uid: pod.uid().unwrap_or_default(),
        name: pod.name_any(),
        namespace: pod.namespace().unwrap_or_default(),
        events: Recorder::new(ctx.clone(), &pod),
        start_time: pod
            .status
            .as_ref()
            .and_then(|s| s.start_time.as_ref())
            .and_then(|t| serde_json::to_value(t).ok())
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(clock::now),
        ctx,
        rx,
        shutdown,
        pod,
        handle: adopted,
        run_spec: None,
        slots: Vec::new(),
        pending: None,
        conditions: BTreeMap::new(),
        last_sent: None,
        sandbox_stopped: false,
    };
    worker.main().await;
}

async fn changed_or_pending<T>(rx: &mut watch::Receiver<T>) {
    if rx.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

fn is_terminal_phase(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

impl PodWorker {
    fn refresh(&mut self) {
        if let Seen::Present(pod) = &*self.rx.borrow() {
            self.pod = pod.clone();
        }
    }

    fn interrupt(&self) -> Option<Interrupt> {
        if *self.shutdown.borrow() {
            return Some(Interrupt::Shutdown);
        }
        match &*self.rx.borrow() {
            Seen::Gone => Some(Interrupt::Gone),
            Seen::Present(pod) if pod.metadata.deletion_timestamp.is_some() => {
                Some(Interrupt::Deleted)
            }
            Seen::Present(_) => None,
        }
    }

    /// Sleeps for `duration`, or less if the pod changes or the node shuts down.
    async fn wait(&mut self, duration: Duration) {
        tokio::select! {
            _ = tokio::time::sleep(duration) => {}
            _ = changed_or_pending(&mut self.rx) => {}
            _ = changed_or_pending(&mut self.shutdown) => {}
        }
        self.refresh();
    }

    /// Waits out `duration` unless the pod is deleted or gone or the node shuts down (the pod
    /// changing, as it does after each status write, does not cut it short).
    async fn pause(&mut self, duration: Duration) {
        let deadline = Instant::now() + duration;
        while self.interrupt().is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            self.wait(left).await;
        }
    }

    fn restart_policy(&self) -> &str {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.as_deref())
            .unwrap_or("Always")
    }

    async fn main(mut self) {
        if self.handle.is_none() && is_terminal_phase(&self.pod) {
            // Finished before (an earlier run of the simulator): kubelet never reruns it.
            return self.idle_until_end().await;
        }
        // Volumes and container configs.
        let mut backoff = self.ctx.config.retry_interval;
        if self.handle.is_none() {
            self.publish(None).await;
        }
        let plans = loop {
            if let Some(interrupt) = self.interrupt() {
                return self.terminate(interrupt).await;
            }
            match self.prepare().await {
                Ok(plans) => break plans,
                Err(error) => {
                    let (waiting, event) = match error.kind {
                        PrepKind::Mount => ("ContainerCreating", "FailedMount"),
                        PrepKind::Config => ("CreateContainerConfigError", "Failed"),
                    };
                    tracing::info!(pod = %self.key(), "not started: {}", error.message);
                    let message = match error.kind {
                        PrepKind::Mount => String::new(),
                        PrepKind::Config => error.message.clone(),
                    };
                    self.pending = Some((waiting.into(), message));
                    self.events.warning(event, &error.message).await;
                    self.publish(None).await;
                    self.pause(backoff).await;
                    backoff = (backoff * 2).min(self.ctx.config.max_retry_interval);
                }
            }
        };
        self.slots = plans.into_iter().map(Slot::new).collect();
        self.run_spec = Some(self.pod_spec_lite());
        if let Some(handle) = self.handle.clone() {
            self.adopt(handle).await;
        }
        let mut backoff = self.ctx.config.retry_interval;
        while self.handle.is_none() {
            if let Some(interrupt) = self.interrupt() {
                return self.terminate(interrupt).await;
            }
            match self.start_pod().await {
                Ok(()) => self.pending = None,
                Err((waiting, event, message)) => {
                    tracing::warn!(pod = %self.key(), "starting: {message}");
                    self.pending = Some((waiting.into(), message.clone()));
                    self.events.warning(event, &message).await;
                    self.publish(None).await;
                    self.pause(backoff).await;
                    backoff = (backoff * 2).min(self.ctx.config.max_retry_interval);
                }
            }
        }
        self.monitor().await;
    }

    fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    async fn prepare(&mut self) -> Result<Vec<ContainerPlan>, super::volumes::PrepError> {
        let volumes = prepare(&self.ctx, &self.pod).await?;
        plan_containers(&self.ctx, &self.pod, &volumes).await
    }

    fn pod_spec_lite(&self) -> PodSpecLite {
        let mut spec = PodSpecLite::new(&self.name, &self.namespace, &self.uid);
        spec.labels = self.pod.labels().clone();
        spec.annotations = self.pod.annotations().clone();
        spec
    }

    async fn start_pod(&mut self) -> Result<(), (&'static str, &'static str, String)> {
        let mut spec = self.pod_spec_lite();
        for slot in &self.slots {
            let container = spec_for_attempt(&self.ctx, &self.uid, &slot.plan, 0).map_err(|e| {
                (
                    "CreateContainerConfigError",
                    "Failed",
                    format!("termination message file: {e}"),
                )
            })?;
            spec.containers.push(container);
        }
        let handle = self
            .ctx
            .runtime
            .run_pod(&spec)
            .await
            .map_err(|error| match error {
                RuntimeError::ImageMissing { image } => (
                    "ErrImageNeverPull",
                    "ErrImageNeverPull",
                    format!(
                        "Container image \"{image}\" is not present with pull policy of Never \
                     (the node simulator pulls nothing: see --image-alias)"
                    ),
                ),
                other => (
                    "ContainerCreating",
                    "FailedCreatePodSandBox",
                    other.to_string(),
                ),
            })?;
        for (slot, container) in self.slots.iter_mut().zip(&handle.containers) {
            slot.current = Some(container.clone());
        }
        tracing::info!(pod = %self.key(), sandbox = %handle.sandbox_id, "started");
        self.handle = Some(handle);
        for slot in &self.slots {
            let message = format!("Started container {}", slot.plan.api.name);
            self.events.normal("Started", &message).await;
        }
        Ok(())
    }

    /// Takes over a sandbox found in the runtime: each container's newest incarnation is the
    /// current one, the one before it the previous; older ones are removed.
    async fn adopt(&mut self, mut handle: PodHandle) {
        let runtime = self.ctx.runtime.clone();
        let sandbox_ready = match runtime.status(&handle).await {
            Ok(status) => status.sandbox_ready,
            Err(error) => {
                tracing::warn!(pod = %self.key(), "adopting: {error}");
                false
            }
        };
        let all = std::mem::take(&mut handle.containers);
        for slot in &mut self.slots {
            let mut incarnations: Vec<&ContainerHandle> = all
                .iter()
                .filter(|c| c.name == slot.plan.api.name)
                .collect();
            incarnations.sort_by_key(|c| c.attempt);
            slot.current = incarnations.pop().cloned();
            slot.previous = incarnations.pop().cloned();
            for old in incarnations {
                let _ = runtime.remove_container(&old.id).await;
            }
            if let Some(previous) = &slot.previous {
                if let Ok(status) = runtime.container_status(&previous.id).await {
                    let message = termination_message(
                        &self.ctx,
                        &self.pod,
                        &slot.plan,
                        previous.attempt,
                        status.exit_code.unwrap_or(-1),
                    );
                    slot.last_terminated = Some(terminated_json(&status, message));
                }
            }
            if let Some(current) = &slot.current {
                handle.containers.push(current.clone());
            }
        }
        tracing::info!(pod = %self.key(), sandbox = %handle.sandbox_id, sandbox_ready, "adopted");
        let complete = self.slots.iter().all(|s| s.current.is_some());
        if sandbox_ready && complete {
            self.handle = Some(handle);
            return;
        }
        // A stopped sandbox cannot take new containers. If every container is finished for
        // good, keep it as it is; otherwise start the pod afresh, as kubelet would.
        self.handle = Some(handle.clone());
        self.sandbox_stopped = true;
        self.sync().await;
        if !self.terminal() {
            if let Err(error) = runtime.remove_pod(&handle).await {
                tracing::warn!(pod = %self.key(), "removing a stale sandbox: {error}");
            }
            self.handle = None;
            self.sandbox_stopped = false;
            let plans: Vec<ContainerPlan> = self.slots.drain(..).map(|s| s.plan).collect();
            self.slots = plans.into_iter().map(Slot::new).collect();
        }
    }

    async fn monitor(&mut self) {
        loop {
            self.refresh();
            if let Some(interrupt) = self.interrupt() {
                return self.terminate(interrupt).await;
            }
            self.sync().await;
            if self.terminal() && !self.sandbox_stopped {
                if let Some(handle) = &self.handle {
                    if let Err(error) = self.ctx.runtime.stop_sandbox(&handle.sandbox_id).await {
                        tracing::warn!(pod = %self.key(), "stopping the sandbox: {error}");
                    }
                }
                self.sandbox_stopped = true;
            }
            self.publish(None).await;
            self.pause(self.ctx.config.poll_interval).await;
        }
    }

    fn terminal(&self) -> bool {
        !self.slots.is_empty() && self.slots.iter().all(|s| s.done)
    }

    fn restart_delay(&self, attempt: u32) -> Duration {
        if attempt <= 1 {
            return Duration::ZERO;
        }
        let factor = 1u32 << (attempt - 2).min(16);
        (self.ctx.config.crash_loop_backoff * factor).min(MAX_RESTART_DELAY)
    }

    /// Reads every live container's state and restarts what the restart policy says to.
    async fn sync(&mut self) {
        for index in 0..self.slots.len() {
            self.sync_slot(index).await;
        }
    }

    async fn sync_slot(&mut self, index: usize) {
        let slot = &self.slots[index];
        if slot.done {
            return;
        }
        let Some(current) = slot.current.clone() else {
            return;
        };
        let status = match self.ctx.runtime.container_status(&current.id).await {
            Ok(status) => status,
            Err(error) => {
                tracing::warn!(pod = %self.key(), container = %current.name, "status: {error}");
                return;
            }
        };
        let exited = status.state == ContainerState::Exited;
        if exited && self.slots[index].current_terminated.is_none() {
            let exit = status.exit_code.unwrap_or(-1);
            let message = termination_message(
                &self.ctx,
                &self.pod,
                &self.slots[index].plan,
                current.attempt,
                exit,
            );
            self.slots[index].current_terminated = Some(terminated_json(&status, message));
            tracing::info!(pod = %self.key(), container = %current.name, exit, "exited");
        }
        self.slots[index].status = Some(status.clone());
        if !exited {
            return;
        }
        let exit = status.exit_code.unwrap_or(-1);
        let restart = match self.restart_policy() {
            "Never" => false,
            "OnFailure" => exit != 0,
            _ => true,
        };
        if !restart || self.sandbox_stopped {
            self.slots[index].done = true;
            return;
        }
        let now = Instant::now();
        let restart_at = match self.slots[index].restart_at {
            Some(at) => at,
            None => {
                let delay = self.restart_delay(current.attempt + 1);
                if !delay.is_zero() {
                    let message = format!(
                        "Back-off restarting failed container {} in pod {}",
                        current.name,
                        self.key()
                    );
                    self.events.warning("BackOff", &message).await;
                }
                self.slots[index].restart_at = Some(now + delay);
                now + delay
            }
        };
        if now >= restart_at {
            self.restart(index).await;
        }
    }

    async fn restart(&mut self, index: usize) {
        let (Some(handle), Some(run_spec)) = (self.handle.clone(), self.run_spec.clone()) else {
            return;
        };
        let Some(current) = self.slots[index].current.clone() else {
            return;
        };
        let attempt = current.attempt + 1;
        let retry = Instant::now() + self.ctx.config.retry_interval;
        let spec = match spec_for_attempt(&self.ctx, &self.uid, &self.slots[index].plan, attempt) {
            Ok(spec) => spec,
            Err(error) => {
                tracing::warn!(pod = %self.key(), "termination message file: {error}");
                self.slots[index].restart_at = Some(retry);
                return;
            }
        };
        let runtime = self.ctx.runtime.clone();
        match runtime
            .restart_container(&handle, &run_spec, &spec, attempt)
            .await
        {
            Ok(new) => {
                tracing::info!(pod = %self.key(), container = %new.name, attempt, "restarted");
                let slot = &mut self.slots[index];
                if let Some(old) = slot.previous.take() {
                    if let Err(error) = runtime.remove_container(&old.id).await {
                        tracing::warn!("removing container {}: {error}", old.id);
                    }
                    let file = super::spec::termination_log_file(
                        &self.ctx,
                        &self.uid,
                        &old.name,
                        old.attempt,
                    );
                    let _ = std::fs::remove_file(file);
                }
                slot.last_terminated = slot.current_terminated.take();
                slot.previous = Some(current);
                slot.current = Some(new.clone());
                slot.restart_at = None;
                slot.status = runtime.container_status(&new.id).await.ok();
                if let Some(handle) = &mut self.handle {
                    if let Some(entry) = handle.containers.iter_mut().find(|c| c.name == new.name) {
                        *entry = new.clone();
                    }
                }
                let message = format!("Started container {}", new.name);
                self.events.normal("Started", &message).await;
            }
            Err(error) => {
                tracing::warn!(pod = %self.key(), "restarting {}: {error}", current.name);
                let message = format!("Error: {error}");
                self.events.warning("Failed", &message).await;
                self.slots[index].restart_at = Some(retry);
            }
        }
    }

    /// The pod's status now, kubelet's way. `shutdown` marks a pod stopped by the node's
    /// shutdown: Failed, reason `Terminated`.
    fn build_status(&mut self, shutdown: bool) -> Value {
        let now_instant = Instant::now();
        let spec_containers = self
            .pod
            .spec
            .as_ref()
            .map(|s| s.containers.clone())
            .unwrap_or_default();
        let mut statuses = Vec::new();
        let mut unready = Vec::new();
        let mut started_any = false;
        for container in &spec_containers {
            let slot = self
                .slots
                .iter()
                .find(|s| s.plan.api.name == container.name);
            let current = slot.and_then(|s| s.current.as_ref().map(|c| (s, c)));
            let Some((slot, current)) = current else {
                let (reason, message) = self
                    .pending
                    .clone()
                    .unwrap_or_else(|| ("ContainerCreating".into(), String::new()));
                let mut waiting = json!({"reason": reason});
                if !message.is_empty() {
                    waiting["message"] = json!(message);
                }
                unready.push(container.name.clone());
                statuses.push(json!({
                    "name": container.name,
                    "image": container.image.clone().unwrap_or_default(),
                    "imageID": "",
                    "state": {"waiting": waiting},
                    "lastState": {},
                    "ready": false,
                    "started": false,
                    "restartCount": 0,
                }));
                continue;
            };
            started_any = true;
            let status = slot.status.as_ref();
            let mut last_state = slot
                .last_terminated
                .clone()
                .map(|t| json!({"terminated": t}))
                .unwrap_or_else(|| json!({}));
            let backing_off = slot.restart_at.is_some_and(|at| at > now_instant);
            let running = status.is_some_and(|s| s.state == ContainerState::Running);
            let state = if backing_off {
                last_state = json!({"terminated": slot.current_terminated.clone()});
                let delay = slot
                    .restart_at
                    .map(|at| at.saturating_duration_since(now_instant).as_secs())
                    .unwrap_or(0);
                json!({"waiting": {
                    "reason": "CrashLoopBackOff",
                    "message": format!(
                        "back-off {delay}s restarting failed container={} pod={}_{}({})",
                        container.name, self.name, self.namespace, self.uid
                    ),
                }})
            } else if let Some(terminated) = &slot.current_terminated {
                json!({"terminated": terminated})
            } else if running {
                let started = status
                    .and_then(|s| s.started_at)
                    .map(clock::time)
                    .unwrap_or_else(clock::now);
                json!({"running": {"startedAt": started}})
            } else {
                json!({"waiting": {"reason": "ContainerCreating"}})
            };
            if !running {
                unready.push(container.name.clone());
            }
            statuses.push(json!({
                "name": container.name,
                "image": container.image.clone().unwrap_or_default(),
                "imageID": status.map(|s| s.image_ref.clone()).unwrap_or_default(),
                "containerID": format!("containerd://{}", current.id),
                "state": state,
                "lastState": last_state,
                "ready": running,
                "started": running,
                "restartCount": current.attempt,
            }));
        }
        let terminal = self.terminal();
        let phase = if shutdown {
            "Failed"
        } else if terminal {
            if self.slots.iter().all(|s| s.exit_code() == Some(0)) {
                "Succeeded"
            } else {
                "Failed"
            }
        } else if started_any {
            "Running"
        } else {
            "Pending"
        };
        let ready = unready.is_empty() && !terminal && !shutdown;
        let (ready_reason, ready_message) = if ready {
            (None, None)
        } else if terminal || shutdown {
            (Some("PodCompleted"), None)
        } else {
            (
                Some("ContainersNotReady"),
                Some(format!(
                    "containers with unready status: [{}]",
                    unready.join(" ")
                )),
            )
        };
        let sandbox = self.handle.is_some() && !self.sandbox_stopped;
        let conditions = vec![
            self.condition("PodReadyToStartContainers", sandbox, None, None),
            self.condition("Initialized", true, None, None),
            self.condition("Ready", ready, ready_reason, ready_message.clone()),
            self.condition("ContainersReady", ready, ready_reason, ready_message),
            self.condition("PodScheduled", true, None, None),
        ];
        let mut status = json!({
            "phase": phase,
            "conditions": conditions,
            "hostIP": HOST_IP,
            "hostIPs": [{"ip": HOST_IP}],
            "podIP": HOST_IP,
            "podIPs": [{"ip": HOST_IP}],
            "startTime": self.start_time,
            "qosClass": "BestEffort",
            "containerStatuses": statuses,
        });
        if shutdown {
            status["reason"] = json!("Terminated");
            status["message"] = json!("Pod was terminated in response to imminent node shutdown.");
        }
        status
    }

    /// A pod condition; its lastTransitionTime changes only when its status does.
    fn condition(
        &mut self,
        kind: &'static str,
        value: bool,
        reason: Option<&str>,
        message: Option<String>,
    ) -> Value {
        let value = if value { "True" } else { "False" };
        let entry = self
            .conditions
            .entry(kind)
            .or_insert_with(|| (value.to_string(), clock::now()));
        if entry.0 != value {
            *entry = (value.to_string(), clock::now());
        }
        let mut condition = json!({
            "type": kind,
            "status": value,
            "lastProbeTime": null,
            "lastTransitionTime": entry.1,
        });
        if let Some(reason) = reason {
            condition["reason"] = json!(reason);
        }
        if let Some(message) = message {
            condition["message"] = json!(message);
        }
        condition
    }

    /// Writes the status if it changed since the last write.
    async fn publish(&mut self, shutdown: Option<()>) {
        let status = self.build_status(shutdown.is_some());
        if self.last_sent.as_ref() == Some(&status) {
            return;
        }
        let pods: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &self.namespace);
        match pods
            .patch_status(
                &self.name,
                &PatchParams::default(),
                // The uid makes the write fail (409) on a new pod of the same name.
                &Patch::Merge(json!({"metadata": {"uid": self.uid}, "status": status})),
            )
            .await
        {
            Ok(_) => self.last_sent = Some(status),
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {
                self.last_sent = Some(status)
            }
            Err(error) => tracing::warn!(pod = %self.key(), "writing the status: {error}"),
        }
    }

    /// Every container's final state after a stop: all of them are done.
    async fn final_sync(&mut self) {
        for index in 0..self.slots.len() {
            let Some(current) = self.slots[index].current.clone() else {
                continue;
            };
            if self.slots[index].current_terminated.is_none() {
                if let Ok(status) = self.ctx.runtime.container_status(&current.id).await {
                    let exit = status.exit_code.unwrap_or(-1);
                    let message = termination_message(
                        &self.ctx,
                        &self.pod,
                        &self.slots[index].plan,
                        current.attempt,
                        exit,
                    );
                    self.slots[index].current_terminated = Some(terminated_json(&status, message));
                    self.slots[index].status = Some(status);
                }
            }
            self.slots[index].restart_at = None;
            self.slots[index].done = true;
        }
    }

    fn grace(&self) -> Duration {
        let seconds = self
            .pod
            .metadata
            .deletion_grace_period_seconds
            .or_else(|| {
                self.pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.termination_grace_period_seconds)
            })
            .unwrap_or(30);
        Duration::from_secs(seconds.max(0) as u64)
    }

    async fn stop_running(&mut self, grace: Duration) {
        let Some(handle) = self.handle.clone() else {
            return;
        };
        if self.sandbox_stopped {
            return;
        }
        for slot in &self.slots {
            let running = slot
                .status
                .as_ref()
                .is_some_and(|s| s.state == ContainerState::Running);
            if running {
                let message = format!("Stopping container {}", slot.plan.api.name);
                self.events.normal("Killing", &message).await;
            }
        }
        if let Err(error) = self.ctx.runtime.stop_pod(&handle, grace).await {
            tracing::warn!(pod = %self.key(), "stopping: {error}");
        }
        self.sandbox_stopped = true;
        self.final_sync().await;
    }

    async fn terminate(&mut self, interrupt: Interrupt) {
        tracing::info!(pod = %self.key(), ?interrupt, "terminating");
        match interrupt {
            Interrupt::Deleted => {
                let was_running = self.handle.is_some() && !self.terminal();
                self.stop_running(self.grace()).await;
                if was_running {
                    self.publish(None).await;
                }
                self.remove().await;
                self.delete_object().await;
            }
            Interrupt::Gone => {
                self.stop_running(GONE_GRACE).await;
                self.remove().await;
            }
            Interrupt::Shutdown => {
                if self.handle.is_some() && !self.terminal() {
                    let grace = self.grace().min(self.ctx.config.shutdown_grace);
                    self.stop_running(grace).await;
                    self.publish(Some(())).await;
                }
                self.remove().await;
            }
        }
    }

    /// Removes the sandbox, the pod's cgroups and its directories (emptyDirs, written volumes,
    /// termination message files, logs).
    async fn remove(&mut self) {
        if let Some(handle) = self.handle.take() {
            for attempt in 0..5 {
                match self.ctx.runtime.remove_pod(&handle).await {
                    Ok(()) => break,
                    Err(error) if attempt == 4 => {
                        tracing::warn!(pod = %self.key(), "removing the sandbox: {error}")
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        }
        self.ctx.remove_pod_dirs(&self.pod);
    }

    async fn delete_object(&self) {
        let pods: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &self.namespace);
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(self.uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        match pods.delete(&self.name, &params).await {
            Ok(_) => tracing::info!(pod = %self.key(), "deleted"),
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(error) => tracing::warn!(pod = %self.key(), "deleting: {error}"),
        }
    }

    /// A pod that finished before this simulator started: nothing runs; wait for its end.
    async fn idle_until_end(mut self) {
        loop {
            match self.interrupt() {
                Some(Interrupt::Deleted) => {
                    self.ctx.remove_pod_dirs(&self.pod);
                    return self.delete_object().await;
                }
                Some(_) => return self.ctx.remove_pod_dirs(&self.pod),
                None => self.wait(Duration::from_secs(3600)).await,
            }
        }
    }
}

/// `state.terminated` for an exited container.
fn terminated_json(status: &ContainerStatusLite, message: String) -> Value {
    let exit = status.exit_code.unwrap_or(-1);
    let reason = if !status.reason.is_empty() {
        status.reason.clone()
    } else if exit == 0 {
        "Completed".into()
    } else {
        "Error".into()
    };
    let time = |t: Option<SystemTime>| t.map(clock::time);
    let mut terminated = json!({
        "exitCode": exit,
        "reason": reason,
        "startedAt": time(status.started_at),
        "finishedAt": time(status.finished_at),
        "containerID": format!("containerd://{}", status.id),
    });
    if !message.is_empty() {
        terminated["message"] = json!(message);
    }
    terminated
}
