//! Appending to a recording: buffered events become visible in atomic batches (`commit`) and
//! durable on `flush`. The writer keeps the current name space in memory, never file contents;
//! keyframes are built at commit by reading content back from the store.

use crate::codec::{self, ContentOp, EventHeader, OpHeader, PayloadBlock};
use crate::content::{self, KeyframePolicy};
use crate::delta::{DeltaLimits, Reference, References};
use crate::error::StoreError;
use crate::lock::DirLock;
use crate::model::{Entry, EntryKind, Event, NodeId, NodeKind, Op, RecPath, Seq};
use crate::namespace::{Clock, Namespace};
use crate::records::Records;
use crate::segment::{SegmentFiles, SegmentLog};
use crate::{open_db, read_meta, require_recording_dir, RecordingInfo};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tracing::{debug, error, info, warn};

/// Thresholds that trade write cost for rebuild cost. The defaults keep rebuilding any file at
/// any moment at about a few times its size in reads.
#[derive(Clone, Debug)]
pub struct WriterOptions {
    /// A file gets a keyframe once more than max(this, size * `keyframe_size_factor`) bytes were
    /// written to it since its last one...
    pub keyframe_min_bytes: u64,
    pub keyframe_size_factor: u64,
    /// ...or more than max(this, size / `keyframe_bytes_per_op`) content ops. Scaling with size
    /// keeps keyframe cost proportional to the bytes the ops touched on large files.
    pub keyframe_min_ops: u64,
    pub keyframe_bytes_per_op: u64,
    /// Every this many keyframes of a node one is whole; the rest are patches on the previous.
    pub full_keyframe_every: u32,
    /// Larger contents get whole keyframes (diffing needs several times the size in memory).
    pub max_diff_bytes: usize,
    /// A name-space checkpoint is written once this many events (or as many as there are
    /// entries, if more) happened since the last one.
    pub checkpoint_min_events: u64,
    /// Events are stored in blocks of at most this many events...
    pub block_events: usize,
    /// ...or this many bytes of data (a block never spans commits).
    pub block_bytes: usize,
    /// sled page cache size.
    pub cache_bytes: u64,
    /// Data written after a file's content is reset (create, truncate to 0, resync) is stored as
    /// a delta against the previous version (see `delta`): at most this many deltas in a row,
    /// then one version standalone. 0 stores every version standalone.
    pub max_delta_depth: u32,
    /// ...and no deeper than this many bytes of content rebuilt to decode a version.
    pub delta_chain_bytes: u64,
    /// Only files up to this size are kept in memory as references for the next version...
    pub delta_file_bytes: usize,
    /// ...within this much memory in total.
    pub delta_memory_bytes: usize,
    /// A segment file (where data bytes live) is sealed at this size and the next one started;
    /// sealed segments never change again.
    pub segment_bytes: u64,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            keyframe_min_bytes: 64 * 1024,
            keyframe_size_factor: 2,
            keyframe_min_ops: 2000,
            keyframe_bytes_per_op: 256,
            full_keyframe_every: 8,
            max_diff_bytes: 64 * 1024 * 1024,
            checkpoint_min_events: 4096,
            block_events: codec::BLOCK_EVENTS,
            block_bytes: codec::BLOCK_BYTES,
            cache_bytes: 64 * 1024 * 1024,
            max_delta_depth: 63,
            delta_chain_bytes: 2 * 1024 * 1024,
            delta_file_bytes: 1024 * 1024,
            delta_memory_bytes: 8 * 1024 * 1024,
            segment_bytes: 64 * 1024 * 1024,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Events in the recording, including those not yet committed.
    pub events: u64,
    pub committed_seq: Seq,
    /// Write/Resync data appended by this writer, uncompressed.
    pub payload_bytes: u64,
    /// Size of the store on disk (approximate).
    pub store_bytes: u64,
    pub keyframes: u64,
    pub checkpoints: u64,
}

/// Replay work accumulated for a node since its last keyframe (or resetting op).
#[derive(Clone, Copy, Debug, Default)]
struct SinceKeyframe {
    bytes: u64,
    ops: u64,
}

/// Events appended since the last block was sealed, arranged as they will be stored.
#[derive(Default)]
struct OpenBlock {
    first: Seq,
    /// Nodes from this id on were handed out since the block before was sealed, so no earlier
    /// record names them (see [`codec::is_grouped`]).
    born_from: NodeId,
    headers: Vec<EventHeader>,
    ops: BTreeMap<NodeId, Vec<(Seq, ContentOp)>>,
    payloads: BTreeMap<NodeId, Vec<Run>>,
    payload_bytes: usize,
}

