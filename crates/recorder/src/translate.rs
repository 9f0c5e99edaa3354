//! From captured kernel events to store operations, and the read-backs that heal what the
//! kernel side could not capture.
//!
//! The kernel names files by (device, inode); the store by node ids with path history. This is
//! where one becomes the other: a created inode gets a fresh node, a pre-existing one first seen
//! mid-recording is adopted, and content that was not captured byte by byte (writes above the
//! cap, shared mmaps, splice, records lost to a full ring) is read back from the file itself.

use crate::fs_ids::FsIds;
use crate::metadata::MetaUpdate;
use crate::root_dir::RootDir;
use crate::scope::PathScope;
use crate::RecordError;
use diffkeeper_capture::{Change, DirtyReason, Event as Captured, FileKey, Origin, Probe};
use diffkeeper_store::{
    Event, MarkerKind, NodeId, NodeKind, Op, Owner, Process, RecPath, Target, Writer,
    IMPLICIT_DIR_NODE_BIT,
};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Counts a person wants in the recording summary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecorderStats {
    /// Capture events turned into store operations.
    pub events: u64,
    /// Payload bytes the kernel copied for this recording.
    pub captured_bytes: u64,
    /// Capture records of this recording the ring buffer could not hold (as last checked).
    pub records_lost: u64,
    /// Files read back because the kernel could not capture their bytes.
    pub resyncs: u64,
    /// Of those, read-backs that healed records lost to a full ring buffer.
    pub drops_healed: u64,
    /// Whole-namespace rescans after lost path records.
    pub rescans: u64,
    /// Entries found different from the log at the final check, and fixed.
    pub reconciled: u64,
    /// Path changes the kernel side could not send whole (a path deeper than its walk or
    /// longer than PATH_MAX, or a record missing a part): the names they changed are taken
    /// from disk at the end, so until then the log lacks them.
    pub cut_paths: u64,
}

/// Payload bytes past which a recorder commits what it appended, by default: at full speed a
/// second of writes (the timed flush) would otherwise sit in memory.
pub const COMMIT_BYTES: u64 = 32 << 20;

/// The most bytes one read-back op holds. A larger file is read back as a Resync of its first
/// chunk and then Writes of the rest at their offsets, all at the same moment: healing a
/// 245 MB file then holds a few chunks (until the writer seals them into a block) instead of
/// the whole file, and the copies the store makes of it, in freshly faulted memory. Readers need
/// nothing new: these are the ops a writer of that file would have made.
pub const READ_BACK_CHUNK: usize = 1 << 20;

/// Translates events of one recording into store appends.
pub struct Recorder {
    pub(crate) writer: Writer,
    /// Host directory under which recorded paths live: "/" for a local recording, a
    /// container's root (e.g. /proc/PID/root) otherwise.
    root: PathBuf,
    /// `root` opened: every read-back and sweep resolves recorded names through it, never
    /// following a symlink.
    pub(crate) root_dir: RootDir,
    pub(crate) nodes: HashMap<FileKey, NodeId>,
    dirty: HashMap<FileKey, DirtyReason>,
    /// Files read back since their last mark, with the cgroup's lost-record count taken just
    /// before that read-back began. While the count stays the same, every change the kernel
    /// could not capture would have marked the file again (which removes it here), so the log
    /// still holds its content and another read-back would only read the same bytes again.
    read_back_at: HashMap<FileKey, u64>,
    /// The process of the latest event naming each file: at a process's exit only the dirty
    /// files it (or no live process) touched last are read back; another's are read at its own
    /// close or exit, when it is done with them.
    last_toucher: HashMap<FileKey, u32>,
    /// The processes that may write to each file through a shared writable mapping: those
    /// that mapped it, and those forked from one since (a fork inherits the mapping). Once
    /// none of them maps it, the file can change only by a new mapping (which the kernel
    /// reports) or a syscall, so it is read back one last time and not at every later exit.
    mappers: HashMap<FileKey, HashSet<u32>>,
    /// Whether read-backs due at a close or an exit wait while the ring is overflowing (see
    /// [`Recorder::defer_heals_while_losing`]), and the ones waiting, with the process whose
    /// ids read them.
    defer_heals: bool,
    deferred: HashMap<FileKey, Option<Process>>,
    /// The last loss check found records lost since the one before.
    losing: bool,
    /// Directories every name of which belongs to the recording (baseline roots, directories
    /// the workload made): a rescan adopts names found there that the log lacks.
    pub(crate) owned_dirs: BTreeSet<RecPath>,
    /// Host paths never to record (the state dir itself).
    excluded: Vec<PathBuf>,
    /// The recorded paths the recording is limited to (`spec.paths`, `--include/--exclude`).
    scope: PathScope,
    /// Files first seen at a path outside `scope`: their writes are not recorded, and the
    /// kernel is told to stop sending them (see `Probe::skip_file`).
    outside: HashSet<FileKey>,
    /// Files that left or entered `outside` since the kernel was last told (`true`: skip).
    skips_untold: Vec<(FileKey, bool)>,
    /// The root is an overlay whose image the recording does not hold (set by
    /// `baseline_overlay`): a directory the recording has may hold image entries it lacks.
    pub(crate) overlay: bool,
    /// The file system ids of each recorded process at its latest event, and of the process
    /// that last changed each file: read-backs for them open only what they could.
    pid_ids: HashMap<u32, FsIds>,
    node_ids: HashMap<NodeId, FsIds>,
    /// The latest non-root ids seen: a sweep of what no known process touched reads as them,
    /// so an unprivileged workload cannot have root read a file it put out of its own reach.
    unprivileged: Option<FsIds>,
    rescan_needed: bool,
    /// Files a recorded write left a gap in (it began past their recorded end): the end-of-run
    /// check compares them with the disk, where processes outside the recording may have
    /// written that gap.
    gapped: std::collections::HashSet<NodeId>,
    /// Cut path changes not yet reported by a gap marker.
    cuts_unreported: u64,
    /// The recorded cgroup (as given to `Probe::record_cgroup`) whose processes this recorder
    /// records: the kernel tags losses, read-back marks and unsent names with it, and this
    /// recorder takes only those (a node's probe serves many recordings).
    cgroup: u64,
    /// See [`Recorder::commit_past`].
    commit_bytes: u64,
    lost_seen: u64,
    lost_ns_seen: u64,
    stats: RecorderStats,
    /// The file system ids of the process whose event is being applied: the owner of what it
    /// creates by path (mkdir, symlink), which the kernel reports without an inode.
    event_ids: FsIds,
}

