//! On-disk layout: one sled tree (the index), record kinds told apart by a one-byte key prefix,
//! big-endian numbers in keys (so byte order is numeric order), bincode values. Since format 4
//! the bulky bytes (Write/Resync data, keyframe bodies) live in segment files (`segment`) and
//! `p` and `k` records hold a [`SegRef`] to them; formats 1 to 3 held the bytes in the record.
//!
//! Events are stored in blocks (all events of one commit, split every [`BLOCK_EVENTS`] events or
//! [`BLOCK_BYTES`] of data by default) because one sled record per event costs hundreds of bytes of
//! overhead each. A block is keyed by its first seq; its events' data and content ops are
//! grouped per node under the same first seq.
//!
//! | key                     | value                                                        |
//! |-------------------------|--------------------------------------------------------------|
//! | `m` name                | metadata: `info`, `format`, `committed`, `next_node`, `end`, `segend` |
//! | `e` first               | zstd(bincode(Vec<[`EventHeader`]>)): events first, first+1, .. |
//! | `n` node first          | bincode(Vec<(seq, [`ContentOp`])>): how those events changed node |
//! | `p` node first          | payload(bincode(Vec<(seq, data)>)): Write/Resync data naming node; format 4: [`SEGMENT`] + [`SegRef`] to that payload |
//! | `k` node seq            | [`Keyframe`]: node's content right after seq; format 4: its body is [`KEYFRAME_IN_SEGMENT`] + [`SegRef`] |
//! | `c` seq                 | zstd(bincode(name space)) right after seq                    |
//! | `N` group first         | zstd(bincode([`GroupedOps`])): `n` records of the nodes born in block `first` (format 6) |
//! | `P` group first         | zstd(bincode([`GroupedPayloads`])): their `p` records (format 6) |
//!
//! Headers, content ops and data are kept apart so that `log` and name-space replay never read
//! data bytes, and rebuilding a file reads only that file's ops and data.
//!
//! A `p` record's `first` is the seq of its first data (format 1 used the block's first seq; both
//! read the same way: the data of seq S is in the node's newest `p` record at or before S). A
//! node may have several `p` records per block, because data after a reset can be stored as a
//! delta against a reference content (see [`encode_payload_delta`]), and a delta must only refer
//! to content from before its record's first seq.
//!
//! Since format 6 a node born in a block (its id handed out since the block before was sealed)
//! that changes in few ops there keeps that block's `n` and `p` records in one `N` and one `P`
//! record shared with the other nodes of its group ([`GROUP_NODES`] consecutive ids). sled costs
//! about 200 bytes on disk per record whatever its size, so a file created and written once
//! cost two of them, ten times its index entries' own bytes; grouped, a small file costs a few
//! dozen. Each node is born in one block only, so a group has at most [`GROUP_NODES`] grouped
//! records in a whole history, and a read of one node decodes a bounded number of neighbours'.

use crate::error::StoreError;
use crate::model::{
    Entry, EntryKind, MarkerKind, NodeId, NodeKind, Op, Owner, Process, RecPath, Seq, Target,
    Xattrs,
};
use crate::namespace::Namespace;
use bincode::Options;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// Format 2 added delta-encoded payloads ([`DELTA`]); format 3, zstd keyframe patches
/// ([`encode_keyframe_patch`]); format 4, payloads and keyframe bodies in segment files
/// ([`SEGMENT`], [`KEYFRAME_IN_SEGMENT`]); format 5, owners and set times: the ops
/// [`OpHeader::Chown`] and [`OpHeader::SetTimes`] (appended variants, which older stores never
/// hold), [`OpHeader::SetXattrs`], and entries with an owner and xattrs in name-space
/// checkpoints ([`CHECKPOINT_WITH_XATTRS`]); format 6, grouped records of nodes born in a block
/// ([`GroupedOps`], [`GroupedPayloads`]).
/// Everything older formats wrote reads unchanged, and every value says how it is encoded, so a
/// store resumed by a newer build may mix them.
pub(crate) const FORMAT_VERSION: u32 = 6;
pub(crate) const OLDEST_READABLE_FORMAT: u32 = 1;

pub(crate) const META_INFO: &[u8] = b"minfo";
pub(crate) const META_FORMAT: &[u8] = b"mformat";
pub(crate) const META_COMMITTED: &[u8] = b"mcommitted";
pub(crate) const META_NEXT_NODE: &[u8] = b"mnext_node";
pub(crate) const META_END: &[u8] = b"mend";
/// bincode([`crate::Scope`]): the paths the recording was limited to; absent means all.
pub(crate) const META_SCOPE: &[u8] = b"mscope";
/// bincode((segment, offset)): where the segment data ends that the committed index may refer
/// to. A resumed writer refuses segments shorter than that (they lost durable data).
pub(crate) const META_SEGMENT_END: &[u8] = b"msegend";

const EVENT: u8 = b'e';
pub(crate) const PAYLOAD: u8 = b'p';
const CONTENT: u8 = b'n';
pub(crate) const KEYFRAME: u8 = b'k';
const CHECKPOINT: u8 = b'c';
const GROUPED_CONTENT: u8 = b'N';
pub(crate) const GROUPED_PAYLOAD: u8 = b'P';

