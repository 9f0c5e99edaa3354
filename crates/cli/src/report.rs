//! `diffkeeper report`: a recording as one self-contained HTML page — activity per file and per
//! process over time, gaps and losses marked, the command's exit, and for any moment clicked the
//! `log` lines and the `diff` of what changed. No network: the data, styles and script are all
//! in the file, so it can be attached to a CI run or an incident ticket.

use anyhow::Context;
use diffkeeper_export::compile_globs;
use diffkeeper_store::{format_wall, MarkerKind, NodeId, OpKind, Seq, Store, Summary};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    state: crate::StateDir,
    /// The HTML file to write.
    #[arg(long, value_name = "FILE")]
    out: std::path::PathBuf,
    /// Only files whose recorded path matches this glob; repeatable.
    #[arg(long = "path", value_name = "GLOB")]
    paths: Vec<String>,
    /// Replace FILE if it exists.
    #[arg(long)]
    force: bool,
}

/// Above these, a moment's diff is summarized instead of shown: the page must stay openable.
const DIFF_FILE_BYTES: usize = 256 * 1024;
const DIFF_TEXT_BYTES: usize = 64 * 1024;
const DIFFS_TOTAL_BYTES: usize = 16 * 1024 * 1024;
/// Events embedded in the page; a longer recording is cut (and the page says so).
const MAX_EVENTS: usize = 200_000;

#[derive(Serialize)]
struct Page {
    command: Vec<String>,
    state_dir: String,
    started: String,
    duration_ns: u64,
    exit: Option<String>,
    finished: bool,
    files: Vec<FileRow>,
    processes: Vec<ProcessRow>,
    events: Vec<EventRow>,
    gaps: Vec<GapRow>,
    diffs: BTreeMap<Seq, String>,
    events_cut: Option<usize>,
}

#[derive(Serialize)]
struct FileRow {
    path: String,
    events: u64,
    bytes: u64,
}

#[derive(Serialize)]
struct ProcessRow {
    pid: u32,
    comm: String,
    events: u64,
}

#[derive(Serialize)]
struct EventRow {
    seq: Seq,
    /// ns since the start.
    t: u64,
    kind: &'static str,
    file: Option<usize>,
    process: Option<usize>,
    /// The `log` line.
    text: String,
}

#[derive(Serialize)]
struct GapRow {
    seq: Seq,
    t: u64,
    detail: String,
}

/// A unified diff of one file between two moments, or why there is none to show.
fn diff_text(
    store: &Store,
    path: &str,
    before: Option<(NodeId, Seq)>,
    after: Option<(NodeId, Seq)>,
) -> anyhow::Result<String> {
    let read = |at: Option<(NodeId, Seq)>| -> anyhow::Result<Vec<u8>> {
        Ok(match at {
            Some((node, seq)) => store.read_content(node, seq).unwrap_or_default(),
            None => Vec::new(),
        })
    };
    let (old, new) = (read(before)?, read(after)?);
    if old.len() > DIFF_FILE_BYTES || new.len() > DIFF_FILE_BYTES {
        return Ok(format!(
            "{path}: {} -> {} bytes (too large to show here; use diffkeeper diff)",
            old.len(),
            new.len()
        ));
    }
    let (Ok(old), Ok(new)) = (std::str::from_utf8(&old), std::str::from_utf8(&new)) else {
        return Ok(format!(
            "{path}: binary content, {} -> {} bytes",
            old.len(),
            new.len()
        ));
    };
    let mut text = similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(3)
        .header(&format!("a{path}"), &format!("b{path}"))
        .to_string();
    if text.is_empty() {
        text = format!("{path}: content unchanged");
    }
    if text.len() > DIFF_TEXT_BYTES {
        let mut cut = DIFF_TEXT_BYTES;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("\n... (cut; use diffkeeper diff for the rest)\n");
    }
    Ok(text)
}

