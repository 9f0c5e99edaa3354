//! A recording's events as the Timeline RPC streams them.

use crate::pb::TimelineEvent;
use diffkeeper_store::{format_wall, MarkerKind, OpKind, RecPath, Span, Summary};
use globset::GlobSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The event as a person reads it: paths of node-naming ops are the node's names at that moment.
pub(crate) fn timeline_event(span: &Span, s: &Summary) -> TimelineEvent {
    let op = &s.op;
    let mut paths = op.paths.iter().map(|p| p.to_string());
    let path = paths.next().unwrap_or_default();
    let target = match op.kind {
        OpKind::Rename | OpKind::Exchange => paths.next().unwrap_or_default(),
        _ => op
            .target
            .as_deref()
            .map(|t| String::from_utf8_lossy(t).into_owned())
            .unwrap_or_default(),
    };
    let process = s.process.as_ref();
    TimelineEvent {
        seq: s.seq,
        time: format_wall(span.wall_of(s.time)),
        op: op.kind.as_str().to_string(),
        path,
        target,
        bytes: op.bytes.or(op.size).unwrap_or(0),
        pid: process.map_or(0, |p| p.pid),
        comm: process.map(|p| p.comm.clone()).unwrap_or_default(),
        gap: is_gap(s),
        note: op.detail.clone().unwrap_or_default(),
    }
}

fn is_gap(s: &Summary) -> bool {
    s.op.kind == OpKind::Marker && s.op.marker == Some(MarkerKind::Gap)
}

/// Which events a Timeline request wants.
pub(crate) struct EventFilter {
    pub globs: Option<GlobSet>,
}

impl EventFilter {
    pub(crate) fn wants(&self, s: &Summary) -> bool {
        let Some(globs) = &self.globs else {
            return true;
        };
        // A gap may hide changes to exactly the paths asked for, so it is always shown.
        is_gap(s) || s.op.paths.iter().any(|p| globs.is_match(as_path(p)))
    }
}

fn as_path(p: &RecPath) -> &Path {
    Path::new(OsStr::from_bytes(p.as_bytes()))
}
