//! A container's cgroup v2 directory, found from what the pod status says (pod uid, container
//! id) and nothing from the runtime.
//!
//! Kubelet and the runtime name cgroups by convention, and the conventions differ by cgroup
//! driver and runtime:
//! - cgroupfs: `/kubepods[/burstable|/besteffort]/pod<uid>/<id>` (containerd) or `.../crio-<id>`;
//! - systemd: `/kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid with _>.slice/`
//!   `cri-containerd-<id>.scope` (containerd) or `crio-<id>.scope` (CRI-O).
//!
//! Rather than guess the QoS class and driver, the pod's directory is searched for below the
//! cgroup2 root (a few levels deep, kubepods trees only), then the container's inside it.

use std::io;
use std::path::{Path, PathBuf};

/// A runtime's container id as the pod status gives it: `containerd://<hex>`, `cri-o://<hex>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContainerId {
    /// The runtime's name before `://` (`containerd`, `cri-o`).
    pub runtime: String,
    /// The hex id after it.
    pub id: String,
}

impl ContainerId {
    /// `None` for an empty or schemeless id (a container not started yet has none).
    pub fn parse(status_id: &str) -> Option<ContainerId> {
        let (runtime, id) = status_id.split_once("://")?;
        let plausible = !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric());
        plausible.then(|| ContainerId {
            runtime: runtime.to_string(),
            id: id.to_string(),
        })
    }

    /// The names a cgroup directory of this container can have, across drivers and runtimes.
    fn cgroup_names(&self) -> [String; 5] {
        let id = &self.id;
        [
            id.clone(),
            format!("cri-containerd-{id}.scope"),
            format!("crio-{id}.scope"),
            format!("crio-{id}"),
            format!("docker-{id}.scope"),
        ]
    }
}

/// How deep below the cgroup2 root a pod directory can sit: kubepods / qos / pod (and one more
/// for a node whose kubelet runs under a parent cgroup of its own).
const MAX_POD_DEPTH: usize = 4;

/// The cgroup2 directory of container `id` of pod `pod_uid`, below `cgroup2_root`; `Ok(None)`
/// when it does not exist (the container has not started, or is gone).
pub fn find_container_cgroup(
    cgroup2_root: &Path,
    pod_uid: &str,
    id: &ContainerId,
) -> io::Result<Option<PathBuf>> {
    let pod_names = [
        format!("pod{pod_uid}"),
        format!("pod{}.slice", pod_uid.replace('-', "_")),
    ];
    let mut pod_dirs = Vec::new();
    find_pod_dirs(cgroup2_root, &pod_names, 0, &mut pod_dirs)?;
    for pod_dir in pod_dirs {
        for name in id.cgroup_names() {
            let dir = pod_dir.join(&name);
            if dir.is_dir() {
                return Ok(Some(dir));
            }
        }
    }
    Ok(None)
}

fn find_pod_dirs(
    dir: &Path,
    pod_names: &[String; 2],
    depth: usize,
    found: &mut Vec<PathBuf>,
) -> io::Result<()> {
    if depth >= MAX_POD_DEPTH {
        return Ok(());
    }
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        // A cgroup removed while we walk is not an error.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        if !entry.file_type()?.is_dir() {
            continue;
        }
        let name = entry.file_name();
        let name = name.to_string_lossy();
        // systemd names the pod slice `kubepods-<qos>-pod<uid>.slice`: match the suffix.
        if pod_names
            .iter()
            .any(|pod| *name == **pod || name.ends_with(&format!("-{pod}")))
        {
            found.push(entry.path());
        } else if depth == 0 && !name.starts_with("kubepods") {
            // Only kubelet's trees hold pods; the rest of the host is not walked.
            if name.ends_with(".slice") || name == "kubelet" {
                find_pod_dirs(&entry.path(), pod_names, depth + 1, found)?;
            }
        } else {
            find_pod_dirs(&entry.path(), pod_names, depth + 1, found)?;
        }
    }
    Ok(())
}

/// The processes in a cgroup (not its descendants), as the kernel lists them.
pub fn cgroup_pids(cgroup_dir: &Path) -> io::Result<Vec<u32>> {
    Ok(std::fs::read_to_string(cgroup_dir.join("cgroup.procs"))?
        .lines()
        .filter_map(|line| line.trim().parse().ok())
        .collect())
}

/// The container's init: the process of the cgroup that is pid 1 in its own pid namespace. Its
/// root is the container's root for as long as the container lives (when it exits, the kernel
/// kills the rest of the namespace), unlike any other process of the cgroup, which may be a
/// short-lived child. `None` when the cgroup holds no such process (it is ending).
pub fn init_pid(cgroup_dir: &Path) -> io::Result<Option<u32>> {
    for pid in cgroup_pids(cgroup_dir)? {
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue; // exited since the list was read
        };
        let innermost = status
            .lines()
            .find_map(|line| line.strip_prefix("NSpid:"))
            .and_then(|ids| ids.split_whitespace().last());
        if innermost == Some("1") {
            return Ok(Some(pid));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> ContainerId {
        ContainerId::parse("containerd://abc123").unwrap()
    }

    #[test]
    fn parses_status_ids() {
        assert_eq!(id().runtime, "containerd");
        assert_eq!(id().id, "abc123");
        assert_eq!(ContainerId::parse("cri-o://ff").unwrap().runtime, "cri-o");
        assert_eq!(ContainerId::parse(""), None);
        assert_eq!(ContainerId::parse("abc"), None);
        assert_eq!(ContainerId::parse("containerd://../x"), None);
    }

    fn layout(dirs: &[&str]) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        for dir in dirs {
            std::fs::create_dir_all(root.path().join(dir)).unwrap();
        }
        root
    }

    #[test]
    fn finds_cgroupfs_containerd() {
        let root = layout(&[
            "kubepods/besteffort/pod1234-ab/abc123",
            "kubepods/burstable/pod9999/abc123",
            "user.slice/abc123",
        ]);
        let found = find_container_cgroup(root.path(), "1234-ab", &id()).unwrap();
        assert_eq!(
            found.unwrap(),
            root.path().join("kubepods/besteffort/pod1234-ab/abc123")
        );
    }

    #[test]
    fn finds_systemd_containerd_and_crio() {
        let pod = "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod12_34.slice";
        let root = layout(&[&format!("{pod}/cri-containerd-abc123.scope")]);
        let found = find_container_cgroup(root.path(), "12-34", &id()).unwrap();
        assert_eq!(
            found.unwrap(),
            root.path().join(pod).join("cri-containerd-abc123.scope")
        );

        let guaranteed = "kubepods.slice/kubepods-pod12_34.slice";
        let root = layout(&[&format!("{guaranteed}/crio-abc123.scope")]);
        let found = find_container_cgroup(root.path(), "12-34", &id()).unwrap();
        assert!(found.unwrap().ends_with("crio-abc123.scope"));
    }

    #[test]
    fn a_container_not_started_is_none() {
        let root = layout(&["kubepods/besteffort/pod1234"]);
        assert_eq!(
            find_container_cgroup(root.path(), "1234", &id()).unwrap(),
            None
        );
    }
}
