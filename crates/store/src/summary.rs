//! What `log`, `history` and `diff` show: events described without their data bytes, and the
//! difference between two moments.

use crate::codec::{EventHeader, OpHeader};
use crate::error::StoreError;
use crate::model::{
    Entry, EntryKind, MarkerKind, NodeId, NodeKind, Owner, Process, RecPath, Seq, Target,
};
use crate::namespace::Namespace;
use crate::reader::Store;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashSet};
use std::fmt;

/// One event as a person reads it; paths of node-naming ops are resolved to the node's names
/// at that moment (empty if it had none, e.g. written after unlink).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub seq: Seq,
    pub time: u64,
    pub process: Option<Process>,
    pub op: OpSummary,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum OpKind {
    Create,
    Mkdir,
    Symlink,
    Adopt,
    Link,
    Rename,
    Exchange,
    Unlink,
    Rmdir,
    Write,
    Truncate,
    Chmod,
    Resync,
    Marker,
    Chown,
    SetTimes,
    SetXattrs,
}

impl OpKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OpKind::Create => "create",
            OpKind::Mkdir => "mkdir",
            OpKind::Symlink => "symlink",
            OpKind::Adopt => "adopt",
            OpKind::Link => "link",
            OpKind::Rename => "rename",
            OpKind::Exchange => "exchange",
            OpKind::Unlink => "unlink",
            OpKind::Rmdir => "rmdir",
            OpKind::Write => "write",
            OpKind::Truncate => "truncate",
            OpKind::Chmod => "chmod",
            OpKind::Resync => "resync",
            OpKind::Marker => "marker",
            OpKind::Chown => "chown",
            OpKind::SetTimes => "utimes",
            OpKind::SetXattrs => "xattrs",
        }
    }
}

impl fmt::Display for OpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An op without its data. Fields that do not apply to the kind are None / empty.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpSummary {
    pub kind: OpKind,
    /// The paths the op names (rename: from, to; exchange: a, b) or, for ops naming a node, the
    /// node's names just before the op.
    pub paths: Vec<RecPath>,
    /// The node the op acts on (rename/exchange/unlink/rmdir: the one at its first path).
    pub node: Option<NodeId>,
    /// Data length of Write / Resync.
    pub bytes: Option<u64>,
    pub offset: Option<u64>,
    pub mode: Option<u32>,
    /// Truncate's new size, Adopt's size.
    pub size: Option<u64>,
    pub node_kind: Option<NodeKind>,
    /// Symlink target.
    pub target: Option<Vec<u8>>,
    pub marker: Option<MarkerKind>,
    pub detail: Option<String>,
    /// Chown's new owner.
    #[serde(default)]
    pub owner: Option<Owner>,
    /// SetTimes' new mtime, ns since the epoch.
    #[serde(default)]
    pub mtime_ns: Option<i128>,
}

impl OpSummary {
    fn new(kind: OpKind) -> Self {
        OpSummary {
            kind,
            paths: Vec::new(),
            node: None,
            bytes: None,
            offset: None,
            mode: None,
            size: None,
            node_kind: None,
            target: None,
            marker: None,
            detail: None,
            owner: None,
            mtime_ns: None,
        }
    }

