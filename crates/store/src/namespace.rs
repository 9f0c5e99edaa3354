//! The name space at one moment (paths -> entries) and how each op changes it.
//!
//! Rules (the kernel already decided these ops succeeded, so the store never refuses one; when an
//! op does not fit what the store knows, some events were missed and the newest op wins):
//! - Creating ops (Create, Mkdir, Symlink, Adopt) first drop other names of a node id that is
//!   being created again, then create missing parents as implicit directories (mode 0755; a
//!   non-directory in the way is replaced), then replace whatever is at the path (with its
//!   subtree). A directory created where a directory already is keeps its children, because
//!   events from several CPUs can arrive with a child's creation before its parent's mkdir.
//! - Link adds a name for a known non-directory node (creating parents, replacing the path).
//! - Rename moves an entry with its subtree, replacing `to`; onto itself, from a missing path,
//!   into its own subtree or onto one of its ancestors it is a no-op. Exchange swaps two entries.
//! - Unlink and Rmdir remove whatever is at the path, with anything below it.
//! - A node lives while it has a name; ops on a node without names change nothing.
//! - Write and Truncate change a file's size; Resync sets a file's size or a symlink's target and
//!   marks it exact; Chmod sets the mode of any entry, Chown its owner, SetTimes its mtime,
//!   SetXattrs its extended attributes.
//!   Write, Truncate and Resync set the mtime to their moment; Chmod and Chown leave it. An op
//!   that adds or removes a name (all the above but Adopt) sets its directory's mtime too.
//! - New entries are owned by root (0:0) until a Chown: the recorder follows a creation by a
//!   process of another owner with one.
//! - The root `/` is not an entry; ops naming it change nothing.

