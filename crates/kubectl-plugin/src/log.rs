//! `kubectl diffkeeper log`: a recorded container's changes, oldest first, from the agent's
//! Timeline stream, in the lines the local `diffkeeper log` prints.

use std::io::Write;

use anyhow::Context;
use diffkeeper_rpc::{TimelineEvent, TimelineRequest};
use serde_json::json;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::agent::AgentArgs;
use crate::cluster::ClusterArgs;
use crate::grpc_status::{explain, Call};
use crate::target::TargetArgs;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    target: TargetArgs,
    /// Start after this moment: 2m14s (from the start), -5s (before the end), RFC 3339, start,
    /// end, exit.
    #[arg(long, allow_hyphen_values = true, value_name = "TIME")]
    from: Option<String>,
    /// End at this moment (same forms as --from).
    #[arg(long, allow_hyphen_values = true, value_name = "TIME")]
    to: Option<String>,
    /// Only changes to paths matching this glob; repeatable.
    #[arg(long = "path", value_name = "GLOB")]
    paths: Vec<String>,
    /// Keep printing changes as the running container makes them.
    #[arg(short = 'f', long)]
    follow: bool,
    /// Output format: json (one object per line).
    #[arg(short = 'o', long = "output", value_enum, value_name = "FORMAT")]
    output: Option<Output>,
    #[command(flatten)]
    agent: AgentArgs,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Output {
    Json,
}

pub async fn run(cluster: &ClusterArgs, args: Args) -> anyhow::Result<()> {
    let (record, mut agent) = args.agent.reach(cluster, &args.target).await?;
    let call = Call {
        permission: "get recordings/log",
        granted_by: "the admin role",
        record: &record,
        route: &agent.route,
    };
    let request = TimelineRequest {
        container: Some(crate::target::selector(&record)),
        from: args.from.clone().unwrap_or_default(),
        to: args.to.clone().unwrap_or_default(),
        path_globs: args.paths.clone(),
        follow: args.follow,
    };
    let mut stream = agent
        .connection
        .timeline(request)
        .await
        .map_err(|s| explain(&s, &call))?
        .into_inner();

    // Offsets count from the container's first change, as the local log's do. Without --from
    // the stream starts there; with it, the record's first event is the best known start (Kubernetes
    // keeps it to the second).
    let mut start = match args.from {
        None => None,
        Some(_) => record
            .status
            .as_ref()
            .and_then(|s| s.first_event.as_ref())
            .and_then(|t| parse_time(&crate::ls::format_time(t))),
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    while let Some(event) = stream.message().await.map_err(|s| explain(&s, &call))? {
        let at = parse_time(&event.time);
        if start.is_none() {
            start = at;
        }
        let offset = match (start, at) {
            (Some(s), Some(a)) => offset_label(a - s),
            _ => "?".into(),
        };
        let written = if args.output == Some(Output::Json) {
            writeln!(out, "{}", json_line(&event, &offset))
        } else {
            writeln!(out, "{offset:>12}  {}  {}", event.time, describe(&event))
        };
        // Following a live container, each change should show as it comes.
        let written = written.and_then(|()| if args.follow { out.flush() } else { Ok(()) });
        if let Err(e) = written {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(()); // `kubectl diffkeeper log ... | head`
            }
            return Err(e).context("writing the log");
        }
    }
    match out.flush() {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e).context("writing the log"),
        _ => Ok(()),
    }
}

fn parse_time(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &Rfc3339).ok()
}

/// "+2m14.123s", as the local `diffkeeper log` labels moments.
fn offset_label(d: time::Duration) -> String {
    let ms = d.whole_milliseconds();
    let sign = if ms < 0 { "-" } else { "+" };
    let ms = ms.unsigned_abs();
    let (secs, ms) = (ms / 1000, ms % 1000);
    if secs >= 60 {
        format!("{sign}{}m{:02}.{ms:03}s", secs / 60, secs % 60)
    } else {
        format!("{sign}{secs}.{ms:03}s")
    }
}