/// Consecutive node ids that share grouped records.
pub(crate) const GROUP_NODES: NodeId = 64;
/// A node born in a block is grouped if it changed in at most this many ops there: the files
/// that a record of their own costs most for, and what bounds the neighbours a read decodes.
pub(crate) const GROUP_MAX_OPS: usize = 8;

/// The content ops of the nodes of one group born in one block: (node, its ops).
pub(crate) type GroupedOps = Vec<(NodeId, Vec<(Seq, ContentOp)>)>;
/// Their payload records: (node, the record's first seq, the value a `p` record would hold).
pub(crate) type GroupedPayloads = Vec<(NodeId, Seq, Vec<u8>)>;

/// A grouped record's value: its entries repeat much (neighbouring seqs, one segment block), so
/// compressed they take a third. One frame with its size in the header, so that a reader can
/// decode it with a context it keeps: creating a zstd context costs more than decoding a group.
pub(crate) fn encode_group<T: Serialize>(group: &T) -> Vec<u8> {
    zstd::bulk::compress(&encode(group), ZSTD_LEVEL).expect("zstd into memory cannot fail")
}

/// Grouped records hold the index entries of at most [`GROUP_NODES`] nodes' first block.
const MAX_GROUP_BYTES: u64 = 64 << 20;

pub(crate) fn decode_group<T: DeserializeOwned>(
    what: &str,
    value: &[u8],
    zstd: &mut zstd::bulk::Decompressor<'static>,
) -> Result<T, StoreError> {
    let unreadable = |why: String| StoreError::corrupt(format!("{what} are unreadable: {why}"));
    let size = zstd::zstd_safe::get_frame_content_size(value)
        .ok()
        .flatten()
        .filter(|size| *size <= MAX_GROUP_BYTES)
        .ok_or_else(|| unreadable("no plausible size in its header".into()))?;
    let raw = zstd
        .decompress(value, size as usize)
        .map_err(|e| unreadable(e.to_string()))?;
    decode(what, &raw)
}

/// Whether `node`, with `ops` content ops in a block whose nodes from `born_from` on are new,
/// keeps that block's records in its group's.
pub(crate) fn is_grouped(node: NodeId, born_from: NodeId, ops: usize) -> bool {
    node >= born_from && node & crate::model::IMPLICIT_DIR_NODE_BIT == 0 && ops <= GROUP_MAX_OPS
}

/// Payload records of a commit smaller than [`PACKED_RECORD_BYTES`] are packed into segment
/// blocks of about this many bytes: compressed together, small files share one zstd context and
/// one block header, and reading one of them decodes at most this much besides it (an export
/// reads files in path order, not in the order they were written).
pub(crate) const PACKED_BLOCK_BYTES: usize = 64 << 10;
/// Larger records get a block of their own, so reading one decodes nothing else.
pub(crate) const PACKED_RECORD_BYTES: usize = 16 << 10;

/// A delta payload (already compressed) up to this size stays in its index record, as formats
/// 1 to 3 stored every payload: small edits of small files cost their few dozen bytes, not a
/// segment reference and a block header besides.
pub(crate) const INLINE_DELTA_BYTES: usize = 256;

/// Default maximum events per block, so that reading one event costs a bounded amount.
pub(crate) const BLOCK_EVENTS: usize = 1024;
/// By default a block is also closed once its events carry this much data.
pub(crate) const BLOCK_BYTES: usize = 4 << 20;

pub(crate) fn event_block_key(first: Seq) -> [u8; 9] {
    seq_key(EVENT, first)
}

/// First byte of a name-space checkpoint whose entries carry owners but no xattrs (written
/// briefly by format 5 before xattrs were kept), decoded as [`OwnedNamespace`]. Older
/// checkpoints are a bare zstd frame (first byte 0x28), decoded as [`LegacyNamespace`].
pub(crate) const CHECKPOINT_WITH_OWNERS: u8 = 5;
/// First byte of a checkpoint whose entries are [`Entry`] as it is now.
pub(crate) const CHECKPOINT_WITH_XATTRS: u8 = 6;

/// A name-space checkpoint's value: tag, then zstd(bincode(name space)).
pub(crate) fn encode_checkpoint(ns: &Namespace) -> Vec<u8> {
    let mut out = vec![CHECKPOINT_WITH_XATTRS];
    out.extend_from_slice(&zstd_bytes(&encode(ns)));
    out
}

pub(crate) fn decode_checkpoint(value: &[u8]) -> Result<Namespace, StoreError> {
    let unpack = |bytes: &[u8]| {
        unzstd(bytes)
            .map_err(|e| StoreError::corrupt(format!("a namespace checkpoint is unreadable: {e}")))
    };
    let mut ns = match value.first() {
        Some(&CHECKPOINT_WITH_XATTRS) => decode("a namespace checkpoint", &unpack(&value[1..])?)?,
        Some(&CHECKPOINT_WITH_OWNERS) => {
            let owned: OwnedNamespace = decode("a namespace checkpoint", &unpack(&value[1..])?)?;
            upgraded(owned.entries.into_iter())
        }
        _ => {
            let legacy: LegacyNamespace = decode("a namespace checkpoint", &unpack(value)?)?;
            // Before owners were recorded, everything was root's, as new entries still are.
            upgraded(legacy.entries.into_iter().map(|(path, e)| {
                let owned = OwnedEntry {
                    node: e.node,
                    kind: e.kind,
                    mode: e.mode,
                    mtime_ns: e.mtime_ns,
                    exact: e.exact,
                    owner: Owner::default(),
                };
                (path, owned)
            }))
        }
    };
    ns.reindex();
    Ok(ns)
}