use crate::codec::OpHeader;
use crate::model::{
    Entry, EntryKind, NodeId, NodeKind, Owner, RecPath, Seq, Target, Tree, IMPLICIT_DIR_NODE_BIT,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Translates event times (CLOCK_MONOTONIC) to wall-clock mtimes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Clock {
    pub started_wall_ns: i128,
    pub started_mono_ns: u64,
}

impl Clock {
    pub(crate) fn wall(&self, mono_ns: u64) -> i128 {
        self.started_wall_ns + (i128::from(mono_ns) - i128::from(self.started_mono_ns))
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Namespace {
    entries: BTreeMap<RecPath, Entry>,
    /// Every name of every live node; derived from `entries`, so not stored in checkpoints.
    #[serde(skip)]
    names: HashMap<NodeId, BTreeSet<RecPath>>,
}

impl Namespace {
    /// A name space of these entries; call [`Self::reindex`] before use.
    pub(crate) fn from_entries(entries: BTreeMap<RecPath, Entry>) -> Self {
        Namespace {
            entries,
            names: HashMap::new(),
        }
    }

    /// Rebuilds the derived index after deserializing a checkpoint.
    pub(crate) fn reindex(&mut self) {
        self.names.clear();
        for (path, entry) in &self.entries {
            self.names
                .entry(entry.node)
                .or_default()
                .insert(path.clone());
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&RecPath, &Entry)> {
        self.entries.iter()
    }

    pub(crate) fn entry(&self, path: &RecPath) -> Option<&Entry> {
        self.entries.get(path)
    }

    pub(crate) fn names_of(&self, node: NodeId) -> impl Iterator<Item = &RecPath> {
        self.names.get(&node).into_iter().flatten()
    }

    /// One current entry of a live node (all names of a node share its state).
    pub(crate) fn node_entry(&self, node: NodeId) -> Option<&Entry> {
        let name = self.names.get(&node)?.iter().next()?;
        self.entries.get(name)
    }

    pub(crate) fn live_nodes(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.names.keys().copied()
    }

    pub(crate) fn resolve(&self, target: &Target) -> Option<NodeId> {
        match target {
            Target::Path(path) => self.entries.get(path).map(|e| e.node),
            Target::Node(node) => self.names.contains_key(node).then_some(*node),
        }
    }

    pub(crate) fn tree(&self, seq: Seq) -> Tree {
        Tree {
            seq,
            entries: self.entries.clone(),
        }
    }

    /// Applies event `seq`, whose time as wall clock is `wall`.
    pub(crate) fn apply(&mut self, seq: Seq, wall: i128, op: &OpHeader) {
        let fresh = |kind, mode, exact| (kind, mode & 0o7777, exact);
        match op {
            OpHeader::Create { node, path, mode } => {
                let (kind, mode, exact) = fresh(EntryKind::File { size: 0 }, *mode, true);
                self.create(seq, wall, *node, path, kind, mode, exact);
            }
            OpHeader::Mkdir { node, path, mode } => {
                let (kind, mode, exact) = fresh(EntryKind::Dir, *mode, true);
                self.create(seq, wall, *node, path, kind, mode, exact);
            }
            OpHeader::Symlink { node, path, target } => {
                let kind = EntryKind::Symlink {
                    target: target.clone(),
                };
                self.create(seq, wall, *node, path, kind, 0o777, true);
            }
            OpHeader::Adopt {
                node,
                path,
                kind,
                mode,
                size,
            } => {
                let (kind, exact) = match kind {
                    NodeKind::File => (EntryKind::File { size: *size }, false),
                    NodeKind::Dir => (EntryKind::Dir, true),
                    NodeKind::Symlink => (EntryKind::Symlink { target: Vec::new() }, false),
                };
                self.create(seq, wall, *node, path, kind, mode & 0o7777, exact);
            }
            OpHeader::Link { node, path } => self.link(seq, wall, *node, path),
            OpHeader::Rename { from, to } => self.rename(seq, wall, from, to),
            OpHeader::Exchange { a, b } => self.exchange(a, b),
            OpHeader::Unlink { path } | OpHeader::Rmdir { path } => {
                if !path.is_root() {
                    self.remove_subtree(path);
                }
            }
            OpHeader::Write { node, offset, len } => {
                if *len > 0 {
                    let end = offset.saturating_add(*len);
                    self.update_node(*node, |e| {
                        if let EntryKind::File { size } = &mut e.kind {
                            *size = (*size).max(end);
                            e.mtime_ns = wall;
                        }
                    });
                }
            }
            OpHeader::Truncate { target, size } => {
                if let Some(node) = self.resolve(target) {
                    self.update_node(node, |e| {
                        if let EntryKind::File { size: current } = &mut e.kind {
                            *current = *size;
                            e.mtime_ns = wall;
                        }
                    });
                }
            }
            OpHeader::Chmod { target, mode } => {
                if let Some(node) = self.resolve(target) {
                    self.update_node(node, |e| e.mode = mode & 0o7777);
                }
            }
            OpHeader::Resync { node, len, inline } => {
                self.update_node(*node, |e| match &mut e.kind {
                    EntryKind::File { size } => {
                        *size = *len;
                        e.exact = true;
                        e.mtime_ns = wall;
                    }
                    EntryKind::Symlink { target } => {
                        if let Some(data) = inline {
                            target.clone_from(data);
                            e.exact = true;
                            e.mtime_ns = wall;
                        }
                    }
                    EntryKind::Dir => {}
                })
            }
            OpHeader::Chown { target, owner } => {
                if let Some(node) = self.resolve(target) {
                    self.update_node(node, |e| e.owner = *owner);
                }
            }
            OpHeader::SetTimes { target, mtime_ns } => {
                if let Some(node) = self.resolve(target) {
                    self.update_node(node, |e| e.mtime_ns = *mtime_ns);
                }
            }
            OpHeader::SetXattrs { target, xattrs } => {
                if let Some(node) = self.resolve(target) {
                    self.update_node(node, |e| e.xattrs.clone_from(xattrs));
                }
            }
            OpHeader::Marker { .. } => {}
        }
        self.stamp_parents(wall, op);
    }

    /// A name added to or taken from a directory moves the directory's mtime to that moment, as
    /// the kernel does (an explicit SetTimes after, as tar and the baseline send, wins). Adopt
    /// only tells what was there already, so it changes no directory.
    fn stamp_parents(&mut self, wall: i128, op: &OpHeader) {
        let names: [Option<&RecPath>; 2] = match op {
            OpHeader::Create { path, .. }
            | OpHeader::Mkdir { path, .. }
            | OpHeader::Symlink { path, .. }
            | OpHeader::Link { path, .. }
            | OpHeader::Unlink { path }
            | OpHeader::Rmdir { path } => [Some(path), None],
            OpHeader::Rename { from, to } => [Some(from), Some(to)],
            OpHeader::Exchange { a, b } => [Some(a), Some(b)],
            _ => [None, None],
        };
        for parent in names.into_iter().flatten().filter_map(|p| p.parent()) {
            if let Some(dir) = self.entries.get_mut(&parent) {
                if dir.kind == EntryKind::Dir {
                    dir.mtime_ns = wall;
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)] // one call per creating op; a struct would only rename them
    fn create(
        &mut self,
        seq: Seq,
        wall: i128,
        node: NodeId,
        path: &RecPath,
        kind: EntryKind,
        mode: u32,
        exact: bool,
    ) {
        if path.is_root() {
            return;
        }
        let old_names: Vec<RecPath> = self
            .names_of(node)
            .filter(|p| *p != path)
            .cloned()
            .collect();
        for old in &old_names {
            self.remove_subtree(old);
        }
        self.ensure_parents(seq, wall, path);
        let keeps_children = kind == EntryKind::Dir
            && self
                .entries
                .get(path)
                .is_some_and(|e| e.kind == EntryKind::Dir);
        if keeps_children {
            self.remove_name(path);
        } else {
            self.remove_subtree(path);
        }
        let entry = Entry {
            node,
            kind,
            mode,
            mtime_ns: wall,
            exact,
            owner: Owner::default(),
            xattrs: Default::default(),
        };
        self.insert(path.clone(), entry);
    }

    fn link(&mut self, seq: Seq, wall: i128, node: NodeId, path: &RecPath) {
        if path.is_root() {
            return;
        }
        let Some(template) = self.node_entry(node).cloned() else {
            return;
        };
        if template.kind == EntryKind::Dir || self.entries.get(path).map(|e| e.node) == Some(node) {
            return;
        }
        self.ensure_parents(seq, wall, path);
        // This can drop the node's other names (they may lie below `path`); the template keeps
        // its state so the new name brings it back.
        self.remove_subtree(path);
        self.insert(path.clone(), template);
    }

    fn rename(&mut self, seq: Seq, wall: i128, from: &RecPath, to: &RecPath) {
        if from == to
            || from.is_root()
            || to.is_root()
            || !self.entries.contains_key(from)
            || to.starts_with(from)
            || from.starts_with(to)
        {
            return;
        }
        self.ensure_parents(seq, wall, to);
        self.remove_subtree(to);
        for (path, entry) in self.take_subtree(from) {
            let moved = path.rebase(from, to).expect("taken from below `from`");
            self.insert(moved, entry);
        }
    }

    fn exchange(&mut self, a: &RecPath, b: &RecPath) {
        if a.starts_with(b)
            || b.starts_with(a)
            || !self.entries.contains_key(a)
            || !self.entries.contains_key(b)
        {
            return;
        }
        let under_a = self.take_subtree(a);
        let under_b = self.take_subtree(b);
        for (path, entry) in under_a {
            self.insert(path.rebase(a, b).expect("taken from below a"), entry);
        }
        for (path, entry) in under_b {
            self.insert(path.rebase(b, a).expect("taken from below b"), entry);
        }
    }

    /// Makes every ancestor of `path` a directory. Implicit directories get ids derived from the
    /// event, so replay reproduces them.
    fn ensure_parents(&mut self, seq: Seq, wall: i128, path: &RecPath) {
        let mut made = 0u64;
        for ancestor in path.ancestors_below_root() {
            match self.entries.get(&ancestor) {
                Some(e) if e.kind == EntryKind::Dir => continue,
                Some(_) => self.remove_subtree(&ancestor),
                None => {}
            }
            let node = IMPLICIT_DIR_NODE_BIT | (seq << 12) | (made & 0xfff);
            made += 1;
            let entry = Entry {
                node,
                kind: EntryKind::Dir,
                mode: 0o755,
                mtime_ns: wall,
                exact: true,
                owner: Owner::default(),
                xattrs: Default::default(),
            };
            self.insert(ancestor, entry);
        }
    }

    fn update_node(&mut self, node: NodeId, mut change: impl FnMut(&mut Entry)) {
        let Some(names) = self.names.get(&node) else {
            return;
        };
        for name in names {
            if let Some(entry) = self.entries.get_mut(name) {
                change(entry);
            }
        }
    }

    fn insert(&mut self, path: RecPath, entry: Entry) {
        self.names
            .entry(entry.node)
            .or_default()
            .insert(path.clone());
        if let Some(old) = self.entries.insert(path.clone(), entry) {
            self.forget_name(old.node, &path);
        }
    }

    /// Removes just the entry at `path`, leaving anything below it in place.
    fn remove_name(&mut self, path: &RecPath) {
        if let Some(old) = self.entries.remove(path) {
            self.forget_name(old.node, path);
        }
    }

    fn forget_name(&mut self, node: NodeId, path: &RecPath) {
        if let Some(names) = self.names.get_mut(&node) {
            names.remove(path);
            if names.is_empty() {
                self.names.remove(&node);
            }
        }
    }

    fn remove_subtree(&mut self, path: &RecPath) {
        self.take_subtree(path);
    }

    /// Removes `path` and everything below it, returning the removed entries.
    fn take_subtree(&mut self, path: &RecPath) -> Vec<(RecPath, Entry)> {
        let mut paths: Vec<RecPath> = self
            .entries
            .range(path.below_bounds())
            .map(|(p, _)| p.clone())
            .collect();
        paths.push(path.clone());
        let mut taken = Vec::with_capacity(paths.len());
        for p in paths {
            if let Some(entry) = self.entries.remove(&p) {
                self.forget_name(entry.node, &p);
                taken.push((p, entry));
            }
        }
        taken
    }
}
