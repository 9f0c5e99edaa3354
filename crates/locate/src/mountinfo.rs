//! `/proc/<pid>/mountinfo`, parsed: where the cgroup hierarchies are and what a container's root
//! overlay is made of.

use std::io;
use std::path::{Path, PathBuf};

/// One line of mountinfo (proc(5)), with the kernel's octal escapes (`\040` for a space) undone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// The directory of the mounted filesystem that appears at `mount_point`.
    pub root: PathBuf,
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// The filesystem type (`overlay`, `cgroup2`, ...).
    pub fs_type: String,
    /// The mount source (a device, or a name such as `overlay`).
    pub source: String,
    /// Filesystem-specific options, split at commas and each unescaped (overlayfs escapes a
    /// comma inside a path, so splitting first is right).
    pub super_options: Vec<String>,
}

impl MountEntry {
    /// The value of `key=value` among the super options (`upperdir`, `lowerdir`, ...).
    pub fn super_option(&self, key: &str) -> Option<&str> {
        self.super_options
            .iter()
            .find_map(|option| option.strip_prefix(key)?.strip_prefix('='))
    }
}

/// The mount table as process `pid` sees it (its own mount namespace).
pub fn read_mountinfo(pid: Option<u32>) -> io::Result<Vec<MountEntry>> {
    let path = match pid {
        Some(pid) => PathBuf::from(format!("/proc/{pid}/mountinfo")),
        None => PathBuf::from("/proc/self/mountinfo"),
    };
    let text = std::fs::read_to_string(&path)?;
    text.lines()
        .map(|line| {
            parse_line(line).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: unparsable line {line:?}", path.display()),
                )
            })
        })
        .collect()
}

fn parse_line(line: &str) -> Option<MountEntry> {
    // id parent major:minor root mount-point options [optional fields...] - fstype source super
    let (before, after) = line.split_once(" - ")?;
    let fields: Vec<&str> = before.split(' ').collect();
    let tail: Vec<&str> = after.splitn(3, ' ').collect();
    if fields.len() < 6 || tail.len() < 2 {
        return None;
    }
    Some(MountEntry {
        root: PathBuf::from(unescape(fields[3])),
        mount_point: PathBuf::from(unescape(fields[4])),
        fs_type: tail[0].to_string(),
        source: unescape(tail[1]),
        super_options: tail
            .get(2)
            .map(|options| options.split(',').map(unescape).collect())
            .unwrap_or_default(),
    })
}

/// Undoes the kernel's `\ooo` escapes (space, tab, newline, backslash, and for overlay options
/// also comma, equals sign and colon).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).filter(|digits| {
            bytes[i] == b'\\' && digits.iter().all(|digit| (b'0'..=b'7').contains(digit))
        });
        match octal {
            Some(digits) => {
                let value = digits
                    .iter()
                    .fold(0u32, |acc, digit| acc * 8 + u32::from(digit - b'0'));
                out.push(value as u8);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mount points of every cgroup hierarchy: each v1 controller's and the v2 (unified) one.
pub fn cgroup_hierarchies(mounts: &[MountEntry]) -> Vec<PathBuf> {
    mounts
        .iter()
        .filter(|mount| mount.fs_type == "cgroup" || mount.fs_type == "cgroup2")
        .map(|mount| mount.mount_point.clone())
        .collect()
}

/// Where the cgroup v2 hierarchy is mounted: `/sys/fs/cgroup` on a v2-only host,
/// `/sys/fs/cgroup/unified` on a hybrid one.
pub fn cgroup2_mount(mounts: &[MountEntry]) -> Option<&Path> {
    mounts
        .iter()
        .find(|mount| mount.fs_type == "cgroup2" && mount.root == Path::new("/"))
        .map(|mount| mount.mount_point.as_path())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_an_overlay_root_with_escapes() {
        let line = "812 700 0:77 / / rw,relatime master:1 - overlay overlay \
                    rw,lowerdir=/a/l\\0541:/a/l2,upperdir=/x\\040y/fs,workdir=/x\\040y/work";
        let entry = parse_line(line).unwrap();
        assert_eq!(entry.mount_point, Path::new("/"));
        assert_eq!(entry.fs_type, "overlay");
        assert_eq!(entry.super_option("upperdir"), Some("/x y/fs"));
        assert_eq!(entry.super_option("lowerdir"), Some("/a/l,1:/a/l2"));
        assert_eq!(entry.super_option("upper"), None);
    }

    #[test]
    fn finds_the_unified_hierarchy_of_a_hybrid_host() {
        let text = "30 25 0:26 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n\
                    31 25 0:27 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory";
        let mounts: Vec<_> = text.lines().map(|l| parse_line(l).unwrap()).collect();
        assert_eq!(
            cgroup2_mount(&mounts),
            Some(Path::new("/sys/fs/cgroup/unified"))
        );
        assert_eq!(cgroup_hierarchies(&mounts).len(), 2);
    }
}