impl OpenBlock {
    fn opened(next_node: NodeId) -> OpenBlock {
        OpenBlock {
            born_from: next_node,
            ..OpenBlock::default()
        }
    }
}

/// Where a payload record goes once its segment reference is known.
#[derive(Clone, Copy)]
enum Slot {
    /// A `p` record of its own, under this key.
    Own([u8; 17]),
    /// An entry of its group's `P` record for block `block`.
    Grouped {
        node: NodeId,
        first: Seq,
        block: Seq,
    },
}

/// Payload records waiting to be written as one segment block, with the keys that will refer
/// to them.
#[derive(Default)]
struct Packer {
    buf: Vec<u8>,
    pieces: Vec<(Slot, u64, u64)>,
}

/// Consecutive data of one node in a block, stored as one record keyed by its first seq.
struct Run {
    epoch: Option<u64>,
    /// What the run is compressed against, when that pays off.
    reference: Option<Reference>,
    data: PayloadBlock,
}

/// The sled half of a writer. An open sled database holds about 3 MiB of page table whatever it
/// stores, and a node agent keeps a writer per recorded container, most of them idle: an idle
/// writer lets go of its index (`Writer::rest`) and reopens it when it next needs it.
struct Index {
    db: sled::Db,
    records: Records,
}

impl Index {
    /// `slot`'s index, reopened first if its writer rested. A free function so that callers can
    /// keep borrowing the writer's other fields.
    fn woken<'a>(
        slot: &'a mut Option<Index>,
        dir: &Path,
        cache_bytes: u64,
        committed: Seq,
    ) -> Result<&'a mut Index, StoreError> {
        if slot.is_none() {
            let db = open_db(dir, cache_bytes)?;
            let records = Records::new((*db).clone(), committed, Arc::new(SegmentFiles::new(dir)));
            debug!(dir = %dir.display(), "index reopened");
            *slot = Some(Index { db, records });
        }
        Ok(slot.as_mut().expect("filled above"))
    }
}

pub struct Writer {
    dir: PathBuf,
    /// None while the writer rests (see `rest`).
    index: Option<Index>,
    /// The index's size on disk when the writer last rested.
    resting_index_bytes: u64,
    /// Shared with every view `reader` lent: while one lives, its database is open and the
    /// writer cannot rest (sled opens a database once per process).
    lent: Arc<()>,
    segments: SegmentLog,
    packer: Packer,
    opts: WriterOptions,
    clock: Clock,
    ns: Namespace,
    last_seq: Seq,
    last_time: Option<u64>,
    next_node: NodeId,
    /// Sealed blocks not yet committed.
    pending: sled::Batch,
    /// Entries of grouped payload records of the sealed blocks, by key: they go into `pending`
    /// at commit, once every packed piece has its segment reference.
    pending_groups: BTreeMap<[u8; 17], codec::GroupedPayloads>,
    pending_events: u64,
    /// `stats.payload_bytes` at the last commit.
    committed_payload_bytes: u64,
    block: OpenBlock,
    since_keyframe: HashMap<NodeId, SinceKeyframe>,
    touched: HashSet<NodeId>,
    references: References,
    events_since_checkpoint: u64,
    stats: WriterStats,
    finished: bool,
    _lock: DirLock,
}

impl Writer {
    pub fn create(dir: &Path, info: RecordingInfo) -> Result<Writer, StoreError> {
        Self::create_with(dir, info, WriterOptions::default())
    }

    pub fn create_with(
        dir: &Path,
        info: RecordingInfo,
        opts: WriterOptions,
    ) -> Result<Writer, StoreError> {
        std::fs::create_dir_all(dir)?;
        let lock = DirLock::acquire(dir)?;
        let db = open_db(dir, opts.cache_bytes)?;
        if db.get(codec::META_INFO)?.is_some() {
            return Err(StoreError::AlreadyRecorded {
                dir: dir.to_path_buf(),
            });
        }
        let segments = SegmentLog::open(dir, opts.segment_bytes)?;
        let mut batch = sled::Batch::default();
        batch.insert(
            codec::META_FORMAT,
            &codec::u64_value(codec::FORMAT_VERSION.into()),
        );
        batch.insert(codec::META_INFO, codec::encode(&info));
        batch.insert(codec::META_COMMITTED, &codec::u64_value(0));
        batch.insert(codec::META_NEXT_NODE, &codec::u64_value(1));
        db.apply_batch(batch)?;
        db.flush()?;
        info!(dir = %dir.display(), "created recording");
        let clock = Clock {
            started_wall_ns: info.started_wall_ns,
            started_mono_ns: info.started_mono_ns,
        };
        Ok(Self::assemble(dir, db, segments, opts, clock, lock))
    }

