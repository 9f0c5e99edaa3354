//! The vocabulary of a recording: paths, processes, operations, and the tree they build.
//!
//! Namespace operations are path-based because that is how the kernel reports them (rename,
//! unlink, mkdir name paths); content operations are node-based because bytes are written to an
//! inode, which may have several names (hard links) or none (unlinked but still open).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::ops::Bound;

/// Position of an event in the recording's log, starting at 1. Dense and strictly increasing.
pub type Seq = u64;

/// A file-system object (file, directory or symlink) as the store knows it. The recorder maps
/// the kernel's (device, inode) to a NodeId; a reused inode number gets a fresh NodeId.
pub type NodeId = u64;

/// An absolute, lexically normalized path as recorded: starts with `/`, no `.`/`..`/empty
/// components, no trailing slash (except the root itself). Bytes, not UTF-8: Linux paths are bytes.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RecPath(Vec<u8>);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid recorded path {path:?}: {reason}")]
pub struct PathError {
    pub path: String,
    pub reason: &'static str,
}

impl RecPath {
    pub fn root() -> Self {
        RecPath(b"/".to_vec())
    }

    /// Normalizes an absolute path lexically: `//` and `.` are dropped and `..` pops a component
    /// (never above `/`). Relative paths and NUL bytes are refused.
    pub fn normalize(raw: &[u8]) -> Result<Self, PathError> {
        let err = |reason| PathError {
            path: String::from_utf8_lossy(raw).into_owned(),
            reason,
        };
        if raw.first() != Some(&b'/') {
            return Err(err("not absolute"));
        }
        if raw.contains(&0) {
            return Err(err("contains a NUL byte"));
        }
        let mut parts: Vec<&[u8]> = Vec::new();
        for comp in raw.split(|b| *b == b'/') {
            match comp {
                b"" | b"." => {}
                b".." => {
                    parts.pop();
                }
                c => parts.push(c),
            }
        }
        Ok(Self::from_components(&parts))
    }

    fn from_components(parts: &[&[u8]]) -> Self {
        if parts.is_empty() {
            return Self::root();
        }
        let mut out = Vec::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
        for p in parts {
            out.push(b'/');
            out.extend_from_slice(p);
        }
        RecPath(out)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn is_root(&self) -> bool {
        self.0 == b"/"
    }

    /// Components after the root, e.g. `/a/b` -> [`a`, `b`].
    pub fn components(&self) -> impl Iterator<Item = &[u8]> {
        self.0.split(|b| *b == b'/').filter(|c| !c.is_empty())
    }

    pub fn parent(&self) -> Option<RecPath> {
        if self.is_root() {
            return None;
        }
        let cut = self.0.iter().rposition(|b| *b == b'/').unwrap_or(0);
        Some(if cut == 0 {
            Self::root()
        } else {
            RecPath(self.0[..cut].to_vec())
        })
    }

    pub fn file_name(&self) -> Option<&[u8]> {
        self.components().last()
    }

    /// Appends a relative path (lexically normalized, cannot climb above `self`'s root `/`).
    pub fn join(&self, rel: &[u8]) -> Result<RecPath, PathError> {
        let mut raw = self.0.clone();
        raw.push(b'/');
        raw.extend_from_slice(rel);
        Self::normalize(&raw)
    }

    /// True when `self` is `ancestor` or lies below it.
    pub fn starts_with(&self, ancestor: &RecPath) -> bool {
        if ancestor.is_root() {
            return true;
        }
        self.0.starts_with(&ancestor.0)
            && (self.0.len() == ancestor.0.len() || self.0[ancestor.0.len()] == b'/')
    }

    /// Bounds of the paths strictly below `self` in byte order. The upper bound is `self` + `0`
    /// (the byte after `/`) because siblings like `/a-b` sort between `/a` and `/a/`.
    pub fn below_bounds(&self) -> (Bound<RecPath>, Bound<RecPath>) {
        if self.is_root() {
            return (Bound::Excluded(Self::root()), Bound::Unbounded);
        }
        let mut low = self.0.clone();
        low.push(b'/');
        let mut high = self.0.clone();
        high.push(b'0');
        (
            Bound::Included(RecPath(low)),
            Bound::Excluded(RecPath(high)),
        )
    }

    /// Strict ancestors from the top down, excluding the root: `/a/b/c` -> [`/a`, `/a/b`].
    pub fn ancestors_below_root(&self) -> Vec<RecPath> {
        let mut out = Vec::new();
        for (i, b) in self.0.iter().enumerate().skip(1) {
            if *b == b'/' {
                out.push(RecPath(self.0[..i].to_vec()));
            }
        }
        out
    }

    /// Rewrites the `from` prefix of `self` to `to` (for directory renames).
    pub fn rebase(&self, from: &RecPath, to: &RecPath) -> Option<RecPath> {
        if !self.starts_with(from) {
            return None;
        }
        let rest = &self.0[if from.is_root() { 0 } else { from.0.len() }..];
        let mut raw = to.0.clone();
        raw.extend_from_slice(rest);
        Some(Self::normalize(&raw).expect("rebase of two valid paths is valid"))
    }
}

impl fmt::Display for RecPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.0))
    }
}

impl fmt::Debug for RecPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(&self.0))
    }
}

/// Who made a change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Process {
    pub pid: u32,
    pub comm: String,
    pub cgroup: u64,
}