/// A name space of an older checkpoint layout as today's: no xattrs were kept then.
fn upgraded(entries: impl Iterator<Item = (RecPath, OwnedEntry)>) -> Namespace {
    Namespace::from_entries(
        entries
            .map(|(path, e)| {
                let entry = Entry {
                    node: e.node,
                    kind: e.kind,
                    mode: e.mode,
                    mtime_ns: e.mtime_ns,
                    exact: e.exact,
                    owner: e.owner,
                    xattrs: Default::default(),
                };
                (path, entry)
            })
            .collect(),
    )
}

/// How formats 1 to 4 stored a name space: entries without owners.
#[derive(Deserialize)]
struct LegacyNamespace {
    entries: std::collections::BTreeMap<RecPath, LegacyEntry>,
}

/// How the first format-5 checkpoints stored a name space: entries with owners, no xattrs.
#[derive(Deserialize)]
struct OwnedNamespace {
    entries: std::collections::BTreeMap<RecPath, OwnedEntry>,
}

#[derive(Deserialize)]
struct OwnedEntry {
    node: NodeId,
    kind: EntryKind,
    mode: u32,
    mtime_ns: i128,
    exact: bool,
    owner: Owner,
}

#[derive(Deserialize)]
struct LegacyEntry {
    node: NodeId,
    kind: EntryKind,
    mode: u32,
    mtime_ns: i128,
    exact: bool,
}

pub(crate) fn checkpoint_key(seq: Seq) -> [u8; 9] {
    seq_key(CHECKPOINT, seq)
}

pub(crate) fn content_key(node: NodeId, first: Seq) -> [u8; 17] {
    node_seq_key(CONTENT, node, first)
}

pub(crate) fn payload_key(node: NodeId, first: Seq) -> [u8; 17] {
    node_seq_key(PAYLOAD, node, first)
}

/// The key of the `N` record of `node`'s group for block `first`; `first` 0 starts the group.
pub(crate) fn grouped_content_key(node: NodeId, first: Seq) -> [u8; 17] {
    node_seq_key(GROUPED_CONTENT, node / GROUP_NODES, first)
}

/// The key of the `P` record of `node`'s group for block `first`.
pub(crate) fn grouped_payload_key(node: NodeId, first: Seq) -> [u8; 17] {
    node_seq_key(GROUPED_PAYLOAD, node / GROUP_NODES, first)
}

pub(crate) fn keyframe_key(node: NodeId, seq: Seq) -> [u8; 17] {
    node_seq_key(KEYFRAME, node, seq)
}

fn seq_key(prefix: u8, seq: Seq) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = prefix;
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn node_seq_key(prefix: u8, node: NodeId, seq: Seq) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = prefix;
    k[1..9].copy_from_slice(&node.to_be_bytes());
    k[9..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// The node and seq of a `p`/`n`/`k` key.
pub(crate) fn key_node_seq(key: &[u8]) -> Result<(NodeId, Seq), StoreError> {
    let node: [u8; 8] = key
        .get(1..9)
        .and_then(|b| b.try_into().ok())
        .filter(|_| key.len() == 17)
        .ok_or_else(|| StoreError::corrupt(format!("malformed key {key:?}")))?;
    Ok((NodeId::from_be_bytes(node), key_seq(key)?))
}

/// The seq at the end of any `e`/`p`/`c`/`n`/`k` key.
pub(crate) fn key_seq(key: &[u8]) -> Result<Seq, StoreError> {
    let tail: [u8; 8] = key
        .len()
        .checked_sub(8)
        .and_then(|at| key[at..].try_into().ok())
        .ok_or_else(|| StoreError::corrupt(format!("malformed key {key:?}")))?;
    Ok(Seq::from_be_bytes(tail))
}

pub(crate) fn u64_value(v: u64) -> [u8; 8] {
    v.to_be_bytes()
}

pub(crate) fn decode_u64(what: &str, bytes: &[u8]) -> Result<u64, StoreError> {
    let raw: [u8; 8] = bytes
        .try_into()
        .map_err(|_| StoreError::corrupt(format!("{what} is {} bytes, not 8", bytes.len())))?;
    Ok(u64::from_be_bytes(raw))
}

fn bincode_options() -> impl Options {
    bincode::DefaultOptions::new()
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    bincode_options()
        .serialize(value)
        .expect("bincode serialization of in-memory values cannot fail")
}

pub(crate) fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, StoreError> {
    bincode_options()
        .deserialize(bytes)
        .map_err(|e| StoreError::corrupt(format!("cannot decode {what}: {e}")))
}

/// An event as stored under `e`: everything but the data bytes of Write and Resync.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct EventHeader {
    pub time: u64,
    pub process: Option<Process>,
    pub op: OpHeader,
}

