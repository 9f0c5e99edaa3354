//! `diffkeeper export`: the files as they were at a moment.

use crate::quoted::{escaped, quoted};
use anyhow::Context;
use diffkeeper_export::{compile_globs, export_store_dir, export_store_tar, ExportOptions};
use diffkeeper_store::{format_wall, MarkerKind, OpKind, RecPath, Store};
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, clap::ValueEnum)]
enum Format {
    Dir,
    Tar,
}

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    state: crate::StateDir,
    /// Where to put the files: an empty or new directory (--format dir), or a file or `-` for
    /// stdout (--format tar). Recorded absolute paths are mirrored below it.
    #[arg(long, value_name = "OUT")]
    out: PathBuf,
    /// The moment: 2m14s (since start), -5s (before the end), an RFC3339 time, end, @seq:N.
    #[arg(long, default_value = "end", allow_hyphen_values = true)]
    time: String,
    #[arg(long, value_enum, default_value = "dir")]
    format: Format,
    /// Only paths matching this glob (e.g. '/tmp/w/**'); repeatable.
    #[arg(long = "path", value_name = "GLOB")]
    paths: Vec<String>,
    /// With --format tar: overwrite an existing regular file at --out (never a symlink).
    #[arg(long)]
    force: bool,
    /// Do not restore recorded owners: a directory export (which restores them only when run
    /// as root) is owned by whoever runs it, and tar headers name 0:0.
    #[arg(long)]
    no_owner: bool,
}

/// Exit code of an export that wrote everything it could but found part of the recording
/// damaged: not 0, so a script notices, and not 2, which means the command was refused.
const EXIT_DAMAGED: i32 = crate::verify::EXIT_DAMAGED;

pub fn run(a: Args) -> anyhow::Result<i32> {
    if !(matches!(a.format, Format::Tar) && a.out.as_os_str() == "-") {
        refuse_inside(&a.out, &a.state.state_dir)?;
    }
    let store = crate::open_store(&a.state)?;
    let point = crate::moment(&store, &a.time)?;
    let span = store.span();
    let opts = ExportOptions {
        paths: compile_globs(&a.paths)?,
        progress: true,
        no_owner: a.no_owner,
    };
    let seq = point.seq;
    crate::note_what_is_missing(&store);
    let summary = match a.format {
        Format::Dir => export_store_dir(&store, seq, None, &a.out, &opts)?,
        Format::Tar if a.out.as_os_str() == "-" => {
            export_store_tar(&store, seq, None, std::io::stdout().lock(), &opts)?
        }
        Format::Tar => {
            let file = create_tar_file(&a.out, a.force)?;
            export_store_tar(&store, seq, None, std::io::BufWriter::new(file), &opts)?
        }
    };
    eprintln!(
        "diffkeeper: exported the files at {} ({}, @seq:{}) to {}: {summary}",
        crate::offset_label(&span, point.mono_ns),
        format_wall(span.wall_of(point.mono_ns)),
        point.seq,
        a.out.display(),
    );
    if !summary.inexact.is_empty() {
        eprintln!(
            "diffkeeper: warning: {} file(s) were not known byte-exactly at that moment (they \
             existed before recording, outside the baseline, and had not been read back yet; pass \
             --baseline DIR to record to snapshot them): {}",
            summary.inexact.len(),
            list(&summary.inexact)
        );
    }
    if let Some(warning) = gap_warning(&store, point.mono_ns)? {
        eprintln!("diffkeeper: warning: {warning}");
    }
    for (path, why) in &summary.skipped {
        let path = quoted(path.as_bytes());
        eprintln!(
            "diffkeeper: warning: skipped {path}: {}",
            escaped(why.as_bytes())
        );
    }
    if summary.damaged.is_empty() {
        return Ok(0);
    }
    for (path, why) in &summary.damaged {
        eprintln!(
            "diffkeeper: error: {} could not be read at that moment: {}",
            quoted(path.as_bytes()),
            escaped(why.as_bytes())
        );
    }
    eprintln!(
        "diffkeeper: error: the recording is damaged: {} file(s) left out{}, everything else \
         exported; `diffkeeper verify --state-dir={}` lists every damaged moment and file",
        summary.damaged.len(),
        if matches!(a.format, Format::Tar) {
            " (in the tar they hold zeros from the damage on)"
        } else {
            ""
        },
        a.state.state_dir.display()
    );
    Ok(EXIT_DAMAGED)
}

