//! `diffkeeper grep`: every moment a file's content started or stopped matching a pattern —
//! "when did this config first say `debug: true`, and when did the log first show the panic".

use anyhow::Context;
use diffkeeper_export::compile_globs;
use diffkeeper_store::{format_wall, EntryKind, OpKind, RecPath, Seq, Store, Summary, Tree};
use std::collections::BTreeMap;
use std::io::Write;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    state: crate::StateDir,
    /// A regular expression (Rust regex syntax), matched against each file's whole content.
    pattern: String,
    /// Only files whose recorded path matches this glob; repeatable.
    #[arg(long = "path", value_name = "GLOB")]
    paths: Vec<String>,
    /// Match PATTERN as a plain string, not a regex.
    #[arg(long, short = 'F')]
    fixed_strings: bool,
    /// Ignore case.
    #[arg(long, short = 'i')]
    ignore_case: bool,
    /// Look from this moment on (default: the start); files already matching then are listed.
    #[arg(long, allow_hyphen_values = true)]
    from: Option<String>,
    /// Up to this moment (default: the end).
    #[arg(long, allow_hyphen_values = true)]
    to: Option<String>,
    /// Check after every event. By default a rewrite (the truncate and the writes from offset 0
    /// that follow it, as `echo x > f` makes) counts as one change, so the half-written states
    /// in between are not reported.
    #[arg(long)]
    each_event: bool,
    /// One JSON object per line, for machines.
    #[arg(long)]
    json: bool,
}

/// Tells the half-written states of a rewrite apart: `echo x > f` truncates f, then writes it
/// from offset 0 on. Between the truncate and the last of those writes, f holds neither the old
/// content nor the new one, and a reader checking f would never see it so; appends and writes
/// that are not part of such a rewrite are each a moment of their own.
/// A pause longer than this between two writes ends a rewrite: a writer that slow (a logger)
/// makes each write a moment of its own.
const REWRITE_PAUSE_NS: u64 = 50_000_000;

#[derive(Default)]
pub(crate) struct Rewrites {
    /// (node, pid, the offset where the rewrite's next write would start)
    open: Option<(u64, Option<u32>, u64)>,
}

impl Rewrites {
    /// True if the state right after `s` is a half-written one: `next` continues the rewrite
    /// that `s` began or continued. Call once per event, in order.
    pub(crate) fn mid_rewrite(&mut self, s: &Summary, next: Option<&Summary>) -> bool {
        let pid = s.process.as_ref().map(|p| p.pid);
        let resets = matches!(s.op.kind, OpKind::Create)
            || (s.op.kind == OpKind::Truncate && s.op.size == Some(0));
        self.open = match (s.op.node, self.open) {
            (Some(node), _) if resets => Some((node, pid, 0)),
            (Some(node), Some((n, p, at)))
                if s.op.kind == OpKind::Write
                    && n == node
                    && p == pid
                    && s.op.offset == Some(at) =>
            {
                Some((node, pid, at + s.op.bytes.unwrap_or(0)))
            }
            _ => None,
        };
        let Some((node, pid, at)) = self.open else {
            return false;
        };
        next.is_some_and(|n| {
            n.op.kind == OpKind::Write
                && n.op.node == Some(node)
                && n.process.as_ref().map(|p| p.pid) == pid
                && n.op.offset == Some(at)
                && n.time.saturating_sub(s.time) <= REWRITE_PAUSE_NS
        })
    }
}

/// One file starting or stopping to match.
struct Transition<'a> {
    seq: Seq,
    time: u64,
    path: RecPath,
    matches: bool,
    /// The event that made it so (None: the state at `--from`).
    cause: Option<&'a Summary>,
}

struct Search<'a> {
    store: &'a Store,
    regex: regex::bytes::Regex,
    globs: Option<globset::GlobSet>,
    /// Every file we have seen matching the globs, and whether it matches now.
    state: BTreeMap<RecPath, bool>,
}