/// "write    /tmp/w/a.txt  64 B  pid 1234 (sh)"; a gap is set apart so nobody reads past it.
fn describe(e: &TimelineEvent) -> String {
    if e.gap {
        return format!("--- GAP: {} ---", or_unknown(&e.note));
    }
    let what = match (e.op.as_str(), e.target.is_empty()) {
        ("rename", false) => format!("{} -> {}", e.path, e.target),
        ("exchange", false) => format!("{} <-> {}", e.path, e.target),
        ("marker", _) => format!("note: {}", e.note),
        _ if e.path.is_empty() => "(unlinked file)".into(),
        _ => e.path.clone(),
    };
    let mut detail = Vec::new();
    // The agent sends a truncate's new size in `bytes`, as the local log says "size N".
    if e.op == "truncate" {
        detail.push(format!("size {}", e.bytes));
    } else if e.bytes > 0 {
        detail.push(format!("{} B", e.bytes));
    }
    if !e.target.is_empty() && !matches!(e.op.as_str(), "rename" | "exchange") {
        detail.push(format!("-> {}", e.target));
    }
    if !e.note.is_empty() && e.op != "marker" {
        detail.push(e.note.clone());
    }
    let who = if e.pid == 0 {
        "diffkeeper".to_string()
    } else {
        format!("pid {} ({})", e.pid, e.comm)
    };
    format!("{:<8} {what}  {}  {who}", e.op, detail.join(", "))
}

fn or_unknown(note: &str) -> &str {
    if note.is_empty() {
        "changes may be missing here"
    } else {
        note
    }
}

fn json_line(e: &TimelineEvent, offset: &str) -> serde_json::Value {
    json!({
        "offset": offset, "seq": e.seq, "time": e.time, "op": e.op, "path": e.path,
        "target": e.target, "bytes": e.bytes, "pid": e.pid, "comm": e.comm,
        "gap": e.gap, "note": e.note,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(op: &str, path: &str) -> TimelineEvent {
        TimelineEvent {
            seq: 7,
            time: "2025-01-01T10:00:01.5Z".into(),
            op: op.into(),
            path: path.into(),
            pid: 42,
            comm: "sh".into(),
            ..Default::default()
        }
    }

    #[test]
    fn lines_read_like_the_local_log() {
        let mut write = event("write", "/tmp/a.txt");
        write.bytes = 64;
        assert_eq!(describe(&write), "write    /tmp/a.txt  64 B  pid 42 (sh)");
        let mut rename = event("rename", "/a");
        rename.target = "/b".into();
        assert_eq!(describe(&rename), "rename   /a -> /b    pid 42 (sh)");
        let mut truncate = event("truncate", "/a");
        truncate.bytes = 0;
        assert_eq!(describe(&truncate), "truncate /a  size 0  pid 42 (sh)");
        let mut symlink = event("symlink", "/l");
        symlink.target = "/t".into();
        symlink.pid = 0;
        assert_eq!(describe(&symlink), "symlink  /l  -> /t  diffkeeper");
    }

    #[test]
    fn gaps_stand_out() {
        let mut gap = event("marker", "");
        gap.gap = true;
        gap.note = "ring buffer overflow, 12 events lost".into();
        assert_eq!(
            describe(&gap),
            "--- GAP: ring buffer overflow, 12 events lost ---"
        );
        gap.note.clear();
        assert!(describe(&gap).starts_with("--- GAP: changes may be missing"));
    }

    #[test]
    fn offsets_are_labelled_as_locally() {
        assert_eq!(offset_label(time::Duration::milliseconds(1500)), "+1.500s");
        assert_eq!(
            offset_label(time::Duration::milliseconds(134_123)),
            "+2m14.123s"
        );
        let a = parse_time("2025-01-01T10:00:01.5Z").unwrap();
        let b = parse_time("2025-01-01T10:00:00Z").unwrap();
        assert_eq!(offset_label(a - b), "+1.500s");
    }
}