/// Refuses an `out` at or below the state dir: writing there destroys the recording.
fn refuse_inside(out: &Path, state_dir: &Path) -> anyhow::Result<()> {
    let state = std::fs::canonicalize(state_dir)
        .with_context(|| format!("opening recording {}", state_dir.display()))?;
    let out_abs = resolved(out)?;
    if out_abs.starts_with(&state) {
        anyhow::bail!(
            "--out {} is inside the recording's state dir {}: writing there would destroy the \
             recording; choose a path outside it",
            out.display(),
            state_dir.display()
        );
    }
    Ok(())
}

/// `path` made absolute with its existing part's symlinks resolved (the rest does not exist
/// yet, so it holds none).
fn resolved(path: &Path) -> anyhow::Result<PathBuf> {
    let abs = std::path::absolute(path).with_context(|| format!("resolving {}", path.display()))?;
    let mut missing = Vec::new();
    let mut existing = abs.as_path();
    loop {
        match std::fs::canonicalize(existing) {
            Ok(real) => return Ok(missing.iter().rev().fold(real, |p, c| p.join(c))),
            Err(_) => match (existing.parent(), existing.file_name()) {
                (Some(parent), Some(name)) => {
                    missing.push(name.to_os_string());
                    existing = parent;
                }
                _ => return Ok(abs.clone()),
            },
        }
    }
}

/// Creates the tar file: a new file, or with `force` an existing regular one, never through a
/// symlink at `out`. Private (0600), as the recording it copies is.
fn create_tar_file(out: &Path, force: bool) -> anyhow::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut open = std::fs::OpenOptions::new();
    open.write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC);
    match std::fs::symlink_metadata(out) {
        Ok(m) if m.file_type().is_symlink() => anyhow::bail!(
            "--out {} is a symlink; export never writes through one: remove it or choose another              path",
            out.display()
        ),
        Ok(m) if !m.is_file() => anyhow::bail!(
            "--out {} exists and is not a regular file; choose another path",
            out.display()
        ),
        Ok(_) if !force => anyhow::bail!(
            "--out {} exists; pass --force to overwrite it, or choose another path",
            out.display()
        ),
        Ok(_) => open.truncate(true),
        Err(_) => open.create_new(true),
    };
    open.open(out)
        .with_context(|| format!("creating {}", out.display()))
}

fn list(paths: &[RecPath]) -> String {
    let mut s: Vec<String> = paths
        .iter()
        .take(5)
        .map(|p| quoted(p.as_bytes()).into_owned())
        .collect();
    if paths.len() > 5 {
        s.push(format!("and {} more", paths.len() - 5));
    }
    s.join(", ")
}

/// Markers are written up to a poll interval after the loss they report, and a lost record may
/// be older still: a moment this close before a gap marker may already miss something.
const GAP_SLACK_NS: u64 = 1_000_000_000;

/// Records lost before `mono_ns` were healed by reading files back later (at their close, the
/// writer's exit, or the end): until then, the files they touched may be missing or stale. Says
/// so for any moment after the first loss and before the end, which is always exact.
fn gap_warning(store: &Store, mono_ns: u64) -> anyhow::Result<Option<String>> {
    let span = store.span();
    if mono_ns >= span.end_mono_ns {
        return Ok(None);
    }
    let mut gaps = Vec::new();
    let mut ring_full = false;
    for s in store.summaries(1, span.last_seq) {
        let s = s?;
        if s.op.kind == OpKind::Marker && s.op.marker == Some(MarkerKind::Gap) {
            gaps.push(s.time);
            ring_full |=
                s.op.detail
                    .as_deref()
                    .is_some_and(|d| d.contains("ring buffer"));
        }
    }
    let Some(&first) = gaps.first() else {
        return Ok(None);
    };
    if mono_ns + GAP_SLACK_NS < first {
        return Ok(None);
    }
    let last = *gaps.last().unwrap();
    Ok(Some(format!(
        "capture records were lost during this recording ({} gap(s), from {} to {}; see \
         `diffkeeper log`). Files written then were read back later, so at this moment some of \
         them may be missing or older than they were; the end of the recording is exact.{}",
        gaps.len(),
        crate::offset_label(&span, first),
        crate::offset_label(&span, last),
        if ring_full {
            " A larger --ring-size when recording avoids losses to a full ring buffer."
        } else {
            ""
        }
    )))
}