impl Recorder {
    /// A recorder of recorded cgroup `cgroup`'s processes, into `writer`, reading files back
    /// below `root`, never recording what lies under `excluded`.
    pub fn new(writer: Writer, root: PathBuf, excluded: Vec<PathBuf>, cgroup: u64) -> Self {
        Recorder {
            cgroup,
            commit_bytes: COMMIT_BYTES,
            writer,
            root_dir: RootDir::open(&root),
            root,
            nodes: HashMap::new(),
            dirty: HashMap::new(),
            read_back_at: HashMap::new(),
            last_toucher: HashMap::new(),
            mappers: HashMap::new(),
            defer_heals: false,
            deferred: HashMap::new(),
            losing: false,
            owned_dirs: BTreeSet::new(),
            excluded,
            scope: PathScope::everything(),
            outside: HashSet::new(),
            skips_untold: Vec::new(),
            overlay: false,
            pid_ids: HashMap::new(),
            node_ids: HashMap::new(),
            unprivileged: None,
            rescan_needed: false,
            gapped: Default::default(),
            cuts_unreported: 0,
            lost_seen: 0,
            lost_ns_seen: 0,
            stats: RecorderStats::default(),
            event_ids: FsIds::ROOT,
        }
    }

    /// Limits the recording to `scope`, and says so in the store for its readers.
    pub fn scoped(mut self, scope: PathScope) -> Result<Self, RecordError> {
        if !scope.is_everything() {
            self.writer.set_scope(scope.scope())?;
        }
        self.scope = scope;
        Ok(self)
    }

    /// Sets the payload bytes past which [`Recorder::record`] commits (default
    /// [`COMMIT_BYTES`]): the memory one recording may hold between flushes. A node agent with
    /// many recordings gives each less.
    pub fn commit_past(mut self, bytes: u64) -> Self {
        self.commit_bytes = bytes;
        self
    }

    /// Makes read-backs due at a close or an exit wait while the ring buffer is overflowing
    /// (the last loss check found new losses) until a check finds none, or the end. A heal of a
    /// large file takes long, and the ring is not emptied meanwhile, so healing while another
    /// writer still overruns the ring loses it more records (and more read-backs). Only for a
    /// recording whose end reads back whatever is still dirty while the files are still there
    /// ([`Recorder::finish_healing`]): a container's root can be gone before the next check.
    pub fn defer_heals_while_losing(mut self, defer: bool) -> Self {
        self.defer_heals = defer;
        self
    }

    /// Applies one captured event and commits once the appended payload passes the commit
    /// size: the recording loop of `record` and of the node agent alike.
    pub fn record(&mut self, ev: Captured, probe: &mut Probe) -> Result<(), RecordError> {
        self.apply(ev, probe)?;
        if self.writer.uncommitted_payload_bytes() >= self.commit_bytes {
            self.writer.commit()?;
        }
        Ok(())
    }

