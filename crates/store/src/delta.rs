//! Which content the writer compresses a file's new data against.
//!
//! Configs and similar files are mostly saved whole: truncated and rewritten in place, or written
//! to a new file that is renamed over the old one (a new node every time). Stored alone, each
//! save costs its whole compressed size although only a few bytes changed. So once a file's
//! content is reset (created, truncated to 0, resynced), the data that follows is compressed
//! against a reference content: for a create, the content of the node that last had that path
//! (in the atomic-save pattern, the previous temp file, by now renamed over the target); for
//! other resets, the node's own content just before. The choice is made at the reset, so it
//! works without knowing that a rename will follow.
//!
//! Committed blocks are mostly not yet committed when the next save comes (the recorder commits
//! about once a second), so reading references back from the store is not an option. Instead
//! this mirrors in memory, within a byte budget, the contents of recently reset small files by
//! applying the same content ops the store records; the mirror therefore equals what a reader
//! rebuilds at the same seq.

use crate::codec::ContentOp;
use crate::model::{NodeId, RecPath, Seq};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

#[derive(Clone, Debug)]
pub(crate) struct DeltaLimits {
    /// Files larger than this are not mirrored (neither referenced nor delta-encoded).
    pub max_file_bytes: usize,
    /// Memory for mirrored contents and the references in use.
    pub budget_bytes: usize,
    /// References chain at most this deep; the next version is stored standalone.
    pub max_depth: u32,
    /// ...and also no deeper than this many bytes of content rebuilt along the chain.
    pub chain_bytes: u64,
}

/// The content that data after a reset is compressed against.
#[derive(Clone, Debug)]
pub(crate) struct Reference {
    pub node: NodeId,
    /// `node`'s content right after this seq (the event before the reset).
    pub seq: Seq,
    /// Delta depth of the data compressed against it: one more than the reference's own.
    pub depth: u32,
    pub content: Arc<Vec<u8>>,
}

/// A mirrored file: its content since its last reset.
struct Known {
    content: Arc<Vec<u8>>,
    /// Delta depth of the node's data since its last reset (0: standalone).
    depth: u32,
    /// Distinguishes resets, so data of different resets is never grouped under one reference.
    epoch: u64,
    reference: Option<Reference>,
    tick: u64,
    /// Paths whose last node this is (entries of `References::last_at`).
    paths: Vec<RecPath>,
}

/// Rough bookkeeping cost of an entry beyond its bytes.
const ENTRY_OVERHEAD: usize = 160;

impl Known {
    fn cost(&self) -> usize {
        ENTRY_OVERHEAD
            + self.content.len()
            + self.reference.as_ref().map_or(0, |r| r.content.len())
            + self
                .paths
                .iter()
                .map(|p| p.as_bytes().len() + 48)
                .sum::<usize>()
    }
}

pub(crate) struct References {
    limits: DeltaLimits,
    known: HashMap<NodeId, Known>,
    /// The node that last had each path, among known nodes.
    last_at: HashMap<RecPath, NodeId>,
    /// Known nodes by last use, for eviction.
    lru: BTreeMap<u64, NodeId>,
    bytes: usize,
    tick: u64,
    next_epoch: u64,
}

impl References {
    pub(crate) fn new(limits: DeltaLimits) -> Self {
        References {
            limits,
            known: HashMap::new(),
            last_at: HashMap::new(),
            lru: BTreeMap::new(),
            bytes: 0,
            tick: 0,
            next_epoch: 1,
        }
    }

    /// Notes that `node` now has `path` (a rename or link), so a file created there later is
    /// compared with it.
    pub(crate) fn named(&mut self, node: NodeId, path: &RecPath) {
        if !self.known.contains_key(&node) {
            return;
        }
        self.update(node, |r| r.set_last_at(node, path));
    }

