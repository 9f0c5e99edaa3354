//! Decoded capture events: one completed file-changing action of a recorded process.
//!
//! Path-based syscalls arrive as three kinds of records (enter, strings, exit) from the same
//! thread; `Assembler` joins them and drops the ones that failed, so consumers only ever see
//! changes the kernel actually made.

use crate::wire::{self, Record, WireError};
use std::collections::HashMap;

/// A file as the kernel knows it: device (in the user-space `st_dev` encoding, so it compares
/// with `stat`) and inode number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileKey {
    pub dev: u64,
    pub ino: u64,
}

impl FileKey {
    /// Kernel-internal dev_t (MAJOR << 20 | MINOR) to the user-space encoding.
    pub(crate) fn from_kernel(dev: u64, ino: u64) -> Self {
        let (major, minor) = ((dev >> 20) as u32, (dev & 0xfffff) as u32);
        FileKey {
            dev: libc::makedev(major, minor),
            ino,
        }
    }

    pub(crate) fn kernel_dev(&self) -> u64 {
        let (major, minor) = (libc::major(self.dev) as u64, libc::minor(self.dev) as u64);
        (major << 20) | minor
    }
}

/// Who did it and when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// CLOCK_MONOTONIC nanoseconds.
    pub time: u64,
    pub pid: u32,
    pub tid: u32,
    pub cgroup: u64,
    pub comm: String,
    /// The process's file system user and group ids (global ones, as the host sees them):
    /// what a read-back on its behalf may open.
    pub fsuid: u32,
    pub fsgid: u32,
}

/// Why a file's content must be read back instead of trusting captured bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DirtyReason {
    /// A write larger than the per-write capture cap.
    OverCap,
    /// A record was lost to a full ring buffer.
    Lost,
    /// Written through a shared writable mapping.
    Mmap,
    /// fallocate, copy_file_range, sendfile or splice.
    Splice,
    /// The process set up io_uring, whose writes bypass the syscalls we watch.
    IoUring,
    /// The writer's buffer could not be read.
    Fault,
    /// Marked by user space (e.g. a pre-existing file first seen mid-recording).
    Adopted,
}

impl DirtyReason {
    pub(crate) fn from_wire(v: u64) -> Self {
        match v {
            1 => DirtyReason::OverCap,
            2 => DirtyReason::Lost,
            3 => DirtyReason::Mmap,
            4 => DirtyReason::Splice,
            5 => DirtyReason::IoUring,
            6 => DirtyReason::Fault,
            _ => DirtyReason::Adopted,
        }
    }

    pub(crate) fn to_wire(self) -> u32 {
        match self {
            DirtyReason::OverCap => 1,
            DirtyReason::Lost => 2,
            DirtyReason::Mmap => 3,
            DirtyReason::Splice => 4,
            DirtyReason::IoUring => 5,
            DirtyReason::Fault => 6,
            DirtyReason::Adopted => 7,
        }
    }
}