    pub fn resume(dir: &Path) -> Result<Writer, StoreError> {
        Self::resume_with(dir, WriterOptions::default())
    }

    /// Reopens a recording for appending after the previous writer stopped or died. Anything it
    /// had not committed is gone; appending continues right after the last committed event.
    pub fn resume_with(dir: &Path, opts: WriterOptions) -> Result<Writer, StoreError> {
        require_recording_dir(dir)?;
        let lock = DirLock::acquire(dir)?;
        let db = open_db(dir, opts.cache_bytes)?;
        let meta = read_meta(dir, &db)?;
        let segments = SegmentLog::open(dir, opts.segment_bytes)?;
        if let Some(raw) = db.get(codec::META_SEGMENT_END)? {
            let (segment, end): (u32, u64) = codec::decode("the segment end", &raw)?;
            let (open, len) = segments.end();
            if open < segment || (open == segment && len < end) {
                return Err(StoreError::corrupt(format!(
                    "segment {} ends at byte {len}, but the index refers to data up to byte \
                     {end} of segment {}",
                    crate::segment::segment_file_name(open),
                    crate::segment::segment_file_name(segment)
                )));
            }
        }
        let clock = Clock {
            started_wall_ns: meta.info.started_wall_ns,
            started_mono_ns: meta.info.started_mono_ns,
        };
        let mut w = Self::assemble(dir, db, segments, opts, clock, lock);
        w.index()?.records.set_committed(meta.committed);
        w.last_seq = meta.committed;
        w.stats.committed_seq = meta.committed;
        w.stats.events = meta.committed;
        w.next_node = meta.next_node;
        w.block = OpenBlock::opened(meta.next_node);
        w.ns = w.index()?.records.namespace_at(meta.committed, clock)?;
        if meta.committed > 0 {
            w.last_time = Some(w.index()?.records.header(meta.committed)?.time);
        }
        w.events_since_checkpoint = meta.committed - w.last_checkpoint_seq()?;
        w.since_keyframe = w.measure_since_keyframes()?;
        if meta.end_mono_ns.is_some() {
            // The recording goes on, so it is no longer finished.
            w.index()?.db.remove(codec::META_END)?;
        }
        if meta.format < codec::FORMAT_VERSION {
            // What this writer adds may use encodings the older format lacks.
            w.index()?.db.insert(
                codec::META_FORMAT,
                &codec::u64_value(codec::FORMAT_VERSION.into()),
            )?;
        }
        info!(dir = %dir.display(), committed = meta.committed, "resumed recording");
        Ok(w)
    }

    fn assemble(
        dir: &Path,
        db: sled::Db,
        segments: SegmentLog,
        opts: WriterOptions,
        clock: Clock,
        lock: DirLock,
    ) -> Writer {
        Writer {
            dir: dir.to_path_buf(),
            references: References::new(delta_limits(&opts)),
            index: Some(Index {
                records: Records::new((*db).clone(), 0, Arc::new(SegmentFiles::new(dir))),
                db,
            }),
            resting_index_bytes: 0,
            lent: Arc::new(()),
            segments,
            packer: Packer::default(),
            opts,
            clock,
            ns: Namespace::default(),
            last_seq: 0,
            last_time: None,
            next_node: 1,
            pending: sled::Batch::default(),
            pending_groups: BTreeMap::new(),
            pending_events: 0,
            committed_payload_bytes: 0,
            block: OpenBlock::opened(1),
            since_keyframe: HashMap::new(),
            touched: HashSet::new(),
            events_since_checkpoint: 0,
            stats: WriterStats::default(),
            finished: false,
            _lock: lock,
        }
    }

    /// The open index, reopened first if the writer rested.
    fn index(&mut self) -> Result<&mut Index, StoreError> {
        Index::woken(
            &mut self.index,
            &self.dir,
            self.opts.cache_bytes,
            self.stats.committed_seq,
        )
    }

    fn last_checkpoint_seq(&mut self) -> Result<Seq, StoreError> {
        let last = self.last_seq;
        let found = self
            .index()?
            .db
            .range(codec::checkpoint_key(0)..=codec::checkpoint_key(last))
            .next_back()
            .transpose()?;
        found.map_or(Ok(0), |(key, _)| codec::key_seq(&key))
    }

