//! The read-only view of a recording: its extent, the tree and file contents at any event, and
//! the raw events.

use crate::content;
use crate::error::StoreError;
use crate::lock::DirLock;
use crate::model::{Event, NodeId, Seq, Tree};
use crate::namespace::{Clock, Namespace};
use crate::records::{ReadStats, Records};
use crate::time::{self, EventTimes, Point, Span, TimeError, TimeExpr};
use crate::{copy_index, open_db, read_meta, require_recording_dir, RecordingInfo};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Readers need little cache: they visit each record about once.
const READER_CACHE_BYTES: u64 = 32 * 1024 * 1024;

pub struct Store {
    dir: PathBuf,
    pub(crate) records: Records,
    pub(crate) clock: Clock,
    info: RecordingInfo,
    scope: crate::Scope,
    span: Span,
    _db: sled::Db,
    /// The private copy of the index `_db` was opened from (shared with views), removed once
    /// the last of them is gone; declared after `_db` so the database closes first.
    index_copy: Option<Arc<tempfile::TempDir>>,
    /// `None` for a view a live writer lent out: the writer holds the dir's lock.
    _lock: Option<Arc<DirLock>>,
    /// The pid of the recorder still writing this recording, for a view it served to another
    /// process (see `live`).
    live: Option<u32>,
    /// For a view a live writer lent out: keeps that writer from letting go of the database
    /// this view reads (see `Writer::rest`).
    pub(crate) lease: Option<Arc<()>>,
}