    /// Mirrors the content op of event `seq` on `node`; `created_at` is the path of a Create,
    /// `payload` the data of Write/Replace. Call before the op is stored, for every content op.
    pub(crate) fn apply(
        &mut self,
        seq: Seq,
        node: NodeId,
        op: &ContentOp,
        created_at: Option<&RecPath>,
        payload: &[u8],
    ) {
        let max = self.limits.max_file_bytes as u64;
        let payload_len = payload.len() as u64;
        if !op.is_reset() {
            let fits = self.update(node, |r| {
                let Some(k) = r.known.get_mut(&node) else {
                    return true;
                };
                // Checked before applying: the content is built in memory.
                op.len_after(k.content.len() as u64, payload_len)
                    .is_some_and(|len| len <= max)
                    && op.apply(Arc::make_mut(&mut k.content), payload).is_ok()
            });
            if !fits {
                self.forget(node);
            }
            return;
        }
        // A symlink's target is not worth a reference.
        if matches!(op, ContentOp::Set(_)) {
            self.forget(node);
            return;
        }
        let fits = op.len_after(0, payload_len).is_some_and(|len| len <= max);
        let mut content = Vec::new();
        if !fits || op.apply(&mut content, payload).is_err() {
            self.forget(node);
            return;
        }
        let candidate = created_at
            .and_then(|p| self.last_at.get(p).copied())
            .filter(|c| self.known.contains_key(c))
            .unwrap_or(node);
        let reference = self.reference_to(candidate, seq);
        if let Some(r) = &reference {
            self.touch(r.node);
        }
        let epoch = self.next_epoch;
        self.next_epoch += 1;
        let depth = reference.as_ref().map_or(0, |r| r.depth);
        let paths = self.take(node).map(|k| k.paths).unwrap_or_default();
        let k = Known {
            content: Arc::new(content),
            depth,
            epoch,
            reference,
            tick: 0,
            paths,
        };
        self.bytes += k.cost();
        self.known.insert(node, k);
        self.touch(node);
        if let Some(path) = created_at {
            self.update(node, |r| r.set_last_at(node, path));
        }
        self.evict();
    }

    /// The reset `node`'s current data belongs to, and the reference it is compressed against.
    pub(crate) fn epoch(&self, node: NodeId) -> Option<(u64, Option<&Reference>)> {
        self.known
            .get(&node)
            .map(|k| (k.epoch, k.reference.as_ref()))
    }

    /// `candidate`'s content just before event `seq`, if it is known, worth comparing with and
    /// within the chain limits.
    fn reference_to(&self, candidate: NodeId, seq: Seq) -> Option<Reference> {
        let k = self.known.get(&candidate)?;
        let depth = k.depth + 1;
        let rebuilt = u64::from(depth + 1).saturating_mul(k.content.len() as u64);
        if k.content.is_empty()
            || depth > self.limits.max_depth
            || rebuilt > self.limits.chain_bytes
        {
            return None;
        }
        Some(Reference {
            node: candidate,
            seq: seq.checked_sub(1)?,
            depth,
            content: k.content.clone(),
        })
    }

    fn set_last_at(&mut self, node: NodeId, path: &RecPath) {
        if let Some(old) = self.last_at.insert(path.clone(), node) {
            if let Some(k) = self.known.get_mut(&old) {
                k.paths.retain(|p| p != path);
            }
        }
        if let Some(k) = self.known.get_mut(&node) {
            if !k.paths.contains(path) {
                k.paths.push(path.clone());
            }
        }
    }

    /// Runs `change`, keeping the byte count of `node` (and of any node whose path it took) right.
    fn update<T>(&mut self, node: NodeId, change: impl FnOnce(&mut Self) -> T) -> T {
        let before = self.known.get(&node).map_or(0, Known::cost);
        let out = change(self);
        let after = self.known.get(&node).map_or(0, Known::cost);
        self.bytes = (self.bytes + after).saturating_sub(before);
        self.touch(node);
        self.evict();
        out
    }

    fn touch(&mut self, node: NodeId) {
        let Some(k) = self.known.get_mut(&node) else {
            return;
        };
        self.lru.remove(&k.tick);
        self.tick += 1;
        k.tick = self.tick;
        self.lru.insert(self.tick, node);
    }

    fn evict(&mut self) {
        while self.bytes > self.limits.budget_bytes {
            let Some((_, node)) = self.lru.pop_first() else {
                break;
            };
            self.forget(node);
        }
    }

    fn forget(&mut self, node: NodeId) {
        if let Some(k) = self.take(node) {
            for path in &k.paths {
                if self.last_at.get(path) == Some(&node) {
                    self.last_at.remove(path);
                }
            }
        }
    }

