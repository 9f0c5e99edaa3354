//! Finds a container on the host from /proc and cgroupfs alone: its cgroup v2 id, its processes,
//! its overlay layers. Nothing here talks to a container runtime, so it works the same for
//! containerd and CRI-O.
//!
//! - [`container_cgroup`]: a container's cgroup v2 directory from the pod uid and the container
//!   id of the pod status, under the cgroupfs or the systemd driver.
//! - [`container_location`]: from one of its processes, the cgroup id the eBPF filter matches
//!   and the overlay's upper and lower directories.
//! - [`mountinfo`]: `/proc/<pid>/mountinfo`, parsed.
//! - [`disk_usage`]: the bytes a host directory holds (a history's store on the node, a
//!   recording's state dir); the one copy for every crate.
//! - [`overlay_xattr`]: overlayfs's own xattrs on a layer directory, read the one way.

#![warn(missing_docs)]

pub mod container_cgroup;
pub mod container_location;
pub mod disk_usage;
pub mod mountinfo;
pub mod overlay_xattr;

pub use container_cgroup::{cgroup_pids, find_container_cgroup, init_pid, ContainerId};
pub use container_location::{cgroup_id, locate_container, ContainerLocation, LocateError};
pub use disk_usage::dir_size;
pub use overlay_xattr::overlay_xattr;