    /// Describes `op` against the name space just before it applies.
    fn describe(op: &OpHeader, ns: &Namespace) -> Self {
        let names = |node: NodeId| ns.names_of(node).cloned().collect::<Vec<_>>();
        let target_paths = |t: &Target| match t {
            Target::Path(p) => vec![p.clone()],
            Target::Node(n) => names(*n),
        };
        match op {
            OpHeader::Create { node, path, mode } | OpHeader::Mkdir { node, path, mode } => {
                let kind = if matches!(op, OpHeader::Create { .. }) {
                    OpKind::Create
                } else {
                    OpKind::Mkdir
                };
                OpSummary {
                    paths: vec![path.clone()],
                    node: Some(*node),
                    mode: Some(*mode),
                    ..Self::new(kind)
                }
            }
            OpHeader::Symlink { node, path, target } => OpSummary {
                paths: vec![path.clone()],
                node: Some(*node),
                target: Some(target.clone()),
                ..Self::new(OpKind::Symlink)
            },
            OpHeader::Adopt {
                node,
                path,
                kind,
                mode,
                size,
            } => OpSummary {
                paths: vec![path.clone()],
                node: Some(*node),
                mode: Some(*mode),
                size: Some(*size),
                node_kind: Some(*kind),
                ..Self::new(OpKind::Adopt)
            },
            OpHeader::Link { node, path } => OpSummary {
                paths: vec![path.clone()],
                node: Some(*node),
                ..Self::new(OpKind::Link)
            },
            OpHeader::Rename { from, to } => OpSummary {
                paths: vec![from.clone(), to.clone()],
                node: ns.entry(from).map(|e| e.node),
                ..Self::new(OpKind::Rename)
            },
            OpHeader::Exchange { a, b } => OpSummary {
                paths: vec![a.clone(), b.clone()],
                node: ns.entry(a).map(|e| e.node),
                ..Self::new(OpKind::Exchange)
            },
            OpHeader::Unlink { path } | OpHeader::Rmdir { path } => {
                let kind = if matches!(op, OpHeader::Unlink { .. }) {
                    OpKind::Unlink
                } else {
                    OpKind::Rmdir
                };
                OpSummary {
                    paths: vec![path.clone()],
                    node: ns.entry(path).map(|e| e.node),
                    ..Self::new(kind)
                }
            }
            OpHeader::Write { node, offset, len } => OpSummary {
                paths: names(*node),
                node: Some(*node),
                bytes: Some(*len),
                offset: Some(*offset),
                ..Self::new(OpKind::Write)
            },
            OpHeader::Truncate { target, size } => OpSummary {
                paths: target_paths(target),
                node: ns.resolve(target),
                size: Some(*size),
                ..Self::new(OpKind::Truncate)
            },
            OpHeader::Chmod { target, mode } => OpSummary {
                paths: target_paths(target),
                node: ns.resolve(target),
                mode: Some(*mode),
                ..Self::new(OpKind::Chmod)
            },
            OpHeader::Resync { node, len, inline } => OpSummary {
                paths: names(*node),
                node: Some(*node),
                bytes: Some(*len),
                target: inline.clone(),
                ..Self::new(OpKind::Resync)
            },
            OpHeader::Marker { kind, detail } => OpSummary {
                marker: Some(*kind),
                detail: Some(detail.clone()),
                ..Self::new(OpKind::Marker)
            },
            OpHeader::Chown { target, owner } => OpSummary {
                paths: target_paths(target),
                node: ns.resolve(target),
                owner: Some(*owner),
                ..Self::new(OpKind::Chown)
            },
            OpHeader::SetXattrs { target, xattrs } => OpSummary {
                paths: target_paths(target),
                node: ns.resolve(target),
                detail: Some(
                    xattrs
                        .keys()
                        .map(|k| String::from_utf8_lossy(k).into_owned())
                        .collect::<Vec<_>>()
                        .join(" "),
                ),
                ..Self::new(OpKind::SetXattrs)
            },
            OpHeader::SetTimes { target, mtime_ns } => OpSummary {
                paths: target_paths(target),
                node: ns.resolve(target),
                mtime_ns: Some(*mtime_ns),
                ..Self::new(OpKind::SetTimes)
            },
        }
    }

    /// Whether the op can change what is at or below its paths (not just the path itself).
    fn affects_subtree(&self) -> bool {
        !matches!(
            self.kind,
            OpKind::Write
                | OpKind::Truncate
                | OpKind::Chmod
                | OpKind::Chown
                | OpKind::SetTimes
                | OpKind::SetXattrs
                | OpKind::Resync
                | OpKind::Marker
        )
    }
}

/// Walks the log describing events, keeping the name space in step to resolve node names.
struct SummaryWalk<'a, I> {
    headers: I,
    ns: Namespace,
    store: &'a Store,
}

impl<I> Iterator for SummaryWalk<'_, I>
where
    I: Iterator<Item = Result<(Seq, EventHeader), StoreError>>,
{
    type Item = Result<Summary, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        let (seq, header) = match self.headers.next()? {
            Ok(item) => item,
            Err(e) => return Some(Err(e)),
        };
        let op = OpSummary::describe(&header.op, &self.ns);
        self.ns
            .apply(seq, self.store.clock.wall(header.time), &header.op);
        Some(Ok(Summary {
            seq,
            time: header.time,
            process: header.process,
            op,
        }))
    }
}

/// How an entry differs between two moments.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChangeKind {
    Added,
    Removed,
    Modified,
    /// File became directory, etc.
    TypeChanged,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub path: RecPath,
    pub kind: ChangeKind,
    pub before: Option<Entry>,
    pub after: Option<Entry>,
}

