//! `diffkeeper diff`: what differs between two moments.

use crate::quoted::quoted;
use diffkeeper_export::compile_globs;
use diffkeeper_store::{ChangeKind, Entry, EntryKind, Seq, Store};
use std::io::Write;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    state: crate::StateDir,
    /// The earlier moment (default: the start).
    #[arg(long, default_value = "start", allow_hyphen_values = true)]
    from: String,
    /// The later moment (default: the end).
    #[arg(long, default_value = "end", allow_hyphen_values = true)]
    to: String,
    /// Only paths matching this glob; repeatable.
    #[arg(long = "path", value_name = "GLOB")]
    paths: Vec<String>,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let store = crate::open_store(&a.state)?;
    let (from, to) = (
        crate::moment(&store, &a.from)?,
        crate::moment(&store, &a.to)?,
    );
    let globs = compile_globs(&a.paths)?;
    let mut out = std::io::stdout().lock();
    for c in store.changes(from.seq, to.seq)? {
        if let Some(g) = &globs {
            if !g.is_match(c.path.to_string()) {
                continue;
            }
        }
        let tag = match c.kind {
            ChangeKind::Added => "added",
            ChangeKind::Removed => "removed",
            ChangeKind::Modified => "changed",
            ChangeKind::TypeChanged => "replaced",
        };
        writeln!(
            out,
            "{tag:<8} {}  {}",
            quoted(c.path.as_bytes()),
            describe_change(&c.before, &c.after)
        )?;
        let old = file_content(&store, c.before.as_ref(), from.seq)?;
        let new = file_content(&store, c.after.as_ref(), to.seq)?;
        if old.is_some() || new.is_some() {
            text_diff(
                c.path.as_bytes(),
                &old.unwrap_or_default(),
                &new.unwrap_or_default(),
                &mut out,
            )?;
        }
    }
    Ok(())
}

fn describe_change(before: &Option<Entry>, after: &Option<Entry>) -> String {
    let side = |e: &Entry| match &e.kind {
        EntryKind::File { size } => {
            format!("file {size} B mode {:04o} owner {}", e.mode, e.owner)
        }
        EntryKind::Dir => format!("dir mode {:04o} owner {}", e.mode, e.owner),
        EntryKind::Symlink { target } => {
            format!("symlink -> {} owner {}", quoted(target), e.owner)
        }
    };
    match (before, after) {
        (Some(b), Some(a)) => format!("{} => {}", side(b), side(a)),
        (None, Some(a)) => side(a),
        (Some(b), None) => side(b),
        (None, None) => String::new(),
    }
}

/// A file's bytes at a moment; None for directories, symlinks and absent entries.
fn file_content(store: &Store, entry: Option<&Entry>, seq: Seq) -> anyhow::Result<Option<Vec<u8>>> {
    match entry {
        Some(e) if matches!(e.kind, EntryKind::File { .. }) => {
            Ok(Some(store.read_content(e.node, seq)?))
        }
        _ => Ok(None),
    }
}

/// A unified diff when both sides are text; binary files show only their sizes (printed above).
fn text_diff(path: &[u8], old: &[u8], new: &[u8], out: &mut impl Write) -> anyhow::Result<()> {
    let (Some(old), Some(new)) = (as_text(old), as_text(new)) else {
        return Ok(());
    };
    let diff = similar::TextDiff::from_lines(old, new);
    write!(
        out,
        "{}",
        diff.unified_diff()
            .context_radius(3)
            .header(&side(b"a", path), &side(b"b", path))
    )?;
    Ok(())
}

/// "a/tmp/x" in a diff header; quoted whole, as git does, when the name needs it.
fn side(prefix: &[u8], path: &[u8]) -> String {
    quoted(&[prefix, path].concat()).into_owned()
}

fn as_text(b: &[u8]) -> Option<&str> {
    if b.contains(&0) {
        return None;
    }
    std::str::from_utf8(b).ok()
}
