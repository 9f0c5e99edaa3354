//! Typed, counted reads of committed records. Both the reader and the writer (which reads back
//! content to build keyframes) go through here, so every byte read is accounted in [`ReadStats`]
//! and nothing past the committed seq is ever seen.

use crate::codec::{self, ContentOp, EventHeader, Keyframe, PayloadBlock, SegRef};
use crate::error::StoreError;
use crate::model::{NodeId, Seq};
use crate::namespace::{Clock, Namespace};
use crate::segment::{BlockAddr, SegmentFiles};
use crate::verify::SegmentUse;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Reading cost since the store was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadStats {
    /// Key and value bytes fetched from the index, and block bytes from segment files (as
    /// stored, i.e. compressed).
    pub bytes_read: u64,
    /// Records fetched.
    pub records_read: u64,
}

pub(crate) struct Records {
    tree: sled::Tree,
    /// Readers ignore anything beyond this, so a batch is either wholly visible or not at all.
    committed: Seq,
    bytes: AtomicU64,
    count: AtomicU64,
    /// The last event block decoded by `header`: time lookups probe neighbouring seqs. Committed
    /// blocks are never rewritten, so this never goes stale.
    last_block: Mutex<Option<(Seq, Arc<Vec<EventHeader>>)>>,
    /// Recently decoded reference contents of delta payloads, oldest first.
    references: Mutex<VecDeque<CachedReference>>,
    segments: Arc<SegmentFiles>,
    /// Recently decoded segment blocks, oldest first: the payloads of one commit share one, and
    /// a rebuild reads them in order.
    blocks: Mutex<VecDeque<(BlockAddr, Arc<Vec<u8>>)>>,
    /// Recently decoded grouped records, oldest first: the files of a group are read one after
    /// another. Committed records are never rewritten, so these never go stale.
    op_groups: GroupCache<codec::GroupedOps>,
    payload_groups: GroupCache<codec::GroupedPayloads>,
    group_zstd: Mutex<zstd::bulk::Decompressor<'static>>,
}

/// Decoded grouped records by key.
type GroupCache<T> = Mutex<VecDeque<(sled::IVec, Arc<T>)>>;

const GROUP_CACHE_ENTRIES: usize = 128;

/// The decoded value of the grouped record `key`, from `cache` if it is there.
fn decoded_group<T: serde::de::DeserializeOwned>(
    cache: &GroupCache<T>,
    zstd: &Mutex<zstd::bulk::Decompressor<'static>>,
    what: &str,
    key: sled::IVec,
    value: &[u8],
) -> Result<Arc<T>, StoreError> {
    let mut cache = cache.lock().expect("group cache lock");
    if let Some((_, group)) = cache.iter().find(|(k, _)| *k == key) {
        return Ok(group.clone());
    }
    let mut zstd = zstd.lock().expect("zstd context lock");
    let group: Arc<T> = Arc::new(codec::decode_group(what, value, &mut zstd)?);
    cache.push_back((key, group.clone()));
    if cache.len() > GROUP_CACHE_ENTRIES {
        cache.pop_front();
    }
    Ok(group)
}

const BLOCK_CACHE_BYTES: usize = 4 << 20;
const BLOCK_CACHE_ENTRIES: usize = 32;

/// A reference content: `node`'s content right after `seq`.
type CachedReference = ((NodeId, Seq), Arc<Vec<u8>>);

const REFERENCE_CACHE_BYTES: usize = 4 << 20;
const REFERENCE_CACHE_ENTRIES: usize = 64;

fn decode_event_block(value: &[u8]) -> Result<Vec<EventHeader>, StoreError> {
    let raw = codec::unzstd(value)
        .map_err(|e| StoreError::corrupt(format!("an event block is unreadable: {e}")))?;
    codec::decode("an event block", &raw)
}

/// Picks `seq`'s data out of its block.
pub(crate) fn payload_in(block: &PayloadBlock, seq: Seq) -> Result<&[u8], StoreError> {
    block
        .binary_search_by_key(&seq, |(s, _)| *s)
        .map(|i| block[i].1.as_slice())
        .map_err(|_| StoreError::corrupt(format!("data of @seq:{seq} is missing")))
}

impl Records {
    pub(crate) fn new(tree: sled::Tree, committed: Seq, segments: Arc<SegmentFiles>) -> Self {
        Records {
            tree,
            committed,
            bytes: AtomicU64::new(0),
            count: AtomicU64::new(0),
            last_block: Mutex::new(None),
            references: Mutex::new(VecDeque::new()),
            segments,
            blocks: Mutex::new(VecDeque::new()),
            op_groups: Mutex::new(VecDeque::new()),
            payload_groups: Mutex::new(VecDeque::new()),
            group_zstd: Mutex::new(
                zstd::bulk::Decompressor::new().expect("a zstd context (allocation only)"),
            ),
        }
    }

