//! The store must rebuild exactly what a plain in-memory file system would hold after the same
//! ops, at every moment. The model below is deliberately naive (whole contents in memory,
//! linear scans) and written from the op rules, not from the store's code.

use diffkeeper_store::{
    ChangeKind, EntryKind, Event, MarkerKind, NodeId, NodeKind, Op, Owner, RecPath, RecordingInfo,
    Seq, Store, Target, Writer, WriterOptions, IMPLICIT_DIR_NODE_BIT,
};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet, HashMap};

const WALL0: i128 = 1_790_000_000_000_000_000;
const MONO0: u64 = 5_000_000_000;

#[derive(Clone, Debug, PartialEq)]
enum Body {
    File(Vec<u8>),
    Dir,
    Symlink(Vec<u8>),
}

#[derive(Clone, Debug)]
struct Node {
    body: Body,
    mode: u32,
    mtime: i128,
    exact: bool,
    owner: Owner,
}

#[derive(Clone, Debug, Default)]
struct Model {
    paths: BTreeMap<RecPath, NodeId>,
    nodes: HashMap<NodeId, Node>,
}

impl Model {
    fn remove_tree(&mut self, p: &RecPath) {
        self.paths.retain(|q, _| !q.starts_with(p));
    }

    fn is_dir(&self, p: &RecPath) -> Option<bool> {
        let n = self.paths.get(p)?;
        Some(self.nodes[n].body == Body::Dir)
    }

