//! Rebuilding a node's bytes at a moment, and making the keyframes that keep that cheap.
//!
//! A rebuild starts at the newest point after which the content is self-contained: the last
//! resetting op (create, resync, truncate to 0) or else the newest keyframe, and replays only
//! this node's content ops from there. Keyframes are whole (zstd) or zstd patches against the
//! node's previous keyframe; the patch chain is at most `full_keyframe_every` long.
//!
//! Data after a reset may be stored as a delta against another content (the previous version of
//! the file, see `writer`), which is itself rebuilt here first. Each delta names its depth and
//! its reference is rebuilt only from shallower data, so a rebuild follows at most
//! [`codec::MAX_DELTA_DEPTH`] (in practice `WriterOptions::max_delta_depth`) references.

use crate::codec::{self, ContentOp, EventHeader, Keyframe, PayloadBlock, StoredPayload};
use crate::error::StoreError;
use crate::model::{Event, NodeId, Seq};
use crate::records::{payload_in, Records};
use std::sync::Arc;

/// Where a rebuild started, kept when the caller wants to patch against it.
pub(crate) struct KeyframeBase {
    pub seq: Seq,
    pub depth: u32,
    pub content: Vec<u8>,
}

pub(crate) struct Rebuilt {
    pub content: Vec<u8>,
    /// The keyframe the rebuild started from, if it started from one (and `keep_base` was set).
    pub base: Option<KeyframeBase>,
}

/// The content of `node` right after event `seq`.
pub(crate) fn content_at(
    records: &Records,
    node: NodeId,
    seq: Seq,
    keep_base: bool,
) -> Result<Rebuilt, StoreError> {
    content_within(records, node, seq, keep_base, codec::MAX_DELTA_DEPTH)
}

/// [`content_at`] using only data of delta depth up to `depth`.
fn content_within(
    records: &Records,
    node: NodeId,
    seq: Seq,
    keep_base: bool,
    depth: u32,
) -> Result<Rebuilt, StoreError> {
    records.check_seq(seq)?;
    let keyframe = records.last_keyframe(node, seq)?;
    let replay_from = keyframe.as_ref().map_or(0, |(kseq, _)| kseq + 1);
    let ops = records.content_ops(node, replay_from, seq)?;
    let last_reset = ops.iter().rposition(|(_, op)| op.is_reset());

    let (mut content, base, ops) = match (last_reset, keyframe) {
        (Some(at), _) => (Vec::new(), None, &ops[at..]),
        (None, Some((kseq, kf))) => {
            let content = keyframe_content(records, node, kseq, kf.clone())?;
            let base = keep_base.then(|| KeyframeBase {
                seq: kseq,
                depth: kf.depth,
                content: content.clone(),
            });
            (content, base, &ops[..])
        }
        (None, None) if ops.is_empty() => return Err(StoreError::NoContent { node, seq }),
        (None, None) => (Vec::new(), None, &ops[..]),
    };
    // Consecutive ops mostly share a data block; fetch each block once.
    let mut block: Arc<PayloadBlock> = Arc::default();
    for (op_seq, op) in ops {
        let payload = if op.has_payload() {
            if block.binary_search_by_key(op_seq, |(s, _)| *s).is_err() {
                block = payload_block(records, node, *op_seq, depth)?;
            }
            payload_in(&block, *op_seq)?
        } else {
            &[]
        };
        op.apply(&mut content, payload)?;
    }
    Ok(Rebuilt { content, base })
}

/// The data of `node`'s events in the record holding `seq`, decoding a delta only if its depth is
/// at most `depth`.
/// Event `seq` whole: its header joined with its data (decoded from its delta, if it is one).
/// Here rather than in `records`, which only fetches stored bytes and knows nothing of how a
/// content is rebuilt.
pub(crate) fn full_event(
    records: &Records,
    seq: Seq,
    header: EventHeader,
) -> Result<Event, StoreError> {
    let payload = match header.op.payload_node() {
        Some(node) => {
            let block = payload_block(records, node, seq, codec::MAX_DELTA_DEPTH)?;
            Some(payload_in(&block, seq)?.to_vec())
        }
        None => None,
    };
    Ok(Event {
        time: header.time,
        process: header.process,
        op: header.op.join(payload),
    })
}