/// What changed. Paths are absolute as the process sees them (relative to its root), joined
/// from the directory the syscall was relative to, but not normalized: `..` and `.` may remain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Bytes the kernel accepted, at a file offset. Large writes come as several chunks.
    Write {
        file: FileKey,
        offset: u64,
        data: Vec<u8>,
    },
    /// The path of a file: on first sight, on creation, or on an O_TRUNC open.
    Inode {
        file: FileKey,
        path: Vec<u8>,
        mode: u32,
        size: u64,
        created: bool,
        truncated: bool,
        /// The dentry was already unlinked: the path is stale.
        unlinked: bool,
        /// The path was longer or deeper than the kernel walks.
        cut: bool,
    },
    Rename {
        from: Vec<u8>,
        to: Vec<u8>,
        exchange: bool,
    },
    Unlink {
        path: Vec<u8>,
    },
    Rmdir {
        path: Vec<u8>,
    },
    Mkdir {
        path: Vec<u8>,
        mode: u32,
    },
    Symlink {
        path: Vec<u8>,
        target: Vec<u8>,
    },
    Link {
        existing: Vec<u8>,
        new: Vec<u8>,
    },
    Chmod {
        path: Vec<u8>,
        mode: u32,
    },
    Truncate {
        path: Vec<u8>,
        size: u64,
    },
    FdTruncate {
        file: FileKey,
        size: u64,
    },
    FdChmod {
        file: FileKey,
        mode: u32,
    },
    /// The file's content must be read back (`file` is None for process-wide reasons).
    Dirty {
        file: Option<FileKey>,
        reason: DirtyReason,
    },
    /// A dirty file was closed: a quiescent moment to read it back.
    Close {
        file: FileKey,
    },
    /// msync/munmap by a process with shared writable mappings.
    Sync,
    Fork {
        parent: u32,
    },
    Exec,
    Exit {
        code: i32,
    },
    /// A path-based change happened but its record was incomplete (strings lost or cut):
    /// the namespace must be rescanned.
    NamespaceLost,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub origin: Origin,
    pub change: Change,
}

struct PendingNs {
    origin: Origin,
    op: u32,
    mode: u32,
    arg: u64,
    flags: u32,
    strings: [Option<Vec<u8>>; 4],
    cut: bool,
}

/// Joins multi-record syscalls per thread and decodes records into events.
#[derive(Default)]
pub struct Assembler {
    pending: HashMap<u32, PendingNs>,
    /// Records that could not be parsed (version skew): counted so they are never silent.
    pub malformed: u64,
}

const RENAME_EXCHANGE: u32 = 1 << 1;

impl Assembler {
    /// Decodes one ring-buffer record; returns the completed event, if this record completes one.
    pub fn push(&mut self, bytes: &[u8]) -> Option<Event> {
        match self.decode(bytes) {
            Ok(ev) => ev,
            Err(e) => {
                self.malformed += 1;
                tracing::warn!("{e}");
                None
            }
        }
    }

