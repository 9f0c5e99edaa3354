//! The capture thread: the node's one [`Probe`] and a [`Recorder`] per recorded container.
//!
//! Kernel events carry the cgroup id of the task that made them; that id picks the container's
//! recorder. Adding a container is a map insert in the kernel, never a new program. The thread
//! owns every live writer, so read views of live histories are lent out by it, on request.

use crate::catalog::{Catalog, LiveViews, Progress};
use crate::metrics::{ContainerCounts, ContainerLabels, Metrics};
use diffkeeper_capture::{CgroupSettings, Event as Captured, Probe, ProbeConfig, RingDrain};
use diffkeeper_locate::dir_size;
use diffkeeper_recorder::{monotonic_ns, wall_ns, PathScope, Recorder};
use diffkeeper_rpc::HistoryError;
use diffkeeper_store::{
    Event, MarkerKind, Op, RecordingInfo, Store, StoreError, Writer, WriterOptions,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// A recorded container as the capture thread needs to know it.
#[derive(Clone, Debug)]
pub struct Attachment {
    /// The incarnation's id in the catalog.
    pub id: String,
    pub store_dir: PathBuf,
    pub info: RecordingInfo,
    pub cgroup_id: u64,
    pub cgroup_level: u32,
    pub cgroup_dir: PathBuf,
    /// The container's root as the host sees it (`/proc/<pid>/root`): where files are read back.
    pub root: PathBuf,
    pub upper_dir: PathBuf,
    pub lower_dirs: Vec<PathBuf>,
    /// A history the agent was writing when it stopped: continue it, after a gap marker.
    pub resume_after: Option<GapCause>,
    /// The Recording's `spec.paths`: what is kept of the container's files.
    pub scope: PathScope,
    /// The Recording's `spec.maxWriteCapture`: larger writes are read back, not copied. Unset:
    /// the agent's `--max-write-capture`.
    pub max_write_capture: Option<u64>,
}

/// Why a history has a hole the agent knows of.
#[derive(Clone, Debug)]
pub struct GapCause {
    pub detail: String,
}

pub enum Command {
    Attach {
        attachment: Box<Attachment>,
        reply: oneshot::Sender<Result<(), crate::AgentError>>,
    },
    /// The container ended (its cgroup emptied, or the pod status says so).
    End { id: String, note: String },
    /// A read view of a live history, as committed now.
    View {
        id: String,
        reply: std::sync::mpsc::SyncSender<Result<Store, String>>,
    },
    /// Stop recording (the Recording or the record is gone); keeps what was recorded.
    Detach { id: String },
}

/// How often appended events are made durable: what an agent killed with SIGKILL can lose.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// The kernel wakes us only past a data threshold; this bounds the latency below it.
const POLL_EVERY: Duration = Duration::from_millis(20);
/// Sled's page cache per live history: the agent keeps many stores open at once, and since
/// format 4 an index holds only headers and payload locations (a few MiB per GiB recorded).
const WRITER_CACHE_BYTES: u64 = 4 << 20;
/// Payload bytes a live history holds before it commits, ahead of the timed flush: a node has
/// many, so each gets far less than a local recording's.
const COMMIT_BYTES: u64 = 4 << 20;
/// The most a Recording's `spec.maxWriteCapture` may be (its schema says so too).
const MAX_WRITE_CAPTURE: u64 = 1 << 20;

/// How long a history gets no event before its store rests (see `Live::last_event`).
const QUIET_BEFORE_REST: Duration = Duration::from_secs(30);

struct Live {
    attachment: Attachment,
    recorder: Recorder,
    /// Events were routed to it since the last tick.
    busy: bool,
    /// When it last got an event: a history quiet for `QUIET_BEFORE_REST` lets go of its
    /// store's index until its next event (see `Writer::rest`).
    last_event: Instant,
    /// Its series in the metrics, and the counts last pushed there.
    labels: ContainerLabels,
    counted: ContainerCounts,
}

pub struct CaptureLoop {
    probe: Probe,
    /// The ring, emptied on a thread of its own: this one commits every container's store, and
    /// draining inline stalled the ring during each commit until a fast writer overran it.
    /// None once that thread failed.
    ring: Option<RingDrain>,
    /// Why nothing is captured any more, for the attaches that come after.
    ring_failure: Option<String>,
    live: HashMap<String, Live>,
    by_cgroup: HashMap<u64, String>,
    catalog: Catalog,
    unrouted: u64,
    metrics: Arc<Metrics>,
    ring_bytes: u32,
    /// The largest write copied for a Recording that does not set `spec.maxWriteCapture`.
    max_write_capture: u64,
    /// The node-wide loss counter as last pushed to the metrics.
    node_lost_seen: u64,
    /// The age of the newest event routed since the last tick, when it was routed.
    lag_ns: u64,
}

impl CaptureLoop {
    pub fn load(
        config: &ProbeConfig,
        catalog: Catalog,
        metrics: Arc<Metrics>,
    ) -> Result<CaptureLoop, crate::AgentError> {
        // The agent's --max-write-capture is each Recording's default; a Recording may ask
        // for up to MAX_WRITE_CAPTURE, so the kernel's own bound is at least that.
        let kernel = ProbeConfig {
            max_write_capture: config.max_write_capture.max(MAX_WRITE_CAPTURE),
            ..config.clone()
        };
        let mut probe = Probe::load(&kernel)?;
        let reader = probe.take_reader().expect("a fresh probe has its reader");
        Ok(CaptureLoop {
            ring: Some(RingDrain::start(reader)?),
            ring_failure: None,
            probe,
            live: HashMap::new(),
            by_cgroup: HashMap::new(),
            catalog,
            unrouted: 0,
            metrics,
            ring_bytes: config.ring_bytes,
            max_write_capture: config.max_write_capture,
            node_lost_seen: 0,
            lag_ns: 0,
        })
    }

    /// Runs until every sender of `commands` is gone, then finishes the live histories' writes
    /// (without marking them ended: a restarted agent continues them).
    pub fn run(mut self, commands: Receiver<Command>) {
        let mut last_flush = Instant::now();
        loop {
            match commands.recv_timeout(Duration::ZERO) {
                Ok(command) => {
                    self.handle(command);
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {}
            }
            match self.ring.as_mut().map(|ring| ring.next(POLL_EVERY)) {
                Some(Ok(Some(batch))) => self.route_all(batch),
                Some(Ok(None)) => {}
                Some(Err(e)) => self.ring_failed(e),
                // Without capture the loop still serves views, ends and detaches.
                None => std::thread::sleep(POLL_EVERY),
            }
            if last_flush.elapsed() >= FLUSH_EVERY {
                self.tick();
                last_flush = Instant::now();
            }
        }
        // What the containers did last may still be in the ring.
        if let Some(ring) = self.ring.take() {
            match ring.finish() {
                Ok(batches) => batches.into_iter().for_each(|b| self.route_all(b)),
                Err(e) => tracing::error!(error = %e, "reading the last kernel events"),
            }
        }
        let ids: Vec<String> = self.live.keys().cloned().collect();
        for id in ids {
            if let Some(mut live) = self.live.remove(&id) {
                let _ = live.recorder.writer_mut().flush();
            }
        }
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Attach { attachment, reply } => {
                let id = attachment.id.clone();
                let result = self.attach(*attachment);
                if let Err(e) = &result {
                    tracing::warn!(%id, error = %e, "could not start recording a container");
                }
                let _ = reply.send(result);
            }
            Command::End { id, note } => self.end(&id, &note),
            Command::View { id, reply } => {
                let view = match self.live.get_mut(&id) {
                    Some(live) => live
                        .recorder
                        .writer_mut()
                        .reader()
                        .map_err(|e| format!("reading the live history: {e}")),
                    None => Err(format!("{id} is not being recorded")),
                };
                let _ = reply.send(view);
            }
            Command::Detach { id } => {
                if let Some(live) = self.live.remove(&id) {
                    self.by_cgroup.remove(&live.attachment.cgroup_id);
                    let _ = self.probe.forget_cgroup(live.attachment.cgroup_id);
                    let mut writer = live.recorder.into_writer();
                    let _ = writer.flush();
                }
            }
        }
    }

    fn attach(&mut self, a: Attachment) -> Result<(), crate::AgentError> {
        if let Some(failure) = &self.ring_failure {
            return Err(crate::AgentError::CaptureStopped(failure.clone()));
        }
        if a.resume_after.is_some() && std::fs::read_dir(&a.root).is_err() {
            // Comparing the log with a root that is gone would record every file as deleted.
            return Err(crate::AgentError::Locate(format!(
                "{} is gone: the container ended while the history was being continued",
                a.root.display()
            )));
        }
        let options = WriterOptions {
            cache_bytes: WRITER_CACHE_BYTES,
            ..WriterOptions::default()
        };
        let now = monotonic_ns();
        let writer = match &a.resume_after {
            Some(_) => Writer::resume_with(&a.store_dir, options)?,
            None => Writer::create_with(&a.store_dir, a.info.clone(), options)?,
        };
        let mut recorder = Recorder::new(writer, a.root.clone(), Vec::new(), a.cgroup_id)
            .commit_past(COMMIT_BYTES)
            .scoped(a.scope.clone())?;
        let settings = CgroupSettings {
            max_write_capture: a
                .max_write_capture
                .unwrap_or(self.max_write_capture)
                .min(MAX_WRITE_CAPTURE),
            scoped: !a.scope.is_everything(),
        };
        // Filter first, then look: a change made between the two is seen twice (harmless),
        // never missed.
        self.probe
            .record_cgroup_with(a.cgroup_id, a.cgroup_level, settings)?;
        self.by_cgroup.insert(a.cgroup_id, a.id.clone());
        if let Some(gap) = &a.resume_after {
            recorder.writer_mut().append(Event {
                time: now,
                process: None,
                op: Op::Marker {
                    kind: MarkerKind::Gap,
                    detail: gap.detail.clone(),
                },
            })?;
            // Whatever changed while nobody watched: deletions and changes of what the log
            // knows, then everything the upper dir holds now.
            recorder.reconcile(now)?;
        }
        let entries = recorder.baseline_overlay(&a.upper_dir, &a.lower_dirs, now)?;
        recorder.writer_mut().flush()?;
        for file in recorder.known_files().collect::<Vec<_>>() {
            let _ = self.probe.mark_known(file);
        }
        tracing::info!(id = %a.id, cgroup = a.cgroup_id, entries, resumed = a.resume_after.is_some(), "recording container");
        let labels = match self.catalog.meta(&a.id) {
            Some(meta) => ContainerLabels {
                namespace: meta.namespace,
                pod: meta.pod_name,
                container: meta.container,
            },
            None => ContainerLabels {
                namespace: String::new(),
                pod: String::new(),
                container: a.id.clone(),
            },
        };
        let counted = ContainerCounts::default();
        self.metrics
            .container(&labels, counted, counts_of(&recorder, &a));
        self.live.insert(
            a.id.clone(),
            Live {
                labels,
                busy: true,
                last_event: Instant::now(),
                counted: counts_of(&recorder, &a),
                attachment: a,
                recorder,
            },
        );
        Ok(())
    }

    /// Every batch not routed yet, up to what the ring holds now.
    fn catch_up(&mut self) {
        let Some(ring) = self.ring.as_mut() else {
            return;
        };
        match ring.catch_up() {
            Ok(batches) => batches.into_iter().for_each(|b| self.route_all(b)),
            Err(e) => self.ring_failed(e),
        }
    }

    /// Nothing more comes from the kernel; histories already recorded stay served and are
    /// still closed when their containers end.
    fn ring_failed(&mut self, e: diffkeeper_capture::CaptureError) {
        tracing::error!(error = %e, "capture stopped: no more kernel events will be recorded");
        self.ring = None;
        self.ring_failure = Some(e.to_string());
    }

    fn route_all(&mut self, batch: Vec<Captured>) {
        if let Some(newest) = batch.iter().map(|ev| ev.origin.time).max() {
            self.lag_ns = self.lag_ns.max(monotonic_ns().saturating_sub(newest));
        }
        for ev in batch {
            self.route(ev);
        }
    }

    fn route(&mut self, ev: Captured) {
        let Some(id) = self.by_cgroup.get(&ev.origin.cgroup) else {
            // A recorded container's sub-cgroup, or a container just forgotten.
            self.unrouted += 1;
            return;
        };
        let Some(live) = self.live.get_mut(id) else {
            return;
        };
        live.busy = true;
        if let Err(e) = live.recorder.record(ev, &mut self.probe) {
            tracing::error!(id = %live.attachment.id, error = %e, "recording an event");
        }
    }

    /// Once a second: durability, losses, ended containers, progress for the status.
    fn tick(&mut self) {
        let now = monotonic_ns();
        let mut ended = Vec::new();
        for (id, live) in &mut self.live {
            // The kernel counts losses per recorded cgroup: only a history that lost records
            // gets a gap marker and reads its files back.
            if let Err(e) = live.recorder.check_losses(&mut self.probe, now) {
                tracing::error!(%id, error = %e, "noting lost records");
            }
            // Most containers of a node write now and then: one quiet for a while costs next to
            // no memory until it writes again. Not at once: a container writing every few
            // seconds would reopen its index each time and start its deltas afresh.
            if std::mem::take(&mut live.busy) {
                live.last_event = Instant::now();
            }
            let settled = if live.last_event.elapsed() < QUIET_BEFORE_REST {
                live.recorder.writer_mut().flush().map(|()| false)
            } else {
                live.recorder.writer_mut().rest()
            };
            if let Err(e) = settled {
                tracing::error!(%id, error = %e, "flushing a history");
            }
            if !populated(&live.attachment.cgroup_dir) {
                ended.push(id.clone());
            }
            self.catalog
                .set_progress(id, progress_of(&live.recorder, &live.attachment));
            let counts = counts_of(&live.recorder, &live.attachment);
            self.metrics.container(&live.labels, live.counted, counts);
            live.counted = counts;
        }
        self.push_node_metrics();
        if !ended.is_empty() {
            // One catch-up serves them all: each takes up to a couple of poll periods.
            self.catch_up();
        }
        for id in ended {
            self.close(&id, "the container's processes have all exited");
        }
        if self.unrouted > 0 {
            tracing::debug!(
                events = self.unrouted,
                "events from cgroups below a container's own"
            );
        }
    }

    /// The container is gone: what is still in the ring is its last word.
    fn end(&mut self, id: &str, note: &str) {
        if !self.live.contains_key(id) {
            return;
        }
        self.catch_up();
        self.close(id, note);
    }

    /// Ends a history whose container's last events have been routed.
    fn close(&mut self, id: &str, note: &str) {
        let Some(mut live) = self.live.remove(id) else {
            return;
        };
        self.by_cgroup.remove(&live.attachment.cgroup_id);
        let _ = self.probe.forget_cgroup(live.attachment.cgroup_id);
        let end = monotonic_ns();
        let progress = progress_of(&live.recorder, &live.attachment);
        let metrics = self.metrics.clone();
        let result = (|| -> Result<(), StoreError> {
            // The container's root is gone with it, so nothing can be read back any more:
            // healing by reading files stops here (no reconcile against a vanished tree).
            let _ = live.recorder.check_losses(&mut self.probe, end);
            let counts = counts_of(&live.recorder, &live.attachment);
            metrics.container(&live.labels, live.counted, counts);
            live.recorder.writer_mut().append(Event {
                time: end,
                process: None,
                op: Op::Marker {
                    kind: MarkerKind::Note,
                    detail: format!("container ended: {note}"),
                },
            })?;
            live.recorder.into_writer().finish(end)
        })();
        match result {
            Ok(()) => tracing::info!(%id, "container ended; history complete"),
            Err(e) => tracing::error!(%id, error = %e, "closing a history"),
        }
        self.catalog.set_progress(id, progress);
        self.catalog.mark_ended(id, wall_ns());
    }
}

fn counts_of(recorder: &Recorder, attachment: &Attachment) -> ContainerCounts {
    let stats = recorder.stats();
    ContainerCounts {
        events: stats.events,
        captured_bytes: stats.captured_bytes,
        records_lost: stats.records_lost,
        drops_healed: stats.drops_healed,
        store_bytes: dir_size(&attachment.store_dir),
    }
}

impl CaptureLoop {
    /// The node's own series: the ring, the consumer, the kernel's node-wide losses, the
    /// histories kept.
    fn push_node_metrics(&mut self) {
        let peak = self.ring.as_ref().map_or(0, RingDrain::take_peak_bytes);
        self.metrics.ring(self.ring_bytes, peak);
        self.metrics
            .consumer_lag(std::mem::take(&mut self.lag_ns) as f64 / 1e9);
        if let Ok(c) = self.probe.counters() {
            self.metrics.node_lost(self.node_lost_seen, c.lost);
            self.node_lost_seen = c.lost;
        }
        self.metrics
            .histories(self.catalog.ids().len(), self.live.len());
    }
}

fn progress_of(recorder: &Recorder, attachment: &Attachment) -> Progress {
    let writer = recorder.writer();
    let stats = writer.stats();
    Progress {
        events: stats.events,
        bytes: dir_size(&attachment.store_dir),
        drops_healed: recorder.stats().drops_healed,
        last_event_mono_ns: writer.last_time(),
    }
}

/// Whether the cgroup still has processes; a cgroup already removed has none.
fn populated(cgroup_dir: &Path) -> bool {
    std::fs::read_to_string(cgroup_dir.join("cgroup.events"))
        .map(|text| text.lines().any(|l| l.trim() == "populated 1"))
        .unwrap_or(false)
}

/// The capture thread, asked for views of the histories it writes.
pub struct CaptureViews(pub std::sync::Mutex<Sender<Command>>);

impl LiveViews for CaptureViews {
    fn view(&self, id: &str) -> Result<Store, HistoryError> {
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        let sent = self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(Command::View {
                id: id.to_string(),
                reply,
            });
        sent.map_err(|_| HistoryError::Unavailable("the agent is shutting down".into()))?;
        answer
            .recv()
            .map_err(|_| HistoryError::Unavailable("the agent is shutting down".into()))?
            .map_err(HistoryError::Unavailable)
    }
}

/// Starts the capture thread; dropping every sender stops it.
pub fn spawn(
    config: &ProbeConfig,
    catalog: Catalog,
    metrics: Arc<Metrics>,
) -> Result<(Sender<Command>, std::thread::JoinHandle<()>), crate::AgentError> {
    let capture = CaptureLoop::load(config, catalog, metrics)?;
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::Builder::new()
        .name("capture".into())
        .spawn(move || capture.run(rx))
        .map_err(crate::AgentError::Thread)?;
    Ok((tx, handle))
}