    /// The decoded segment block at `addr`.
    fn segment_block(&self, addr: BlockAddr) -> Result<Arc<Vec<u8>>, StoreError> {
        {
            let cache = self.blocks.lock().expect("block cache lock");
            if let Some((_, block)) = cache.iter().find(|(a, _)| *a == addr) {
                return Ok(block.clone());
            }
        }
        let block = Arc::new(self.segments.read(addr)?);
        self.bytes.fetch_add(addr.stored_len, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        if block.len() <= BLOCK_CACHE_BYTES / 4 {
            let mut cache = self.blocks.lock().expect("block cache lock");
            cache.push_back((addr, block.clone()));
            let mut bytes: usize = cache.iter().map(|(_, b)| b.len()).sum();
            while bytes > BLOCK_CACHE_BYTES || cache.len() > BLOCK_CACHE_ENTRIES {
                let Some((_, old)) = cache.pop_front() else {
                    break;
                };
                bytes -= old.len();
            }
        }
        Ok(block)
    }

    /// Every segment reference in the index, each with what holds it: the payload record
    /// `(node, first)` or the keyframe `(node, seq)`. Reads no segment.
    pub(crate) fn segment_refs(
        &self,
    ) -> impl Iterator<Item = Result<(SegmentUse, NodeId, Seq, SegRef), StoreError>> + '_ {
        let payloads = self.tree.scan_prefix([codec::PAYLOAD]).map(|item| {
            let (key, value) = item?;
            let (node, seq) = codec::key_node_seq(&key)?;
            let what = format!("data of node {node} at @seq:{seq}");
            Ok(codec::parse_segment_ref(&what, codec::SEGMENT, &value)?
                .map(|r| (SegmentUse::Data, node, seq, r)))
        });
        let grouped = self.tree.scan_prefix([codec::GROUPED_PAYLOAD]).flat_map(
            |item| -> Vec<Result<_, StoreError>> {
                let entries = item.map_err(StoreError::from).and_then(|(_, value)| {
                    let mut zstd = self.group_zstd.lock().expect("zstd context lock");
                    let group: codec::GroupedPayloads =
                        codec::decode_group("grouped payload records", &value, &mut zstd)?;
                    Ok(group)
                });
                match entries {
                    Err(e) => vec![Err(e)],
                    Ok(group) => group
                        .into_iter()
                        .map(|(node, seq, value)| {
                            let what = format!("data of node {node} at @seq:{seq}");
                            Ok(codec::parse_segment_ref(&what, codec::SEGMENT, &value)?
                                .map(|r| (SegmentUse::Data, node, seq, r)))
                        })
                        .collect(),
                }
            },
        );
        let keyframes = self.tree.scan_prefix([codec::KEYFRAME]).map(|item| {
            let (key, value) = item?;
            let (node, seq) = codec::key_node_seq(&key)?;
            let kf: Keyframe = codec::decode("a keyframe", &value)?;
            let what = format!("keyframe of node {node} at @seq:{seq}");
            Ok(
                codec::parse_segment_ref(&what, codec::KEYFRAME_IN_SEGMENT, &kf.body)?
                    .map(|r| (SegmentUse::Keyframe, node, seq, r)),
            )
        });
        payloads
            .chain(grouped)
            .chain(keyframes)
            .filter_map(Result::transpose)
            .filter(move |item| !matches!(item, Ok((_, _, seq, _)) if *seq > self.committed))
    }

    /// Reads the block at `addr` and checks it against its checksum, keeping nothing.
    pub(crate) fn check_block(&self, addr: BlockAddr) -> Result<(), StoreError> {
        self.segments.read(addr).map(drop)
    }

    /// The seqs of `node`'s keyframes in `from..=to`, without reading their bodies.
    pub(crate) fn keyframe_seqs(
        &self,
        node: NodeId,
        from: Seq,
        to: Seq,
    ) -> Result<Vec<Seq>, StoreError> {
        let to = to.min(self.committed);
        self.tree
            .range(codec::keyframe_key(node, from)..=codec::keyframe_key(node, to))
            .keys()
            .map(|k| codec::key_seq(&k?))
            .collect()
    }

