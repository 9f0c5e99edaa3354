//! What both end-to-end test binaries use to wait and to prove nothing was left behind.

#![allow(dead_code)] // each test binary uses a different part

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use diffkeeper_node_sim::mountinfo::read_mountinfo;

/// Polls `probe` until it yields a value, or fails naming what never happened.
pub async fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl AsyncFnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await? {
            return Ok(value);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn mounts_under(dir: &Path) -> Result<Vec<PathBuf>> {
    Ok(read_mountinfo(None)?
        .into_iter()
        .map(|mount| mount.mount_point)
        .filter(|point| point.starts_with(dir))
        .collect())
}

/// Alive and not a zombie: orphans of the scripts (containerd, shims, container processes whose
/// shim was killed) wait for pid 1 to reap them, which takes it a while here.
pub fn is_running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| Some(stat.rsplit_once(") ")?.1.starts_with('Z')))
        .is_some_and(|zombie| !zombie)
}

/// Running processes whose command line mentions `dir`: containerd and its shims.
pub fn processes_mentioning(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_string_lossy().parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            (is_running(pid) && cmdline.contains(&needle)).then(|| format!("{pid}: {cmdline}"))
        })
        .collect()
}
