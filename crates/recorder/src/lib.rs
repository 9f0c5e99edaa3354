//! Turns captured kernel events into store operations, heals what capture missed, and runs local
//! recordings (`diffkeeper record -- CMD`).

mod cgroup;
mod fs_ids;
mod launch;
mod local;
mod metadata;
mod overlay;
mod root_dir;
mod scope;
mod translate;

pub use cgroup::{cgroup2_mount, CgroupError, RecordingCgroup};
pub use local::{
    record_local, LocalOptions, LocalOutcome, StoppedEarly, DEFAULT_CWD_BASELINE_LIMIT,
};
pub use scope::{PathScope, ScopeError};
pub use translate::{Recorder, RecorderStats, COMMIT_BYTES, READ_BACK_CHUNK};

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(transparent)]
    Store(#[from] diffkeeper_store::StoreError),
    #[error(transparent)]
    Capture(#[from] diffkeeper_capture::CaptureError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error("cannot snapshot baseline {path}: {cause}; pass an existing directory to --baseline")]
    Baseline {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("cannot run `{command}`: {cause}; check that the command exists and is executable")]
    Spawn {
        command: String,
        cause: std::io::Error,
    },
    #[error("{command}: command not found (nothing was recorded)")]
    CommandNotFound { command: String },
    #[error("{command}: {why} (nothing was recorded)")]
    NotExecutable { command: String, why: String },
    #[error("cannot make the state dir {path} (private, 0700): {cause}; pass a --state-dir you may create")]
    StateDir {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error(
        "the working directory {} holds more than {} MiB of files ({} MiB counted before \
         stopping): record snapshots it before the command starts, so that in-place edits replay \
         exactly, and this one is too large to be the project (a home directory, / or /tmp?); \
         run record from the project's directory, pass --no-cwd-baseline (and --baseline DIR for \
         what matters), or raise --cwd-baseline-limit (nothing was recorded)",
        dir.display(),
        limit.div_ceil(1 << 20),
        seen >> 20
    )]
    CwdTooLarge { dir: PathBuf, seen: u64, limit: u64 },
    #[error("nothing to record: give the command after `--`, e.g. `diffkeeper record --state-dir=/tmp/trace -- make test`")]
    NoCommand,
}

impl RecordError {
    /// The exit status a shell gives for this failure to start a command: 127 when it does not
    /// exist, 126 when it cannot be executed.
    pub fn shell_status(&self) -> Option<i32> {
        match self {
            RecordError::CommandNotFound { .. } => Some(127),
            RecordError::NotExecutable { .. } => Some(126),
            RecordError::Spawn { cause, .. } => match cause.kind() {
                std::io::ErrorKind::NotFound => Some(127),
                std::io::ErrorKind::PermissionDenied => Some(126),
                _ if cause.raw_os_error() == Some(libc::ENOEXEC) => Some(126),
                _ => None,
            },
            _ => None,
        }
    }
}

/// A recorded path as a marker's text shows it: plain, or quoted with escapes when it holds
/// control bytes (`log` escapes markers again; this keeps the detail one line in any reader).
pub(crate) fn quoted_path(path: &diffkeeper_store::RecPath) -> String {
    let text = path.to_string();
    if text.chars().any(char::is_control) {
        format!("{text:?}")
    } else {
        text
    }
}

/// CLOCK_MONOTONIC now, in ns: the clock of `bpf_ktime_get_ns`, so user-space stamps (baseline,
/// read-backs at the end) order correctly among kernel events.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Wall-clock now, in ns since the Unix epoch.
pub fn wall_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}