fn build(store: &Store, a: &Args) -> anyhow::Result<Page> {
    let span = store.span();
    let globs = compile_globs(&a.paths)?;
    let wanted = |p: &str| globs.as_ref().is_none_or(|g| g.is_match(p));
    let summaries: Vec<Summary> = store
        .summaries(1, span.last_seq)
        .collect::<Result<_, _>>()?;
    let mut files: Vec<FileRow> = Vec::new();
    let mut file_index: HashMap<String, usize> = HashMap::new();
    let mut processes: Vec<ProcessRow> = Vec::new();
    let mut process_index: HashMap<(u32, String), usize> = HashMap::new();
    let mut events = Vec::new();
    let mut gaps = Vec::new();
    let mut diffs = BTreeMap::new();
    let mut diff_bytes = 0;
    let mut exit = None;
    // The moment each node's content was last shown, so a rewrite's diff spans all of it.
    let mut shown: HashMap<NodeId, Seq> = HashMap::new();
    let mut rewrites = crate::grep::Rewrites::default();
    let mut cut = None;
    for (i, s) in summaries.iter().enumerate() {
        let mid_rewrite = rewrites.mid_rewrite(s, summaries.get(i + 1));
        let t = s.time.saturating_sub(span.start_mono_ns);
        if s.op.kind == OpKind::Marker {
            match s.op.marker {
                Some(MarkerKind::Gap) => gaps.push(GapRow {
                    seq: s.seq,
                    t,
                    detail: s.op.detail.clone().unwrap_or_default(),
                }),
                Some(MarkerKind::Note) => {
                    if let Some(detail) = &s.op.detail {
                        if detail.starts_with("command exited") || detail.contains("killed by") {
                            exit = Some(detail.clone());
                        }
                    }
                }
                _ => {}
            }
        }
        let path = s.op.paths.first().map(|p| p.to_string());
        if s.op.kind != OpKind::Marker && !path.as_deref().is_some_and(wanted) {
            continue;
        }
        if events.len() >= MAX_EVENTS {
            *cut.get_or_insert(0) += 1;
            continue;
        }
        let file = path.map(|p| {
            let n = files.len();
            let at = *file_index.entry(p.clone()).or_insert(n);
            if at == n {
                files.push(FileRow {
                    path: p,
                    events: 0,
                    bytes: 0,
                });
            }
            files[at].events += 1;
            files[at].bytes += s.op.bytes.unwrap_or(0);
            at
        });
        let process = s.process.as_ref().map(|p| {
            let n = processes.len();
            let at = *process_index.entry((p.pid, p.comm.clone())).or_insert(n);
            if at == n {
                processes.push(ProcessRow {
                    pid: p.pid,
                    comm: p.comm.clone(),
                    events: 0,
                });
            }
            processes[at].events += 1;
            at
        });
        let changes_content = matches!(
            s.op.kind,
            OpKind::Create | OpKind::Write | OpKind::Truncate | OpKind::Resync | OpKind::Adopt
        );
        if changes_content && !mid_rewrite && diff_bytes < DIFFS_TOTAL_BYTES {
            if let (Some(node), Some(path)) = (s.op.node, file.map(|f| files[f].path.clone())) {
                let before = shown.get(&node).map(|&seq| (node, seq));
                let text = diff_text(store, &path, before, Some((node, s.seq)))?;
                diff_bytes += text.len();
                diffs.insert(s.seq, text);
                shown.insert(node, s.seq);
            }
        }
        events.push(EventRow {
            seq: s.seq,
            t,
            kind: s.op.kind.as_str(),
            file,
            process,
            text: format!(
                "{} {}",
                crate::offset_label(&span, s.time),
                crate::log::describe(s)
            ),
        });
    }
    Ok(Page {
        command: store.info().command.clone(),
        state_dir: a
            .state
            .state_dir
            .canonicalize()
            .unwrap_or_else(|_| a.state.state_dir.clone())
            .display()
            .to_string(),
        started: format_wall(span.started_wall_ns),
        duration_ns: span.end_mono_ns.saturating_sub(span.start_mono_ns),
        exit,
        finished: span.finished,
        files,
        processes,
        events,
        gaps,
        diffs,
        events_cut: cut,
    })
}

/// JSON that can sit inside a <script> element: `</script>` or `<!--` in a file name or a diff
/// must not end it early.
fn script_safe_json(page: &Page) -> String {
    serde_json::to_string(page)
        .expect("the page always serializes")
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
}

pub fn run(a: Args) -> anyhow::Result<()> {
    if a.out.exists() && !a.force {
        anyhow::bail!("{} exists; pass --force to replace it", a.out.display());
    }
    let store = crate::open_store(&a.state)?;
    let page = build(&store, &a)?;
    let html = TEMPLATE.replace("/*DATA*/null", &script_safe_json(&page));
    std::fs::write(&a.out, html).with_context(|| format!("writing {}", a.out.display()))?;
    eprintln!(
        "diffkeeper: wrote {} ({} files, {} processes, {} events{}); open it in a browser",
        a.out.display(),
        page.files.len(),
        page.processes.len(),
        page.events.len(),
        page.events_cut
            .map(|n| format!(", {n} more left out: narrow it with --path"))
            .unwrap_or_default()
    );
    Ok(())
}

const TEMPLATE: &str = include_str!("report.html");