    /// Recomputes, for each live file, the replay work since its last keyframe, so a resumed
    /// writer keeps the same bound on rebuild cost as one that never stopped.
    fn measure_since_keyframes(&mut self) -> Result<HashMap<NodeId, SinceKeyframe>, StoreError> {
        let mut out = HashMap::new();
        let last = self.last_seq;
        let nodes: Vec<NodeId> = self.ns.live_nodes().collect();
        let records = &self.index()?.records;
        for node in nodes {
            let from = records
                .last_keyframe_seq(node, last)?
                .map_or(0, |seq| seq + 1);
            let mut since = SinceKeyframe::default();
            for (_, op) in records.content_ops(node, from, last)? {
                since = since_after(since, &op);
            }
            if since.ops > 0 {
                out.insert(node, since);
            }
        }
        Ok(out)
    }

    /// A fresh node id; ids are never reused, also across resume.
    pub fn new_node(&mut self) -> NodeId {
        let id = self.next_node;
        self.next_node += 1;
        id
    }

    /// Buffers `event` as the next one in the log and returns its seq. Times that go backwards
    /// (kernel events from several CPUs) are raised to the previous event's time.
    pub fn append(&mut self, event: Event) -> Result<Seq, StoreError> {
        let seq = self.last_seq + 1;
        let time = self.last_time.map_or(event.time, |t| t.max(event.time));
        self.note_node_id(&event.op);

        let content_op = self.content_op(&event.op);
        self.mirror(seq, &event.op, content_op.as_ref());
        let resync_inline = matches!(&event.op, Op::Resync { node, .. }
            if matches!(self.ns.node_entry(*node), Some(Entry { kind: EntryKind::Symlink { .. }, .. })));
        let (op, payload) = OpHeader::split(event.op, resync_inline);
        let header = EventHeader {
            time,
            process: event.process,
            op,
        };
        self.ns.apply(seq, self.clock.wall(time), &header.op);

        if self.block.headers.is_empty() {
            self.block.first = seq;
        }
        if let (Some(data), Some(node)) = (payload, header.op.payload_node()) {
            self.stats.payload_bytes += data.len() as u64;
            self.block.payload_bytes += data.len();
            let (epoch, reference) = match self.references.epoch(node) {
                Some((epoch, reference)) => (Some(epoch), reference),
                None => (None, None),
            };
            let runs = self.block.payloads.entry(node).or_default();
            // Each reset starts a new record: a delta's reference content must come from before
            // the record's first seq (data before the reset may be part of it), and data of a
            // standalone reset must not land in a delta record, whose depth it would inherit.
            let starts_run = runs.last().is_none_or(|last| last.epoch != epoch);
            if starts_run {
                runs.push(Run {
                    epoch,
                    reference: reference.cloned(),
                    data: Vec::new(),
                });
            }
            runs.last_mut()
                .expect("a run was just ensured")
                .data
                .push((seq, data));
        }
        self.block.headers.push(header);
        if let Some((node, op)) = content_op {
            let since = self.since_keyframe.entry(node).or_default();
            *since = since_after(*since, &op);
            self.touched.insert(node);
            self.block.ops.entry(node).or_default().push((seq, op));
        }
        self.last_seq = seq;
        self.last_time = Some(time);
        self.pending_events += 1;
        self.events_since_checkpoint += 1;
        self.stats.events = seq;
        // Last, so that a failed segment write leaves the event counted (and the writer's seqs
        // in step with what it buffered).
        if self.block.headers.len() >= self.opts.block_events
            || self.block.payload_bytes >= self.opts.block_bytes
        {
            self.seal_block()?;
        }
        Ok(seq)
    }

    /// Keeps the reference contents in step with event `seq` (before the name space applies it).
    fn mirror(&mut self, seq: Seq, op: &Op, content_op: Option<&(NodeId, ContentOp)>) {
        match op {
            Op::Rename { from, to } => {
                if let Some(Entry {
                    node,
                    kind: EntryKind::File { .. },
                    ..
                }) = self.ns.entry(from)
                {
                    self.references.named(*node, to);
                }
            }
            Op::Link { node, path } => self.references.named(*node, path),
            _ => {}
        }
        let Some((node, content_op)) = content_op else {
            return;
        };
        let created_at = match op {
            Op::Create { path, .. } => Some(path),
            _ => None,
        };
        let payload: &[u8] = match op {
            Op::Write { data, .. } | Op::Resync { data, .. } => data,
            _ => &[],
        };
        self.references
            .apply(seq, *node, content_op, created_at, payload);
    }