    fn ensure_parents(&mut self, seq: Seq, wall: i128, p: &RecPath) {
        let parts: Vec<&[u8]> = p.components().collect();
        let mut made = 0;
        for i in 1..parts.len() {
            let mut raw = Vec::new();
            for c in &parts[..i] {
                raw.push(b'/');
                raw.extend_from_slice(c);
            }
            let a = RecPath::normalize(&raw).unwrap();
            match self.is_dir(&a) {
                Some(true) => continue,
                Some(false) => self.remove_tree(&a),
                None => {}
            }
            let id = IMPLICIT_DIR_NODE_BIT | (seq << 12) | made;
            made += 1;
            self.paths.insert(a, id);
            self.nodes.insert(
                id,
                Node {
                    body: Body::Dir,
                    mode: 0o755,
                    mtime: wall,
                    exact: true,
                    owner: Owner::default(),
                },
            );
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn create(
        &mut self,
        seq: Seq,
        wall: i128,
        id: NodeId,
        p: &RecPath,
        body: Body,
        mode: u32,
        exact: bool,
    ) {
        if p.is_root() {
            return;
        }
        let others: Vec<RecPath> = self
            .paths
            .iter()
            .filter(|(q, n)| **n == id && *q != p)
            .map(|(q, _)| q.clone())
            .collect();
        for q in others {
            self.remove_tree(&q);
        }
        self.ensure_parents(seq, wall, p);
        if body == Body::Dir && self.is_dir(p) == Some(true) {
            self.paths.remove(p);
        } else {
            self.remove_tree(p);
        }
        self.paths.insert(p.clone(), id);
        self.nodes.insert(
            id,
            Node {
                body,
                mode: mode & 0o7777,
                mtime: wall,
                exact,
                owner: Owner::default(),
            },
        );
    }

    fn target(&self, t: &Target) -> Option<NodeId> {
        match t {
            Target::Path(p) => self.paths.get(p).copied(),
            Target::Node(n) => self.nodes.contains_key(n).then_some(*n),
        }
    }

    fn apply(&mut self, seq: Seq, wall: i128, op: &Op) {
        match op {
            Op::Create { node, path, mode } => {
                self.create(seq, wall, *node, path, Body::File(vec![]), *mode, true)
            }
            Op::Mkdir { node, path, mode } => {
                self.create(seq, wall, *node, path, Body::Dir, *mode, true)
            }
            Op::Symlink { node, path, target } => self.create(
                seq,
                wall,
                *node,
                path,
                Body::Symlink(target.clone()),
                0o777,
                true,
            ),
            Op::Adopt {
                node,
                path,
                kind,
                mode,
                size,
            } => {
                let (body, exact) = match kind {
                    NodeKind::File => (Body::File(vec![0; *size as usize]), false),
                    NodeKind::Dir => (Body::Dir, true),
                    NodeKind::Symlink => (Body::Symlink(vec![]), false),
                };
                self.create(seq, wall, *node, path, body, *mode, exact)
            }
            Op::Link { node, path } => {
                let linkable = self.nodes.get(node).is_some_and(|n| n.body != Body::Dir);
                if linkable && !path.is_root() && self.paths.get(path) != Some(node) {
                    self.ensure_parents(seq, wall, path);
                    self.remove_tree(path);
                    self.paths.insert(path.clone(), *node);
                }
            }
            Op::Rename { from, to } => {
                // A rename the store cannot place moves nothing, but its directories' mtimes
                // still move (below): the kernel did rename something.
                let placeable = from != to
                    && !from.is_root()
                    && !to.is_root()
                    && self.paths.contains_key(from)
                    && !to.starts_with(from)
                    && !from.starts_with(to);
                if placeable {
                    self.ensure_parents(seq, wall, to);
                    self.remove_tree(to);
                    let moved: Vec<(RecPath, NodeId)> = self
                        .paths
                        .iter()
                        .filter(|(q, _)| q.starts_with(from))
                        .map(|(q, n)| (q.clone(), *n))
                        .collect();
                    self.remove_tree(from);
                    for (q, n) in moved {
                        self.paths.insert(q.rebase(from, to).unwrap(), n);
                    }
                }
            }
            Op::Exchange { a, b } => {
                let placeable = !a.starts_with(b)
                    && !b.starts_with(a)
                    && self.paths.contains_key(a)
                    && self.paths.contains_key(b);
                if placeable {
                    let take = |m: &Model, x: &RecPath| -> Vec<(RecPath, NodeId)> {
                        m.paths
                            .iter()
                            .filter(|(q, _)| q.starts_with(x))
                            .map(|(q, n)| (q.clone(), *n))
                            .collect()
                    };
                    let (ua, ub) = (take(self, a), take(self, b));
                    self.remove_tree(a);
                    self.remove_tree(b);
                    for (q, n) in ua {
                        self.paths.insert(q.rebase(a, b).unwrap(), n);
                    }
                    for (q, n) in ub {
                        self.paths.insert(q.rebase(b, a).unwrap(), n);
                    }
                }
            }
            Op::Unlink { path } | Op::Rmdir { path } => {
                if !path.is_root() {
                    self.remove_tree(path)
                }
            }
            Op::Write { node, offset, data } => {
                if let Some(Node {
                    body: Body::File(c),
                    mtime,
                    ..
                }) = self.nodes.get_mut(node)
                {
                    if !data.is_empty() {
                        let end = *offset as usize + data.len();
                        if c.len() < end {
                            c.resize(end, 0);
                        }
                        c[*offset as usize..end].copy_from_slice(data);
                        *mtime = wall;
                    }
                }
            }
            Op::Truncate { target, size } => {
                if let Some(n) = self.target(target) {
                    if let Some(Node {
                        body: Body::File(c),
                        mtime,
                        ..
                    }) = self.nodes.get_mut(&n)
                    {
                        c.resize(*size as usize, 0);
                        *mtime = wall;
                    }
                }
            }
            Op::Chmod { target, mode } => {
                if let Some(n) = self.target(target) {
                    self.nodes.get_mut(&n).unwrap().mode = mode & 0o7777;
                }
            }
            Op::Resync { node, data } => {
                if let Some(n) = self.nodes.get_mut(node) {
                    match &mut n.body {
                        Body::File(c) | Body::Symlink(c) => {
                            *c = data.clone();
                            n.exact = true;
                            n.mtime = wall;
                        }
                        Body::Dir => {}
                    }
                }
            }
            Op::Chown { target, owner } => {
                if let Some(n) = self.target(target) {
                    self.nodes.get_mut(&n).unwrap().owner = *owner;
                }
            }
            Op::SetTimes { target, mtime_ns } => {
                if let Some(n) = self.target(target) {
                    self.nodes.get_mut(&n).unwrap().mtime = *mtime_ns;
                }
            }
            Op::SetXattrs { .. } => unreachable!("the steps never make one"),
            Op::Marker { .. } => {}
        }
        // The directories whose names changed get the op's moment as their mtime.
        let names: Vec<&RecPath> = match op {
            Op::Create { path, .. }
            | Op::Mkdir { path, .. }
            | Op::Symlink { path, .. }
            | Op::Link { path, .. }
            | Op::Unlink { path }
            | Op::Rmdir { path } => vec![path],
            Op::Rename { from, to } => vec![from, to],
            Op::Exchange { a, b } => vec![a, b],
            _ => vec![],
        };
        for parent in names.into_iter().filter_map(|p| p.parent()) {
            if let Some(n) = self.paths.get(&parent) {
                let dir = self.nodes.get_mut(n).unwrap();
                if dir.body == Body::Dir {
                    dir.mtime = wall;
                }
            }
        }
        // A node lives while it has a name.
        let named: BTreeSet<NodeId> = self.paths.values().copied().collect();
        self.nodes.retain(|id, _| named.contains(id));
    }
}

/// Ops with paths and nodes as indices; made concrete against the ids handed out so far.
#[derive(Clone, Debug)]
enum Step {
    Create(usize, u32),
    Mkdir(usize, u32),
    Symlink(usize, u8),
    Adopt(usize, u8, u32, u64),
    Link(usize, usize),
    Rename(usize, usize),
    Exchange(usize, usize),
    Unlink(usize),
    Rmdir(usize),
    Write(usize, u64, usize, u8),
    Truncate(bool, usize, u64),
    Chmod(bool, usize, u32),
    Chown(bool, usize, u32, u32),
    SetTimes(bool, usize, i64),
    Resync(usize, usize, u8),
    Marker,
    Commit,
    Flush,
}

fn names() -> Vec<RecPath> {
    let comps = ["a", "b", "c"];
    let mut out = Vec::new();
    for x in comps {
        out.push(format!("/{x}"));
        for y in comps {
            out.push(format!("/{x}/{y}"));
            for z in ["a", "b"] {
                out.push(format!("/{x}/{y}/{z}"));
            }
        }
    }
    out.into_iter()
        .map(|p| RecPath::normalize(p.as_bytes()).unwrap())
        .collect()
}

fn step() -> impl Strategy<Value = Step> {
    let p = 0usize..40;
    let n = 0usize..64;
    let mode = prop_oneof![
        Just(0o644u32),
        Just(0o755),
        Just(0o600),
        Just(0o4711),
        Just(0o100644)
    ];
    prop_oneof![
        4 => (p.clone(), mode.clone()).prop_map(|(p, m)| Step::Create(p, m)),
        2 => (p.clone(), mode.clone()).prop_map(|(p, m)| Step::Mkdir(p, m)),
        1 => (p.clone(), any::<u8>()).prop_map(|(p, t)| Step::Symlink(p, t)),
        1 => (p.clone(), 0u8..3, mode.clone(), 0u64..300).prop_map(|(p, k, m, s)| Step::Adopt(p, k, m, s)),
        1 => (n.clone(), p.clone()).prop_map(|(n, p)| Step::Link(n, p)),
        3 => (p.clone(), p.clone()).prop_map(|(a, b)| Step::Rename(a, b)),
        1 => (p.clone(), p.clone()).prop_map(|(a, b)| Step::Exchange(a, b)),
        2 => p.clone().prop_map(Step::Unlink),
        1 => p.clone().prop_map(Step::Rmdir),
        10 => (n.clone(), 0u64..400, 0usize..120, any::<u8>()).prop_map(|(n, o, l, s)| Step::Write(n, o, l, s)),
        3 => (any::<bool>(), 0usize..64, 0u64..450).prop_map(|(b, i, s)| Step::Truncate(b, i, s)),
        1 => (any::<bool>(), 0usize..64, mode).prop_map(|(b, i, m)| Step::Chmod(b, i, m)),
        1 => (any::<bool>(), 0usize..64, 0u32..3, 0u32..3).prop_map(|(b, i, u, g)| Step::Chown(b, i, u * 1000, g * 1000)),
        1 => (any::<bool>(), 0usize..64, any::<i64>()).prop_map(|(b, i, t)| Step::SetTimes(b, i, t)),
        2 => (n, 0usize..300, any::<u8>()).prop_map(|(n, l, s)| Step::Resync(n, l, s)),
        1 => Just(Step::Marker),
        2 => Just(Step::Commit),
        1 => Just(Step::Flush),
    ]
}

/// Bytes that differ by position and seed, so misplaced writes show.
fn bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn options(small: u64) -> WriterOptions {
    WriterOptions {
        keyframe_min_bytes: small * 16,
        keyframe_size_factor: 1,
        keyframe_min_ops: small,
        keyframe_bytes_per_op: 1 << 20,
        full_keyframe_every: 3,
        max_diff_bytes: 1 << 20,
        checkpoint_min_events: small * 2,
        block_events: small as usize * 3,
        block_bytes: small as usize * 100,
        cache_bytes: 1 << 20,
        // Short chains and a small budget, so chain cuts and evictions happen too.
        max_delta_depth: small as u32 - 1,
        delta_chain_bytes: 4096,
        delta_file_bytes: 400,
        delta_memory_bytes: 2000,
        // Small segments, so data spans sealed ones and the open one.
        segment_bytes: small * 400,
    }
}

fn info() -> RecordingInfo {
    RecordingInfo {
        command: vec!["test".into()],
        started_wall_ns: WALL0,
        started_mono_ns: MONO0,
        hostname: "model".into(),
        labels: Default::default(),
    }
}

struct Case {
    steps: Vec<(Step, i64)>,
    resume_at: usize,
    small: u64,
    probes: Vec<usize>,
}

/// Keyframes and checkpoints the writers made.
#[derive(Default)]
struct Made {
    keyframes: u64,
    checkpoints: u64,
}

fn run(case: Case) -> Result<Made, TestCaseError> {
    let names = names();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("rec");
    let mut w = Writer::create_with(&dir, info(), options(case.small)).unwrap();

    let mut model = Model::default();
    let mut snapshots = vec![model.clone()]; // snapshots[seq] = model right after seq
    let mut appended: Vec<Event> = Vec::new();
    let mut created: Vec<NodeId> = Vec::new();
    let mut next_id: NodeId = 1;
    let mut last_time = 0u64;
    let mut made = Made::default();
    let node = |created: &Vec<NodeId>, i: usize| -> NodeId {
        // Some indices name nodes that never existed: the store must ignore those ops.
        created.get(i).copied().unwrap_or(900_000 + i as u64)
    };

    for (i, (step, jitter)) in case.steps.iter().enumerate() {
        if i == case.resume_at && i > 0 {
            made.keyframes += w.stats().keyframes;
            made.checkpoints += w.stats().checkpoints;
            drop(w);
            w = Writer::resume_with(&dir, options(case.small)).unwrap();
        }
        let mut fresh = || {
            let id = next_id;
            next_id += 1;
            created.push(id);
            id
        };
        let op = match step.clone() {
            Step::Create(p, mode) => Op::Create {
                node: fresh(),
                path: names[p % names.len()].clone(),
                mode,
            },
            Step::Mkdir(p, mode) => Op::Mkdir {
                node: fresh(),
                path: names[p % names.len()].clone(),
                mode,
            },
            Step::Symlink(p, t) => Op::Symlink {
                node: fresh(),
                path: names[p % names.len()].clone(),
                target: bytes(1 + t as usize % 9, t),
            },
            Step::Adopt(p, k, mode, size) => {
                let kind = [NodeKind::File, NodeKind::Dir, NodeKind::Symlink][k as usize];
                Op::Adopt {
                    node: fresh(),
                    path: names[p % names.len()].clone(),
                    kind,
                    mode,
                    size,
                }
            }
            Step::Link(n, p) => Op::Link {
                node: node(&created, n),
                path: names[p % names.len()].clone(),
            },
            Step::Rename(a, b) => {
                // Index 39 stands for the root, which ops must never move or replace.
                let pick = |x: usize| {
                    if x == 39 {
                        RecPath::root()
                    } else {
                        names[x % names.len()].clone()
                    }
                };
                Op::Rename {
                    from: pick(a),
                    to: pick(b),
                }
            }
            Step::Exchange(a, b) => Op::Exchange {
                a: names[a % names.len()].clone(),
                b: names[b % names.len()].clone(),
            },
            Step::Unlink(p) => Op::Unlink {
                path: names[p % names.len()].clone(),
            },
            Step::Rmdir(p) => Op::Rmdir {
                path: names[p % names.len()].clone(),
            },
            Step::Write(n, offset, len, seed) => Op::Write {
                node: node(&created, n),
                offset,
                data: bytes(len, seed),
            },
            Step::Truncate(by_path, i, size) => {
                let target = if by_path {
                    Target::Path(names[i % names.len()].clone())
                } else {
                    Target::Node(node(&created, i))
                };
                Op::Truncate { target, size }
            }
            Step::Chmod(by_path, i, mode) => {
                let target = if by_path {
                    Target::Path(names[i % names.len()].clone())
                } else {
                    Target::Node(node(&created, i))
                };
                Op::Chmod { target, mode }
            }
            Step::Chown(by_path, i, uid, gid) => {
                let target = if by_path {
                    Target::Path(names[i % names.len()].clone())
                } else {
                    Target::Node(node(&created, i))
                };
                Op::Chown {
                    target,
                    owner: Owner { uid, gid },
                }
            }
            Step::SetTimes(by_path, i, t) => {
                let target = if by_path {
                    Target::Path(names[i % names.len()].clone())
                } else {
                    Target::Node(node(&created, i))
                };
                Op::SetTimes {
                    target,
                    mtime_ns: i128::from(t),
                }
            }
            Step::Resync(n, len, seed) => Op::Resync {
                node: node(&created, n),
                data: bytes(len, seed),
            },
            Step::Marker => Op::Marker {
                kind: MarkerKind::Note,
                detail: format!("step {i}"),
            },
            Step::Commit => {
                w.commit().unwrap();
                continue;
            }
            Step::Flush => {
                w.flush().unwrap();
                continue;
            }
        };
        // Times mostly advance but sometimes step back (several CPUs); the store clamps.
        let raw_time = (MONO0 as i64 + 1_000 * i as i64 + jitter) as u64;
        let event = Event {
            time: raw_time,
            process: None,
            op,
        };
        let seq = w.append(event.clone()).unwrap();
        prop_assert_eq!(seq as usize, snapshots.len());
        let time = raw_time.max(last_time);
        last_time = time;
        model.apply(seq, WALL0 + (time as i128 - MONO0 as i128), &event.op);
        snapshots.push(model.clone());
        appended.push(Event { time, ..event });
    }

    // The writer's live view is the model's final state.
    for p in &names {
        let expected = model.paths.get(p).copied();
        prop_assert_eq!(w.node_at(p), expected, "writer node_at {:?}", p);
        prop_assert_eq!(w.entry(p).map(|e| e.node), expected);
    }
    made.keyframes += w.stats().keyframes;
    made.checkpoints += w.stats().checkpoints;
    w.finish(last_time + 1).unwrap();

    let store = Store::open(&dir).unwrap();
    let last = (snapshots.len() - 1) as Seq;
    prop_assert_eq!(store.span().last_seq, last);

    // The log reads back exactly as appended (with clamped times).
    let read: Vec<Event> = store.events(1, last).map(|r| r.unwrap().1).collect();
    prop_assert_eq!(&read, &appended);
    prop_assert_eq!(store.summaries(1, last).count() as Seq, last);

    let mut probes: Vec<Seq> = case
        .probes
        .iter()
        .map(|p| (*p as Seq) % (last + 1))
        .collect();
    probes.extend([0, last]);
    for &seq in &probes {
        check_tree(&store, &snapshots[seq as usize], seq)?;
    }
    for pair in probes.windows(2) {
        check_changes(&store, &snapshots, pair[0], pair[1])?;
    }
    Ok(made)
}

fn check_tree(store: &Store, model: &Model, seq: Seq) -> Result<(), TestCaseError> {
    let tree = store.tree_at(seq).unwrap();
    let got: Vec<&RecPath> = tree.entries.keys().collect();
    let want: Vec<&RecPath> = model.paths.keys().collect();
    prop_assert_eq!(got, want, "paths at @seq:{}", seq);
    for (path, entry) in &tree.entries {
        let id = model.paths[path];
        let node = &model.nodes[&id];
        prop_assert_eq!(entry.node, id, "node of {:?} at @seq:{}", path, seq);
        prop_assert_eq!(entry.mode, node.mode, "mode of {:?} at @seq:{}", path, seq);
        prop_assert_eq!(
            entry.owner,
            node.owner,
            "owner of {:?} at @seq:{}",
            path,
            seq
        );
        prop_assert_eq!(
            entry.mtime_ns,
            node.mtime,
            "mtime of {:?} at @seq:{}",
            path,
            seq
        );
        prop_assert_eq!(
            entry.exact,
            node.exact,
            "exact of {:?} at @seq:{}",
            path,
            seq
        );
        match (&entry.kind, &node.body) {
            (EntryKind::Dir, Body::Dir) => {}
            (EntryKind::File { size }, Body::File(c)) => {
                prop_assert_eq!(*size, c.len() as u64, "size of {:?} at @seq:{}", path, seq);
                let content = store.read_content(id, seq).unwrap();
                prop_assert!(
                    content == *c,
                    "content of {:?} at @seq:{}: {:?} != {:?}",
                    path,
                    seq,
                    content,
                    c
                );
            }
            (EntryKind::Symlink { target }, Body::Symlink(t)) => {
                prop_assert_eq!(target, t, "target of {:?} at @seq:{}", path, seq);
                prop_assert_eq!(&store.read_content(id, seq).unwrap(), t);
            }
            (k, b) => prop_assert!(
                false,
                "kind of {:?} at @seq:{}: {:?} vs {:?}",
                path,
                seq,
                k,
                b
            ),
        }
    }
    Ok(())
}

fn check_changes(
    store: &Store,
    snapshots: &[Model],
    from: Seq,
    to: Seq,
) -> Result<(), TestCaseError> {
    let (a, b) = (&snapshots[from as usize], &snapshots[to as usize]);
    let mut want = Vec::new();
    let all: BTreeSet<&RecPath> = a.paths.keys().chain(b.paths.keys()).collect();
    for p in all {
        let kind = match (a.paths.get(p), b.paths.get(p)) {
            (None, Some(_)) => ChangeKind::Added,
            (Some(_), None) => ChangeKind::Removed,
            (Some(x), Some(y)) => {
                let (x, y) = (&a.nodes[x], &b.nodes[y]);
                let same_kind = std::mem::discriminant(&x.body) == std::mem::discriminant(&y.body);
                if !same_kind {
                    ChangeKind::TypeChanged
                } else if x.body != y.body || x.mode != y.mode || x.owner != y.owner {
                    ChangeKind::Modified
                } else {
                    continue;
                }
            }
            (None, None) => unreachable!(),
        };
        want.push((p.clone(), kind));
    }
    let got: Vec<(RecPath, ChangeKind)> = store
        .changes(from, to)
        .unwrap()
        .into_iter()
        .map(|c| (c.path, c.kind))
        .collect();
    prop_assert_eq!(got, want, "changes @seq:{} -> @seq:{}", from, to);
    Ok(())
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), max_shrink_iters: 2000, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_model(
        steps in prop::collection::vec((step(), -3000i64..3000), 1..200),
        resume_frac in 0.0f64..1.5,
        small in 1u64..6,
        probes in prop::collection::vec(0usize..1000, 12),
    ) {
        let resume_at = (steps.len() as f64 * resume_frac) as usize; // >= len: no resume
        run(Case { steps, resume_at, small, probes })?;
    }
}

/// The thresholds used above must be small enough that keyframes and checkpoints are exercised.
#[test]
fn keyframes_and_checkpoints_happen() {
    let steps: Vec<(Step, i64)> = (0..150u64)
        .map(|i| {
            let s = match i {
                0 => Step::Create(0, 0o644),
                i if i.is_multiple_of(10) => Step::Commit,
                i if i.is_multiple_of(37) => Step::Truncate(false, 0, 17),
                i => Step::Write(0, i * 13 % 200, 40, i as u8),
            };
            (s, 0)
        })
        .collect();
    let made = run(Case {
        steps,
        resume_at: 75,
        small: 2,
        probes: (0..40).map(|i| i * 4).collect(),
    })
    .unwrap();
    assert!(
        made.keyframes > 3,
        "only {} keyframes were written",
        made.keyframes
    );
    assert!(
        made.checkpoints > 3,
        "only {} checkpoints were written",
        made.checkpoints
    );
}