impl Search<'_> {
    fn wanted(&self, path: &RecPath) -> bool {
        self.globs
            .as_ref()
            .is_none_or(|g| g.is_match(path.to_string()))
    }

    /// Does the file at `path` match right after `seq`? Absent, a directory or a symlink: no.
    fn matches_in(&self, tree: &Tree, path: &RecPath, seq: Seq) -> anyhow::Result<bool> {
        match tree.entries.get(path) {
            Some(entry) if matches!(entry.kind, EntryKind::File { .. }) => {
                let content = self.store.read_content(entry.node, seq)?;
                Ok(self.regex.is_match(&content))
            }
            _ => Ok(false),
        }
    }

    /// The paths whose match state the event changed, each with its state before; the new
    /// state is recorded in `self.state`.
    fn transitions<'s>(
        &mut self,
        s: &'s Summary,
        out: &mut Vec<(Transition<'s>, bool)>,
    ) -> anyhow::Result<()> {
        let mentions =
            s.op.paths
                .iter()
                .any(|p| self.wanted(p) || self.state.keys().any(|k| k.starts_with(p)));
        let subtree = matches!(s.op.kind, OpKind::Rename | OpKind::Exchange | OpKind::Rmdir);
        if !mentions && !subtree {
            return Ok(());
        }
        let mut record = |state: &mut BTreeMap<RecPath, bool>, path: &RecPath, now: bool| {
            let before = state.insert(path.clone(), now).unwrap_or(false);
            if now != before {
                out.push((
                    Transition {
                        seq: s.seq,
                        time: s.time,
                        path: path.clone(),
                        matches: now,
                        cause: Some(s),
                    },
                    before,
                ));
            }
        };
        // Content changes leave the name space alone: read the one node, no tree needed (a
        // log file appended to 10,000 times would otherwise rebuild the tree 10,000 times).
        if let (OpKind::Write | OpKind::Truncate | OpKind::Resync, Some(node)) =
            (s.op.kind, s.op.node)
        {
            let paths: Vec<&RecPath> = s.op.paths.iter().filter(|p| self.wanted(p)).collect();
            if paths.is_empty() {
                return Ok(());
            }
            let now = self.regex.is_match(&self.store.read_content(node, s.seq)?);
            for path in paths {
                record(&mut self.state, path, now);
            }
            return Ok(());
        }
        let tree = self.store.tree_at(s.seq)?;
        for path in self.touched(s, &tree) {
            let now = self.matches_in(&tree, &path, s.seq)?;
            record(&mut self.state, &path, now);
        }
        Ok(())
    }

    /// Paths whose state the event may have changed: the ones it names and, for ops that move
    /// or remove a directory, everything below them then or now.
    fn touched(&self, s: &Summary, tree: &Tree) -> Vec<RecPath> {
        let subtree = matches!(s.op.kind, OpKind::Rename | OpKind::Exchange | OpKind::Rmdir);
        let mut out: Vec<RecPath> = Vec::new();
        for p in &s.op.paths {
            out.push(p.clone());
            if subtree {
                out.extend(self.state.keys().filter(|k| k.starts_with(p)).cloned());
                out.extend(
                    tree.entries
                        .keys()
                        .filter(|k| k.starts_with(p) && self.wanted(k))
                        .cloned(),
                );
            }
        }
        if s.op.kind == OpKind::Rename || s.op.kind == OpKind::Exchange {
            // The destination's subtree is where the moved files are now.
            if let Some(to) = s.op.paths.get(1) {
                out.extend(
                    tree.entries
                        .keys()
                        .filter(|k| k.starts_with(to) && self.wanted(k))
                        .cloned(),
                );
            }
        }
        out.sort();
        out.dedup();
        out.retain(|p| self.wanted(p));
        out
    }
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let store = crate::open_store(&a.state)?;
    let span = store.span();
    let pattern = if a.fixed_strings {
        regex::escape(&a.pattern)
    } else {
        a.pattern.clone()
    };
    let regex = regex::bytes::RegexBuilder::new(&pattern)
        .case_insensitive(a.ignore_case)
        .multi_line(true)
        .build()
        .with_context(|| {
            format!(
                "the pattern {:?} is not a valid regular expression (use -F to search for it \
                 as plain text)",
                a.pattern
            )
        })?;
    let start = match &a.from {
        Some(t) => crate::moment(&store, t)?.seq,
        None => 0,
    };
    let to = match &a.to {
        Some(t) => crate::moment(&store, t)?.seq,
        None => span.last_seq,
    };
    anyhow::ensure!(
        start <= to,
        "--from is after --to (@seq:{start} > @seq:{to}); give the earlier moment first"
    );
    let mut search = Search {
        store: &store,
        regex,
        globs: compile_globs(&a.paths)?,
        state: BTreeMap::new(),
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut emit = |t: Transition| -> anyhow::Result<()> {
        let offset = crate::offset_label(&span, t.time);
        let wall = format_wall(span.wall_of(t.time));
        let what = if t.matches {
            if t.cause.is_some() {
                "starts matching"
            } else {
                "matches"
            }
        } else {
            "stops matching"
        };
        let written = if a.json {
            let line = serde_json::json!({
                "seq": t.seq, "offset": offset, "wall": wall, "path": t.path.to_string(),
                "matches": t.matches, "cause": t.cause,
            });
            writeln!(out, "{line}")
        } else {
            let cause = t
                .cause
                .map(|s| format!("  by {}", crate::log::describe(s)))
                .unwrap_or_default();
            writeln!(
                out,
                "{offset:>12}  {wall}  {what:<15}  {}  @seq:{}{cause}",
                t.path, t.seq
            )
        };
        match written {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            other => Ok(other?),
        }
    };

    // What already matches at --from.
    if start > 0 {
        let tree = store.tree_at(start)?;
        let start_time = store.resolve(&format!("@seq:{start}").parse()?)?.mono_ns;
        let files: Vec<RecPath> = tree
            .entries
            .keys()
            .filter(|p| search.wanted(p))
            .cloned()
            .collect();
        for path in files {
            let now = search.matches_in(&tree, &path, start)?;
            if now {
                emit(Transition {
                    seq: start,
                    time: start_time,
                    path: path.clone(),
                    matches: true,
                    cause: None,
                })?;
            }
            search.state.insert(path, now);
        }
    }

    let summaries: Vec<Summary> = store.summaries(start + 1, to).collect::<Result<_, _>>()?;
    let mut rewrites = Rewrites::default();
    // Inside a rewrite, transitions wait for its end: per path, the state before the rewrite
    // and the last transition in it. If the rewrite ends where it began (a config rewritten
    // with the same match), nothing happened for a reader; otherwise the last transition is
    // the moment the file took the state it keeps.
    let mut pending: BTreeMap<RecPath, (bool, Option<Transition>)> = BTreeMap::new();
    for (i, s) in summaries.iter().enumerate() {
        let mid = rewrites.mid_rewrite(s, summaries.get(i + 1)) && !a.each_event;
        let mut found = Vec::new();
        if s.op.kind != OpKind::Marker && !s.op.paths.is_empty() {
            search.transitions(s, &mut found)?;
        }
        for (t, before) in found {
            let slot = pending.entry(t.path.clone()).or_insert((before, None));
            slot.1 = Some(t);
        }
        if mid {
            continue;
        }
        for (path, (before, last)) in std::mem::take(&mut pending) {
            let now = search.state.get(&path).copied().unwrap_or(false);
            if let Some(t) = last.filter(|_| now != before) {
                emit(t)?;
            }
        }
    }
    match out.flush() {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}
