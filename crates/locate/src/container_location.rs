//! Where a running container lives on the host, in the terms the recording agent works in: the
//! cgroup v2 id its eBPF filter matches (what `bpf_get_current_cgroup_id()` returns for the
//! container's tasks) and the overlay upper directory that holds every file the container wrote.
//!
//! Only `/proc` and the cgroup2 filesystem are read, never the runtime: the agent learns a
//! container's pid from its cgroup ([`crate::container_cgroup`]) and the end-to-end node from
//! the CRI, and both call [`locate_container`].

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::mountinfo::{cgroup2_mount, read_mountinfo};

/// Where a container is on the host: its cgroup and its overlay's layers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerLocation {
    /// The process the location was read from (the container's init).
    pub pid: u32,
    /// The cgroup v2 path relative to the hierarchy's root, e.g.
    /// `/kubepods/besteffort/pod<uid>/<container id>`.
    pub cgroup_path: String,
    /// The cgroup v2 directory on the host.
    pub cgroup_dir: PathBuf,
    /// The cgroup v2 id: the inode number of `cgroup_dir`.
    pub cgroup_id: u64,
    /// The overlay's writable layer: the container's writes, as files on the host.
    pub upper_dir: PathBuf,
    /// The image layers below it, topmost first.
    pub lower_dirs: Vec<PathBuf>,
}

/// Why a container could not be located.
#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    /// The process exited first.
    #[error("process {pid} is gone (the container exited before it was located)")]
    ProcessGone {
        /// The process looked at.
        pid: u32,
    },
    /// The host has no cgroup v2 hierarchy.
    #[error("no cgroup2 hierarchy is mounted on this host")]
    NoCgroup2,
    /// The process sits at the cgroup v2 root.
    #[error("process {pid} is in no cgroup v2 group below the root (runc did not join the unified hierarchy)")]
    NotInCgroup2 {
        /// The process looked at.
        pid: u32,
    },
    /// The process's root is not an overlay.
    #[error("process {pid}'s root is not an overlay mount (found {found})")]
    RootNotOverlay {
        /// The process looked at.
        pid: u32,
        /// The filesystem type found at its root.
        found: String,
    },
    /// The root overlay lacks an option needed to find its layers.
    #[error("process {pid}'s root overlay has no {option} option")]
    OverlayOption {
        /// The process looked at.
        pid: u32,
        /// The missing option (`upperdir`, `lowerdir`).
        option: &'static str,
    },
    /// A file of /proc or cgroupfs could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// Locates the container whose init process is `pid` (as seen from the host's pid namespace).
pub fn locate_container(pid: u32) -> Result<ContainerLocation, LocateError> {
    let host_mounts = read_mountinfo(None).map_err(|source| LocateError::Read {
        path: "/proc/self/mountinfo".into(),
        source,
    })?;
    let cgroup2_root = cgroup2_mount(&host_mounts).ok_or(LocateError::NoCgroup2)?;
    let cgroup_path = cgroup2_path_of(pid)?;
    let cgroup_dir = cgroup2_root.join(cgroup_path.trim_start_matches('/'));
    let cgroup_id =
        cgroup_id(&cgroup_dir).map_err(|source| read_error(pid, &cgroup_dir, source))?;
    let (upper_dir, lower_dirs) = root_overlay_layers(pid)?;
    // The pid may have been reused between the reads: only a still-live process in the same
    // cgroup makes the answer consistent.
    if cgroup2_path_of(pid)? != cgroup_path {
        return Err(LocateError::ProcessGone { pid });
    }
    Ok(ContainerLocation {
        pid,
        cgroup_path,
        cgroup_dir,
        cgroup_id,
        upper_dir,
        lower_dirs,
    })
}

/// The cgroup v2 id of a cgroup2 directory: kernfs gives each cgroup its id as inode number.
pub fn cgroup_id(cgroup_dir: &Path) -> io::Result<u64> {
    Ok(std::fs::metadata(cgroup_dir)?.ino())
}

/// The `0::` line of /proc/<pid>/cgroup: the v2 path, also on a hybrid host (where runc joins
/// the unified hierarchy besides the v1 controllers). Read from the host's cgroup namespace it is
/// relative to the hierarchy's root.
fn cgroup2_path_of(pid: u32) -> Result<String, LocateError> {
    let path = PathBuf::from(format!("/proc/{pid}/cgroup"));
    let text = std::fs::read_to_string(&path).map_err(|source| read_error(pid, &path, source))?;
    let v2 = text
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .filter(|v2| *v2 != "/")
        .ok_or(LocateError::NotInCgroup2 { pid })?;
    Ok(v2.to_string())
}

/// Upper and lower directories of the overlay mounted at the process's root.
fn root_overlay_layers(pid: u32) -> Result<(PathBuf, Vec<PathBuf>), LocateError> {
    let path = PathBuf::from(format!("/proc/{pid}/mountinfo"));
    let mounts = read_mountinfo(Some(pid)).map_err(|source| read_error(pid, &path, source))?;
    // The last mount on "/" is the one the process sees (pivot_root stacks mounts there).
    let root = mounts
        .iter()
        .rev()
        .find(|mount| mount.mount_point == Path::new("/"))
        .ok_or_else(|| LocateError::RootNotOverlay {
            pid,
            found: "no mount on /".into(),
        })?;
    if root.fs_type != "overlay" {
        return Err(LocateError::RootNotOverlay {
            pid,
            found: root.fs_type.clone(),
        });
    }
    let upper = root
        .super_option("upperdir")
        .ok_or(LocateError::OverlayOption {
            pid,
            option: "upperdir",
        })?;
    let lowers = root
        .super_option("lowerdir")
        .ok_or(LocateError::OverlayOption {
            pid,
            option: "lowerdir",
        })?;
    Ok((
        PathBuf::from(upper),
        lowers.split(':').map(PathBuf::from).collect(),
    ))
}

fn read_error(pid: u32, path: &Path, source: io::Error) -> LocateError {
    // ENOENT/ESRCH under /proc/<pid> means the process exited; anything else is a real failure.
    let gone = matches!(
        source.raw_os_error(),
        Some(libc::ENOENT) | Some(libc::ESRCH)
    );
    if gone && path.starts_with(format!("/proc/{pid}")) {
        LocateError::ProcessGone { pid }
    } else {
        LocateError::Read {
            path: path.to_path_buf(),
            source,
        }
    }
}
