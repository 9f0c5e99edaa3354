//! Checking a recording through: every segment block the index refers to is read against its
//! checksum, and each damaged one is traced to the files and moments it breaks, so a person
//! knows what of the recording still holds (everything else exports as usual).

use crate::content::ContentReader;
use crate::error::StoreError;
use crate::model::{NodeId, Seq};
use crate::records::Records;
use crate::segment::BlockAddr;
use std::collections::{BTreeMap, HashMap};

/// What a segment block holds for the index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SegmentUse {
    /// Written data of a file (a payload record).
    Data,
    /// A keyframe: a file's whole content at a moment.
    Keyframe,
}

/// Content of one file that cannot be rebuilt for a span of moments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    pub node: NodeId,
    pub what: SegmentUse,
    /// The damaged block and what is wrong with it.
    pub reason: String,
    /// The first moment whose content of `node` cannot be rebuilt.
    pub from: Seq,
    /// The first later moment from which it can be again (the file was rewritten from scratch,
    /// or a keyframe holds it whole); `None`: up to the end of the recording.
    pub until: Option<Seq>,
}

/// The outcome of [`crate::Store::verify`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verification {
    /// Distinct segment blocks read and checked.
    pub blocks: u64,
    /// Damaged spans, by file and moment.
    pub damage: Vec<Damage>,
}

pub(crate) fn verify(records: &Records) -> Result<Verification, StoreError> {
    let mut checked: HashMap<BlockAddr, Option<String>> = HashMap::new();
    // The earliest damaged record per (node, use): later damage of the same file lies inside
    // the span the earliest one starts, or is found again when that span ends.
    let mut first_bad: BTreeMap<(NodeId, SegmentUse), (Seq, String)> = BTreeMap::new();
    for item in records.segment_refs() {
        let (what, node, seq, r) = item?;
        let verdict = checked.entry(r.block).or_insert_with(|| {
            records.check_block(r.block).err().map(|e| match e {
                StoreError::Corrupt { what } => what,
                other => other.to_string(),
            })
        });
        if let Some(reason) = verdict {
            let slot = first_bad
                .entry((node, what))
                .or_insert((seq, reason.clone()));
            if seq < slot.0 {
                *slot = (seq, reason.clone());
            }
        }
    }
    let mut damage = Vec::new();
    for ((node, what), (from, reason)) in first_bad {
        let until = healed_at(records, node, from)?;
        damage.push(Damage {
            node,
            what,
            reason,
            from,
            until,
        });
    }
    damage.sort_by_key(|d| (d.from, d.node));
    Ok(Verification {
        blocks: checked.len() as u64,
        damage,
    })
}

/// The first moment after `from` at which `node`'s content rebuilds again. Only a reset op or
/// a keyframe can end a damaged span (every other op builds on what came before), so those are
/// the only moments tried, in order, each read through.
fn healed_at(records: &Records, node: NodeId, from: Seq) -> Result<Option<Seq>, StoreError> {
    let end = records.committed();
    let mut candidates: Vec<Seq> = records
        .content_ops(node, from + 1, end)?
        .into_iter()
        .filter(|(_, op)| op.is_reset())
        .map(|(seq, _)| seq)
        .chain(records.keyframe_seqs(node, from + 1, end)?)
        .collect();
    candidates.sort_unstable();
    candidates.dedup();
    for seq in candidates {
        if reads_through(records, node, seq) {
            return Ok(Some(seq));
        }
    }
    Ok(None)
}

fn reads_through(records: &Records, node: NodeId, seq: Seq) -> bool {
    let Ok(mut reader) = ContentReader::new(records, node, seq) else {
        return false;
    };
    // Holes skipped: a 100 GiB sparse file is checked by its data alone.
    let mut buf = vec![0u8; 256 << 10];
    while reader.position() < reader.len() {
        let hole = reader.hole_len();
        if hole > 0 {
            reader.skip(hole);
            continue;
        }
        match reader.read_into(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(_) => {}
        }
    }
    true
}