    /// Ids the caller chose itself (not from `new_node`) must not be handed out later.
    fn note_node_id(&mut self, op: &Op) {
        let node = match op {
            Op::Create { node, .. }
            | Op::Mkdir { node, .. }
            | Op::Symlink { node, .. }
            | Op::Adopt { node, .. } => *node,
            _ => return,
        };
        if node & crate::model::IMPLICIT_DIR_NODE_BIT == 0 && node >= self.next_node {
            self.next_node = node + 1;
        }
    }

    /// How `op` changes a node's bytes, judged against the name space before it applies (the
    /// same name space replay sees, so readers agree with this decision).
    fn content_op(&self, op: &Op) -> Option<(NodeId, ContentOp)> {
        let file = |node: NodeId| {
            matches!(
                self.ns.node_entry(node),
                Some(Entry {
                    kind: EntryKind::File { .. },
                    ..
                })
            )
        };
        match op {
            Op::Create { node, path, .. } if !path.is_root() => {
                Some((*node, ContentOp::Reset { size: 0 }))
            }
            Op::Symlink { node, path, target } if !path.is_root() => {
                Some((*node, ContentOp::Set(target.clone())))
            }
            Op::Adopt {
                node,
                path,
                kind,
                size,
                ..
            } if !path.is_root() => match kind {
                NodeKind::File => Some((*node, ContentOp::Reset { size: *size })),
                NodeKind::Symlink => Some((*node, ContentOp::Set(Vec::new()))),
                NodeKind::Dir => None,
            },
            Op::Write { node, offset, data } if !data.is_empty() && file(*node) => Some((
                *node,
                ContentOp::Write {
                    offset: *offset,
                    len: data.len() as u64,
                },
            )),
            Op::Truncate { target, size } => {
                let node = self.ns.resolve(target)?;
                file(node).then_some((node, ContentOp::Truncate { size: *size }))
            }
            Op::Resync { node, data } => match &self.ns.node_entry(*node)?.kind {
                EntryKind::File { .. } => Some((
                    *node,
                    ContentOp::Replace {
                        len: data.len() as u64,
                    },
                )),
                EntryKind::Symlink { .. } => Some((*node, ContentOp::Set(data.clone()))),
                EntryKind::Dir => None,
            },
            _ => None,
        }
    }

    /// Turns the open block into records of the pending batch, its data into segment blocks.
    fn seal_block(&mut self) -> Result<(), StoreError> {
        let block = std::mem::replace(&mut self.block, OpenBlock::opened(self.next_node));
        if block.headers.is_empty() {
            return Ok(());
        }
        let first = block.first;
        let headers = codec::zstd_bytes(&codec::encode(&block.headers));
        self.pending.insert(&codec::event_block_key(first), headers);
        let grouped = |node: NodeId| {
            let ops = block.ops.get(&node).map_or(0, Vec::len);
            codec::is_grouped(node, block.born_from, ops)
        };
        let mut groups: BTreeMap<[u8; 17], codec::GroupedOps> = BTreeMap::new();
        for (node, ops) in &block.ops {
            if grouped(*node) {
                groups
                    .entry(codec::grouped_content_key(*node, first))
                    .or_default()
                    .push((*node, ops.clone()));
            } else {
                self.pending
                    .insert(&codec::content_key(*node, first), codec::encode(ops));
            }
        }
        for (key, group) in groups {
            self.pending.insert(&key, codec::encode_group(&group));
        }
        for (node, runs) in &block.payloads {
            for run in runs {
                let Some((run_first, _)) = run.data.first() else {
                    continue;
                };
                let slot = if grouped(*node) {
                    Slot::Grouped {
                        node: *node,
                        first: *run_first,
                        block: first,
                    }
                } else {
                    Slot::Own(codec::payload_key(*node, *run_first))
                };
                let raw = codec::encode_payload_block(&run.data);
                let value = match &run.reference {
                    Some(r) => {
                        let reference = codec::DeltaRef {
                            node: r.node,
                            seq: r.seq,
                            depth: r.depth,
                        };
                        let delta =
                            codec::encode_payload_delta(&raw, *run_first, reference, &r.content);
                        // What the plain record would cost once its block compresses it.
                        if delta.len() < codec::encode_payload(&raw).len() {
                            if delta.len() <= codec::INLINE_DELTA_BYTES {
                                // A reference to it in a segment would cost half as much again.
                                self.index_payload(slot, delta);
                                continue;
                            }
                            delta
                        } else {
                            codec::encode_payload_raw(&raw)
                        }
                    }
                    None => codec::encode_payload_raw(&raw),
                };
                self.pack(slot, value)?;
            }
        }
        Ok(())
    }