    /// The bytes a [`SegRef`] names.
    pub(crate) fn segment_bytes(&self, what: &str, r: &SegRef) -> Result<Vec<u8>, StoreError> {
        let block = self.segment_block(r.block)?;
        r.start
            .checked_add(r.len)
            .filter(|end| *end <= block.len() as u64)
            .map(|end| block[r.start as usize..end as usize].to_vec())
            .ok_or_else(|| {
                StoreError::corrupt(format!(
                    "{what} lies past the end of its segment block ({} bytes)",
                    block.len()
                ))
            })
    }

    /// A keyframe record's value, with its body fetched from its segment if it lives there.
    fn decode_keyframe(
        &self,
        node: NodeId,
        seq: Seq,
        value: &[u8],
    ) -> Result<Keyframe, StoreError> {
        let mut kf: Keyframe = codec::decode("a keyframe", value)?;
        let what = format!("keyframe of node {node} at @seq:{seq}");
        if let Some(r) = codec::parse_segment_ref(&what, codec::KEYFRAME_IN_SEGMENT, &kf.body)? {
            kf.body = self.segment_bytes(&what, &r)?;
        }
        Ok(kf)
    }

    pub(crate) fn committed(&self) -> Seq {
        self.committed
    }

    pub(crate) fn set_committed(&mut self, seq: Seq) {
        self.committed = seq;
    }

    pub(crate) fn stats(&self) -> ReadStats {
        ReadStats {
            bytes_read: self.bytes.load(Ordering::Relaxed),
            records_read: self.count.load(Ordering::Relaxed),
        }
    }

