//! What both end-to-end test binaries use to wait and to prove nothing was left behind.

#![allow(dead_code)] // each test binary uses a different part

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
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

pub const FIX: &str = "run as root, after `bash scripts/e2e-apiserver.sh install` and \
                   `bash scripts/e2e-runtime.sh install`";
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn script(name: &str, args: &[&str]) -> Result<()> {
    let output = Command::new("bash")
        .arg(repo().join("scripts").join(name))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running bash scripts/{name}"))?;
    if !output.status.success() {
        bail!(
            "scripts/{name} {} failed ({}):\n{}\nFix: {FIX}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

pub fn read_env(path: &Path) -> Result<BTreeMap<String, String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
}

/// A daemon the test started (the simulator, the agent, the operator), its stderr in `log`.
pub struct Daemon {
    pub child: Child,
    pub log: PathBuf,
    pub name: &'static str,
}

impl Daemon {
    /// Everything the daemon has logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill has no memory preconditions; the pid is our child's.
        unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
    }

    /// Sends `signal` and waits for the exit.
    pub fn stop(
        &mut self,
        signal: libc::c_int,
        timeout: Duration,
    ) -> Result<std::process::ExitStatus> {
        self.signal(signal);
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                self.signal(libc::SIGKILL);
                let _ = self.child.wait();
                bail!(
                    "{} did not exit within {timeout:?} of signal {signal}",
                    self.name
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.stop(libc::SIGTERM, Duration::from_secs(30));
        }
    }
}

/// Stops what was started if a later start fails.
pub struct StopGuard(pub Vec<(&'static str, PathBuf)>);

impl StopGuard {
    pub fn defuse(mut self) -> Vec<(&'static str, PathBuf)> {
        std::mem::take(&mut self.0)
    }
}

impl Drop for StopGuard {
    fn drop(&mut self) {
        for (name, dir) in std::mem::take(&mut self.0) {
            let _ = script(name, &["stop", dir.to_str().unwrap()]);
        }
    }
}