    /// Puts a payload record's value (its bytes or a segment reference) where `slot` says.
    fn index_payload(&mut self, slot: Slot, value: Vec<u8>) {
        match slot {
            Slot::Own(key) => self.pending.insert(&key, value),
            Slot::Grouped { node, first, block } => self
                .pending_groups
                .entry(codec::grouped_payload_key(node, block))
                .or_default()
                .push((node, first, value)),
        }
    }

    /// Queues a payload record for the next segment block; a large one gets a block of its own.
    fn pack(&mut self, slot: Slot, value: Vec<u8>) -> Result<(), StoreError> {
        if value.len() >= codec::PACKED_RECORD_BYTES {
            let block = self.segments.append(&value, true)?;
            let r = codec::SegRef {
                block,
                start: 0,
                len: value.len() as u64,
            };
            self.index_payload(slot, codec::encode_segment_ref(codec::SEGMENT, &r));
            return Ok(());
        }
        let start = self.packer.buf.len() as u64;
        self.packer.buf.extend_from_slice(&value);
        self.packer.pieces.push((slot, start, value.len() as u64));
        if self.packer.buf.len() >= codec::PACKED_BLOCK_BYTES {
            self.write_packed()?;
        }
        Ok(())
    }

    /// Writes the queued payload records as one segment block and indexes them in the pending
    /// batch.
    fn write_packed(&mut self) -> Result<(), StoreError> {
        if self.packer.pieces.is_empty() {
            return Ok(());
        }
        let packer = std::mem::take(&mut self.packer);
        let block = self.segments.append(&packer.buf, true)?;
        for (slot, start, len) in packer.pieces {
            let r = codec::SegRef { block, start, len };
            self.index_payload(slot, codec::encode_segment_ref(codec::SEGMENT, &r));
        }
        // Keep the buffer's capacity for the next block.
        let mut buf = packer.buf;
        buf.clear();
        self.packer.buf = buf;
        Ok(())
    }

    /// Makes all appended events visible as one atomic batch, then adds keyframes for files whose
    /// replay chain grew too long.
    pub fn commit(&mut self) -> Result<(), StoreError> {
        if self.pending_events == 0 {
            return Ok(());
        }
        self.seal_block()?;
        self.write_packed()?;
        // The index must never refer to segment bytes a crash could still take.
        self.segments.sync()?;
        let mut batch = std::mem::take(&mut self.pending);
        for (key, mut group) in std::mem::take(&mut self.pending_groups) {
            group.sort_by_key(|(node, first, _)| (*node, *first));
            batch.insert(&key, codec::encode_group(&group));
        }
        batch.insert(codec::META_SEGMENT_END, codec::encode(&self.segments.end()));
        batch.insert(codec::META_COMMITTED, &codec::u64_value(self.last_seq));
        batch.insert(codec::META_NEXT_NODE, &codec::u64_value(self.next_node));
        let checkpoint_due = self.events_since_checkpoint
            >= self.opts.checkpoint_min_events.max(self.ns.len() as u64);
        if checkpoint_due {
            let packed = codec::encode_checkpoint(&self.ns);
            debug!(
                seq = self.last_seq,
                bytes = packed.len(),
                "name-space checkpoint"
            );
            batch.insert(&codec::checkpoint_key(self.last_seq), packed);
        }
        let last = self.last_seq;
        let index = self.index()?;
        index.db.apply_batch(batch)?;
        index.records.set_committed(last);
        self.stats.committed_seq = self.last_seq;
        self.pending_events = 0;
        self.committed_payload_bytes = self.stats.payload_bytes;
        if checkpoint_due {
            self.events_since_checkpoint = 0;
            self.stats.checkpoints += 1;
            // Forget replay counters of nodes that died since the last checkpoint.
            let ns = &self.ns;
            self.since_keyframe
                .retain(|node, _| ns.node_entry(*node).is_some());
        }
        self.write_keyframes();
        Ok(())
    }