pub(crate) fn payload_block(
    records: &Records,
    node: NodeId,
    seq: Seq,
    depth: u32,
) -> Result<Arc<PayloadBlock>, StoreError> {
    let what = || format!("data of @seq:{seq}");
    let (first, value) = records.payload_record(node, seq)?;
    let raw = match codec::parse_payload(&what(), first, &value)? {
        StoredPayload::Plain(raw) => raw,
        StoredPayload::Delta { reference, frame } => {
            // Each step back must be shallower and earlier, so even damaged records cannot make
            // this recurse without end.
            if reference.depth == 0 || reference.depth > depth || reference.seq >= first {
                return Err(StoreError::corrupt(format!(
                    "{} refers to node {} at @seq:{} with depth {} (allowed: {depth}, before \
                     @seq:{first})",
                    what(),
                    reference.node,
                    reference.seq,
                    reference.depth
                )));
            }
            let base = match records.cached_reference(reference.node, reference.seq) {
                Some(base) => base,
                None => {
                    let base = Arc::new(
                        content_within(
                            records,
                            reference.node,
                            reference.seq,
                            false,
                            reference.depth - 1,
                        )?
                        .content,
                    );
                    records.cache_reference(reference.node, reference.seq, base.clone());
                    base
                }
            };
            codec::undelta(&what(), frame, &base)?
        }
    };
    Ok(Arc::new(codec::decode_payload_block(&what(), &raw)?))
}

/// Decodes the keyframe at `seq`, following its patch chain down to a whole keyframe.
fn keyframe_content(
    records: &Records,
    node: NodeId,
    seq: Seq,
    top: Keyframe,
) -> Result<Vec<u8>, StoreError> {
    let mut chain = vec![(seq, top)];
    while let Some(base) = chain.last().and_then(|(_, kf)| kf.base) {
        if chain.len() > 1024 {
            return Err(StoreError::corrupt(format!(
                "keyframes of node {node} form an endless chain"
            )));
        }
        chain.push((base, records.keyframe(node, base)?));
    }
    let unreadable = |kseq: Seq, e: &dyn std::fmt::Display| {
        StoreError::corrupt(format!(
            "keyframe of node {node} at @seq:{kseq} is unreadable: {e}"
        ))
    };
    let (whole_seq, whole) = chain.pop().expect("chain starts non-empty");
    let mut content = codec::unzstd(&whole.body).map_err(|e| unreadable(whole_seq, &e))?;
    while let Some((kseq, kf)) = chain.pop() {
        let what = format!("keyframe of node {node} at @seq:{kseq}");
        content = codec::apply_keyframe_patch(&what, &kf.body, &content)?;
    }
    Ok(content)
}

/// Tunables for keyframe encoding.
pub(crate) struct KeyframePolicy {
    pub full_every: u32,
    pub max_diff_bytes: usize,
}

/// Encodes `rebuilt.content` as a keyframe: a patch against the keyframe the rebuild started
/// from when that is allowed and pays off, else whole.
pub(crate) fn make_keyframe(rebuilt: &Rebuilt, policy: &KeyframePolicy) -> Keyframe {
    let content = &rebuilt.content;
    if let Some(base) = &rebuilt.base {
        let diffable = base.depth + 1 < policy.full_every
            && !base.content.is_empty()
            && content.len() <= policy.max_diff_bytes
            && base.content.len() <= policy.max_diff_bytes;
        if diffable {
            let packed_patch = codec::encode_keyframe_patch(&base.content, content);
            let as_patch = |body| Keyframe {
                base: Some(base.seq),
                depth: base.depth + 1,
                body,
            };
            if packed_patch.len() < content.len() / 8 {
                return as_patch(packed_patch);
            }
            // A patch that is not much smaller than the whole saves little and costs a patch step
            // on every read.
            let whole = codec::zstd_bytes(content);
            if packed_patch.len() < whole.len() / 2 {
                return as_patch(packed_patch);
            }
            return whole_keyframe(whole);
        }
    }
    whole_keyframe(codec::zstd_bytes(content))
}

fn whole_keyframe(body: Vec<u8>) -> Keyframe {
    Keyframe {
        base: None,
        depth: 0,
        body,
    }
}