    /// Files (by inode) the recorder already has, e.g. from the baseline.
    pub fn known_files(&self) -> impl Iterator<Item = FileKey> + '_ {
        self.nodes.keys().copied()
    }

    pub fn stats(&self) -> RecorderStats {
        self.stats
    }

    pub fn writer(&self) -> &Writer {
        &self.writer
    }

    pub fn writer_mut(&mut self) -> &mut Writer {
        &mut self.writer
    }

    pub fn into_writer(self) -> Writer {
        self.writer
    }

    pub(crate) fn host_path(&self, path: &RecPath) -> PathBuf {
        let rel = Path::new(std::ffi::OsStr::from_bytes(&path.as_bytes()[1..]));
        self.root.join(rel)
    }

    /// Whether `path` is not to be recorded: it lies in a host directory never to record, or
    /// outside the recording's scope.
    pub(crate) fn is_excluded(&self, path: &RecPath) -> bool {
        self.is_host_excluded(path) || !self.scope.holds(path)
    }

    fn is_host_excluded(&self, path: &RecPath) -> bool {
        let host = self.host_path(path);
        self.excluded.iter().any(|x| host.starts_with(x))
    }

    /// Whether `path` is a directory outside the scope that a walk must still go through,
    /// since an include lies below it.
    pub(crate) fn leads_into_scope(&self, path: &RecPath) -> bool {
        !self.is_host_excluded(path) && self.scope.may_hold_below(path)
    }

    /// Whose permissions a read-back for `process` (or of `node`, or neither) uses: the
    /// process's own ids, else those of the file's last writer, else the recording's
    /// unprivileged ones when there were any. Only a recording whose every process ran as root,
    /// or a baseline (taken before the command runs, as the person recording chose), reads as
    /// root.
    pub(crate) fn reader_for(&self, process: Option<&Process>, node: Option<NodeId>) -> FsIds {
        process
            .and_then(|p| self.pid_ids.get(&p.pid))
            .or_else(|| node.and_then(|n| self.node_ids.get(&n)))
            .or(self.unprivileged.as_ref())
            .copied()
            .unwrap_or(FsIds::ROOT)
    }

    pub(crate) fn append(
        &mut self,
        time: u64,
        process: Option<Process>,
        op: Op,
    ) -> Result<(), RecordError> {
        self.writer.append(Event { time, process, op })?;
        Ok(())
    }

    /// Snapshots `dir` (recursively) as the recording's starting point, so in-place edits of
    /// files that existed before replay exactly.
    pub fn baseline(&mut self, dir: &Path, time: u64) -> Result<u64, RecordError> {
        let host = fs::canonicalize(dir).map_err(|cause| RecordError::Baseline {
            path: dir.to_path_buf(),
            cause,
        })?;
        let Some(path) = host
            .strip_prefix(&self.root)
            .ok()
            .and_then(|rel| RecPath::root().join(rel.as_os_str().as_bytes()).ok())
        else {
            return Ok(0);
        };
        let n = self.adopt_tree(&path, time, None)?;
        self.append(
            time,
            None,
            Op::Marker {
                kind: MarkerKind::BaselineComplete,
                detail: format!("baseline of {path}: {n} entries"),
            },
        )?;
        Ok(n)
    }

    /// Records what is on disk at `path` (and below, for a directory) as exact entries, and
    /// marks directories as owned. Returns the number of entries recorded.
    pub(crate) fn adopt_tree(
        &mut self,
        path: &RecPath,
        time: u64,
        process: Option<&Process>,
    ) -> Result<u64, RecordError> {
        if self.is_excluded(path) {
            return self.adopt_below(path, time, process);
        }
        let who = self.reader_for(process, None);
        let Ok(meta) = self.root_dir.metadata(who, path) else {
            return Ok(0); // gone already: a later event will say what happened
        };
        let key = FileKey {
            dev: meta.dev(),
            ino: meta.ino(),
        };
        let mode = meta.mode() & 0o7777;
        let ft = meta.file_type();
        let process = process.cloned();
        // What was on disk keeps its owner and mtime: set after the entry's content, whose
        // ops stamp their own moment.
        let disk_meta = MetaUpdate {
            mode: None,
            owner: Some(Owner {
                uid: meta.uid(),
                gid: meta.gid(),
            }),
            mtime_ns: Some(
                i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            ),
        };
        if ft.is_dir() {
            let node = self.writer.new_node();
            self.nodes.insert(key, node);
            if !path.is_root() {
                self.append(
                    time,
                    process.clone(),
                    Op::Mkdir {
                        node,
                        path: path.clone(),
                        mode,
                    },
                )?;
            }
            self.owned_dirs.insert(path.clone());
            let Ok(mut names) = self.root_dir.read_dir(who, path) else {
                self.update_meta(path, disk_meta, time, process.as_ref())?;
                return Ok(1);
            };
            names.sort();
            let mut n = 1;
            for name in names {
                if let Ok(child) = path.join(name.as_bytes()) {
                    n += self.adopt_tree(&child, time, process.as_ref())?;
                }
            }
            self.update_meta(path, disk_meta, time, process.as_ref())?;
            self.refresh_xattrs(path, time, process.as_ref())?;
            return Ok(n);
        }
        if ft.is_symlink() {
            let Ok(target) = self.root_dir.read_link(who, path) else {
                return Ok(0);
            };
            let node = self.writer.new_node();
            self.append(
                time,
                process.clone(),
                Op::Symlink {
                    node,
                    path: path.clone(),
                    target: target.as_os_str().as_bytes().to_vec(),
                },
            )?;
            self.update_meta(path, disk_meta, time, process.as_ref())?;
            return Ok(1);
        }
        if !ft.is_file() {
            return Ok(0); // sockets, fifos, devices: not file content
        }
        let linked = self.nodes.get(&key).copied().filter(|&node| {
            // Inode numbers are reused: after lost create records the map may still hold the
            // node of a deleted file. Only a name that is this very inode on disk makes a link.
            self.writer.path_of(node).is_some_and(|other| {
                other != *path
                    && self
                        .root_dir
                        .metadata(who, &other)
                        .is_ok_and(|m| m.dev() == key.dev && m.ino() == key.ino)
            })
        });
        if let Some(node) = linked {
            // Another name of a file already recorded: a hard link. Its bytes are read back
            // too: when healing, what the log holds for that node may be stale.
            self.append(
                time,
                process.clone(),
                Op::Link {
                    node,
                    path: path.clone(),
                },
            )?;
            if let Ok(file) = self.root_dir.open_read_back(who, path, key) {
                self.read_back_into(file, key, node, time, process.as_ref())?;
            }
            self.update_meta(path, disk_meta, time, process.as_ref())?;
            return Ok(1);
        }
        let node = self.writer.new_node();
        self.nodes.insert(key, node);
        self.bring_inside(key);
        match self.root_dir.open_read_back(who, path, key) {
            Ok(file) => {
                let op = Op::Create {
                    node,
                    path: path.clone(),
                    mode,
                };
                self.append(time, process.clone(), op)?;
                self.read_back_into(file, key, node, time, process.as_ref())?;
                self.update_meta(path, disk_meta, time, process.as_ref())?;
                self.refresh_xattrs(path, time, process.as_ref())?;
            }
            Err(e) => {
                // Unreadable (by whom it is read for) or replaced meanwhile: a file of unknown
                // content, which the export reports, not an empty one.
                tracing::debug!(%path, "cannot read back: {e}");
                let op = Op::Adopt {
                    node,
                    path: path.clone(),
                    kind: NodeKind::File,
                    mode,
                    size: meta.len(),
                };
                self.append(time, process.clone(), op)?;
                self.update_meta(path, disk_meta, time, process.as_ref())?;
            }
        }
        Ok(1)
    }

    /// A directory outside the scope on the way to an include: what lies below it that is in
    /// scope, without the directory itself (the export makes it, as a parent).
    fn adopt_below(
        &mut self,
        path: &RecPath,
        time: u64,
        process: Option<&Process>,
    ) -> Result<u64, RecordError> {
        if !self.leads_into_scope(path) {
            return Ok(0);
        }
        let who = self.reader_for(process, None);
        let Ok(mut names) = self.root_dir.read_dir(who, path) else {
            return Ok(0); // not a directory, or gone
        };
        names.sort();
        let mut n = 0;
        for name in names {
            if let Ok(child) = path.join(name.as_bytes()) {
                n += self.adopt_tree(&child, time, process)?;
            }
        }
        Ok(n)
    }

    /// Applies one captured event.
    pub fn apply(&mut self, ev: Captured, probe: &mut Probe) -> Result<(), RecordError> {
        self.stats.events += 1;
        let Origin {
            time,
            pid,
            cgroup,
            comm,
            fsuid,
            fsgid,
            ..
        } = ev.origin;
        let ids = FsIds {
            uid: fsuid,
            gid: fsgid,
        };
        self.pid_ids.insert(pid, ids);
        if ids != FsIds::ROOT {
            self.unprivileged = Some(ids);
        }
        // Read-backs for an exiting process still run as it; its pid may be reused after.
        let exited = matches!(ev.change, Change::Exit { .. });
        if let Change::Write { data, .. } = &ev.change {
            self.stats.captured_bytes += data.len() as u64;
        }
        let process = Process { pid, comm, cgroup };
        self.event_ids = ids;
        let result = self.apply_change(ev.change, time, process, ids, probe);
        if exited {
            self.pid_ids.remove(&pid);
        }
        self.tell_skips(probe);
        result
    }

    /// Tells the kernel which files' writes to stop (or resume) copying for this recording.
    fn tell_skips(&mut self, probe: &mut Probe) {
        for (file, skip) in self.skips_untold.drain(..) {
            let told = if skip {
                probe.skip_file(self.cgroup, file)
            } else {
                probe.unskip_file(self.cgroup, file)
            };
            // A skip not taken costs only copies user space drops; an unskip not taken is
            // covered by the read-back that brought the file into the scope.
            if let Err(e) = told {
                tracing::debug!(?file, skip, "cannot tell the kernel: {e}");
            }
        }
    }

    /// A file seen at a path outside the scope, and not recorded under another name.
    fn leave_outside(&mut self, file: FileKey) {
        if !self.nodes.contains_key(&file) && self.outside.insert(file) {
            self.skips_untold.push((file, true));
        }
    }

    /// A file that was outside the scope now has a recorded name.
    fn bring_inside(&mut self, file: FileKey) {
        if self.outside.remove(&file) {
            self.skips_untold.push((file, false));
            // Its writes between the read that brought it in and the kernel being told are
            // not copied: read it back once more later, after the kernel knows.
            self.mark_dirty(file, DirtyReason::Adopted);
        }
    }

    fn apply_change(
        &mut self,
        change: Change,
        time: u64,
        process: Process,
        ids: FsIds,
        probe: &mut Probe,
    ) -> Result<(), RecordError> {
        let touched = match &change {
            Change::Write { file, .. }
            | Change::Inode { file, .. }
            | Change::FdTruncate { file, .. }
            | Change::FdChmod { file, .. }
            | Change::Meta { file, .. }
            | Change::Dirty {
                file: Some(file), ..
            } => Some(*file),
            _ => None,
        };
        let pid = process.pid;
        self.apply_to_store(change, time, Some(process), probe)?;
        if let Some(file) = touched {
            self.last_toucher.insert(file, pid);
            if let Some(&node) = self.nodes.get(&file) {
                self.node_ids.insert(node, ids);
            }
        }
        Ok(())
    }

    fn apply_to_store(
        &mut self,
        change: Change,
        time: u64,
        process: Option<Process>,
        probe: &mut Probe,
    ) -> Result<(), RecordError> {
        match change {
            Change::Write { file, offset, data } => match self.nodes.get(&file).copied() {
                Some(node) => {
                    // A write past what the recording knows of the file: a sparse write, or
                    // one after bytes a process outside the recording wrote. Checked at the end.
                    if offset > 0 && self.known_size(node).is_some_and(|size| offset > size) {
                        self.gapped.insert(node);
                    }
                    self.append(time, process, Op::Write { node, offset, data })?
                }
                None if self.outside.contains(&file) => {}
                // Its path record was lost: the file is dirty in the kernel map already.
                None => self.mark_dirty(file, DirtyReason::Lost),
            },
            Change::Inode {
                file,
                path,
                mode,
                owner,
                mtime_ns,
                size,
                created,
                truncated,
                unlinked,
                cut,
            } => {
                let Some(path) = self.normalize_any(&path, cut) else {
                    return Ok(());
                };
                if !self.scope.holds(&path) {
                    self.leave_outside(file);
                    return Ok(());
                }
                if created {
                    let node = self.writer.new_node();
                    self.nodes.insert(file, node);
                    self.bring_inside(file);
                    let mode = mode & 0o7777;
                    let op = Op::Create {
                        node,
                        path: path.clone(),
                        mode,
                    };
                    self.append(time, process.clone(), op)?;
                    let update = MetaUpdate {
                        owner: Some(store_owner(owner)),
                        ..Default::default()
                    };
                    self.update_meta(&path, update, time, process.as_ref())?;
                } else if !unlinked && !self.nodes.contains_key(&file) {
                    self.adopt_inode(
                        file,
                        path.clone(),
                        mode,
                        size,
                        truncated,
                        time,
                        process.clone(),
                    )?;
                    // What it was before the recording: its owner and mtime (its content is
                    // read back at close).
                    let update = MetaUpdate {
                        owner: Some(store_owner(owner)),
                        mtime_ns: Some(mtime_ns),
                        ..Default::default()
                    };
                    self.update_meta(&path, update, time, process.as_ref())?;
                    self.refresh_xattrs(&path, time, process.as_ref())?;
                } else if let Some(&node) = self.nodes.get(&file) {
                    if truncated {
                        let target = Target::Node(node);
                        self.append(time, process, Op::Truncate { target, size: 0 })?;
                    }
                }
            }
            Change::Rename { from, to, exchange } => {
                let (Some(from), Some(to)) = (
                    self.normalize_any(&from, false),
                    self.normalize_any(&to, false),
                ) else {
                    return Ok(());
                };
                match (self.is_excluded(&from), self.is_excluded(&to)) {
                    (false, false) => self.record_rename(from, to, exchange, time, process)?,
                    (true, true) => {}
                    // Across the scope's edge: what is inside now comes from disk, and what
                    // left is gone from the recorded tree.
                    (true, false) => {
                        self.retake(&to, time, process.as_ref())?;
                    }
                    (false, true) if exchange => {
                        self.retake(&from, time, process.as_ref())?;
                    }
                    (false, true) => self.remove_entry(&from, time, process.as_ref())?,
                }
            }
            Change::Unlink { path } => {
                if let Some(path) = self.normalize(&path, false) {
                    self.append(time, process, Op::Unlink { path })?;
                }
            }
            Change::Rmdir { path } => {
                if let Some(path) = self.normalize(&path, false) {
                    self.owned_dirs.retain(|d| !d.starts_with(&path));
                    self.append(time, process, Op::Rmdir { path })?;
                }
            }
            Change::Mkdir { path, mode } => {
                if let Some(path) = self.normalize(&path, false) {
                    let node = self.writer.new_node();
                    self.owned_dirs.insert(path.clone());
                    let ids = self.event_ids;
                    let owner = self.owner_of_new(&path, ids.uid, ids.gid);
                    // A set-group-ID directory passes the bit on to directories made in it.
                    let parent_sgid = path
                        .parent()
                        .and_then(|p| self.writer.entry(&p))
                        .is_some_and(|p| p.mode & 0o2000 != 0);
                    let mode = if parent_sgid { mode | 0o2000 } else { mode };
                    let op = Op::Mkdir {
                        node,
                        path: path.clone(),
                        mode,
                    };
                    self.append(time, process.clone(), op)?;
                    let update = MetaUpdate {
                        owner: Some(owner),
                        ..Default::default()
                    };
                    self.update_meta(&path, update, time, process.as_ref())?;
                }
            }
            Change::Symlink { path, target } => {
                if let Some(path) = self.normalize(&path, false) {
                    let node = self.writer.new_node();
                    let ids = self.event_ids;
                    let owner = self.owner_of_new(&path, ids.uid, ids.gid);
                    let op = Op::Symlink {
                        node,
                        path: path.clone(),
                        target,
                    };
                    self.append(time, process.clone(), op)?;
                    let update = MetaUpdate {
                        owner: Some(owner),
                        ..Default::default()
                    };
                    self.update_meta(&path, update, time, process.as_ref())?;
                }
            }
            Change::Meta {
                file,
                path,
                mode,
                owner,
                mtime_ns,
                cut,
                xattrs,
            } => {
                let path = self.normalize(&path, cut);
                let owner = store_owner(owner);
                self.meta_of_inode(file, path, mode, owner, mtime_ns, xattrs, time, process)?;
            }
            Change::RemoveXattr { path, name, follow } => {
                let path = self
                    .normalize(&path, false)
                    .and_then(|p| self.followed(p, follow));
                if let Some(path) = path.filter(|_| diffkeeper_store::xattr_kept(&name)) {
                    self.refresh_xattrs(&path, time, process.as_ref())?;
                }
            }
            Change::Chown {
                path,
                uid,
                gid,
                follow,
            } => {
                if let Some(path) = self.normalize(&path, false) {
                    self.chown_path(path, uid, gid, follow, time, process.as_ref())?;
                }
            }
            Change::SetXattr {
                path,
                name,
                value,
                follow,
            } => {
                if let Some(path) = self.normalize(&path, false) {
                    self.setxattr_path(path, &name, &value, follow, time, process.as_ref())?;
                }
            }
            Change::SetTimes {
                path,
                mtime,
                follow,
                ..
            } => {
                if let Some(path) = self.normalize(&path, false) {
                    self.set_times_path(path, mtime, follow, time, process.as_ref())?;
                }
            }
            Change::Link { existing, new } => {
                // A file outside the scope linked into it: taken from disk below.
                let (Some(existing), Some(new)) = (
                    self.normalize_any(&existing, false),
                    self.normalize(&new, false),
                ) else {
                    return Ok(());
                };
                match self.writer.node_at(&existing) {
                    Some(node) => self.append(time, process, Op::Link { node, path: new })?,
                    // A file we never saw: take it from disk under its new name.
                    None => {
                        self.adopt_tree(&new, time, process.as_ref())?;
                    }
                }
            }
            Change::Chmod { path, mode } => {
                // chmod(2) follows symlinks: a link's own mode never changes.
                let path = self
                    .normalize(&path, false)
                    .map(|p| self.followed(p.clone(), true).unwrap_or(p));
                if let Some(path) = path {
                    if self.writer.entry(&path).is_some() {
                        let target = Target::Path(path);
                        self.append(time, process, Op::Chmod { target, mode })?;
                    } else if self.overlay {
                        // An image entry: the export would show the image's mode otherwise.
                        self.adopt_image_entry(&path, time, process.as_ref())?;
                    }
                }
            }
            Change::Truncate { path, size } => {
                if let Some(path) = self.normalize(&path, false) {
                    if self.writer.entry(&path).is_some() {
                        let target = Target::Path(path);
                        self.append(time, process, Op::Truncate { target, size })?;
                    } else {
                        self.adopt_tree(&path, time, process.as_ref())?;
                    }
                }
            }
            Change::FdTruncate { file, size } => {
                if let Some(&node) = self.nodes.get(&file) {
                    let target = Target::Node(node);
                    self.append(time, process, Op::Truncate { target, size })?;
                }
            }
            Change::FdChmod { file, mode } => {
                if let Some(&node) = self.nodes.get(&file) {
                    let (target, mode) = (Target::Node(node), mode & 0o7777);
                    self.append(time, process, Op::Chmod { target, mode })?;
                }
            }
            Change::Dirty { file, reason } => match file {
                Some(file) => {
                    if let (DirtyReason::Mmap, Some(p)) = (reason, process.as_ref()) {
                        self.mappers.entry(file).or_default().insert(p.pid);
                    }
                    self.mark_dirty(file, reason)
                }
                // io_uring: its writes bypass syscalls, so check everything at the end.
                None => self.rescan_needed = true,
            },
            Change::Close { file } => {
                // A shared mapping outlives close: keep reading it back until the end. Any
                // other mark is cleared before the read-back, not after: a record of the file
                // lost in between marks it again, where clearing afterwards would erase that.
                let mapped = self.dirty.get(&file) == Some(&DirtyReason::Mmap);
                if !mapped {
                    let _ = probe.clear_dirty(file);
                }
                if !mapped && self.defer_heals && self.losing {
                    self.deferred.insert(file, process);
                    return Ok(());
                }
                // A failed read-back (the name moved on disk before we got here) keeps our own
                // mark, so the file is read back at the end under its final name.
                if self.resync(file, time, process, probe)? && !mapped {
                    self.dirty.remove(&file);
                }
            }
            Change::Sync => {
                let mapped: Vec<FileKey> = self
                    .dirty
                    .iter()
                    .filter(|(_, r)| **r == DirtyReason::Mmap)
                    .map(|(k, _)| *k)
                    .collect();
                for file in mapped {
                    let retire = self.mapping_gone(file, probe);
                    if self.resync(file, time, process.clone(), probe)? && retire {
                        self.retire_mapped(file, probe);
                    }
                }
            }
            Change::Exit { .. } => {
                // A quiescent point for whatever this process left dirty. With heals deferred
                // (`record`, which reads everything back at its end), a file another live
                // process touched last may be mid-write (a 245 MB file another writer is still
                // filling): it is read back when that one closes it or exits, or at the end.
                // Otherwise (the agent) every dirty file is read now: a container's end comes
                // after its files are gone, and a lost Close or Exit record would leave it stale.
                let exiting = process.as_ref().map(|p| p.pid);
                let selective = self.defer_heals;
                let left: Vec<FileKey> = self
                    .dirty
                    .keys()
                    .filter(|file| match self.last_toucher.get(file) {
                        // Alive by /proc, not by the events seen: an Exit record can be lost.
                        Some(pid) if selective => {
                            Some(*pid) == exiting
                                || !std::path::Path::new(&format!("/proc/{pid}")).exists()
                        }
                        _ => true,
                    })
                    .copied()
                    .collect();
                for file in left {
                    if self.defer_heals && self.losing {
                        self.deferred.entry(file).or_insert_with(|| process.clone());
                    } else {
                        // Asked before the read-back: a mapping given up after it could
                        // have written what the read-back missed.
                        let retire = self.mapping_gone(file, probe);
                        if self.resync(file, time, process.clone(), probe)? && retire {
                            self.retire_mapped(file, probe);
                        }
                    }
                }
            }
            Change::NamespaceLost => self.note_cut(),
            Change::Fork { parent } => {
                if let Some(child) = process.as_ref().map(|p| p.pid) {
                    for pids in self.mappers.values_mut() {
                        if pids.contains(&parent) {
                            pids.insert(child);
                        }
                    }
                }
            }
            Change::Exec => {}
        }
        Ok(())
    }

    /// A rename (or, with `exchange`, a swap) the kernel reported.
    pub(crate) fn record_rename(
        &mut self,
        from: RecPath,
        to: RecPath,
        exchange: bool,
        time: u64,
        process: Option<Process>,
    ) -> Result<(), RecordError> {
        // On an overlay the log may hold only part of what moves (or nothing of it: an image
        // entry); the export hides the image at both names, so what is there now must come
        // from the log.
        let partial = self.overlay
            && !(self.fully_recorded(&from) && (!exchange || self.fully_recorded(&to)));
        let from_known = self.writer.entry(&from).is_some();
        if exchange {
            let op = Op::Exchange {
                a: from.clone(),
                b: to.clone(),
            };
            self.append(time, process.clone(), op)?;
            if partial {
                self.retake(&from, time, process.as_ref())?;
                self.retake(&to, time, process.as_ref())?;
            }
            return Ok(());
        }
        self.rebase_owned(&from, &to);
        let op = Op::Rename {
            from,
            to: to.clone(),
        };
        self.append(time, process.clone(), op)?;
        if partial && from_known {
            self.complete(&to, time, process.as_ref())?;
        } else if partial {
            // The store could not move what it never saw, so `to` still holds whatever the
            // log had there before.
            self.retake(&to, time, process.as_ref())?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn adopt_inode(
        &mut self,
        file: FileKey,
        path: RecPath,
        mode: u32,
        size: u64,
        truncated: bool,
        time: u64,
        process: Option<Process>,
    ) -> Result<(), RecordError> {
        self.bring_inside(file);
        // Known by name but not by inode (e.g. a name the baseline saw through another
        // device number): trust the name.
        if let Some(node) = self.writer.node_at(&path) {
            self.nodes.insert(file, node);
            return Ok(());
        }
        // A file that existed before the recording, outside the baseline: its earlier
        // content is unknown, so read it back once the writer is done with it.
        let node = self.writer.new_node();
        self.nodes.insert(file, node);
        let op = Op::Adopt {
            node,
            path,
            kind: NodeKind::File,
            mode: mode & 0o7777,
            size: if truncated { 0 } else { size },
        };
        self.append(time, process, op)?;
        // The kernel marked it for read-back at close itself (user space learns of it too late).
        self.mark_dirty(file, DirtyReason::Adopted);
        Ok(())
    }

    /// Whether no process can write to mapped-dirty `file` through a mapping any more: none of
    /// its mappers (see `mappers`) holds a shared writable mapping now, by /proc/PID/maps.
    /// Only where this recorder
    /// sees the recorded processes' /proc (`record`: the same pid namespace, see
    /// `defer_heals`), and only while no record was lost (a lost Fork or mmap record would
    /// hide a mapper).
    fn mapping_gone(&self, file: FileKey, probe: &Probe) -> bool {
        if !self.defer_heals || self.dirty.get(&file) != Some(&DirtyReason::Mmap) {
            return false;
        }
        let lost = probe.cgroup_losses(self.cgroup).ok().flatten();
        if lost.is_none_or(|c| c.lost > 0) {
            return false;
        }
        let Some(pids) = self.mappers.get(&file) else {
            return false;
        };
        // Any shared writable mapping counts, not only this file's: /proc/PID/maps names a
        // file by the inode user space sees, which on overlayfs is not the one the kernel side
        // reports. A process that has none cannot write to any file through one.
        let shared_writable = |line: &str| {
            let perms = line.split_whitespace().nth(1).unwrap_or("").as_bytes();
            perms.get(1) == Some(&b'w') && perms.get(3) == Some(&b's')
        };
        pids.iter().all(|pid| {
            match std::fs::read_to_string(format!("/proc/{pid}/maps")) {
                // A zombie's is empty.
                Ok(maps) => !maps.lines().any(shared_writable),
                // Reaped: it maps nothing.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
                Err(_) => false,
            }
        })
    }

    /// A mapped file read back after its last mapping went: its content is final until it is
    /// mapped or written again, which marks it anew.
    fn retire_mapped(&mut self, file: FileKey, probe: &mut Probe) {
        self.dirty.remove(&file);
        self.mappers.remove(&file);
        let _ = probe.clear_dirty(file);
    }

    fn mark_dirty(&mut self, file: FileKey, reason: DirtyReason) {
        self.read_back_at.remove(&file);
        // Mmap wins: it must be read back until the end, whatever else happened.
        let entry = self.dirty.entry(file).or_insert(reason);
        if reason == DirtyReason::Mmap {
            *entry = reason;
        }
    }

    /// A path change that cannot be placed: the end-of-run rescan takes what it changed from
    /// disk, and a gap marker says so at the next loss check.
    fn note_cut(&mut self) {
        self.rescan_needed = true;
        self.stats.cut_paths += 1;
        self.cuts_unreported += 1;
    }

    /// A path the kernel reported, if it is one to record.
    fn normalize(&mut self, raw: &[u8], cut: bool) -> Option<RecPath> {
        self.normalize_any(raw, cut)
            .filter(|path| self.scope.holds(path))
    }

    /// A path the kernel reported, whether or not it lies in the scope: for the changes that
    /// cross the scope's edge (rename, link). Never one in a host directory not to record.
    fn normalize_any(&mut self, raw: &[u8], cut: bool) -> Option<RecPath> {
        let Some(path) = RecPath::normalize(raw).ok().filter(|_| !cut) else {
            self.note_cut();
            return None;
        };
        (!self.is_host_excluded(&path)).then_some(path)
    }

    fn rebase_owned(&mut self, from: &RecPath, to: &RecPath) {
        let moved: Vec<RecPath> = self
            .owned_dirs
            .iter()
            .filter(|d| d.starts_with(from))
            .cloned()
            .collect();
        for d in moved {
            self.owned_dirs.remove(&d);
            if let Some(r) = d.rebase(from, to) {
                self.owned_dirs.insert(r);
            }
        }
    }

    /// Reads a file's whole content back into the log, unless the log holds it already (see
    /// `read_back_at`). Returns whether the log has the disk's content now.
    fn resync(
        &mut self,
        file: FileKey,
        time: u64,
        process: Option<Process>,
        probe: &Probe,
    ) -> Result<bool, RecordError> {
        let Some(&node) = self.nodes.get(&file) else {
            if self.outside.contains(&file) {
                return Ok(true); // not the recording's to read
            }
            self.rescan_needed = true; // dirty but never named: only a rescan can place it
            return Ok(false);
        };
        let Some(path) = self.writer.path_of(node) else {
            return Ok(true); // unlinked: no name left to export, nothing to heal
        };
        let reason = self.dirty.get(&file).copied();
        // Taken before reading: what was lost before is on disk by then, and a record lost from
        // here on raises the count, so the next request reads the file again.
        let lost = probe
            .cgroup_losses(self.cgroup)
            .ok()
            .flatten()
            .map(|c| c.lost);
        // Writes through a shared mapping are never captured, so a mapped file is always read.
        if reason != Some(DirtyReason::Mmap)
            && lost.is_some()
            && self.read_back_at.get(&file) == lost.as_ref()
        {
            return Ok(true);
        }
        let who = self.reader_for(process.as_ref(), Some(node));
        let whole = match self.root_dir.open_read_back(who, &path, file) {
            Ok(f) => self.read_back_into(f, file, node, time, process.as_ref())?,
            Err(e) => {
                tracing::debug!(%path, "read-back failed: {e}");
                false
            }
        };
        if !whole {
            self.rescan_needed = true;
            return Ok(false);
        }
        if let Some(lost) = lost {
            self.read_back_at.insert(file, lost);
        }
        self.stats.resyncs += 1;
        if reason == Some(DirtyReason::Lost) {
            self.stats.drops_healed += 1;
        }
        // The bytes are the disk's now, and so is their mtime: a Resync stamps its own
        // moment, while the file may have had its times set (cp -p copies with
        // copy_file_range, which is read back, then sets them).
        if let Ok(meta) = self.root_dir.metadata(who, &path) {
            if meta.dev() == file.dev && meta.ino() == file.ino {
                let update = MetaUpdate {
                    mtime_ns: Some(
                        i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
                    ),
                    ..Default::default()
                };
                self.update_meta(&path, update, time, process.as_ref())?;
            }
        }
        Ok(true)
    }

    /// Appends what `file` (opened by `open_read_back`) holds as `node`'s content, in chunks of
    /// [`READ_BACK_CHUNK`]. Returns whether it read to the end. A read error cuts it short: the
    /// log then has only the first part, and the file is marked (`key`), so the end of the
    /// recording reads it again.
    fn read_back_into(
        &mut self,
        file: fs::File,
        key: FileKey,
        node: NodeId,
        time: u64,
        process: Option<&Process>,
    ) -> Result<bool, RecordError> {
        let mut file = file.take(0);
        let mut at = 0u64;
        loop {
            // Read straight into the buffer the op will own: a buffer reused here would only
            // add a copy, since the store keeps each op's bytes until it seals them into a
            // block, and the allocator hands the chunks it frees then to the next ones.
            let mut chunk = Vec::with_capacity(READ_BACK_CHUNK);
            file.set_limit(READ_BACK_CHUNK as u64);
            if let Err(e) = file.read_to_end(&mut chunk) {
                tracing::debug!(node, at, "read-back cut short: {e}");
                self.mark_dirty(key, DirtyReason::Fault);
                return Ok(false);
            }
            let n = chunk.len() as u64;
            // The first op replaces what the log had, even when the file is empty now.
            let op = match at {
                0 => Op::Resync { node, data: chunk },
                _ if n == 0 => break,
                offset => Op::Write {
                    node,
                    offset,
                    data: chunk,
                },
            };
            self.append(time, process.cloned(), op)?;
            at += n;
            // read_to_end stops short of the limit only at the end of the file.
            if n < READ_BACK_CHUNK as u64 {
                break;
            }
        }
        Ok(true)
    }

    /// Notices records lost to a full ring buffer since the last call: writes a gap marker and
    /// takes the kernel's dirty marks, so the lost content is read back.
    pub fn check_losses(&mut self, probe: &mut Probe, time: u64) -> Result<(), RecordError> {
        if self.cuts_unreported > 0 {
            let n = std::mem::take(&mut self.cuts_unreported);
            let detail = format!(
                "{n} path change(s) could not be captured whole (a path deeper than 64 \
                 components or longer than 4096 bytes); the names they changed are taken from \
                 disk at the end of the recording"
            );
            let op = Op::Marker {
                kind: MarkerKind::Gap,
                detail,
            };
            self.append(time, None, op)?;
        }
        let counts = probe.cgroup_losses(self.cgroup).ok().flatten();
        let Some(c) = counts.filter(|c| c.lost > self.lost_seen) else {
            self.losing = false;
            self.writer.hurry(false);
            return self.heal_deferred(probe, time);
        };
        self.losing = true;
        self.writer.hurry(true);
        let (lost, lost_ns) = (
            c.lost - self.lost_seen,
            c.lost_namespace - self.lost_ns_seen,
        );
        self.lost_seen = c.lost;
        self.lost_ns_seen = c.lost_namespace;
        self.stats.records_lost = c.lost;
        if lost_ns > 0 {
            self.rescan_needed = true;
        }
        if let Ok(marked) = probe.dirty_files(self.cgroup) {
            for (file, reason) in marked {
                self.mark_dirty(file, reason);
            }
        }
        self.adopt_unsent(probe, time)?;
        self.append(
            time,
            None,
            Op::Marker {
                kind: MarkerKind::Gap,
                detail: format!(
                    "{lost} capture records lost to a full ring buffer ({lost_ns} of them path \
                     changes); the affected files are read back from disk"
                ),
            },
        )
    }

    /// The read-backs that waited for the ring to stop overflowing.
    fn heal_deferred(&mut self, probe: &Probe, time: u64) -> Result<(), RecordError> {
        for (file, process) in std::mem::take(&mut self.deferred) {
            let mapped = self.dirty.get(&file) == Some(&DirtyReason::Mmap);
            if self.resync(file, time, process, probe)? && !mapped {
                self.dirty.remove(&file);
            }
        }
        Ok(())
    }

    /// Files whose naming record was lost: the kernel kept their names aside. Taken from
    /// disk (read back whole), so they are exact from here on.
    fn adopt_unsent(&mut self, probe: &mut Probe, time: u64) -> Result<(), RecordError> {
        let Ok(names) = probe.take_unsent_names(self.cgroup) else {
            return Ok(());
        };
        for (file, raw) in names {
            if self.nodes.contains_key(&file) {
                continue;
            }
            match self.normalize_any(&raw, false) {
                Some(path) if self.is_excluded(&path) => self.leave_outside(file),
                Some(path) if self.writer.entry(&path).is_none() => {
                    self.adopt_tree(&path, time, None)?;
                }
                _ => {}
            }
        }
        self.tell_skips(probe);
        Ok(())
    }

    /// End of recording: reads back everything still dirty, then checks every recorded entry
    /// against the disk (and rescans owned directories if path records were lost), so the
    /// last moment is exact even after losses.
    pub fn finish_healing(&mut self, probe: &mut Probe, time: u64) -> Result<(), RecordError> {
        self.check_losses(probe, time)?;
        self.deferred.clear(); // all dirty still, and read back below
        let dirty: Vec<FileKey> = self.dirty.keys().copied().collect();
        for file in dirty {
            self.resync(file, time, None, probe)?;
        }
        self.dirty.clear();
        self.reconcile(time)
    }

    /// Compares the log's current namespace with the disk and records the differences.
    pub fn reconcile(&mut self, time: u64) -> Result<(), RecordError> {
        let rescan = std::mem::take(&mut self.rescan_needed);
        if rescan {
            self.stats.rescans += 1;
        }
        let entries: Vec<(RecPath, diffkeeper_store::Entry)> = self
            .writer
            .entries()
            .map(|(p, e)| (p.clone(), e.clone()))
            .collect();
        for (path, entry) in entries {
            if self.writer.entry(&path).is_none() {
                continue; // removed with an ancestor earlier in this pass
            }
            let fixed = if entry.node & IMPLICIT_DIR_NODE_BIT != 0 {
                self.reconcile_implicit(&path, time)?
            } else {
                self.reconcile_entry(&path, &entry, time)?
            };
            if fixed {
                self.stats.reconciled += 1;
            }
        }
        if rescan {
            let owned: Vec<RecPath> = self.owned_dirs.iter().cloned().collect();
            for dir in owned {
                let Ok(names) = self.root_dir.read_dir(self.reader_for(None, None), &dir) else {
                    continue;
                };
                for name in names {
                    let Ok(child) = dir.join(name.as_bytes()) else {
                        continue;
                    };
                    if self.writer.entry(&child).is_none() {
                        self.stats.reconciled += self.adopt_tree(&child, time, None)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// A directory the log only implies (a file below it was created, its mkdir was not seen):
    /// gone from disk means removed; inside the recording's own directories it is made a real
    /// entry with its real mode. Elsewhere (/tmp, /home) it stays implied.
    fn reconcile_implicit(&mut self, path: &RecPath, time: u64) -> Result<bool, RecordError> {
        match self.root_dir.metadata(self.reader_for(None, None), path) {
            // Out of the reader's reach is not gone.
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Ok(false),
            Err(_) => {
                self.append(time, None, Op::Rmdir { path: path.clone() })?;
                Ok(true)
            }
            Ok(meta) if meta.is_dir() => {
                let owned = self
                    .owned_dirs
                    .iter()
                    .any(|d| path.starts_with(d) && d != path);
                if !owned {
                    return Ok(false);
                }
                let node = self.writer.new_node();
                let mode = meta.mode() & 0o7777;
                let op = Op::Mkdir {
                    node,
                    path: path.clone(),
                    mode,
                };
                self.append(time, None, op)?;
                self.owned_dirs.insert(path.clone());
                Ok(true)
            }
            Ok(_) => {
                self.adopt_tree(path, time, None)?;
                Ok(true)
            }
        }
    }

    /// The size the log has for file `node` now.
    fn known_size(&self, node: NodeId) -> Option<u64> {
        let path = self.writer.path_of(node)?;
        match self.writer.entry(&path)?.kind {
            diffkeeper_store::EntryKind::File { size } => Some(size),
            _ => None,
        }
    }

    /// A file the log holds exactly by its own account, which something the recording did not
    /// capture may have written: compares the disk with the log, and when they differ reads
    /// it back and says so (the moments before show what the recording saw, e.g. zeros where
    /// another process's data was). Returns whether it was fixed.
    fn check_outside_writes(
        &mut self,
        path: &RecPath,
        node: NodeId,
        key: FileKey,
        who: FsIds,
        time: u64,
    ) -> Result<bool, RecordError> {
        let Ok(disk) = self.root_dir.read_file(who, path, key) else {
            return Ok(false);
        };
        self.writer.commit()?;
        let store = self.writer.reader()?;
        if store.read_content(node, store.span().last_seq)? == disk {
            return Ok(false);
        }
        let detail = format!(
            "{} was also written by something the recording did not capture (a process outside \
             it): its content on disk differed from the recorded one at the end and was read \
             back; before this moment it shows only the recorded writes",
            crate::quoted_path(path)
        );
        self.append(time, None, Op::Resync { node, data: disk })?;
        self.append(
            time,
            None,
            Op::Marker {
                kind: MarkerKind::Gap,
                detail,
            },
        )?;
        Ok(true)
    }

    /// Returns whether the entry had to be fixed.
    fn reconcile_entry(
        &mut self,
        path: &RecPath,
        entry: &diffkeeper_store::Entry,
        time: u64,
    ) -> Result<bool, RecordError> {
        use diffkeeper_store::EntryKind;
        let who = self.reader_for(None, Some(entry.node));
        let meta = match self.root_dir.metadata(who, path) {
            Ok(m) => m,
            // Out of the reader's reach is not gone: leave the entry as the log has it.
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => return Ok(false),
            // A container's root (/proc/PID/root) vanishes when it exits: then every name is
            // missing, and none of them was deleted.
            Err(_) if fs::metadata(&self.root).is_err() => return Ok(false),
            Err(_) => {
                let op = match entry.kind {
                    EntryKind::Dir => Op::Rmdir { path: path.clone() },
                    _ => Op::Unlink { path: path.clone() },
                };
                self.append(time, None, op)?;
                return Ok(true);
            }
        };
        let ft = meta.file_type();
        let key = FileKey {
            dev: meta.dev(),
            ino: meta.ino(),
        };
        let mode = meta.mode() & 0o7777;
        let same_kind = match entry.kind {
            EntryKind::File { .. } => ft.is_file(),
            EntryKind::Dir => ft.is_dir(),
            EntryKind::Symlink { .. } => ft.is_symlink(),
        };
        let same_file = match entry.kind {
            EntryKind::File { .. } => self.nodes.get(&key) == Some(&entry.node),
            _ => true,
        };
        if !same_kind || !same_file {
            // Replaced behind our back (a lost rename or create): take what is there now. A
            // directory's old children went with it: a creating op keeps what is below a path.
            if entry.kind == EntryKind::Dir {
                self.owned_dirs.retain(|d| !d.starts_with(path));
                self.append(time, None, Op::Rmdir { path: path.clone() })?;
            }
            self.adopt_tree(path, time, None)?;
            return Ok(true);
        }
        let mut fixed = false;
        match &entry.kind {
            EntryKind::File { size } => {
                if *size != meta.len() || !entry.exact {
                    if let Ok(file) = self.root_dir.open_read_back(who, path, key) {
                        self.read_back_into(file, key, entry.node, time, None)?;
                        fixed = true;
                    }
                } else if meta.len() <= OUTSIDE_CHECK_MAX_BYTES
                    && (self.gapped.contains(&entry.node) || changed_after(&meta, entry))
                {
                    fixed = self.check_outside_writes(path, entry.node, key, who, time)?;
                }
            }
            EntryKind::Symlink { target } => {
                if let Ok(now) = self.root_dir.read_link(who, path) {
                    if now.as_os_str().as_bytes() != target.as_slice() {
                        self.adopt_tree(path, time, None)?;
                        return Ok(true);
                    }
                }
            }
            EntryKind::Dir => {}
        }
        if mode != entry.mode {
            let target = Target::Path(path.clone());
            self.append(time, None, Op::Chmod { target, mode })?;
            fixed = true;
        }
        let owner = Owner {
            uid: meta.uid(),
            gid: meta.gid(),
        };
        if owner != entry.owner {
            let target = Target::Path(path.clone());
            self.append(time, None, Op::Chown { target, owner })?;
            fixed = true;
        }
        Ok(fixed)
    }
}

/// Largest file compared whole with the disk for writes from outside the recording: a legal
/// sparse file may be terabytes long, and both sides are read into memory.
const OUTSIDE_CHECK_MAX_BYTES: u64 = 64 << 20;

/// How far a file's mtime on disk may lead the log's (the kernel stamps it with a coarse clock,
/// the log with the event's) before it means a change the recording did not see.
const MTIME_SLACK_NS: i128 = 100_000_000;

/// Whether the disk's mtime is later than the log's last change of the file.
fn changed_after(meta: &fs::Metadata, entry: &diffkeeper_store::Entry) -> bool {
    let disk = i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec());
    disk > entry.mtime_ns + MTIME_SLACK_NS
}

fn store_owner(o: diffkeeper_capture::Owner) -> Owner {
    Owner {
        uid: o.uid,
        gid: o.gid,
    }
}
