//! A read-only FUSE view of a recording at a moment.
//!
//! The recorded tree at one event is laid out below the mountpoint the way `export` writes it
//! (recorded `/tmp/w/a.txt` appears as `MOUNTPOINT/tmp/w/a.txt`), but nothing is copied: a file's
//! bytes are rebuilt from the store when it is first opened and kept in a byte-bounded LRU, so a
//! large recording costs memory only for what is being read.
//!
//! The store admits one process at a time (an flock on the state dir), so the view does not
//! keep it open: it opens the store when it needs it and lets go after a short idle time, so
//! `diffkeeper log`/`export` on the same recording work while it is mounted. A recording still
//! being written is read through its recorder (a private copy of its index, see
//! `Store::open`), which holds no lock, so that copy is kept. With `follow`, the view moves to
//! the recording's newest event every `refresh`, copying a live recorder's index again only
//! once it has committed more.

use diffkeeper_store::{Entry, EntryKind, NodeId, RecPath, Seq, Store, StoreError, TimeExpr};
use fuser::{
    AccessFlags, BackgroundSession, Config, Errno, FileAttr, FileHandle, FileType, Filesystem,
    FopenFlags, Generation, INodeNo, LockOwner, MountOption, Notifier, OpenAccMode, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry,
    ReplyOpen, ReplyWrite, Request, SessionACL, TimeOrNow, WriteFlags,
};
use lru::LruCache;
use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tracing::{debug, info, warn};