/// Where a stretch of a file's bytes comes from, for [`ContentReader`].
#[derive(Clone, Debug)]
enum Piece {
    /// The data of event `seq`, from its byte `skip` on.
    Data { seq: Seq, skip: u64 },
    /// Bytes already in memory (a keyframe's content, a symlink's target), from `skip` on.
    Bytes { bytes: Arc<Vec<u8>>, skip: u64 },
}

impl Piece {
    fn advanced(&self, n: u64) -> Piece {
        match self {
            Piece::Data { seq, skip } => Piece::Data {
                seq: *seq,
                skip: skip + n,
            },
            Piece::Bytes { bytes, skip } => Piece::Bytes {
                bytes: bytes.clone(),
                skip: skip + n,
            },
        }
    }
}

/// A file's layout as its content ops leave it: extents keyed by start offset (each with its
/// length and source); what no extent covers below `size` is a hole (zeros).
#[derive(Default)]
struct Extents {
    size: u64,
    map: std::collections::BTreeMap<u64, (u64, Piece)>,
}

impl Extents {
    /// Removes whatever covers `start..end`, splitting extents that cross either edge.
    fn punch(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let mut hit: Vec<u64> = Vec::new();
        if let Some((&s, (len, _))) = self.map.range(..start).next_back() {
            if s + len > start {
                hit.push(s);
            }
        }
        hit.extend(self.map.range(start..end).map(|(&s, _)| s));
        for s in hit {
            let (len, piece) = self.map.remove(&s).expect("a listed extent");
            let e = s + len;
            if s < start {
                self.map.insert(s, (start - s, piece.clone()));
            }
            if e > end {
                self.map.insert(end, (e - end, piece.advanced(end - s)));
            }
        }
    }

    fn put(&mut self, start: u64, len: u64, piece: Piece) {
        if len == 0 {
            return;
        }
        self.punch(start, start + len);
        self.map.insert(start, (len, piece));
    }

    fn apply(&mut self, seq: Seq, op: &ContentOp) -> Result<(), StoreError> {
        match op {
            ContentOp::Reset { size } => {
                self.map.clear();
                self.size = *size;
            }
            ContentOp::Write { offset, len } => {
                let end = offset.checked_add(*len).ok_or_else(|| {
                    StoreError::corrupt(format!("a write at offset {offset} ends past 2^64"))
                })?;
                self.put(*offset, *len, Piece::Data { seq, skip: 0 });
                self.size = self.size.max(end);
            }
            ContentOp::Truncate { size } => {
                self.punch(*size, self.size.max(*size));
                self.size = *size;
            }
            ContentOp::Replace { len } => {
                self.map.clear();
                self.put(0, *len, Piece::Data { seq, skip: 0 });
                self.size = *len;
            }
            ContentOp::Set(bytes) => {
                self.map.clear();
                let len = bytes.len() as u64;
                let bytes = Arc::new(bytes.clone());
                self.put(0, len, Piece::Bytes { bytes, skip: 0 });
                self.size = len;
            }
        }
        Ok(())
    }
}

/// A file's bytes at a moment, read in order without building the whole content in memory:
/// replay works on a map of extents (which event's data lands where), and data is fetched from
/// the store only as it is read. Holes read as zeros, and [`Self::hole_len`] tells where they
/// are, so a 100 GiB sparse file exports as a sparse file.
pub struct ContentReader<'s> {
    records: &'s Records,
    node: NodeId,
    extents: Extents,
    pos: u64,
    /// The data block the last read came from: reads in order mostly stay in it.
    block: Arc<PayloadBlock>,
}