    /// Keyframes are an optimization: if one cannot be made, reads just replay further.
    fn write_keyframes(&mut self) {
        let touched: Vec<NodeId> = self.touched.drain().collect();
        let mut batch = sled::Batch::default();
        let mut made = Vec::new();
        for node in touched {
            let Some(since) = self.since_keyframe.get(&node).copied() else {
                continue;
            };
            let size = match self.ns.node_entry(node) {
                Some(Entry {
                    kind: EntryKind::File { size },
                    ..
                }) => *size,
                _ => {
                    self.since_keyframe.remove(&node);
                    continue;
                }
            };
            let o = &self.opts;
            let byte_limit = o
                .keyframe_min_bytes
                .max(size.saturating_mul(o.keyframe_size_factor));
            let op_limit = o
                .keyframe_min_ops
                .max(size / o.keyframe_bytes_per_op.max(1));
            if since.bytes <= byte_limit && since.ops <= op_limit {
                continue;
            }
            match self.write_keyframe(node) {
                Ok((key, value)) => {
                    batch.insert(&key, value);
                    made.push(node);
                }
                Err(e) => {
                    error!(node, error = %e, "could not write a keyframe; reads of this file will be slower")
                }
            }
        }
        if made.is_empty() {
            return;
        }
        // Bodies first, durably; then the index records that point at them.
        let indexed = self.segments.sync().and_then(|()| {
            let index = self.index()?;
            index.db.apply_batch(batch).map_err(StoreError::from)
        });
        match indexed {
            Ok(()) => {
                for node in made {
                    self.since_keyframe.remove(&node);
                    self.stats.keyframes += 1;
                }
            }
            Err(e) => {
                error!(error = %e, "could not write keyframes; reads of these files will be slower")
            }
        }
    }

    /// Writes `node`'s keyframe body to a segment and returns the index record for it.
    fn write_keyframe(&mut self, node: NodeId) -> Result<([u8; 17], Vec<u8>), StoreError> {
        let records = &self.index()?.records;
        let seq = records.committed();
        let rebuilt = content::content_at(records, node, seq, true)?;
        let policy = KeyframePolicy {
            full_every: self.opts.full_keyframe_every.max(1),
            max_diff_bytes: self.opts.max_diff_bytes,
        };
        let mut keyframe = content::make_keyframe(&rebuilt, &policy);
        debug!(
            node,
            seq,
            size = rebuilt.content.len(),
            depth = keyframe.depth,
            stored = keyframe.body.len(),
            "keyframe"
        );
        // The body is one zstd frame already: a second compression would not pay.
        let block = self.segments.append(&keyframe.body, false)?;
        let r = codec::SegRef {
            block,
            start: 0,
            len: keyframe.body.len() as u64,
        };
        keyframe.body = codec::encode_segment_ref(codec::KEYFRAME_IN_SEGMENT, &r);
        Ok((codec::keyframe_key(node, seq), codec::encode(&keyframe)))
    }

    /// Limits the recording to `scope` (readers say what lay outside it). Set once, before
    /// anything is recorded; a resumed recording keeps the one it had.
    pub fn set_scope(&mut self, scope: &crate::Scope) -> Result<(), StoreError> {
        self.index()?
            .db
            .insert(codec::META_SCOPE, codec::encode(scope))?;
        Ok(())
    }

    /// Compresses the data blocks written from now on at a faster zstd level while `hurry`
    /// holds: for a recorder that is falling behind its ring buffer, where the time saved keeps
    /// records from being lost, and a somewhat larger store is the lesser cost.
    pub fn hurry(&mut self, hurry: bool) {
        self.segments.level = if hurry {
            codec::FAST_ZSTD_LEVEL
        } else {
            codec::ZSTD_LEVEL
        };
    }

    /// Commits and makes everything committed durable on disk.
    pub fn flush(&mut self) -> Result<(), StoreError> {
        self.commit()?;
        // A resting index was flushed when it was let go.
        if let Some(index) = &self.index {
            index.db.flush()?;
        }
        Ok(())
    }

    /// Makes everything appended durable, then lets go of the index until the next commit or
    /// read needs it, with the caches that only speed up writing (delta references, buffers).
    /// For a writer that expects to stay idle a while: reopening costs a few milliseconds.
    /// Returns false, and keeps the index, while a view lent by `reader` is still alive.
    pub fn rest(&mut self) -> Result<bool, StoreError> {
        if self.index.is_none() && self.pending_events == 0 {
            return Ok(true);
        }
        if Arc::strong_count(&self.lent) > 1 {
            return Ok(false);
        }
        self.flush()?;
        if let Some(index) = self.index.take() {
            self.resting_index_bytes = index.db.size_on_disk().unwrap_or(0);
        }
        // The next version of a file is then stored whole rather than as a delta, as after a
        // resume: a little more disk for a history that is idle anyway.
        self.references = References::new(delta_limits(&self.opts));
        self.packer = Packer::default();
        self.block = OpenBlock::opened(self.next_node);
        self.touched.shrink_to_fit();
        self.since_keyframe.shrink_to_fit();
        Ok(true)
    }

