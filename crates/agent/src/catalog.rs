//! The node's histories: one recording per container incarnation under the state dir, with a
//! small metadata file beside it, and what the agent knows of each while it runs.
//!
//! Layout: `STATE/containers/<id>/meta.json` and `STATE/containers/<id>/store/` (a recording as
//! `diffkeeper log --state-dir` reads it). `<id>` is the death key's id (pod uid, container,
//! container id), so a restarted agent finds its histories by the same name the operator uses.
//! A history per incarnation lets retention drop a whole history with one directory.

use diffkeeper_locate::dir_size;
use diffkeeper_rpc::{
    ContainerSelector, HistoryError, HistoryView, NodeHistory, RecordedContainer,
};
use diffkeeper_store::{format_wall, Store};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// What the agent writes down about an incarnation, so a restarted agent knows it again.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IncarnationMeta {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub pod_name: String,
    /// The pod's uid.
    pub pod_uid: String,
    /// The container's name in the pod.
    pub container: String,
    /// As the pod status says it: `containerd://<hex>`.
    pub container_id: String,
    /// The pod's restart count for this container when the incarnation started.
    pub restart_count: i32,
    /// The Recording that owns it.
    pub recording: String,
    /// The ContainerRecord that reports it.
    pub record_name: String,
    /// When recording began (wall clock, ns since the epoch) and its clock's monotonic twin.
    pub started_wall_ns: i128,
    /// CLOCK_MONOTONIC ns at the same moment as `started_wall_ns`.
    pub started_mono_ns: u64,
    /// When the container ended (wall clock, ns since the epoch).
    #[serde(default)]
    pub ended_wall_ns: Option<i128>,
    /// Its exit code, once it ended.
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// The image's layers, topmost first: the part of the container's view that is not recorded.
    pub image_layers: Vec<PathBuf>,
    /// The overlay's writable layer on the host.
    pub upper_dir: PathBuf,
    /// Holes the agent knows of (its own restarts while the container ran).
    #[serde(default)]
    pub gaps: u64,
}

/// Counters the capture thread refreshes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    pub events: u64,
    pub bytes: u64,
    pub drops_healed: u64,
    pub last_event_mono_ns: Option<u64>,
}

struct Incarnation {
    meta: IncarnationMeta,
    progress: Progress,
    live: bool,
    /// An ended history, opened once and viewed by every request.
    opened: Option<Store>,
}

/// Shared between the capture thread, the control loop and the gRPC server.
#[derive(Clone)]
pub struct Catalog {
    root: PathBuf,
    inner: Arc<Mutex<BTreeMap<String, Incarnation>>>,
}

const META_FILE: &str = "meta.json";
const STORE_DIR: &str = "store";

