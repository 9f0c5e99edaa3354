//! `diffkeeper log`: every change, when, and by which process.

use crate::quoted::{escaped, quoted};
use diffkeeper_export::compile_globs;
use diffkeeper_store::{format_wall, MarkerKind, OpKind, Summary};
use std::io::Write;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    state: crate::StateDir,
    /// Only changes to paths matching this glob; repeatable.
    #[arg(long = "path", value_name = "GLOB")]
    paths: Vec<String>,
    /// Start after this moment (default: the start).
    #[arg(long, allow_hyphen_values = true)]
    from: Option<String>,
    /// End at this moment (default: the end).
    #[arg(long, allow_hyphen_values = true)]
    to: Option<String>,
    /// One JSON object per line, for machines.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let store = crate::open_store(&a.state)?;
    let span = store.span();
    let from = match &a.from {
        Some(t) => crate::moment(&store, t)?.seq + 1,
        None => 1,
    };
    let to = match &a.to {
        Some(t) => crate::moment(&store, t)?.seq,
        None => span.last_seq,
    };
    if from > to + 1 {
        anyhow::bail!(
            "--from {} is after --to {} (@seq:{} > @seq:{}): give the earlier moment as --from",
            a.from.as_deref().unwrap_or("start"),
            a.to.as_deref().unwrap_or("end"),
            from - 1,
            to
        );
    }
    let globs = compile_globs(&a.paths)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for s in store.summaries(from, to) {
        let s = s?;
        if let Some(g) = &globs {
            if !s.op.paths.iter().any(|p| g.is_match(p.to_string())) {
                continue;
            }
        }
        let offset = crate::offset_label(&span, s.time);
        let wall = format_wall(span.wall_of(s.time));
        let written = if a.json {
            let line = serde_json::json!({
                "offset": offset, "wall": wall, "summary": &s,
            });
            writeln!(out, "{line}")
        } else {
            writeln!(out, "{offset:>12}  {wall}  {}", describe(&s))
        };
        if let Err(e) = written {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(()); // `diffkeeper log | head`
            }
            return Err(e.into());
        }
    }
    out.flush().or_else(|e| {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            Ok(())
        } else {
            Err(e)
        }
    })?;
    crate::note_what_is_missing(&store);
    Ok(())
}

/// "write     /tmp/w/a.txt  64 B at 4096  pid 1234 (sh)"
pub(crate) fn describe(s: &Summary) -> String {
    let op = &s.op;
    let paths: Vec<String> = op
        .paths
        .iter()
        .map(|p| quoted(p.as_bytes()).into_owned())
        .collect();
    let what = match op.kind {
        OpKind::Rename => paths.join(" -> "),
        OpKind::Exchange => paths.join(" <-> "),
        OpKind::Marker => {
            let kind = match op.marker {
                Some(MarkerKind::BaselineComplete) => "baseline complete",
                Some(MarkerKind::Gap) => "GAP",
                Some(MarkerKind::Note) | None => "note",
            };
            let detail = op.detail.as_deref().unwrap_or_default();
            format!("{kind}: {}", escaped(detail.as_bytes()))
        }
        _ if paths.is_empty() => "(unlinked file)".into(),
        _ => paths.join(", "),
    };
    let mut detail = Vec::new();
    if let Some(b) = op.bytes {
        detail.push(match op.offset {
            Some(o) => format!("{b} B at {o}"),
            None => format!("{b} B"),
        });
    }
    if let Some(size) = op.size {
        detail.push(format!("size {size}"));
    }
    if let Some(mode) = op.mode {
        detail.push(format!("mode {mode:04o}"));
    }
    if let Some(owner) = op.owner {
        detail.push(format!("owner {owner}"));
    }
    if let Some(ns) = op.mtime_ns {
        detail.push(format!("mtime {}", format_wall(ns)));
    }
    if let Some(t) = &op.target {
        detail.push(format!("-> {}", quoted(t)));
    }
    if op.kind == OpKind::SetXattrs {
        let names = op.detail.as_deref().unwrap_or_default();
        detail.push(match names {
            "" => "none".into(),
            names => escaped(names.as_bytes()),
        });
    }
    if op.kind == OpKind::Adopt {
        detail.push("pre-existing: content known from its first read-back".into());
    }
    let who = match &s.process {
        Some(p) => format!("pid {} ({})", p.pid, escaped(p.comm.as_bytes())),
        None => "diffkeeper".into(),
    };
    format!(
        "{:<8} {what}  {}  {who}",
        op.kind.as_str(),
        detail.join(", ")
    )
}