    /// Whether the writer has let go of its index (see `rest`).
    pub fn is_resting(&self) -> bool {
        self.index.is_none()
    }

    pub fn node_at(&self, path: &RecPath) -> Option<NodeId> {
        self.ns.entry(path).map(|e| e.node)
    }

    pub fn path_of(&self, node: NodeId) -> Option<RecPath> {
        self.ns.names_of(node).next().cloned()
    }

    pub fn entry(&self, path: &RecPath) -> Option<&Entry> {
        self.ns.entry(path)
    }

    /// An event time (CLOCK_MONOTONIC ns) as the wall-clock time the store gives it.
    pub fn wall_ns(&self, mono_ns: u64) -> i128 {
        self.clock.wall(mono_ns)
    }

    /// The current namespace, in path order (implicit parents included: their node ids have
    /// IMPLICIT_DIR_NODE_BIT set). The recorder checks it against the disk at the end.
    pub fn entries(&self) -> impl Iterator<Item = (&RecPath, &Entry)> {
        self.ns.iter()
    }

    /// Regular files in the current namespace.
    pub fn file_count(&self) -> u64 {
        self.ns
            .iter()
            .filter(|(_, e)| matches!(e.kind, crate::model::EntryKind::File { .. }))
            .count() as u64
    }

    /// Payload bytes appended since the last commit, which memory holds until then: callers
    /// that append fast commit on this, not only on a timer.
    pub fn uncommitted_payload_bytes(&self) -> u64 {
        self.stats.payload_bytes - self.committed_payload_bytes
    }

    pub fn stats(&self) -> WriterStats {
        WriterStats {
            store_bytes: self.index.as_ref().map_or(self.resting_index_bytes, |i| {
                i.db.size_on_disk().unwrap_or(0)
            }) + self.segments.size_on_disk(),
            ..self.stats
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The time of the last appended event, if any.
    pub fn last_time(&self) -> Option<u64> {
        self.last_time
    }

    /// A read view of everything committed so far, for serving a recording that is still being
    /// written (the dir's lock keeps any other process out, so readers must come from here).
    pub fn reader(&mut self) -> Result<crate::Store, StoreError> {
        let lease = self.lent.clone();
        let db = self.index()?.db.clone();
        let mut store = crate::Store::over(&self.dir, db, None, None)?;
        store.lease = Some(lease);
        Ok(store)
    }

    /// Serves what this writer has committed to readers in other processes until the returned
    /// server is dropped (see `live`): `Store::open` there then works on the live recording.
    pub fn serve_live(&mut self) -> Result<crate::LiveServer, StoreError> {
        let lease = self.lent.clone();
        let db = self.index()?.db.clone();
        crate::LiveServer::start(&self.dir, db, lease)
    }

    /// Records the end of the recording, flushes, and releases the state dir.
    pub fn finish(mut self, end_mono_ns: u64) -> Result<(), StoreError> {
        self.commit()?;
        let end = self.last_time.map_or(end_mono_ns, |t| t.max(end_mono_ns));
        let index = self.index()?;
        index.db.insert(codec::META_END, &codec::u64_value(end))?;
        index.db.flush()?;
        self.finished = true;
        info!(dir = %self.dir.display(), events = self.last_seq, "finished recording");
        Ok(())
    }
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("dir", &self.dir)
            .field("last_seq", &self.last_seq)
            .field("committed", &self.stats.committed_seq)
            .finish_non_exhaustive()
    }
}

impl Drop for Writer {
    /// A writer dropped without `finish` (e.g. on an error path) still keeps what was appended.
    fn drop(&mut self) {
        if !self.finished {
            if let Err(e) = self.flush() {
                warn!(dir = %self.dir.display(), error = %e, "could not flush the recording on drop");
            }
        }
    }
}

fn delta_limits(opts: &WriterOptions) -> DeltaLimits {
    DeltaLimits {
        max_file_bytes: opts.delta_file_bytes,
        budget_bytes: opts.delta_memory_bytes,
        max_depth: opts.max_delta_depth.min(codec::MAX_DELTA_DEPTH),
        chain_bytes: opts.delta_chain_bytes,
    }
}

fn since_after(since: SinceKeyframe, op: &ContentOp) -> SinceKeyframe {
    if op.is_reset() {
        // A rebuild starts at the reset, so it is as good as a keyframe.
        return SinceKeyframe::default();
    }
    let bytes = match op {
        ContentOp::Write { len, .. } => *len,
        _ => 0,
    };
    SinceKeyframe {
        bytes: since.bytes + bytes,
        ops: since.ops + 1,
    }
}