/// What a chmod or truncate names: a path (chmod(2), truncate(2)) or an open file (fchmod, ftruncate).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Target {
    Path(RecPath),
    Node(NodeId),
}

/// What kind of object a node is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeKind {
    File,
    Dir,
    Symlink,
}

/// Why a marker was written: things a person reading `log` must see.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MarkerKind {
    /// The baseline snapshot of pre-existing files is complete.
    BaselineComplete,
    /// Events were lost (ring buffer full, recorder restart) between the previous event and this
    /// one; `detail` says how many and what was healed by resync.
    Gap,
    /// Free-form note (recording started, command exited with code N, ...).
    Note,
}

/// One change to the recorded file system. Permission `mode`s are the low 12 bits (07777).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// A new, empty regular file `node` at `path`. Replaces a non-directory entry at `path`.
    /// Missing parent directories are created implicitly (mode 0755).
    Create {
        node: NodeId,
        path: RecPath,
        mode: u32,
    },
    /// A new directory.
    Mkdir {
        node: NodeId,
        path: RecPath,
        mode: u32,
    },
    /// A new symlink; `target` is stored verbatim and never followed.
    Symlink {
        node: NodeId,
        path: RecPath,
        target: Vec<u8>,
    },
    /// A pre-existing object first seen mid-recording (outside the baseline). Its content is
    /// unknown (reads as `size` zero bytes) and the entry is inexact until the first `Resync`.
    Adopt {
        node: NodeId,
        path: RecPath,
        kind: NodeKind,
        mode: u32,
        size: u64,
    },
    /// Hard link: `path` becomes another name of the existing `node`.
    Link { node: NodeId, path: RecPath },
    /// rename(2): moves an entry (a directory with its subtree), replacing an existing `to`.
    Rename { from: RecPath, to: RecPath },
    /// renameat2(RENAME_EXCHANGE): swaps two entries.
    Exchange { a: RecPath, b: RecPath },
    /// Removes one name of a file or symlink (the node lives on while other names exist).
    Unlink { path: RecPath },
    /// Removes a directory (and, defensively, anything the store still has below it).
    Rmdir { path: RecPath },
    /// Bytes written at `offset` (extends the file, zero-filling any hole).
    Write {
        node: NodeId,
        offset: u64,
        data: Vec<u8>,
    },
    /// Sets the size, cutting or zero-extending.
    Truncate { target: Target, size: u64 },
    /// Sets permission bits.
    Chmod { target: Target, mode: u32 },
    /// Sets the owner (chown, or the owner a new entry was made with when not root's).
    Chown { target: Target, owner: Owner },
    /// Sets the modification time, ns since the epoch (utimensat, or read from the inode).
    SetTimes { target: Target, mtime_ns: i128 },
    /// Sets the extended attributes worth keeping (see [`xattr_kept`]), all of them.
    SetXattrs { target: Target, xattrs: Xattrs },
    /// The whole content as read back from the file itself (healing lost or uncaptured bytes).
    /// From here on the node is exact.
    Resync { node: NodeId, data: Vec<u8> },
    /// Something a person must see in the log; changes no file.
    Marker { kind: MarkerKind, detail: String },
}

/// One recorded change with its time and author.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// CLOCK_MONOTONIC nanoseconds (the clock of `bpf_ktime_get_ns`). Non-decreasing along the log.
    pub time: u64,
    pub process: Option<Process>,
    pub op: Op,
}

/// Extended attributes by name.
pub type Xattrs = BTreeMap<Vec<u8>, Vec<u8>>;

/// The extended attributes a recording keeps: the user's, file capabilities and ACLs. Others
/// (security.selinux, trusted.*, overlay's own) describe the host, not the files.
pub fn xattr_kept(name: &[u8]) -> bool {
    name.starts_with(b"user.")
        || name == b"security.capability"
        || name == b"system.posix_acl_access"
        || name == b"system.posix_acl_default"
}

/// Who owns an entry: user and group ids as the host sees them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.uid, self.gid)
    }
}

/// One entry of the tree at a moment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub node: NodeId,
    pub kind: EntryKind,
    /// Permission bits (07777).
    pub mode: u32,
    /// Wall-clock time of the last change to this entry's content (or creation), ns since epoch.
    pub mtime_ns: i128,
    /// False while the content is not known byte-exactly (adopted, not yet resynced).
    pub exact: bool,
    /// The owner; root (0:0) unless a Chown said otherwise (stores before format 5 have no
    /// owners, and their entries read as root's).
    pub owner: Owner,
    /// Extended attributes worth keeping ([`xattr_kept`]); none unless a SetXattrs said so.
    pub xattrs: Xattrs,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    File { size: u64 },
    Dir,
    Symlink { target: Vec<u8> },
}

/// NodeIds with this bit set were synthesized by the store for directories that appeared
/// implicitly (a parent of a created path that was never reported by itself). The recorder's own
/// ids (from `Writer::new_node`) never have it set. The id is derived from the event that created
/// the directory (`bit | seq << 12 | n`), so replaying the log always yields the same ids.
pub const IMPLICIT_DIR_NODE_BIT: NodeId = 1 << 63;

/// The file system as it was right after event `seq`: every entry by path, including every
/// directory (implicit parents too), but not the root `/` itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Tree {
    pub seq: Seq,
    pub entries: BTreeMap<RecPath, Entry>,
}