/// How long the view holds the store's lock after its last use before letting other commands
/// have the recording.
const IDLE_RELEASE: Duration = Duration::from_secs(2);
/// How long a read waits for another process (an export, a log) to let go of the recording.
const LOCK_WAIT: Duration = Duration::from_secs(10);
/// How long a `follow` refresh waits for the recording; it tries again a moment later anyway.
const REFRESH_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error(
        "{} is held by a recorder (pid {pid}) that serves no readers (the node agent, or a \
         diffkeeper older than this one): it can be mounted once that recorder has finished; \
         for the agent's recordings use `kubectl diffkeeper export`",
        dir.display()
    )]
    LiveRecorder { pid: u32, dir: PathBuf },
    #[error(
        "{} is open in another process (pid {pid}: {command}): the store admits one process at \
         a time; try again once it is done",
        dir.display()
    )]
    Busy {
        pid: u32,
        dir: PathBuf,
        command: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Time(#[from] diffkeeper_store::TimeError),
    #[error("mounting at {}: {source}", mountpoint.display())]
    Mount {
        mountpoint: PathBuf,
        source: std::io::Error,
    },
}

/// What to show and how.
#[derive(Clone, Debug)]
pub struct ViewOptions {
    /// The moment to show; ignored with `follow` (which always shows the newest event).
    pub time: TimeExpr,
    /// Move with the recording: re-open it every `refresh` and show its newest event.
    pub follow: bool,
    pub refresh: Duration,
    /// Upper bound on cached file contents, in bytes (files open right now may add to it).
    pub cache_bytes: u64,
}

impl Default for ViewOptions {
    fn default() -> Self {
        ViewOptions {
            time: TimeExpr::End,
            follow: false,
            refresh: Duration::from_secs(1),
            cache_bytes: 256 * 1024 * 1024,
        }
    }
}

/// The store, opened only while in use.
struct StoreSlot {
    dir: PathBuf,
    open: Mutex<Option<(Store, Instant)>>,
}

impl StoreSlot {
    /// Runs `f` on the open store, opening it first (waiting up to `wait` for another process
    /// to let go of it).
    fn with<T>(
        &self,
        wait: Duration,
        f: impl FnOnce(&Store) -> Result<T, MountError>,
    ) -> Result<T, MountError> {
        let mut slot = self.open.lock().unwrap();
        if slot.is_none() {
            *slot = Some((open_waiting(&self.dir, wait)?, Instant::now()));
        }
        let (store, used) = slot.as_mut().expect("opened above");
        *used = Instant::now();
        f(store)
    }

    /// Closes the store if unused for `idle`, so other commands can open the recording. A
    /// view of a live recording holds no lock, so it stays.
    fn release_idle(&self, idle: Duration) {
        let mut slot = self.open.lock().unwrap();
        if slot
            .as_ref()
            .is_some_and(|(store, used)| store.live_recorder().is_none() && used.elapsed() >= idle)
        {
            *slot = None;
            debug!(dir = %self.dir.display(), "released the recording");
        }
    }

    /// Closes the store now: the next use sees what was committed since.
    fn release(&self) {
        *self.open.lock().unwrap() = None;
    }
}

fn open_waiting(dir: &Path, wait: Duration) -> Result<Store, MountError> {
    let deadline = Instant::now() + wait;
    loop {
        match Store::open(dir) {
            Ok(store) => return Ok(store),
            Err(StoreError::Locked { pid, dir }) => {
                // A recorder that does not answer readers (Store::open asked) is finishing, or
                // one that serves none: wait out the first, name the second.
                if Instant::now() >= deadline {
                    let command = command_line(pid);
                    if command
                        .split(' ')
                        .any(|arg| arg == "record" || arg == "agent")
                    {
                        return Err(MountError::LiveRecorder { pid, dir });
                    }
                    return Err(MountError::Busy { pid, dir, command });
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// What process `pid` runs, for telling a live recorder from a short-lived reader.
fn command_line(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            raw.split(|b| *b == 0)
                .filter(|arg| !arg.is_empty())
                .map(String::from_utf8_lossy)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "unknown".into())
}

/// One name in the view. Inode numbers are handed out per recorded path and never reused, so
/// they stay stable for the mount's lifetime even as `follow` moves the view.
#[derive(Clone, Debug)]
struct Node {
    parent: u64,
    /// `None` for the mountpoint's root (the recording's `/`).
    entry: Option<Entry>,
    children: BTreeMap<Vec<u8>, u64>,
    /// Child directories: each one's `..` links here, which `nlink` counts.
    subdirs: u32,
}

/// The tree at one event, by inode.
struct View {
    seq: Seq,
    nodes: HashMap<u64, Node>,
}

#[derive(Default)]
struct Inodes {
    by_path: HashMap<RecPath, u64>,
}

impl Inodes {
    fn ino(&mut self, path: &RecPath) -> u64 {
        if path.is_root() {
            return INodeNo::ROOT.0;
        }
        let next = self.by_path.len() as u64 + 2;
        *self.by_path.entry(path.clone()).or_insert(next)
    }
}

fn build_view(tree: diffkeeper_store::Tree, inodes: &mut Inodes) -> View {
    let mut nodes = HashMap::new();
    nodes.insert(
        INodeNo::ROOT.0,
        Node {
            parent: INodeNo::ROOT.0,
            entry: None,
            children: BTreeMap::new(),
            subdirs: 0,
        },
    );
    // A parent sorts before its children (it is their prefix), so it is always placed first.
    for (path, entry) in tree.entries {
        let (Some(parent_path), Some(name)) = (path.parent(), path.file_name()) else {
            continue;
        };
        let name = name.to_vec();
        let parent = inodes.ino(&parent_path);
        let parent_is_dir = nodes.get(&parent).is_some_and(|n: &Node| {
            n.entry
                .as_ref()
                .is_none_or(|e| matches!(e.kind, EntryKind::Dir))
        });
        if !parent_is_dir {
            // Export refuses these too: nothing can live below a file or a symlink.
            warn!(%path, "not shown: its parent is not a recorded directory");
            continue;
        }
        let ino = inodes.ino(&path);
        let parent_node = nodes.get_mut(&parent).unwrap();
        parent_node.children.insert(name, ino);
        if entry.kind == EntryKind::Dir {
            parent_node.subdirs = parent_node.subdirs.saturating_add(1);
        }
        nodes.insert(
            ino,
            Node {
                parent,
                entry: Some(entry),
                children: BTreeMap::new(),
                subdirs: 0,
            },
        );
    }
    View {
        seq: tree.seq,
        nodes,
    }
}

/// Cached contents are keyed by what identifies one version of a file's bytes: a write changes
/// its mtime (ns) or size.
type ContentKey = (NodeId, i128, u64);

struct ContentCache {
    lru: LruCache<ContentKey, Arc<Vec<u8>>>,
    bytes: u64,
    limit: u64,
}

impl ContentCache {
    fn get(&mut self, key: &ContentKey) -> Option<Arc<Vec<u8>>> {
        self.lru.get(key).cloned()
    }

    fn put(&mut self, key: ContentKey, data: Arc<Vec<u8>>) {
        let len = data.len() as u64;
        if len > self.limit {
            return;
        }
        if let Some(old) = self.lru.put(key, data) {
            self.bytes -= old.len() as u64;
        }
        self.bytes += len;
        while self.bytes > self.limit {
            match self.lru.pop_lru() {
                Some((_, evicted)) => self.bytes -= evicted.len() as u64,
                None => break,
            }
        }
    }
}

/// The FUSE file system. Cheap to share: the refresh thread holds the same state.
pub struct RecordingFs {
    shared: Arc<Shared>,
}

struct Shared {
    store: StoreSlot,
    view: RwLock<View>,
    inodes: Mutex<Inodes>,
    cache: Mutex<ContentCache>,
    open_files: Mutex<HashMap<u64, Arc<Vec<u8>>>>,
    next_fh: AtomicU64,
    ttl: Duration,
    /// When the recording started: the root's times.
    root_time: SystemTime,
    uid: u32,
    gid: u32,
    notifier: OnceLock<Notifier>,
    stopping: AtomicBool,
    /// Set once a refresh found a live recorder in the way, so the warning is given once.
    told_live: AtomicBool,
}

impl RecordingFs {
    /// Opens the recording at `dir`, builds the view at `opts.time` (or the end with `follow`)
    /// and lets go of the store again.
    pub fn new(dir: &Path, opts: &ViewOptions) -> Result<RecordingFs, MountError> {
        let store = StoreSlot {
            dir: dir.to_path_buf(),
            open: Mutex::new(None),
        };
        let mut inodes = Inodes::default();
        let (view, root_time) = store.with(LOCK_WAIT, |s| {
            let time = if opts.follow {
                &TimeExpr::End
            } else {
                &opts.time
            };
            let point = s.resolve(time)?;
            let tree = s.tree_at(point.seq)?;
            Ok((
                build_view(tree, &mut inodes),
                system_time(s.span().started_wall_ns),
            ))
        })?;
        store.release_idle(Duration::ZERO);
        // SAFETY: getuid and getgid have no preconditions.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        Ok(RecordingFs {
            shared: Arc::new(Shared {
                store,
                view: RwLock::new(view),
                inodes: Mutex::new(inodes),
                cache: Mutex::new(ContentCache {
                    lru: LruCache::unbounded(),
                    bytes: 0,
                    limit: opts.cache_bytes,
                }),
                open_files: Mutex::new(HashMap::new()),
                next_fh: AtomicU64::new(1),
                // A fixed moment never changes, so the kernel may cache it for long; a followed
                // one is re-checked as often as it is refreshed.
                ttl: if opts.follow {
                    opts.refresh
                } else {
                    Duration::from_secs(3600)
                },
                root_time,
                uid,
                gid,
                notifier: OnceLock::new(),
                stopping: AtomicBool::new(false),
                told_live: AtomicBool::new(false),
            }),
        })
    }

    /// The event the view shows now.
    pub fn seq(&self) -> Seq {
        self.shared.view.read().unwrap().seq
    }
}

/// A mounted view; dropping it (or `unmount`) takes the mount away.
pub struct Mounted {
    session: Option<BackgroundSession>,
    shared: Arc<Shared>,
    housekeeping: Option<std::thread::JoinHandle<()>>,
}

impl Mounted {
    /// True while the kernel still has the mount (false once someone ran `umount` on it).
    pub fn is_alive(&self) -> bool {
        self.session
            .as_ref()
            .is_some_and(|s| !s.guard.is_finished())
    }

    pub fn seq(&self) -> Seq {
        self.shared.view.read().unwrap().seq
    }

    pub fn unmount(mut self) -> std::io::Result<()> {
        self.stop()
    }

    fn stop(&mut self) -> std::io::Result<()> {
        self.shared.stopping.store(true, Ordering::SeqCst);
        if let Some(h) = self.housekeeping.take() {
            let _ = h.join();
        }
        match self.session.take() {
            Some(s) => s.umount_and_join(),
            None => Ok(()),
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            warn!(error = %e, "unmounting");
        }
    }
}

/// Mounts `fs` read-only at `mountpoint` and serves it from a background thread; with
/// `opts.follow` a second thread moves the view to the recording's newest event every
/// `opts.refresh`.
pub fn mount(
    fs: RecordingFs,
    mountpoint: &Path,
    opts: &ViewOptions,
) -> Result<Mounted, MountError> {
    let shared = fs.shared.clone();
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::RO,
        MountOption::FSName(format!("diffkeeper:{}", shared.store.dir.display())),
        MountOption::Subtype("diffkeeper".into()),
        // The kernel checks the recorded modes itself.
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    // Anyone may look (the kernel still applies the recorded permission bits): a developer often
    // mounts as root and browses as themselves.
    config.acl = SessionACL::All;
    let session =
        fuser::spawn_mount(fs, mountpoint, &config).map_err(|source| MountError::Mount {
            mountpoint: mountpoint.to_path_buf(),
            source,
        })?;
    let _ = shared.notifier.set(session.notifier());
    let follow = opts.follow;
    let refresh = opts.refresh;
    let worker = shared.clone();
    let housekeeping = std::thread::Builder::new()
        .name("diffkeeper-mount-refresh".into())
        .spawn(move || housekeep(&worker, follow, refresh))
        .expect("spawning the refresh thread");
    Ok(Mounted {
        session: Some(session),
        shared,
        housekeeping: Some(housekeeping),
    })
}

fn housekeep(shared: &Shared, follow: bool, refresh: Duration) {
    let tick = Duration::from_millis(100);
    let mut last_refresh = Instant::now();
    let mut interval = refresh;
    while !shared.stopping.load(Ordering::SeqCst) {
        std::thread::sleep(tick);
        shared.store.release_idle(IDLE_RELEASE);
        if follow && last_refresh.elapsed() >= interval {
            last_refresh = Instant::now();
            let result = shared.refresh();
            // Copying a large live recorder's index takes a while (about 1.5 s for 100,000
            // files) and costs the recorder a thread too: following never spends more than a
            // quarter of the time on it.
            interval = refresh.max(last_refresh.elapsed() * 4);
            if let Err(e) = result {
                if matches!(e, MountError::LiveRecorder { .. }) {
                    if !shared.told_live.swap(true, Ordering::SeqCst) {
                        warn!(
                            "--follow keeps showing @seq:{}: {e}",
                            shared.view.read().unwrap().seq
                        );
                    }
                } else if matches!(e, MountError::Busy { .. }) {
                    debug!(error = %e, "the recording is busy; refreshing later");
                } else {
                    warn!(error = %e, "refreshing the view");
                }
            }
        }
    }
}

impl Shared {
    /// Re-opens the recording and, if it has moved on, swaps in the tree at its newest event and
    /// tells the kernel to forget what changed.
    fn refresh(&self) -> Result<(), MountError> {
        let current = self.view.read().unwrap().seq;
        // A live recorder says cheaply how far it has committed: copy its index only once that
        // moved.
        if let Some((committed, _)) = Store::live_committed(&self.store.dir)? {
            if committed == current {
                return Ok(());
            }
        }
        // A Store sees what was committed when it was opened: re-open to see later events.
        self.store.release();
        // Briefly: a recorder finishing holds the recording for a moment after it stops
        // serving readers.
        let tree = self.store.with(REFRESH_WAIT, |s| {
            let end = s.resolve(&TimeExpr::End)?;
            if end.seq == current {
                return Ok(None);
            }
            Ok(Some(s.tree_at(end.seq)?))
        });
        // Let go at once: a writer resuming the recording must find it free between refreshes
        // (a live recording's copy holds no lock and is kept for the reads that follow).
        self.store.release_idle(Duration::ZERO);
        let tree = tree?;
        let Some(tree) = tree else { return Ok(()) };
        let new = build_view(tree, &mut self.inodes.lock().unwrap());
        let old = std::mem::replace(&mut *self.view.write().unwrap(), new);
        self.told_live.store(false, Ordering::SeqCst);
        let view = self.view.read().unwrap();
        info!(from = old.seq, to = view.seq, "the view moved");
        let Some(notifier) = self.notifier.get() else {
            return Ok(());
        };
        // Best effort: the short TTLs expire the rest anyway.
        for (ino, before) in &old.nodes {
            let after = view.nodes.get(ino);
            if after.map(|a| &a.entry) != Some(&before.entry) {
                let _ = notifier.inval_inode(INodeNo(*ino), 0, -1);
            }
            for (name, child) in &before.children {
                if after.and_then(|a| a.children.get(name)) != Some(child) {
                    let _ = notifier.inval_entry(INodeNo(*ino), OsStr::from_bytes(name));
                }
            }
        }
        for (ino, after) in &view.nodes {
            if let Some(before) = old.nodes.get(ino) {
                for name in after.children.keys() {
                    if !before.children.contains_key(name) {
                        let _ = notifier.inval_entry(INodeNo(*ino), OsStr::from_bytes(name));
                    }
                }
            }
        }
        Ok(())
    }

    fn attr(&self, ino: u64, node: &Node) -> FileAttr {
        let (kind, size, perm, mtime) = match &node.entry {
            None => (FileType::Directory, 0, 0o755, self.root_time),
            Some(e) => {
                let (kind, size) = match &e.kind {
                    EntryKind::File { size } => (FileType::RegularFile, *size),
                    EntryKind::Dir => (FileType::Directory, 0),
                    EntryKind::Symlink { target } => (FileType::Symlink, target.len() as u64),
                };
                (
                    kind,
                    size,
                    (e.mode & 0o7777) as u16,
                    system_time(e.mtime_ns),
                )
            }
        };
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: mtime,
            mtime,
            ctime: mtime,
            crtime: mtime,
            kind,
            perm,
            nlink: if kind == FileType::Directory {
                node.subdirs.saturating_add(2)
            } else {
                1
            },
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    /// The bytes of a file in the view, from the cache or rebuilt from the store.
    fn content(&self, entry: &Entry, seq: Seq) -> Result<Arc<Vec<u8>>, MountError> {
        let size = match entry.kind {
            EntryKind::File { size } => size,
            _ => 0,
        };
        let key = (entry.node, entry.mtime_ns, size);
        if let Some(hit) = self.cache.lock().unwrap().get(&key) {
            return Ok(hit);
        }
        let data = Arc::new(
            self.store
                .with(LOCK_WAIT, |s| Ok(s.read_content(entry.node, seq)?))?,
        );
        if data.len() as u64 != size {
            warn!(
                node = entry.node,
                recorded = size,
                rebuilt = data.len(),
                "a file's rebuilt content does not have its recorded size"
            );
        }
        self.cache.lock().unwrap().put(key, data.clone());
        Ok(data)
    }
}

fn system_time(wall_ns: i128) -> SystemTime {
    if wall_ns >= 0 {
        u64::try_from(wall_ns)
            .map(|ns| UNIX_EPOCH + Duration::from_nanos(ns))
            .unwrap_or(UNIX_EPOCH)
    } else {
        u64::try_from(-wall_ns)
            .ok()
            .and_then(|ns| UNIX_EPOCH.checked_sub(Duration::from_nanos(ns)))
            .unwrap_or(UNIX_EPOCH)
    }
}

impl Filesystem for RecordingFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let s = &self.shared;
        let view = s.view.read().unwrap();
        let Some(dir) = view.nodes.get(&parent.0) else {
            return reply.error(Errno::ENOENT);
        };
        match dir
            .children
            .get(name.as_bytes())
            .and_then(|ino| Some((*ino, view.nodes.get(ino)?)))
        {
            Some((ino, node)) => reply.entry(&s.ttl, &s.attr(ino, node), Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let s = &self.shared;
        let view = s.view.read().unwrap();
        match view.nodes.get(&ino.0) {
            Some(node) => reply.attr(&s.ttl, &s.attr(ino.0, node)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let view = self.shared.view.read().unwrap();
        match view.nodes.get(&ino.0).and_then(|n| n.entry.as_ref()) {
            Some(Entry {
                kind: EntryKind::Symlink { target },
                ..
            }) => reply.data(target),
            Some(_) => reply.error(Errno::EINVAL),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY || flags.0 & libc::O_TRUNC != 0 {
            return reply.error(Errno::EROFS);
        }
        let s = &self.shared;
        let (entry, seq) = {
            let view = s.view.read().unwrap();
            match view.nodes.get(&ino.0).and_then(|n| n.entry.clone()) {
                Some(
                    e @ Entry {
                        kind: EntryKind::File { .. },
                        ..
                    },
                ) => (e, view.seq),
                Some(_) => return reply.error(Errno::EISDIR),
                None => return reply.error(Errno::ENOENT),
            }
        };
        match s.content(&entry, seq) {
            Ok(data) => {
                let fh = s.next_fh.fetch_add(1, Ordering::Relaxed);
                s.open_files.lock().unwrap().insert(fh, data);
                // A fixed moment never changes, so the kernel's page cache may outlive a close.
                let flags = if s.ttl >= Duration::from_secs(60) {
                    FopenFlags::FOPEN_KEEP_CACHE
                } else {
                    FopenFlags::empty()
                };
                reply.opened(FileHandle(fh), flags);
            }
            Err(e) => {
                warn!(ino = ino.0, node = entry.node, error = %e, "reading a file's content");
                reply.error(Errno::EIO);
            }
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let data = self.shared.open_files.lock().unwrap().get(&fh.0).cloned();
        let Some(data) = data else {
            return reply.error(Errno::EBADF);
        };
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(data.len());
        let end = start.saturating_add(size as usize).min(data.len());
        reply.data(&data[start..end]);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.shared.open_files.lock().unwrap().remove(&fh.0);
        reply.ok();
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        let view = self.shared.view.read().unwrap();
        match view.nodes.get(&ino.0) {
            Some(n) if n.entry.as_ref().is_none_or(|e| e.kind == EntryKind::Dir) => {
                reply.opened(FileHandle(0), FopenFlags::empty())
            }
            Some(_) => reply.error(Errno::ENOTDIR),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let view = self.shared.view.read().unwrap();
        let Some(dir) = view.nodes.get(&ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        let dots = [
            (ino.0, FileType::Directory, OsStr::new(".")),
            (dir.parent, FileType::Directory, OsStr::new("..")),
        ];
        let children = dir.children.iter().filter_map(|(name, child)| {
            let kind = match &view.nodes.get(child)?.entry.as_ref()?.kind {
                EntryKind::File { .. } => FileType::RegularFile,
                EntryKind::Dir => FileType::Directory,
                EntryKind::Symlink { .. } => FileType::Symlink,
            };
            Some((*child, kind, OsStr::from_bytes(name)))
        });
        for (i, (child, kind, name)) in dots
            .into_iter()
            .chain(children)
            .enumerate()
            .skip(offset as usize)
        {
            if reply.add(INodeNo(child), (i + 1) as u64, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        if mask.contains(AccessFlags::W_OK) {
            return reply.error(Errno::EROFS);
        }
        match self.shared.view.read().unwrap().nodes.contains_key(&ino.0) {
            true => reply.ok(),
            false => reply.error(Errno::ENOENT),
        }
    }

    // No extended attributes are recorded.
    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: fuser::ReplyXattr,
    ) {
        reply.error(Errno::NO_XATTR);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: fuser::ReplyXattr) {
        if size == 0 {
            reply.size(0);
        } else {
            reply.data(&[]);
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: fuser::ReplyStatfs) {
        let files = self.shared.view.read().unwrap().nodes.len() as u64;
        reply.statfs(0, 0, 0, files, 0, 4096, 255, 4096);
    }

    // Everything below would change the recording: the view is of the past, so it is refused.

    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mkdir(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn unlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn rmdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn symlink(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _link_name: &OsStr,
        _target: &Path,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn rename(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _newparent: INodeNo,
        _newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        reply.error(Errno::EROFS);
    }

    fn create(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        reply.error(Errno::EROFS);
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _length: u64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        _fh_in: FileHandle,
        _offset_in: u64,
        _ino_out: INodeNo,
        _fh_out: FileHandle,
        _offset_out: u64,
        _len: u64,
        _flags: fuser::CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        reply.error(Errno::EROFS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(limit: u64) -> ContentCache {
        ContentCache {
            lru: LruCache::unbounded(),
            bytes: 0,
            limit,
        }
    }

    fn bytes(n: usize) -> Arc<Vec<u8>> {
        Arc::new(vec![7; n])
    }

    #[test]
    fn the_cache_evicts_the_least_recently_used_to_stay_under_its_limit() {
        let mut c = cache(100);
        c.put((1, 0, 40), bytes(40));
        c.put((2, 0, 40), bytes(40));
        assert!(c.get(&(1, 0, 40)).is_some(), "touch 1 so 2 is the oldest");
        c.put((3, 0, 40), bytes(40));
        assert_eq!(c.bytes, 80);
        assert!(c.get(&(2, 0, 40)).is_none());
        assert!(c.get(&(1, 0, 40)).is_some() && c.get(&(3, 0, 40)).is_some());
    }

    #[test]
    fn a_file_larger_than_the_cache_is_not_kept_and_evicts_nothing() {
        let mut c = cache(100);
        c.put((1, 0, 60), bytes(60));
        c.put((2, 0, 101), bytes(101));
        assert_eq!(c.bytes, 60);
        assert!(c.get(&(2, 0, 101)).is_none() && c.get(&(1, 0, 60)).is_some());
    }

    #[test]
    fn replacing_a_version_keeps_the_byte_count_right() {
        let mut c = cache(100);
        c.put((1, 0, 60), bytes(60));
        c.put((1, 0, 60), bytes(60));
        assert_eq!(c.bytes, 60);
    }
}