impl Store {
    /// Opens a recording for reading. Reading changes no file of the state dir, so it also
    /// works on a read-only copy: the lock is taken through a read-only descriptor and the
    /// index is read from a private copy (see `copy_index`); segments are read in place.
    ///
    /// A recording a live recorder holds is read through that recorder, as committed at the
    /// moment of the call (see `live`; [`Store::live_recorder`] then names it). Refused while
    /// another reader, or a recorder that serves no readers, has it open.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        require_recording_dir(dir)?;
        let lock = match DirLock::acquire_reading(dir) {
            Ok(lock) => lock.map(Arc::new),
            Err(locked @ StoreError::Locked { .. }) => {
                let Some(live) = crate::live::snapshot(dir, READER_CACHE_BYTES)? else {
                    return Err(locked);
                };
                let mut store = Self::over(dir, live.db, Some(Arc::new(live.copy)), None)?;
                store.live = Some(live.pid);
                return Ok(store);
            }
            Err(e) => return Err(e),
        };
        let index_copy = copy_index(dir)?.map(Arc::new);
        let db_dir = index_copy.as_ref().map_or(dir, |copy| copy.path());
        let db = open_db(db_dir, READER_CACHE_BYTES)?;
        Self::over(dir, db, index_copy, lock)
    }

    /// A view of what `db` had committed when called; later commits stay invisible to it, so
    /// an export from a live recording is one consistent moment.
    pub(crate) fn over(
        dir: &Path,
        db: sled::Db,
        index_copy: Option<Arc<tempfile::TempDir>>,
        lock: Option<Arc<DirLock>>,
    ) -> Result<Store, StoreError> {
        let meta = read_meta(dir, &db)?;
        let segments = std::sync::Arc::new(crate::segment::SegmentFiles::new(dir));
        let records = Records::new((*db).clone(), meta.committed, segments);
        let start = meta.info.started_mono_ns;
        let last_time = if meta.committed > 0 {
            Some(records.header(meta.committed)?.time)
        } else {
            None
        };
        let end = meta
            .end_mono_ns
            .into_iter()
            .chain(last_time)
            .chain([start])
            .max()
            .unwrap_or(start);
        let span = Span {
            first_seq: u64::from(meta.committed > 0),
            last_seq: meta.committed,
            start_mono_ns: start,
            end_mono_ns: end,
            started_wall_ns: meta.info.started_wall_ns,
            finished: meta.end_mono_ns.is_some(),
        };
        let clock = Clock {
            started_wall_ns: meta.info.started_wall_ns,
            started_mono_ns: start,
        };
        Ok(Store {
            dir: dir.to_path_buf(),
            records,
            clock,
            info: meta.info,
            scope: meta.scope,
            span,
            _db: db,
            index_copy,
            _lock: lock,
            live: None,
            lease: None,
        })
    }

    /// Another view of the same recording, sharing this one's database and lock: a server
    /// hands one to each request instead of reopening the dir (which the lock would refuse).
    pub fn view(&self) -> Result<Store, StoreError> {
        let mut view = Store::over(
            &self.dir,
            self._db.clone(),
            self.index_copy.clone(),
            self._lock.clone(),
        )?;
        view.live = self.live;
        view.lease = self.lease.clone();
        Ok(view)
    }

    /// The pid of the recorder still writing this recording, when it was opened through that
    /// recorder from another process: the view ends at what was committed when it was opened,
    /// and the recording goes on.
    pub fn live_recorder(&self) -> Option<u32> {
        self.live
    }

    /// Where the live recording this view was opened from has got to since, and its
    /// recorder's pid: `None` when no recorder serves `dir` any more (it finished, or this view
    /// is not of a live recording). Cheap: for following a recording without re-reading its
    /// index while nothing changed.
    pub fn live_committed(dir: &Path) -> Result<Option<(Seq, u32)>, StoreError> {
        crate::live::committed_seq(dir)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn info(&self) -> &RecordingInfo {
        &self.info
    }

    /// The paths this recording was limited to: nothing outside them was recorded.
    pub fn scope(&self) -> &crate::Scope {
        &self.scope
    }

    pub fn span(&self) -> Span {
        self.span
    }

    pub fn resolve(&self, expr: &TimeExpr) -> Result<Point, TimeError> {
        time::resolve(&self.span, expr, &self.records)
    }

    pub(crate) fn namespace_at(&self, seq: Seq) -> Result<Namespace, StoreError> {
        self.records.namespace_at(seq, self.clock)
    }

    /// The tree right after event `seq` (0: before any event).
    pub fn tree_at(&self, seq: Seq) -> Result<Tree, StoreError> {
        Ok(self.namespace_at(seq)?.tree(seq))
    }

    /// The bytes of file `node` (or the target of symlink `node`) right after event `seq`.
    pub fn read_content(&self, node: NodeId, seq: Seq) -> Result<Vec<u8>, StoreError> {
        Ok(content::content_at(&self.records, node, seq, false)?.content)
    }

    /// The bytes of file `node` (or symlink target) right after event `seq`, streamed: memory
    /// stays in proportion to the data read at a time, not the file's size, and holes are
    /// reported (see [`content::ContentReader::hole_len`]).
    pub fn content_reader(
        &self,
        node: NodeId,
        seq: Seq,
    ) -> Result<content::ContentReader<'_>, StoreError> {
        content::ContentReader::new(&self.records, node, seq)
    }

    /// Reads every segment block the recording refers to against its checksum and traces each
    /// damaged one to the files and moments it breaks. Reads all stored data: as long as a full
    /// export, and meant for when something went wrong.
    pub fn verify(&self) -> Result<crate::Verification, StoreError> {
        crate::verify::verify(&self.records)
    }

    /// Events `from..=to` with their data, in order.
    pub fn events(
        &self,
        from: Seq,
        to: Seq,
    ) -> impl Iterator<Item = Result<(Seq, Event), StoreError>> + '_ {
        self.records.headers(from, to).map(move |item| {
            let (seq, header) = item?;
            Ok((seq, content::full_event(&self.records, seq, header)?))
        })
    }

    pub fn read_stats(&self) -> ReadStats {
        self.records.stats()
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.dir)
            .field("span", &self.span)
            .finish_non_exhaustive()
    }
}

impl EventTimes for Records {
    fn time_of(&self, seq: Seq) -> Result<u64, String> {
        self.header(seq).map(|h| h.time).map_err(|e| e.to_string())
    }
}