    fn count(&self, key: &[u8], value: &[u8]) {
        self.bytes
            .fetch_add((key.len() + value.len()) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn get(&self, key: &[u8]) -> Result<Option<sled::IVec>, StoreError> {
        let value = self.tree.get(key)?;
        if let Some(v) = &value {
            self.count(key, v);
        }
        Ok(value)
    }

    pub(crate) fn check_seq(&self, seq: Seq) -> Result<(), StoreError> {
        if seq > self.committed {
            return Err(StoreError::SeqBeyondEnd {
                seq,
                last: self.committed,
            });
        }
        Ok(())
    }

    pub(crate) fn header(&self, seq: Seq) -> Result<EventHeader, StoreError> {
        self.check_seq(seq)?;
        let missing = || StoreError::corrupt(format!("event @seq:{seq} is missing"));
        {
            let cached = self.last_block.lock().expect("block cache lock");
            if let Some((first, headers)) = cached.as_ref() {
                if let Some(h) = seq
                    .checked_sub(*first)
                    .and_then(|i| headers.get(i as usize))
                {
                    return Ok(h.clone());
                }
            }
        }
        let (key, value) = self
            .newest_at_or_before(&codec::event_block_key(0), &codec::event_block_key(seq))?
            .ok_or_else(missing)?;
        let first = codec::key_seq(&key)?;
        let headers = Arc::new(decode_event_block(&value)?);
        let header = headers
            .get((seq - first) as usize)
            .cloned()
            .ok_or_else(missing)?;
        *self.last_block.lock().expect("block cache lock") = Some((first, headers));
        Ok(header)
    }

    /// The record with the greatest key in `low..=high`.
    fn newest_at_or_before(
        &self,
        low: &[u8],
        high: &[u8],
    ) -> Result<Option<(sled::IVec, sled::IVec)>, StoreError> {
        let found = self.tree.range(low..=high).next_back().transpose()?;
        if let Some((key, value)) = &found {
            self.count(key, value);
        }
        Ok(found)
    }

    /// Headers of events `from..=to` (clamped to what is committed), in order.
    pub(crate) fn headers(
        &self,
        from: Seq,
        to: Seq,
    ) -> impl Iterator<Item = Result<(Seq, EventHeader), StoreError>> + '_ {
        let from = from.max(1);
        let to = to.min(self.committed);
        let blocks = (from <= to).then(|| {
            // Start at the block holding `from`, which may begin before it.
            let start = self
                .tree
                .range(codec::event_block_key(0)..=codec::event_block_key(from))
                .keys()
                .next_back()
                .and_then(Result::ok)
                .map_or(from, |k| codec::key_seq(&k).unwrap_or(from));
            self.tree
                .range(codec::event_block_key(start)..=codec::event_block_key(to))
        });
        let mut expected = from;
        blocks.into_iter().flatten().flat_map(
            move |item| -> Vec<Result<(Seq, EventHeader), StoreError>> {
                let decoded = item.map_err(StoreError::from).and_then(|(key, value)| {
                    self.count(&key, &value);
                    Ok((codec::key_seq(&key)?, decode_event_block(&value)?))
                });
                let (first, headers) = match decoded {
                    Ok(block) => block,
                    Err(e) => return vec![Err(e)],
                };
                let mut out = Vec::new();
                for (seq, header) in (first..).zip(headers) {
                    if seq < expected || seq > to {
                        continue;
                    }
                    if seq != expected {
                        out.push(Err(StoreError::corrupt(format!(
                            "event @seq:{expected} is missing"
                        ))));
                        break;
                    }
                    expected += 1;
                    out.push(Ok((seq, header)));
                }
                out
            },
        )
    }

    /// The stored record holding the data of `node`'s event `seq`, with the seq it is keyed by.
    pub(crate) fn payload_record(
        &self,
        node: NodeId,
        seq: Seq,
    ) -> Result<(Seq, sled::IVec), StoreError> {
        let own = self
            .newest_at_or_before(&codec::payload_key(node, 0), &codec::payload_key(node, seq))?
            .map(|(key, value)| Ok::<_, StoreError>((codec::key_seq(&key)?, value)))
            .transpose()?;
        // A node's grouped records are of its first block, older than any record of its own.
        let found = match own {
            Some(own) => Some(own),
            None => self.grouped_payload(node, seq)?,
        };
        let (first, value) =
            found.ok_or_else(|| StoreError::corrupt(format!("data of @seq:{seq} is missing")))?;
        let what = format!("data of @seq:{seq}");
        let Some(r) = codec::parse_segment_ref(&what, codec::SEGMENT, &value)? else {
            return Ok((first, value));
        };
        let bytes = self.segment_bytes(&what, &r)?;
        if bytes.first() == Some(&codec::SEGMENT) {
            return Err(StoreError::corrupt(format!(
                "{what} refers to a segment that refers on"
            )));
        }
        Ok((first, bytes.into()))
    }

    /// `node`'s newest grouped payload record at or before `seq`, with its first seq: at most
    /// [`codec::GROUP_NODES`] group records to look through, one per block a node of the group
    /// was born in.
    fn grouped_payload(
        &self,
        node: NodeId,
        seq: Seq,
    ) -> Result<Option<(Seq, sled::IVec)>, StoreError> {
        let mut newest: Option<(Seq, sled::IVec)> = None;
        for item in self
            .tree
            .range(codec::grouped_payload_key(node, 0)..=codec::grouped_payload_key(node, seq))
        {
            let (key, value) = item?;
            self.count(&key, &value);
            let group = decoded_group(
                &self.payload_groups,
                &self.group_zstd,
                "grouped payload records",
                key,
                &value,
            )?;
            for (n, first, value) in group.iter() {
                if *n == node && *first <= seq && newest.as_ref().is_none_or(|(f, _)| first > f) {
                    newest = Some((*first, value.as_slice().into()));
                }
            }
        }
        Ok(newest)
    }

    /// `node`'s grouped content ops in `from..=to`.
    fn grouped_ops(
        &self,
        node: NodeId,
        from: Seq,
        to: Seq,
    ) -> Result<Vec<(Seq, ContentOp)>, StoreError> {
        let mut out = Vec::new();
        for item in self
            .tree
            .range(codec::grouped_content_key(node, 0)..=codec::grouped_content_key(node, to))
        {
            let (key, value) = item?;
            self.count(&key, &value);
            let group = decoded_group(
                &self.op_groups,
                &self.group_zstd,
                "grouped content ops",
                key,
                &value,
            )?;
            for (_, ops) in group.iter().filter(|(n, _)| *n == node) {
                out.extend(ops.iter().filter(|(s, _)| (from..=to).contains(s)).cloned());
            }
        }
        Ok(out)
    }

    /// A reference content decoded earlier, if it is still cached.
    pub(crate) fn cached_reference(&self, node: NodeId, seq: Seq) -> Option<Arc<Vec<u8>>> {
        let cache = self.references.lock().expect("reference cache lock");
        cache
            .iter()
            .find(|(k, _)| *k == (node, seq))
            .map(|(_, c)| c.clone())
    }

    /// Keeps a decoded reference content: reading versions in order (a log, successive exports)
    /// then decodes each delta once instead of walking its whole chain every time.
    pub(crate) fn cache_reference(&self, node: NodeId, seq: Seq, content: Arc<Vec<u8>>) {
        if content.len() > REFERENCE_CACHE_BYTES / 4 {
            return;
        }
        let mut cache = self.references.lock().expect("reference cache lock");
        cache.push_back(((node, seq), content));
        let mut bytes: usize = cache.iter().map(|(_, c)| c.len()).sum();
        while bytes > REFERENCE_CACHE_BYTES || cache.len() > REFERENCE_CACHE_ENTRIES {
            let Some((_, old)) = cache.pop_front() else {
                break;
            };
            bytes -= old.len();
        }
    }

    /// Content ops of `node` in events `from..=to`.
    pub(crate) fn content_ops(
        &self,
        node: NodeId,
        from: Seq,
        to: Seq,
    ) -> Result<Vec<(Seq, ContentOp)>, StoreError> {
        let to = to.min(self.committed);
        if from > to {
            return Ok(Vec::new());
        }
        // Start at the block holding `from`, which may begin before it.
        let own_start = self
            .tree
            .range(codec::content_key(node, 0)..=codec::content_key(node, from))
            .keys()
            .next_back()
            .transpose()?
            .map(|k| codec::key_seq(&k))
            .transpose()?;
        let start = own_start.unwrap_or(from);
        let mut out = Vec::new();
        for item in self
            .tree
            .range(codec::content_key(node, start)..=codec::content_key(node, to))
        {
            let (key, value) = item?;
            self.count(&key, &value);
            let ops: Vec<(Seq, ContentOp)> = codec::decode("content ops", &value)?;
            out.extend(ops.into_iter().filter(|(s, _)| (from..=to).contains(s)));
        }
        // A node's grouped ops are those of its first block, before any of its own: with a block
        // of its own at or before `from`, they all lie before `from`.
        let grouped = match own_start {
            Some(_) => Vec::new(),
            None => self.grouped_ops(node, from, to)?,
        };
        if !grouped.is_empty() {
            out.splice(0..0, grouped);
            debug_assert!(out.windows(2).all(|w| w[0].0 < w[1].0));
        }
        Ok(out)
    }

    /// Whether any event in `from..=to` changed `node`'s content (reads no data bytes).
    pub(crate) fn content_changed(
        &self,
        node: NodeId,
        from: Seq,
        to: Seq,
    ) -> Result<bool, StoreError> {
        Ok(!self.content_ops(node, from, to)?.is_empty())
    }

    /// The newest keyframe of `node` at or before `seq`.
    pub(crate) fn last_keyframe(
        &self,
        node: NodeId,
        seq: Seq,
    ) -> Result<Option<(Seq, Keyframe)>, StoreError> {
        let seq = seq.min(self.committed);
        let found = self.newest_at_or_before(
            &codec::keyframe_key(node, 0),
            &codec::keyframe_key(node, seq),
        )?;
        let Some((key, value)) = found else {
            return Ok(None);
        };
        let kseq = codec::key_seq(&key)?;
        Ok(Some((kseq, self.decode_keyframe(node, kseq, &value)?)))
    }

    /// The seq of `node`'s newest keyframe at or before `seq`, without reading its body.
    pub(crate) fn last_keyframe_seq(
        &self,
        node: NodeId,
        seq: Seq,
    ) -> Result<Option<Seq>, StoreError> {
        let seq = seq.min(self.committed);
        let found = self
            .tree
            .range(codec::keyframe_key(node, 0)..=codec::keyframe_key(node, seq))
            .keys()
            .next_back()
            .transpose()?;
        found.map(|k| codec::key_seq(&k)).transpose()
    }

    pub(crate) fn keyframe(&self, node: NodeId, seq: Seq) -> Result<Keyframe, StoreError> {
        let raw = self.get(&codec::keyframe_key(node, seq))?.ok_or_else(|| {
            StoreError::corrupt(format!("keyframe of node {node} at @seq:{seq} is missing"))
        })?;
        self.decode_keyframe(node, seq, &raw)
    }

    /// The namespace right after `seq`: the newest checkpoint at or before it, plus replay.
    pub(crate) fn namespace_at(&self, seq: Seq, clock: Clock) -> Result<Namespace, StoreError> {
        self.check_seq(seq)?;
        let found =
            self.newest_at_or_before(&codec::checkpoint_key(0), &codec::checkpoint_key(seq))?;
        let (mut ns, from) = match found {
            Some((key, value)) => {
                let ns = codec::decode_checkpoint(&value)?;
                (ns, codec::key_seq(&key)? + 1)
            }
            None => (Namespace::default(), 1),
        };
        for item in self.headers(from, seq) {
            let (s, header) = item?;
            ns.apply(s, clock.wall(header.time), &header.op);
        }
        Ok(ns)
    }
}