/// [`Op`] with data bytes replaced by their length (the bytes live under `p`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum OpHeader {
    Create {
        node: NodeId,
        path: RecPath,
        mode: u32,
    },
    Mkdir {
        node: NodeId,
        path: RecPath,
        mode: u32,
    },
    Symlink {
        node: NodeId,
        path: RecPath,
        target: Vec<u8>,
    },
    Adopt {
        node: NodeId,
        path: RecPath,
        kind: NodeKind,
        mode: u32,
        size: u64,
    },
    Link {
        node: NodeId,
        path: RecPath,
    },
    Rename {
        from: RecPath,
        to: RecPath,
    },
    Exchange {
        a: RecPath,
        b: RecPath,
    },
    Unlink {
        path: RecPath,
    },
    Rmdir {
        path: RecPath,
    },
    Write {
        node: NodeId,
        offset: u64,
        len: u64,
    },
    Truncate {
        target: Target,
        size: u64,
    },
    Chmod {
        target: Target,
        mode: u32,
    },
    /// `inline` holds the data when the node was a symlink at the time (a symlink's target is
    /// namespace state, which must replay without reading payloads); otherwise the data is under `p`.
    Resync {
        node: NodeId,
        len: u64,
        inline: Option<Vec<u8>>,
    },
    Marker {
        kind: MarkerKind,
        detail: String,
    },
    // Format 5. New variants go last: bincode stores the variant's index.
    Chown {
        target: Target,
        owner: Owner,
    },
    SetTimes {
        target: Target,
        mtime_ns: i128,
    },
    SetXattrs {
        target: Target,
        xattrs: Xattrs,
    },
}

impl OpHeader {
    /// Splits an op into its header and its payload (if it carries data stored under `p`).
    pub(crate) fn split(op: Op, resync_inline: bool) -> (OpHeader, Option<Vec<u8>>) {
        let header = match op {
            Op::Create { node, path, mode } => OpHeader::Create { node, path, mode },
            Op::Mkdir { node, path, mode } => OpHeader::Mkdir { node, path, mode },
            Op::Symlink { node, path, target } => OpHeader::Symlink { node, path, target },
            Op::Adopt {
                node,
                path,
                kind,
                mode,
                size,
            } => OpHeader::Adopt {
                node,
                path,
                kind,
                mode,
                size,
            },
            Op::Link { node, path } => OpHeader::Link { node, path },
            Op::Rename { from, to } => OpHeader::Rename { from, to },
            Op::Exchange { a, b } => OpHeader::Exchange { a, b },
            Op::Unlink { path } => OpHeader::Unlink { path },
            Op::Rmdir { path } => OpHeader::Rmdir { path },
            Op::Write { node, offset, data } => {
                let len = data.len() as u64;
                return (OpHeader::Write { node, offset, len }, Some(data));
            }
            Op::Truncate { target, size } => OpHeader::Truncate { target, size },
            Op::Chmod { target, mode } => OpHeader::Chmod { target, mode },
            Op::Resync { node, data } => {
                let len = data.len() as u64;
                if resync_inline {
                    OpHeader::Resync {
                        node,
                        len,
                        inline: Some(data),
                    }
                } else {
                    return (
                        OpHeader::Resync {
                            node,
                            len,
                            inline: None,
                        },
                        Some(data),
                    );
                }
            }
            Op::Marker { kind, detail } => OpHeader::Marker { kind, detail },
            Op::Chown { target, owner } => OpHeader::Chown { target, owner },
            Op::SetTimes { target, mtime_ns } => OpHeader::SetTimes { target, mtime_ns },
            Op::SetXattrs { target, xattrs } => OpHeader::SetXattrs { target, xattrs },
        };
        (header, None)
    }

    /// The node whose `p` records hold this op's data, if it has data stored there.
    pub(crate) fn payload_node(&self) -> Option<NodeId> {
        match self {
            OpHeader::Write { node, .. }
            | OpHeader::Resync {
                node, inline: None, ..
            } => Some(*node),
            _ => None,
        }
    }

    /// Rebuilds the full op; `payload` is required exactly when [`Self::payload_node`] is set.
    pub(crate) fn join(self, payload: Option<Vec<u8>>) -> Op {
        match self {
            OpHeader::Create { node, path, mode } => Op::Create { node, path, mode },
            OpHeader::Mkdir { node, path, mode } => Op::Mkdir { node, path, mode },
            OpHeader::Symlink { node, path, target } => Op::Symlink { node, path, target },
            OpHeader::Adopt {
                node,
                path,
                kind,
                mode,
                size,
            } => Op::Adopt {
                node,
                path,
                kind,
                mode,
                size,
            },
            OpHeader::Link { node, path } => Op::Link { node, path },
            OpHeader::Rename { from, to } => Op::Rename { from, to },
            OpHeader::Exchange { a, b } => Op::Exchange { a, b },
            OpHeader::Unlink { path } => Op::Unlink { path },
            OpHeader::Rmdir { path } => Op::Rmdir { path },
            OpHeader::Write { node, offset, .. } => Op::Write {
                node,
                offset,
                data: payload.unwrap_or_default(),
            },
            OpHeader::Truncate { target, size } => Op::Truncate { target, size },
            OpHeader::Chmod { target, mode } => Op::Chmod { target, mode },
            OpHeader::Resync { node, inline, .. } => Op::Resync {
                node,
                data: inline.or(payload).unwrap_or_default(),
            },
            OpHeader::Marker { kind, detail } => Op::Marker { kind, detail },
            OpHeader::Chown { target, owner } => Op::Chown { target, owner },
            OpHeader::SetTimes { target, mtime_ns } => Op::SetTimes { target, mtime_ns },
            OpHeader::SetXattrs { target, xattrs } => Op::SetXattrs { target, xattrs },
        }
    }
}

