//! `diffkeeper diff`: what differs between two moments.

use crate::quoted::quoted;
use diffkeeper_export::compile_globs;
use diffkeeper_store::{ChangeKind, Entry, EntryKind, Seq, Store};
use std::io::{Read, Write};

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
        let old = file_text(&store, c.before.as_ref(), from.seq)?;
        let new = file_text(&store, c.after.as_ref(), to.seq)?;
        match (old, new) {
            (Side::NotAFile, Side::NotAFile) => {}
            (Side::Text(old), Side::Text(new)) => {
                text_diff(c.path.as_bytes(), &old, &new, &mut out)?
            }
            (Side::Text(old), Side::NotAFile) => text_diff(c.path.as_bytes(), &old, "", &mut out)?,
            (Side::NotAFile, Side::Text(new)) => text_diff(c.path.as_bytes(), "", &new, &mut out)?,
            // Binary files show only their sizes (printed above).
            (Side::Binary, _) | (_, Side::Binary) => {}
            (Side::TooLarge, _) | (_, Side::TooLarge) => writeln!(
                out,
                "         (not compared line by line: larger than {} MiB)",
                TEXT_DIFF_LIMIT >> 20
            )?,
        }
    }
    Ok(())
}

/// Files larger than this get no line diff: a person cannot read one anyway, and a 100 GiB
/// sparse file must not be read whole to find that out.
const TEXT_DIFF_LIMIT: u64 = 16 << 20;

/// How much of a file is looked at to call it binary, as git does (a NUL in the first 8000 bytes).
const BINARY_SNIFF: usize = 8000;

/// One side of a change, as far as a line diff is concerned.
enum Side {
    /// A directory, a symlink, or nothing.
    NotAFile,
    Text(String),
    Binary,
    TooLarge,
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

/// A file's bytes at a moment as diff text, read only as far as it takes to decide.
fn file_text(store: &Store, entry: Option<&Entry>, seq: Seq) -> anyhow::Result<Side> {
    let Some(e) = entry.filter(|e| matches!(e.kind, EntryKind::File { .. })) else {
        return Ok(Side::NotAFile);
    };
    let mut reader = store.content_reader(e.node, seq)?;
    if reader.len() > TEXT_DIFF_LIMIT {
        return Ok(Side::TooLarge);
    }
    let mut bytes = Vec::with_capacity(reader.len() as usize);
    (&mut reader)
        .take(BINARY_SNIFF as u64)
        .read_to_end(&mut bytes)?;
    if bytes.contains(&0) {
        return Ok(Side::Binary);
    }
    reader.read_to_end(&mut bytes)?;
    Ok(match String::from_utf8(bytes) {
        Ok(text) if !text.contains('\0') => Side::Text(text),
        _ => Side::Binary,
    })
}

/// A unified diff of two texts.
fn text_diff(path: &[u8], old: &str, new: &str, out: &mut impl Write) -> anyhow::Result<()> {
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