impl<'s> ContentReader<'s> {
    pub(crate) fn new(
        records: &'s Records,
        node: NodeId,
        seq: Seq,
    ) -> Result<ContentReader<'s>, StoreError> {
        records.check_seq(seq)?;
        let keyframe = records.last_keyframe(node, seq)?;
        let replay_from = keyframe.as_ref().map_or(0, |(kseq, _)| kseq + 1);
        let ops = records.content_ops(node, replay_from, seq)?;
        let last_reset = ops.iter().rposition(|(_, op)| op.is_reset());
        let mut extents = Extents::default();
        let ops = match (last_reset, keyframe) {
            (Some(at), _) => &ops[at..],
            (None, Some((kseq, kf))) => {
                let content = keyframe_content(records, node, kseq, kf)?;
                let len = content.len() as u64;
                let bytes = Arc::new(content);
                extents.put(0, len, Piece::Bytes { bytes, skip: 0 });
                extents.size = len;
                &ops[..]
            }
            (None, None) if ops.is_empty() => return Err(StoreError::NoContent { node, seq }),
            (None, None) => &ops[..],
        };
        for (op_seq, op) in ops {
            extents.apply(*op_seq, op)?;
        }
        Ok(ContentReader {
            records,
            node,
            extents,
            pos: 0,
            block: Arc::default(),
        })
    }

    /// The file's size.
    pub fn len(&self) -> u64 {
        self.extents.size
    }

    pub fn is_empty(&self) -> bool {
        self.extents.size == 0
    }

    /// Bytes read (or skipped) so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// How many bytes from the current position on are a hole (0 if data comes next).
    pub fn hole_len(&self) -> u64 {
        if self.pos >= self.extents.size {
            return 0;
        }
        if let Some((&s, (len, _))) = self.extents.map.range(..=self.pos).next_back() {
            if s + len > self.pos {
                return 0;
            }
        }
        let next = self
            .extents
            .map
            .range(self.pos..)
            .next()
            .map_or(self.extents.size, |(&s, _)| s);
        next.min(self.extents.size) - self.pos
    }

    /// Where the file holds data, as `(offset, length)` in order, adjacent extents merged;
    /// everything else up to [`Self::len`] is a hole. Lets a tar writer put the sparse map ahead
    /// of the data it describes.
    pub fn data_ranges(&self) -> Vec<(u64, u64)> {
        let size = self.extents.size;
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for (&start, (len, _)) in self.extents.map.range(..size) {
            let len = (*len).min(size - start);
            match ranges.last_mut() {
                Some((s, l)) if *s + *l == start => *l += len,
                _ => ranges.push((start, len)),
            }
        }
        ranges
    }

    /// Moves the position `n` bytes on (past a hole, typically), at most to the end.
    pub fn skip(&mut self, n: u64) {
        self.pos = self.pos.saturating_add(n).min(self.extents.size);
    }

    /// Copies bytes from the current position into `buf`; 0 at the end.
    pub fn read_into(&mut self, buf: &mut [u8]) -> Result<usize, StoreError> {
        let size = self.extents.size;
        if self.pos >= size || buf.is_empty() {
            return Ok(0);
        }
        let room = buf.len() as u64;
        let hole = self.hole_len();
        if hole > 0 {
            let n = hole.min(room) as usize;
            buf[..n].fill(0);
            self.pos += n as u64;
            return Ok(n);
        }
        let (&start, (len, piece)) = self
            .extents
            .map
            .range(..=self.pos)
            .next_back()
            .expect("no hole here, so an extent covers the position");
        let into = self.pos - start;
        let n = (len - into).min(room) as usize;
        let missing = |what: &str| {
            StoreError::corrupt(format!(
                "{what} of node {} is shorter than its content ops say",
                self.node
            ))
        };
        match piece.clone() {
            Piece::Bytes { bytes, skip } => {
                let at = (skip + into) as usize;
                let src = bytes.get(at..at + n).ok_or_else(|| missing("a keyframe"))?;
                buf[..n].copy_from_slice(src);
            }
            Piece::Data { seq, skip } => {
                if self.block.binary_search_by_key(&seq, |(s, _)| *s).is_err() {
                    self.block =
                        payload_block(self.records, self.node, seq, codec::MAX_DELTA_DEPTH)?;
                }
                let data = payload_in(&self.block, seq)?;
                let at = (skip + into) as usize;
                let src = data
                    .get(at..at + n)
                    .ok_or_else(|| missing(&format!("the data of @seq:{seq}")))?;
                buf[..n].copy_from_slice(src);
            }
        }
        self.pos += n as u64;
        Ok(n)
    }
}

impl std::io::Read for ContentReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.read_into(buf).map_err(std::io::Error::other)
    }
}

impl std::fmt::Debug for ContentReader<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContentReader")
            .field("node", &self.node)
            .field("len", &self.extents.size)
            .field("pos", &self.pos)
            .finish_non_exhaustive()
    }
}