/// How one event changed one node's bytes (file content, or a symlink's target), stored under
/// `n` so that rebuilding a file visits only the events that touched it. Write and Replace take
/// their bytes from the same seq's data under `p`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum ContentOp {
    /// The content becomes `size` zero bytes (Create: 0; Adopt: unknown bytes read as zeros).
    Reset {
        size: u64,
    },
    /// `len` bytes from the payload of the same seq, written at `offset`.
    Write {
        offset: u64,
        len: u64,
    },
    Truncate {
        size: u64,
    },
    /// The content becomes the payload of the same seq (Resync of a file).
    Replace {
        len: u64,
    },
    /// The content becomes these bytes (a symlink's target).
    Set(Vec<u8>),
}

impl ContentOp {
    /// Whether the content after this op is independent of the content before it, which lets a
    /// rebuild start here instead of at a keyframe.
    pub(crate) fn is_reset(&self) -> bool {
        matches!(
            self,
            ContentOp::Reset { .. }
                | ContentOp::Replace { .. }
                | ContentOp::Set(_)
                | ContentOp::Truncate { size: 0 }
        )
    }

    /// The content's length after this op, given its length before (`payload_len`: the data of
    /// Write/Replace); None past u64. Lets a caller refuse a size before building it: a sparse
    /// file may legally grow to a terabyte with one truncate.
    pub(crate) fn len_after(&self, before: u64, payload_len: u64) -> Option<u64> {
        match self {
            ContentOp::Reset { size } | ContentOp::Truncate { size } => Some(*size),
            ContentOp::Write { offset, .. } => Some(before.max(offset.checked_add(payload_len)?)),
            ContentOp::Replace { .. } => Some(payload_len),
            ContentOp::Set(bytes) => Some(bytes.len() as u64),
        }
    }

    pub(crate) fn has_payload(&self) -> bool {
        matches!(self, ContentOp::Write { .. } | ContentOp::Replace { .. })
    }

    /// Applies the op to `content`; `payload` is the data of Write/Replace.
    pub(crate) fn apply(&self, content: &mut Vec<u8>, payload: &[u8]) -> Result<(), StoreError> {
        match self {
            ContentOp::Reset { size } => {
                content.clear();
                content.resize(to_len(*size)?, 0);
            }
            ContentOp::Write { offset, len } => {
                if payload.len() as u64 != *len {
                    return Err(StoreError::corrupt(format!(
                        "write payload is {} bytes, header says {len}",
                        payload.len()
                    )));
                }
                let start = to_len(*offset)?;
                let end = start.checked_add(payload.len()).ok_or_else(|| {
                    StoreError::corrupt(format!("a write at offset {offset} ends past 2^64"))
                })?;
                if content.len() < end {
                    content.resize(end, 0);
                }
                content[start..end].copy_from_slice(payload);
            }
            ContentOp::Truncate { size } => content.resize(to_len(*size)?, 0),
            ContentOp::Replace { .. } => {
                content.clear();
                content.extend_from_slice(payload);
            }
            ContentOp::Set(bytes) => {
                content.clear();
                content.extend_from_slice(bytes);
            }
        }
        Ok(())
    }
}

fn to_len(size: u64) -> Result<usize, StoreError> {
    usize::try_from(size)
        .map_err(|_| StoreError::corrupt(format!("file size {size} does not fit in memory")))
}

/// A node's content at the keyframe's seq: either whole, or a patch against the node's keyframe
/// at `base` (depth counts patches down to the nearest whole keyframe, bounding replay).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Keyframe {
    pub base: Option<Seq>,
    pub depth: u32,
    /// zstd-compressed content (when `base` is None) or a patch ([`apply_keyframe_patch`]).
    pub body: Vec<u8>,
}

/// Tags a keyframe patch body as one zstd frame compressed with the base as a raw prefix.
/// Untagged bodies (format 2 and older) are a zstd-compressed bsdiff patch: they start with the
/// zstd magic number, whose first byte (0x28) is never this tag.
const KEYFRAME_ZSTD_PATCH: u8 = 0x01;
/// zstd's largest window; a frame claiming more is refused, not allocated.
const MAX_WINDOW_LOG: u32 = 31;

/// Encodes `content` as a patch on `base`. zstd with long-distance matching and a window that
/// spans both finds the base's bytes wherever they moved (a grown log is one long match), at
/// zstd's speed: bidiff's suffix sort took 12 s for a 32 MiB log grown by 8 MiB where this takes
/// 0.1 s, with a patch a quarter smaller. Keyframes are made on the recording thread, so that
/// difference was most of the recorder's CPU under small writes.
pub(crate) fn encode_keyframe_patch(base: &[u8], content: &[u8]) -> Vec<u8> {
    use zstd::zstd_safe::{self, CCtx, CParameter};
    let span = (base.len() + content.len()).max(1 << 10);
    let window_log = span
        .next_power_of_two()
        .trailing_zeros()
        .min(MAX_WINDOW_LOG);
    // compress2 writes from the start of the buffer it is given, so the frame gets its own.
    let mut frame = Vec::with_capacity(zstd_safe::compress_bound(content.len()));
    let mut cctx = CCtx::create();
    let compressed = cctx
        .set_parameter(CParameter::CompressionLevel(ZSTD_LEVEL))
        .and_then(|_| cctx.set_parameter(CParameter::WindowLog(window_log)))
        .and_then(|_| cctx.set_parameter(CParameter::EnableLongDistanceMatching(true)))
        .and_then(|_| cctx.ref_prefix(base))
        .and_then(|_| cctx.compress2(&mut frame, content));
    compressed.expect("zstd into a buffer of compress_bound bytes cannot fail");
    let mut body = Vec::with_capacity(1 + frame.len());
    body.push(KEYFRAME_ZSTD_PATCH);
    body.extend_from_slice(&frame);
    body
}