impl Catalog {
    /// Loads the histories a previous agent left; those it was still writing come back as not
    /// live and not ended: [`Catalog::interrupted`].
    pub fn open(state_dir: &Path) -> std::io::Result<Catalog> {
        let root = state_dir.join("containers");
        std::fs::create_dir_all(&root)?;
        let mut entries = BTreeMap::new();
        for entry in std::fs::read_dir(&root)? {
            let dir = entry?.path();
            let meta = std::fs::read(dir.join(META_FILE))
                .ok()
                .and_then(|bytes| serde_json::from_slice::<IncarnationMeta>(&bytes).ok());
            let Some(meta) = meta else {
                tracing::warn!(dir = %dir.display(), "a history without readable metadata is left alone");
                continue;
            };
            let id = file_name(&dir);
            let progress = Progress {
                bytes: dir_size(&dir),
                ..Progress::default()
            };
            entries.insert(
                id,
                Incarnation {
                    meta,
                    progress,
                    live: false,
                    opened: None,
                },
            );
        }
        Ok(Catalog {
            root,
            inner: Arc::new(Mutex::new(entries)),
        })
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Incarnation>> {
        // A panic elsewhere must not take the node's histories down with it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Where history `id`'s store lives.
    pub fn store_dir(&self, id: &str) -> PathBuf {
        self.root.join(id).join(STORE_DIR)
    }

    /// A new incarnation about to be recorded.
    pub fn insert(&self, id: &str, meta: IncarnationMeta) -> std::io::Result<()> {
        let dir = self.root.join(id);
        // Said with the path: this error becomes a ContainerRecord's message, read far from
        // the node.
        let at = |e: std::io::Error| {
            std::io::Error::new(e.kind(), format!("creating {}: {e}", dir.display()))
        };
        std::fs::create_dir_all(&dir).map_err(at)?;
        write_meta(&dir, &meta).map_err(at)?;
        self.lock().insert(
            id.to_string(),
            Incarnation {
                meta,
                progress: Progress::default(),
                live: true,
                opened: None,
            },
        );
        Ok(())
    }

    /// Whether history `id` is kept.
    pub fn contains(&self, id: &str) -> bool {
        self.lock().contains_key(id)
    }

    /// What is known of history `id`.
    pub fn meta(&self, id: &str) -> Option<IncarnationMeta> {
        self.lock().get(id).map(|i| i.meta.clone())
    }

    /// Whether history `id` is being recorded now.
    pub fn is_live(&self, id: &str) -> bool {
        self.lock().get(id).is_some_and(|i| i.live)
    }

    /// Histories a previous agent was writing when it stopped.
    pub fn interrupted(&self) -> Vec<(String, IncarnationMeta)> {
        self.lock()
            .iter()
            .filter(|(_, i)| !i.live && i.meta.ended_wall_ns.is_none())
            .map(|(id, i)| (id.clone(), i.meta.clone()))
            .collect()
    }

    /// Every kept history.
    pub fn ids(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// Changes the metadata (and writes it down).
    pub fn update(&self, id: &str, change: impl FnOnce(&mut IncarnationMeta)) {
        let mut entries = self.lock();
        let Some(inc) = entries.get_mut(id) else {
            return;
        };
        let before = inc.meta.clone();
        change(&mut inc.meta);
        if inc.meta != before {
            if let Err(e) = write_meta(&self.root.join(id), &inc.meta) {
                tracing::error!(%id, error = %e, "writing a history's metadata");
            }
        }
    }

    /// Marks history `id` as being recorded, or not.
    pub fn set_live(&self, id: &str, live: bool) {
        if let Some(inc) = self.lock().get_mut(id) {
            inc.live = live;
        }
    }

    /// Records the capture thread's latest counters of history `id`.
    pub fn set_progress(&self, id: &str, progress: Progress) {
        if let Some(inc) = self.lock().get_mut(id) {
            inc.progress = progress;
        }
    }

    /// The latest counters of history `id`.
    pub fn progress(&self, id: &str) -> Progress {
        self.lock().get(id).map(|i| i.progress).unwrap_or_default()
    }

    /// The container of history `id` ended at `wall_ns`.
    pub fn mark_ended(&self, id: &str, wall_ns: i128) {
        self.set_live(id, false);
        self.update(id, |meta| {
            meta.ended_wall_ns.get_or_insert(wall_ns);
        });
    }

    /// Forgets a history and deletes it from disk.
    pub fn remove(&self, id: &str) -> std::io::Result<()> {
        let removed = self.lock().remove(id);
        drop(removed); // closes the store before its files go
        match std::fs::remove_dir_all(self.root.join(id)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Bytes every kept history takes.
    pub fn total_bytes(&self) -> u64 {
        self.lock().values().map(|i| i.progress.bytes).sum()
    }

    /// The history as the API reports it.
    pub fn describe(&self, id: &str) -> Option<RecordedContainer> {
        let entries = self.lock();
        entries.get(id).map(describe)
    }
}

fn describe(inc: &Incarnation) -> RecordedContainer {
    let m = &inc.meta;
    let wall_of = |mono: u64| m.started_wall_ns + i128::from(mono) - i128::from(m.started_mono_ns);
    RecordedContainer {
        namespace: m.namespace.clone(),
        pod_name: m.pod_name.clone(),
        pod_uid: m.pod_uid.clone(),
        container: m.container.clone(),
        container_id: m.container_id.clone(),
        recording: m.recording.clone(),
        first_event: format_wall(m.started_wall_ns),
        last_event: inc
            .progress
            .last_event_mono_ns
            .map(|mono| format_wall(wall_of(mono)))
            .unwrap_or_default(),
        ended_at: m.ended_wall_ns.map(format_wall).unwrap_or_default(),
        live: inc.live,
        events: inc.progress.events,
        bytes: inc.progress.bytes,
        gaps: m.gaps,
    }
}

fn write_meta(dir: &Path, meta: &IncarnationMeta) -> std::io::Result<()> {
    // Written aside and renamed, so a kill mid-write leaves the old file whole.
    let tmp = dir.join("meta.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(meta)?)?;
    std::fs::rename(tmp, dir.join(META_FILE))
}

fn file_name(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Read views of live histories, which only their writer (the capture thread) can give: how
/// the catalog asks for one without knowing who writes.
pub trait LiveViews: Send + Sync {
    /// A view of live history `id`, as committed now.
    fn view(&self, id: &str) -> Result<Store, HistoryError>;
}

/// The catalog as the gRPC server sees it.
pub struct History {
    pub node: String,
    pub catalog: Catalog,
    pub live: Box<dyn LiveViews>,
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
}

impl History {
    fn pick(&self, selector: &ContainerSelector) -> Option<String> {
        let entries = self.catalog.lock();
        let wanted = |m: &IncarnationMeta| {
            m.pod_uid == selector.pod_uid
                && (selector.container.is_empty() || m.container == selector.container)
                && (selector.container_id.is_empty()
                    || m.container_id == selector.container_id
                    || m.container_id
                        .ends_with(&format!("://{}", selector.container_id)))
        };
        entries
            .iter()
            .filter(|(_, inc)| wanted(&inc.meta))
            .max_by_key(|(_, inc)| inc.meta.started_wall_ns)
            .map(|(id, _)| id.clone())
    }
}

impl NodeHistory for History {
    fn node(&self) -> String {
        self.node.clone()
    }

    fn export_answered(&self, code: &str) {
        self.metrics.export_answered(code);
    }

    fn containers(&self) -> Vec<RecordedContainer> {
        self.catalog.lock().values().map(describe).collect()
    }

    fn open(&self, selector: &ContainerSelector) -> Result<HistoryView, HistoryError> {
        let Some(id) = self.pick(selector) else {
            return Err(HistoryError::NotFound(format!(
                "no recorded container {:?} of pod uid {} on node {}",
                selector.container, selector.pod_uid, self.node
            )));
        };
        let live = self.catalog.is_live(&id);
        let store = if live {
            self.live.view(&id)?
        } else {
            let mut entries = self.catalog.lock();
            let Some(inc) = entries.get_mut(&id) else {
                return Err(HistoryError::NotFound(format!("{id} was just removed")));
            };
            if inc.opened.is_none() {
                let dir = self.catalog.store_dir(&id);
                inc.opened = Some(Store::open(&dir).map_err(|e| {
                    HistoryError::Unavailable(format!("opening {}: {e}", dir.display()))
                })?);
            }
            let opened = inc.opened.as_ref().expect("opened above");
            opened
                .view()
                .map_err(|e| HistoryError::Unavailable(e.to_string()))?
        };
        let container = self
            .catalog
            .describe(&id)
            .ok_or_else(|| HistoryError::NotFound(format!("{id} was just removed")))?;
        let image_layers = self
            .catalog
            .meta(&id)
            .map(|m| m.image_layers)
            .unwrap_or_default();
        Ok(HistoryView {
            container,
            store,
            image_layers,
        })
    }

    fn store_bytes(&self) -> u64 {
        self.catalog.total_bytes()
    }
}