impl Store {
    /// Events `from..=to` described without reading their data bytes.
    pub fn summaries(
        &self,
        from: Seq,
        to: Seq,
    ) -> impl Iterator<Item = Result<Summary, StoreError>> + '_ {
        let from = from.max(1);
        let start = self.namespace_at(from - 1);
        let (ns, failed) = match start {
            Ok(ns) => (ns, None),
            Err(e) => (Namespace::default(), Some(Err(e))),
        };
        let walk = failed.is_none().then(|| SummaryWalk {
            headers: self.records.headers(from, to),
            ns,
            store: self,
        });
        failed.into_iter().chain(walk.into_iter().flatten())
    }

    /// Every event that touched `path`: named it (or a directory above it, for ops that move or
    /// remove subtrees), changed what is at it, or named a node that was ever at it (so writes
    /// made under other names, before a rename or through a hard link, are included).
    pub fn history(&self, path: &RecPath) -> Result<Vec<Summary>, StoreError> {
        let last = self.span().last_seq;
        // First pass: which nodes were ever at `path`.
        let mut nodes = HashSet::new();
        let mut ns = Namespace::default();
        for item in self.records.headers(1, last) {
            let (seq, header) = item?;
            ns.apply(seq, self.clock.wall(header.time), &header.op);
            if let Some(entry) = ns.entry(path) {
                nodes.insert(entry.node);
            }
        }
        let mut out = Vec::new();
        let mut ns = Namespace::default();
        for item in self.records.headers(1, last) {
            let (seq, header) = item?;
            let op = OpSummary::describe(&header.op, &ns);
            let before = ns.entry(path).map(|e| e.node);
            ns.apply(seq, self.clock.wall(header.time), &header.op);
            let replaced = before != ns.entry(path).map(|e| e.node);
            let names_path = op
                .paths
                .iter()
                .any(|p| p == path || (op.affects_subtree() && path.starts_with(p)));
            let names_node = op.node.is_some_and(|n| nodes.contains(&n));
            if replaced || names_path || names_node {
                out.push(Summary {
                    seq,
                    time: header.time,
                    process: header.process,
                    op,
                });
            }
        }
        Ok(out)
    }

    /// Entries that differ between right after `from` and right after `to`. Files count as
    /// modified only if their mode, owner or bytes differ (reads content only when sizes match and the
    /// log shows writes in between).
    pub fn changes(&self, from: Seq, to: Seq) -> Result<Vec<Change>, StoreError> {
        let before = self.tree_at(from)?;
        let after = self.tree_at(to)?;
        let paths: BTreeSet<&RecPath> = before.entries.keys().chain(after.entries.keys()).collect();
        let mut out = Vec::new();
        for path in paths {
            let (b, a) = (before.entries.get(path), after.entries.get(path));
            let kind = match (b, a) {
                (None, None) => continue,
                (None, Some(_)) => ChangeKind::Added,
                (Some(_), None) => ChangeKind::Removed,
                (Some(b), Some(a)) => match self.entry_change(b, from, a, to)? {
                    Some(kind) => kind,
                    None => continue,
                },
            };
            out.push(Change {
                path: path.clone(),
                kind,
                before: b.cloned(),
                after: a.cloned(),
            });
        }
        Ok(out)
    }

    fn entry_change(
        &self,
        before: &Entry,
        from: Seq,
        after: &Entry,
        to: Seq,
    ) -> Result<Option<ChangeKind>, StoreError> {
        if (before.owner != after.owner || before.xattrs != after.xattrs)
            && std::mem::discriminant(&before.kind) == std::mem::discriminant(&after.kind)
        {
            return Ok(Some(ChangeKind::Modified));
        }
        let modified = match (&before.kind, &after.kind) {
            (EntryKind::Dir, EntryKind::Dir) => before.mode != after.mode,
            (EntryKind::Symlink { target: x }, EntryKind::Symlink { target: y }) => {
                x != y || before.mode != after.mode
            }
            (EntryKind::File { size: x }, EntryKind::File { size: y }) => {
                if x != y || before.mode != after.mode {
                    true
                } else if before.node == after.node {
                    let (lo, hi) = (from.min(to), from.max(to));
                    self.records.content_changed(before.node, lo + 1, hi)?
                        && self.read_content(before.node, from)?
                            != self.read_content(after.node, to)?
                } else {
                    self.read_content(before.node, from)? != self.read_content(after.node, to)?
                }
            }
            _ => return Ok(Some(ChangeKind::TypeChanged)),
        };
        Ok(modified.then_some(ChangeKind::Modified))
    }
}