/// Applies a keyframe patch body (either encoding) to `base`.
pub(crate) fn apply_keyframe_patch(
    what: &str,
    body: &[u8],
    base: &[u8],
) -> Result<Vec<u8>, StoreError> {
    let unreadable =
        |e: &dyn std::fmt::Display| StoreError::corrupt(format!("{what} is unreadable: {e}"));
    let mut out = Vec::new();
    if let Some((&KEYFRAME_ZSTD_PATCH, frame)) = body.split_first() {
        let mut decoder = zstd::stream::read::Decoder::with_ref_prefix(frame, base)
            .map_err(|e| unreadable(&e))?;
        decoder
            .window_log_max(MAX_WINDOW_LOG)
            .map_err(|e| unreadable(&e))?;
        std::io::Read::read_to_end(&mut decoder, &mut out).map_err(|e| unreadable(&e))?;
    } else {
        let patch = unzstd(body).map_err(|e| unreadable(&e))?;
        let mut reader =
            bipatch::Reader::new(std::io::Cursor::new(patch), std::io::Cursor::new(base))
                .map_err(|e| unreadable(&e))?;
        std::io::Read::read_to_end(&mut reader, &mut out).map_err(|e| unreadable(&e))?;
    }
    Ok(out)
}

const RAW: u8 = 0;
const ZSTD: u8 = 1;
/// A [`SegRef`] to the payload's bytes, which are themselves [`RAW`] or [`DELTA`] encoded.
pub(crate) const SEGMENT: u8 = 3;
/// A keyframe body that is a [`SegRef`] to the real body (whole keyframes start with zstd's
/// magic number 0x28, patches with [`KEYFRAME_ZSTD_PATCH`] or zstd's magic).
pub(crate) const KEYFRAME_IN_SEGMENT: u8 = 0x02;

/// Bytes `start..start + len` of the decoded segment block at `block`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SegRef {
    pub block: crate::segment::BlockAddr,
    pub start: u64,
    pub len: u64,
}

pub(crate) fn encode_segment_ref(tag: u8, r: &SegRef) -> Vec<u8> {
    let mut out = vec![tag];
    bincode_options()
        .serialize_into(&mut out, r)
        .expect("bincode serialization into memory cannot fail");
    out
}

/// The [`SegRef`] in a value tagged `tag`, or None if the value holds its bytes itself.
pub(crate) fn parse_segment_ref(
    what: &str,
    tag: u8,
    value: &[u8],
) -> Result<Option<SegRef>, StoreError> {
    match value.split_first() {
        Some((&t, rest)) if t == tag => decode(what, rest).map(Some),
        _ => Ok(None),
    }
}

/// A payload as format 4 packs it into a segment block: the block compresses it, with its
/// neighbours.
pub(crate) fn encode_payload_raw(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 1);
    out.push(RAW);
    out.extend_from_slice(data);
    out
}
/// A [`DeltaRef`], then one zstd frame compressed with the reference content as a raw prefix.
const DELTA: u8 = 2;
/// Below this, a zstd frame header costs more than it saves.
const MIN_COMPRESS: usize = 64;
pub(crate) const ZSTD_LEVEL: i32 = 3;
/// The level of segment blocks while the writer is told to hurry ([`crate::Writer::hurry`]):
/// any level decodes the same, so readers never know.
pub(crate) const FAST_ZSTD_LEVEL: i32 = 1;
/// The deepest delta chain a reader follows; deeper ones can only come from damage, and the
/// recursion that decodes a chain must stay well within a thread's stack.
pub(crate) const MAX_DELTA_DEPTH: u32 = 256;

/// Payload encoding: a tag byte, then the bytes raw or as one zstd frame, whichever is smaller.
pub(crate) fn encode_payload(data: &[u8]) -> Vec<u8> {
    if data.len() >= MIN_COMPRESS {
        if let Ok(packed) = zstd::bulk::compress(data, ZSTD_LEVEL) {
            if packed.len() < data.len() {
                let mut out = Vec::with_capacity(packed.len() + 1);
                out.push(ZSTD);
                out.extend_from_slice(&packed);
                return out;
            }
        }
    }
    let mut out = Vec::with_capacity(data.len() + 1);
    out.push(RAW);
    out.extend_from_slice(data);
    out
}

/// The content a delta-encoded payload was compressed against: `node`'s content right after
/// `seq`, which is always before the payload record's first seq (so decoding walks strictly
/// back in time). `depth` bounds the chain: the reference content is rebuilt only from payloads
/// of depth below it, and depth 0 payloads are standalone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DeltaRef {
    pub node: NodeId,
    pub seq: Seq,
    pub depth: u32,
}

/// [`DeltaRef`] as stored: the seq counted back from the record's first seq, which is mostly a
/// one-byte varint where the seq itself would take three to five.
#[derive(Serialize, Deserialize)]
struct StoredDeltaRef {
    node: NodeId,
    back: Seq,
    depth: u32,
}

