//! A cgroup v2 of our own for a local recording: the kernel filter selects processes by it.

use std::fs;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use diffkeeper_locate::mountinfo;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(
        "no cgroup v2 hierarchy is mounted (looked for a cgroup2 line in /proc/self/mountinfo): \
         mount one, e.g. `mount -t cgroup2 none /sys/fs/cgroup/unified`, or boot with \
         systemd.unified_cgroup_hierarchy"
    )]
    NoCgroup2,
    #[error("cannot create cgroup {path}: {cause} (diffkeeper record needs root)")]
    Create { path: PathBuf, cause: io::Error },
    #[error("cgroup {path}: {cause}")]
    Io { path: PathBuf, cause: io::Error },
}

/// A child cgroup created for one recording, removed on drop once empty.
pub struct RecordingCgroup {
    path: PathBuf,
    parent_created: Option<PathBuf>,
    id: u64,
    level: u32,
}

impl RecordingCgroup {
    /// Creates `<cgroup2 mount>/diffkeeper/<name>`. Our own cgroup is not used as the parent:
    /// when it has controllers enabled, the no-internal-processes rule would forbid the child.
    pub fn create(name: &str) -> Result<Self, CgroupError> {
        let mount = cgroup2_mount()?;
        let parent = mount.join("diffkeeper");
        let parent_created = match fs::create_dir(&parent) {
            Ok(()) => Some(parent.clone()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => None,
            Err(cause) => {
                return Err(CgroupError::Create {
                    path: parent,
                    cause,
                })
            }
        };
        remove_stale(&parent);
        let path = parent.join(name);
        fs::create_dir(&path).map_err(|cause| CgroupError::Create {
            path: path.clone(),
            cause,
        })?;
        // The cgroup v2 id the kernel reports (bpf_get_current_cgroup_id) is the kernfs inode.
        let id = fs::metadata(&path)
            .map_err(|cause| CgroupError::Io {
                path: path.clone(),
                cause,
            })?
            .ino();
        Ok(RecordingCgroup {
            level: path.strip_prefix(&mount).unwrap().components().count() as u32,
            path,
            parent_created,
            id,
        })
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// Depth below the cgroup2 root (the root is 0).
    pub fn level(&self) -> u32 {
        self.level
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// An open handle on `cgroup.procs`: a forked child writes "0" to it before exec to move
    /// itself in, so not one of its syscalls escapes the filter. Opened before fork because
    /// only async-signal-safe calls are allowed between fork and exec.
    pub fn procs_handle(&self) -> Result<OwnedFd, CgroupError> {
        let path = self.path.join("cgroup.procs");
        let f = fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|cause| CgroupError::Io { path, cause })?;
        Ok(f.into())
    }

    /// Moves the calling process into the cgroup; for use between fork and exec.
    ///
    /// # Safety
    /// Only async-signal-safe work: a single write(2).
    pub fn join_from_child(procs: &OwnedFd) -> io::Result<()> {
        let n = unsafe { libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) };
        if n == 1 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// True while any process is in the cgroup (or below it).
    pub fn populated(&self) -> Result<bool, CgroupError> {
        let path = self.path.join("cgroup.events");
        let text = fs::read_to_string(&path).map_err(|cause| CgroupError::Io { path, cause })?;
        Ok(text.lines().any(|l| l.trim() == "populated 1"))
    }

    /// Sends `signal` to every process of the recording, as a terminal's Ctrl-C reaches a
    /// whole foreground job: a shell script's children get it too, not only the shell.
    pub fn signal_all(&self, signal: i32) {
        let Ok(procs) = fs::read_to_string(self.path.join("cgroup.procs")) else {
            return;
        };
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            unsafe { libc::kill(pid, signal) };
        }
    }

    /// Kills everything left in the cgroup (stragglers after an interrupted recording).
    pub fn kill_all(&self) {
        let _ = fs::OpenOptions::new()
            .write(true)
            .open(self.path.join("cgroup.kill"))
            .and_then(|mut f| f.write_all(b"1"));
    }
}

impl Drop for RecordingCgroup {
    fn drop(&mut self) {
        // rmdir fails while the kernel still tears down exited tasks: retry briefly.
        let deadline = Instant::now() + Duration::from_secs(2);
        while fs::remove_dir(&self.path).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Some(parent) = &self.parent_created {
            let _ = fs::remove_dir(parent); // fine to fail: another recording may use it
        }
    }
}

/// The pid in a `rec-PID` name: the recorder that created it.
fn recorder_pid(name: &str) -> Option<i32> {
    name.strip_prefix("rec-")?.parse().ok()
}

/// Removes the empty cgroups of recorders that died without removing theirs (kill -9, OOM):
/// nothing else ever would, and each is a directory the node keeps forever. One whose
/// processes still run (a killed recorder's workload goes on, unrecorded) is left alone.
fn remove_stale(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(recorder_pid) else {
            continue;
        };
        // SAFETY: kill with signal 0 only checks that the pid exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0
            || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        if alive {
            continue;
        }
        let path = entry.path();
        let populated = fs::read_to_string(path.join("cgroup.events"))
            .map(|t| t.lines().any(|l| l.trim() == "populated 1"))
            .unwrap_or(true);
        if populated {
            tracing::warn!(
                cgroup = %path.display(),
                "a dead recorder's cgroup still has processes (its workload outlived it); \
                 leaving it"
            );
        } else if fs::remove_dir(&path).is_ok() {
            tracing::info!(cgroup = %path.display(), "removed the cgroup of a dead recorder");
        }
    }
}

/// Where cgroup2 is mounted: /sys/fs/cgroup on unified hosts, often /sys/fs/cgroup/unified on
/// hybrid ones. Read from mountinfo rather than assumed.
pub fn cgroup2_mount() -> Result<PathBuf, CgroupError> {
    let mounts = mountinfo::read_mountinfo(None).map_err(|cause| CgroupError::Io {
        path: "/proc/self/mountinfo".into(),
        cause,
    })?;
    mountinfo::cgroup2_mount(&mounts)
        .map(Path::to_path_buf)
        .ok_or(CgroupError::NoCgroup2)
}
