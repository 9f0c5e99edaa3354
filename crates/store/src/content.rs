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

use crate::codec::{self, Keyframe, PayloadBlock, StoredPayload};
use crate::error::StoreError;
use crate::model::{NodeId, Seq};
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