/// Encodes `data` against `base` (the content `reference` names). zstd with the base as a raw
/// prefix beats a bsdiff patch on small edits (no per-byte difference stream to compress) and
/// also finds moved or shifted text.
/// `first` is the seq the record is keyed by; `reference.seq` must be before it.
pub(crate) fn encode_payload_delta(
    data: &[u8],
    first: Seq,
    reference: DeltaRef,
    base: &[u8],
) -> Vec<u8> {
    use zstd::zstd_safe::{self, CCtx, CParameter};
    assert!(
        reference.seq < first,
        "a delta must refer to an earlier content"
    );
    // compress2 writes from the start of the buffer it is given, so the frame gets its own.
    let mut frame = Vec::with_capacity(zstd_safe::compress_bound(data.len()));
    let mut cctx = CCtx::create();
    let compressed = cctx
        .set_parameter(CParameter::CompressionLevel(ZSTD_LEVEL))
        .and_then(|_| cctx.ref_prefix(base))
        .and_then(|_| cctx.compress2(&mut frame, data));
    compressed.expect("zstd into a buffer of compress_bound bytes cannot fail");
    let header = encode(&StoredDeltaRef {
        node: reference.node,
        back: first - reference.seq,
        depth: reference.depth,
    });
    let mut out = Vec::with_capacity(1 + header.len() + frame.len());
    out.push(DELTA);
    out.extend_from_slice(&header);
    out.extend_from_slice(&frame);
    out
}

/// A stored payload record, before any reference content is fetched.
pub(crate) enum StoredPayload<'a> {
    Plain(Vec<u8>),
    Delta {
        reference: DeltaRef,
        frame: &'a [u8],
    },
}

/// `first` is the seq the record is keyed by.
pub(crate) fn parse_payload<'a>(
    what: &str,
    first: Seq,
    stored: &'a [u8],
) -> Result<StoredPayload<'a>, StoreError> {
    match stored.split_first() {
        Some((&RAW, rest)) => Ok(StoredPayload::Plain(rest.to_vec())),
        Some((&ZSTD, rest)) => unzstd(rest)
            .map(StoredPayload::Plain)
            .map_err(|e| StoreError::corrupt(format!("{what} is unreadable: {e}"))),
        Some((&DELTA, rest)) => {
            let mut frame = rest;
            let stored: StoredDeltaRef = bincode_options()
                .deserialize_from(&mut frame)
                .map_err(|e| StoreError::corrupt(format!("{what} has a bad reference: {e}")))?;
            let seq = first
                .checked_sub(stored.back)
                .filter(|_| stored.back > 0)
                .ok_or_else(|| StoreError::corrupt(format!("{what} refers to a later content")))?;
            let reference = DeltaRef {
                node: stored.node,
                seq,
                depth: stored.depth,
            };
            Ok(StoredPayload::Delta { reference, frame })
        }
        _ => Err(StoreError::corrupt(format!(
            "{what} has an unknown encoding"
        ))),
    }
}

/// Decodes a [`StoredPayload::Delta`] frame given its reference content.
pub(crate) fn undelta(what: &str, frame: &[u8], base: &[u8]) -> Result<Vec<u8>, StoreError> {
    let unreadable = |e: std::io::Error| StoreError::corrupt(format!("{what} is unreadable: {e}"));
    // Streaming, so a damaged frame header cannot make us allocate what it claims.
    let mut decoder =
        zstd::stream::read::Decoder::with_ref_prefix(frame, base).map_err(unreadable)?;
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut decoder, &mut out).map_err(unreadable)?;
    Ok(out)
}

/// Data of one node's events within one block, in seq order.
pub(crate) type PayloadBlock = Vec<(Seq, Vec<u8>)>;

/// Encodes a payload block. bincode writes a plain `Vec<u8>` one element at a time (27% of the
/// recorder's CPU under 4 KiB writes, in a profile); as `serde_bytes` it is one copy. For bincode
/// both are the same bytes (a length, then the bytes), so stores written before still decode.
pub(crate) fn encode_payload_block(block: &PayloadBlock) -> Vec<u8> {
    let view: Vec<(Seq, &serde_bytes::Bytes)> = block
        .iter()
        .map(|(seq, data)| (*seq, serde_bytes::Bytes::new(data)))
        .collect();
    encode(&view)
}

pub(crate) fn decode_payload_block(what: &str, raw: &[u8]) -> Result<PayloadBlock, StoreError> {
    let block: Vec<(Seq, serde_bytes::ByteBuf)> = decode(what, raw)?;
    Ok(block
        .into_iter()
        .map(|(seq, data)| (seq, data.into_vec()))
        .collect())
}

pub(crate) fn zstd_bytes(data: &[u8]) -> Vec<u8> {
    zstd::stream::encode_all(data, ZSTD_LEVEL).expect("zstd into memory cannot fail")
}