    fn decode(&mut self, bytes: &[u8]) -> Result<Option<Event>, WireError> {
        let rec = Record::parse(bytes)?;
        let h = &rec.hdr;
        let origin = Origin {
            time: h.ts,
            pid: h.pid,
            tid: h.tid,
            cgroup: h.cgroup,
            comm: comm_string(&h.comm),
            fsuid: h.fsuid,
            fsgid: h.fsgid,
        };
        let key = |dev_off, ino_off| -> Result<FileKey, WireError> {
            Ok(FileKey::from_kernel(rec.u64(dev_off)?, rec.u64(ino_off)?))
        };
        let change = match h.kind {
            wire::DK_WRITE => {
                let len = rec.u32(80)? as usize;
                Change::Write {
                    file: key(56, 64)?,
                    offset: rec.u64(72)?,
                    data: rec.bytes(88, len)?.to_vec(),
                }
            }
            wire::DK_INODE => {
                let len = rec.u32(84)? as usize;
                Change::Inode {
                    file: key(56, 64)?,
                    size: rec.u64(72)?,
                    mode: rec.u32(80)?,
                    path: rec.bytes(88, len)?.to_vec(),
                    created: h.flags & 1 != 0,
                    truncated: h.flags & 2 != 0,
                    unlinked: h.flags & 4 != 0,
                    cut: h.flags & 8 != 0,
                }
            }
            wire::DK_NS_ENTER => {
                // A thread that died between enter and exit leaves a stale entry: replaced here.
                self.pending.insert(
                    h.tid,
                    PendingNs {
                        origin,
                        op: rec.u32(56)?,
                        mode: rec.u32(60)?,
                        arg: rec.u64(64)?,
                        flags: rec.u32(72)?,
                        strings: Default::default(),
                        cut: false,
                    },
                );
                return Ok(None);
            }
            wire::DK_STR => {
                let slot = rec.u16(56)? as usize;
                let truncated = rec.u16(58)? != 0;
                let len = rec.u32(60)? as usize;
                let data = rec.bytes(64, len)?.to_vec();
                if let Some(p) = self.pending.get_mut(&h.tid) {
                    if slot < 4 {
                        p.strings[slot] = Some(data);
                        p.cut |= truncated;
                    }
                }
                return Ok(None);
            }
            wire::DK_NS_EXIT => {
                let ret = rec.u64(56)? as i64;
                let Some(p) = self.pending.remove(&h.tid) else {
                    return Ok(None);
                };
                if ret != 0 {
                    return Ok(None); // the syscall failed: nothing changed
                }
                let mut origin = p.origin.clone();
                origin.time = h.ts;
                return Ok(Some(Event {
                    origin,
                    change: p.complete(),
                }));
            }
            wire::DK_FD_OP => {
                let file = key(64, 72)?;
                let arg = rec.u64(80)?;
                match rec.u32(56)? {
                    1 => Change::FdTruncate { file, size: arg },
                    2 => Change::FdChmod {
                        file,
                        mode: arg as u32,
                    },
                    3 => Change::Dirty {
                        file: (file.ino != 0).then_some(file),
                        reason: DirtyReason::from_wire(arg),
                    },
                    4 => Change::Close { file },
                    5 => Change::Sync,
                    _ => {
                        return Err(WireError {
                            kind: h.kind,
                            len: bytes.len(),
                            what: "unknown fd op",
                        })
                    }
                }
            }
            wire::DK_PROC => {
                let arg = rec.u64(64)?;
                match rec.u32(56)? {
                    1 => Change::Fork { parent: arg as u32 },
                    2 => Change::Exec,
                    3 => Change::Exit {
                        code: exit_status(arg as u32),
                    },
                    _ => {
                        return Err(WireError {
                            kind: h.kind,
                            len: bytes.len(),
                            what: "unknown process op",
                        })
                    }
                }
            }
            _ => {
                return Err(WireError {
                    kind: h.kind,
                    len: bytes.len(),
                    what: "unknown record kind",
                })
            }
        };
        Ok(Some(Event { origin, change }))
    }
}

impl PendingNs {
    fn path(&self, base: usize) -> Option<Vec<u8>> {
        let name = self.strings[base + 1].as_ref()?;
        if name.first() == Some(&b'/') {
            return Some(name.clone());
        }
        let dir = self.strings[base].as_ref()?;
        let mut p = dir.clone();
        if p.last() != Some(&b'/') {
            p.push(b'/');
        }
        p.extend_from_slice(name);
        Some(p)
    }

    fn complete(self) -> Change {
        if self.cut {
            return Change::NamespaceLost;
        }
        let a = self.path(0);
        let b = || self.path(2);
        let made = match self.op {
            1 => a.zip(b()).map(|(from, to)| Change::Rename {
                from,
                to,
                exchange: self.flags & RENAME_EXCHANGE != 0,
            }),
            2 => a.map(|path| Change::Unlink { path }),
            3 => a.map(|path| Change::Rmdir { path }),
            4 => a.map(|path| Change::Mkdir {
                path,
                mode: self.mode,
            }),
            5 => a
                .zip(self.strings[3].clone())
                .map(|(path, target)| Change::Symlink { path, target }),
            6 => a
                .zip(b())
                .map(|(existing, new)| Change::Link { existing, new }),
            7 => a.map(|path| Change::Chmod {
                path,
                mode: self.mode,
            }),
            8 => a.map(|path| Change::Truncate {
                path,
                size: self.arg,
            }),
            _ => None,
        };
        made.unwrap_or(Change::NamespaceLost)
    }
}

fn comm_string(raw: &[u8; 16]) -> String {
    let end = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

/// task->exit_code is a wait status: exit code in bits 8..16, signal in the low bits.
fn exit_status(raw: u32) -> i32 {
    if raw & 0x7f == 0 {
        ((raw >> 8) & 0xff) as i32
    } else {
        128 + (raw & 0x7f) as i32
    }
}