    /// Removes `node`'s entry, leaving its paths in `last_at` to the caller.
    fn take(&mut self, node: NodeId) -> Option<Known> {
        let k = self.known.remove(&node)?;
        self.lru.remove(&k.tick);
        self.bytes = self.bytes.saturating_sub(k.cost());
        Some(k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(p: &str) -> RecPath {
        RecPath::normalize(p.as_bytes()).unwrap()
    }

    fn limits() -> DeltaLimits {
        DeltaLimits {
            max_file_bytes: 1 << 20,
            budget_bytes: 8 << 20,
            max_depth: 3,
            chain_bytes: u64::MAX,
        }
    }

    fn write(r: &mut References, seq: Seq, node: NodeId, data: &[u8]) {
        let op = ContentOp::Write {
            offset: 0,
            len: data.len() as u64,
        };
        r.apply(seq, node, &op, None, data);
    }

    fn create(r: &mut References, seq: Seq, node: NodeId, p: &str) {
        r.apply(
            seq,
            node,
            &ContentOp::Reset { size: 0 },
            Some(&path(p)),
            &[],
        );
    }

    #[test]
    fn a_create_refers_to_the_node_that_last_had_its_path() {
        let mut r = References::new(limits());
        let mut seq = 0;
        let mut next = || {
            seq += 1;
            seq
        };
        create(&mut r, next(), 1, "/app.tmp");
        write(&mut r, next(), 1, b"version one");
        r.named(1, &path("/app.json"));
        create(&mut r, next(), 2, "/app.tmp");
        let (_, reference) = r.epoch(2).unwrap();
        let reference = reference.unwrap();
        assert_eq!((reference.node, reference.seq, reference.depth), (1, 2, 1));
        assert_eq!(reference.content.as_slice(), b"version one");
        write(&mut r, next(), 2, b"version two");
        r.named(2, &path("/app.json"));
        // A create where the last node was renamed away from also finds it.
        create(&mut r, next(), 3, "/app.json");
        let reference = r.epoch(3).unwrap().1.unwrap();
        assert_eq!((reference.node, reference.depth), (2, 2));
    }

    #[test]
    fn the_chain_is_cut_at_max_depth() {
        let mut r = References::new(limits());
        let mut depths = Vec::new();
        for i in 0..9u64 {
            create(&mut r, 2 * i + 1, i + 1, "/f.tmp");
            depths.push(r.epoch(i + 1).unwrap().1.map_or(0, |x| x.depth));
            write(&mut r, 2 * i + 2, i + 1, format!("version {i}").as_bytes());
        }
        assert_eq!(depths, [0, 1, 2, 3, 0, 1, 2, 3, 0]);
    }

    #[test]
    fn truncation_refers_to_the_content_before_it() {
        let mut r = References::new(limits());
        create(&mut r, 1, 7, "/f");
        write(&mut r, 2, 7, b"old content");
        r.apply(3, 7, &ContentOp::Truncate { size: 0 }, None, &[]);
        let reference = r.epoch(7).unwrap().1.unwrap();
        assert_eq!((reference.node, reference.seq), (7, 2));
        assert_eq!(reference.content.as_slice(), b"old content");
        // Truncation to a non-zero size keeps the reset's reference.
        r.apply(4, 7, &ContentOp::Truncate { size: 3 }, None, &[]);
        assert_eq!(r.epoch(7).unwrap().1.unwrap().seq, 2);
    }

    #[test]
    fn memory_stays_within_budget() {
        let mut r = References::new(DeltaLimits {
            max_file_bytes: 1000,
            budget_bytes: 10_000,
            ..limits()
        });
        for node in 1..200u64 {
            create(&mut r, node * 2, node, &format!("/f{node}"));
            write(&mut r, node * 2 + 1, node, &[b'x'; 900]);
            assert!(r.bytes <= 10_000, "{} bytes", r.bytes);
        }
        assert!(r.known.len() < 20);
        assert!(r.last_at.len() <= r.known.len());
        // Too large to mirror: forgotten.
        write(&mut r, 1000, 199, &[b'y'; 2000]);
        assert!(r.epoch(199).is_none());
    }
}