pub(crate) fn unzstd(data: &[u8]) -> std::io::Result<Vec<u8>> {
    zstd::stream::decode_all(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An entry as checkpoints of each era laid it out: formats 1-4 (no owner), the first
    /// format-5 ones (owner, no xattrs).
    #[derive(Serialize)]
    struct OldEntry {
        node: NodeId,
        kind: EntryKind,
        mode: u32,
        mtime_ns: i128,
        exact: bool,
    }

    #[derive(Serialize)]
    struct OwnedOldEntry {
        node: NodeId,
        kind: EntryKind,
        mode: u32,
        mtime_ns: i128,
        exact: bool,
        owner: Owner,
    }

    #[derive(Serialize)]
    struct OldNamespace<E> {
        entries: std::collections::BTreeMap<RecPath, E>,
    }

    fn old_checkpoint(owner: Option<Owner>) -> Vec<u8> {
        let path = RecPath::normalize(b"/a").unwrap();
        let (node, kind, mode, mtime_ns, exact) = (7, EntryKind::File { size: 3 }, 0o640, 42, true);
        let bytes = match owner {
            None => encode(&OldNamespace {
                entries: [(
                    path,
                    OldEntry {
                        node,
                        kind,
                        mode,
                        mtime_ns,
                        exact,
                    },
                )]
                .into(),
            }),
            Some(owner) => encode(&OldNamespace {
                entries: [(
                    path,
                    OwnedOldEntry {
                        node,
                        kind,
                        mode,
                        mtime_ns,
                        exact,
                        owner,
                    },
                )]
                .into(),
            }),
        };
        zstd_bytes(&bytes)
    }

    #[test]
    fn checkpoints_of_every_era_decode() {
        let path = RecPath::normalize(b"/a").unwrap();
        // Formats 1-4: a bare zstd frame; its entries are root's.
        let legacy = decode_checkpoint(&old_checkpoint(None)).unwrap();
        let e = legacy.entry(&path).unwrap();
        assert_eq!((e.node, e.mode, e.mtime_ns), (7, 0o640, 42));
        assert_eq!(e.owner, Owner::default());
        assert!(e.xattrs.is_empty());
        assert_eq!(legacy.names_of(7).count(), 1, "reindexed");

        let owner = Owner { uid: 1000, gid: 5 };
        let mut tagged = vec![CHECKPOINT_WITH_OWNERS];
        tagged.extend(old_checkpoint(Some(owner)));
        let owned = decode_checkpoint(&tagged).unwrap();
        assert_eq!(owned.entry(&path).unwrap().owner, owner);

        // Today's: written and read back whole.
        let mut entry = owned.entry(&path).unwrap().clone();
        entry.xattrs.insert(b"user.k".to_vec(), b"v".to_vec());
        let now = Namespace::from_entries([(path.clone(), entry.clone())].into());
        let back = decode_checkpoint(&encode_checkpoint(&now)).unwrap();
        assert_eq!(back.entry(&path), Some(&entry));
    }

    #[test]
    fn payload_blocks_keep_the_bytes_plain_vectors_had() {
        let block: PayloadBlock = vec![(7, b"hello".to_vec()), (9, vec![0, 255, 1]), (12, vec![])];
        let fast = encode_payload_block(&block);
        // What stores written before serde_bytes hold: the same value through plain Vec<u8>.
        assert_eq!(fast, encode(&block));
        assert_eq!(decode_payload_block("a block", &fast).unwrap(), block);
    }

    /// Text that compresses like a log but never repeats exactly.
    fn log_lines(seed: u64, bytes: usize) -> Vec<u8> {
        let mut state = seed;
        let mut out = Vec::with_capacity(bytes + 64);
        while out.len() < bytes {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let n = state >> 33;
            out.extend_from_slice(format!("t={} id={} took {}us\n", n % 60, n, n % 977).as_bytes());
        }
        out
    }

    #[test]
    fn keyframe_patches_rebuild_grown_and_edited_contents() {
        // 24 MiB of base: a grown log's match lies farther back than zstd's default window.
        let base = log_lines(1, 24 << 20);
        let tail = log_lines(2, 1 << 20);
        let mut grown = base.clone();
        grown.extend_from_slice(&tail);
        let mut edited = base.clone();
        edited[5 << 20] ^= 0xff;
        edited.drain(9 << 20..(9 << 20) + 100);
        // What each patch may cost: about the new bytes, compressed (the whole would be ~9 MiB).
        let cases = [
            (grown, zstd_bytes(&tail).len() * 9 / 8),
            (edited, 4096),
            (Vec::new(), 64),
        ];
        for (content, most) in cases {
            let patch = encode_keyframe_patch(&base, &content);
            assert!(
                patch.len() <= most,
                "patch of {} bytes, at most {most}",
                patch.len()
            );
            let back = apply_keyframe_patch("a keyframe", &patch, &base);
            assert!(
                back.as_ref().ok() == Some(&content),
                "{} bytes: {back:?}",
                content.len()
            );
        }
    }

    #[test]
    fn keyframe_patches_of_older_stores_still_apply() {
        // Format 2 stored a zstd-compressed bsdiff patch.
        let base = log_lines(3, 200_000);
        let mut content = base.clone();
        content.extend_from_slice(b"one more line\n");
        let mut patch = Vec::new();
        bidiff::simple_diff(&base, &content, &mut patch).unwrap();
        let body = zstd_bytes(&patch);
        assert!(apply_keyframe_patch("a keyframe", &body, &base).unwrap() == content);
    }

    #[test]
    fn a_damaged_keyframe_patch_is_an_error() {
        let base = log_lines(4, 10_000);
        let mut patch = encode_keyframe_patch(&base, &log_lines(5, 10_000));
        patch.truncate(patch.len() / 2);
        let err = apply_keyframe_patch("keyframe of node 7", &patch, &base).unwrap_err();
        assert!(err.to_string().contains("keyframe of node 7"), "{err}");
    }
}
