//! Pod cgroups, kubelet's part: the runtime creates `/kubepods/besteffort/pod<uid>` (runc makes
//! it as the parent of each container's cgroup) but never removes it; kubelet does, once the pod's
//! sandbox is gone. The node simulator does the same here.

use std::io;
use std::path::{Path, PathBuf};

use crate::mountinfo::{cgroup_hierarchies, read_mountinfo};

/// The cgroup parent kubelet gives a BestEffort pod with the cgroupfs driver.
pub fn pod_cgroup_parent(uid: &str) -> String {
    format!("/kubepods/besteffort/pod{uid}")
}

/// The pod's cgroup directory in every mounted hierarchy where it exists.
pub fn pod_cgroup_dirs(cgroup_parent: &str) -> io::Result<Vec<PathBuf>> {
    let mounts = read_mountinfo(None)?;
    Ok(cgroup_hierarchies(&mounts)
        .into_iter()
        .map(|hierarchy| hierarchy.join(cgroup_parent.trim_start_matches('/')))
        .filter(|dir| dir.is_dir())
        .collect())
}

/// Removes the pod's cgroup (and any container cgroups runc left inside) from every hierarchy.
/// Fails with EBUSY if a process still runs in one: the sandbox must be stopped first.
pub fn remove_pod_cgroups(cgroup_parent: &str) -> io::Result<()> {
    for dir in pod_cgroup_dirs(cgroup_parent)? {
        remove_cgroup_tree(&dir)?;
    }
    Ok(())
}

/// cgroupfs directories go only with rmdir (their control files cannot be unlinked), children
/// first.
fn remove_cgroup_tree(dir: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            remove_cgroup_tree(&entry.path())?;
        }
    }
    match std::fs::remove_dir(dir) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        result => result.map_err(|error| {
            io::Error::new(error.kind(), format!("rmdir {}: {error}", dir.display()))
        }),
    }
}
