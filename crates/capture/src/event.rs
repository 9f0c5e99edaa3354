//! Decoded capture events: one completed file-changing action of a recorded process.
//!
//! Path-based syscalls arrive as three kinds of records (enter, strings, exit) from the same
//! thread; `Assembler` joins them and drops the ones that failed, so consumers only ever see
//! changes the kernel actually made.

use crate::wire::{
    self, dk_fd_op, dk_inode, dk_ns, dk_proc, dk_ret, dk_str, dk_write, field, Record, WireError,
};
use std::collections::HashMap;
use std::mem::offset_of;

/// A file as the kernel knows it: device (in the user-space `st_dev` encoding, so it compares
/// with `stat`) and inode number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileKey {
    /// The device, as `st_dev`.
    pub dev: u64,
    /// The inode number.
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
    /// The process (thread group) id.
    pub pid: u32,
    /// The thread id.
    pub tid: u32,
    /// The cgroup v2 id of the task.
    pub cgroup: u64,
    /// The task's command name.
    pub comm: String,
    /// The process's file system user and group ids (global ones, as the host sees them):
    /// what a read-back on its behalf may open.
    pub fsuid: u32,
    /// See `fsuid`.
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
        /// The file written.
        file: FileKey,
        /// Where in the file.
        offset: u64,
        /// The bytes.
        data: Vec<u8>,
    },
    /// The path of a file: on first sight, on creation, or on an O_TRUNC open.
    Inode {
        /// The file.
        file: FileKey,
        /// Its path.
        path: Vec<u8>,
        /// `i_mode`: type and permission bits.
        mode: u32,
        /// Its owner when seen, as the host sees it.
        owner: Owner,
        /// Its mtime when seen, ns since the epoch.
        mtime_ns: i128,
        /// Its size when seen.
        size: u64,
        /// This open created it.
        created: bool,
        /// It was opened with O_TRUNC.
        truncated: bool,
        /// The dentry was already unlinked: the path is stale.
        unlinked: bool,
        /// The path was longer or deeper than the kernel walks.
        cut: bool,
    },
    /// A path renamed (or two swapped).
    Rename {
        /// The old path.
        from: Vec<u8>,
        /// The new path.
        to: Vec<u8>,
        /// RENAME_EXCHANGE: the two swapped.
        exchange: bool,
    },
    /// A name removed.
    Unlink {
        /// The removed name.
        path: Vec<u8>,
    },
    /// A directory removed.
    Rmdir {
        /// The removed directory.
        path: Vec<u8>,
    },
    /// A directory made.
    Mkdir {
        /// The new directory.
        path: Vec<u8>,
        /// Its mode, umask applied.
        mode: u32,
    },
    /// A symbolic link made.
    Symlink {
        /// The link.
        path: Vec<u8>,
        /// What it points to, verbatim.
        target: Vec<u8>,
    },
    /// A hard link made.
    Link {
        /// The existing name.
        existing: Vec<u8>,
        /// The new name.
        new: Vec<u8>,
    },
    /// A mode changed by path.
    Chmod {
        /// The file.
        path: Vec<u8>,
        /// Its new mode.
        mode: u32,
    },
    /// A file truncated by path.
    Truncate {
        /// The file.
        path: Vec<u8>,
        /// Its new size.
        size: u64,
    },
    /// A file truncated through an open descriptor.
    FdTruncate {
        /// The file.
        file: FileKey,
        /// Its new size.
        size: u64,
    },
    /// A mode changed through an open descriptor.
    FdChmod {
        /// The file.
        file: FileKey,
        /// Its new mode.
        mode: u32,
    },
    /// The file's content must be read back (`file` is None for process-wide reasons).
    Dirty {
        /// The file.
        file: Option<FileKey>,
        /// Why.
        reason: DirtyReason,
    },
    /// A dirty file was closed: a quiescent moment to read it back.
    Close {
        /// The file.
        file: FileKey,
    },
    /// msync/munmap by a process with shared writable mappings.
    Sync,
    /// The process was forked from `parent`.
    Fork {
        /// The parent tgid.
        parent: u32,
    },
    /// The process called exec.
    Exec,
    /// The process (thread group) exited.
    Exit {
        /// The exit code (128 + signal when killed).
        code: i32,
    },
    /// The metadata of a file (of any type) changed through a descriptor, or through a path
    /// naming one (`/proc/self/fd/N`, AT_EMPTY_PATH): the inode's state after the call.
    Meta {
        /// The file.
        file: FileKey,
        /// Its path, as for `Inode`.
        path: Vec<u8>,
        /// `i_mode`: type and permission bits.
        mode: u32,
        /// Its owner.
        owner: Owner,
        /// Its mtime, ns since the epoch.
        mtime_ns: i128,
        /// The path was longer or deeper than the kernel walks.
        cut: bool,
        /// The change was to its extended attributes (their values are not in the record).
        xattrs: bool,
    },
    /// removexattr or lremovexattr by path.
    RemoveXattr {
        /// The file (as named: see `follow`).
        path: Vec<u8>,
        /// The attribute's name.
        name: Vec<u8>,
        /// See `Chown::follow`.
        follow: bool,
    },
    /// chown, lchown or fchownat by path. `None` leaves that id unchanged (-1).
    Chown {
        /// The file (as named: see `follow`).
        path: Vec<u8>,
        /// The new owner, if changed.
        uid: Option<u32>,
        /// The new group, if changed.
        gid: Option<u32>,
        /// The call follows a symlink at `path` (chown) rather than changing it (lchown).
        follow: bool,
    },
    /// setxattr or lsetxattr by path.
    SetXattr {
        /// The file (as named: see `follow`).
        path: Vec<u8>,
        /// The attribute's name.
        name: Vec<u8>,
        /// Its value (at most DK_VALUE_MAX bytes, else the event is `NamespaceLost`).
        value: Vec<u8>,
        /// See `Chown::follow`.
        follow: bool,
    },
    /// utimensat, utimes or utime by path.
    SetTimes {
        /// The file (as named: see `follow`).
        path: Vec<u8>,
        /// The new access time.
        atime: TimeSet,
        /// The new modification time.
        mtime: TimeSet,
        /// See `Chown::follow`.
        follow: bool,
    },
    /// A path-based change happened but its record was incomplete (strings lost or cut):
    /// the namespace must be rescanned.
    NamespaceLost,
}

/// A file's owner: user and group ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Owner {
    /// The user id.
    pub uid: u32,
    /// The group id.
    pub gid: u32,
}

/// What a utimes-family call set one timestamp to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeSet {
    /// Left as it was (UTIME_OMIT).
    Omit,
    /// The moment of the call (UTIME_NOW, or no times given).
    Now,
    /// This time, ns since the epoch.
    At(i128),
}

const UTIME_NOW: i64 = (1 << 30) - 1;
const UTIME_OMIT: i64 = (1 << 30) - 2;

/// Decodes the times argument of a utimes-family call (`enum dk_times_format`).
fn decode_times(format: u32, raw: Option<&[u8]>) -> Option<(TimeSet, TimeSet)> {
    let Some(raw) = raw else {
        return Some((TimeSet::Now, TimeSet::Now));
    };
    let word = |i: usize| -> Option<i64> {
        Some(i64::from_ne_bytes(
            raw.get(i * 8..i * 8 + 8)?.try_into().ok()?,
        ))
    };
    let ns = |sec: i64, nsec: i64| i128::from(sec) * 1_000_000_000 + i128::from(nsec);
    match format {
        wire::DK_TIMES_TIMESPEC => {
            let one = |sec: i64, nsec: i64| match nsec {
                UTIME_NOW => TimeSet::Now,
                UTIME_OMIT => TimeSet::Omit,
                _ => TimeSet::At(ns(sec, nsec)),
            };
            Some((one(word(0)?, word(1)?), one(word(2)?, word(3)?)))
        }
        wire::DK_TIMES_TIMEVAL => Some((
            TimeSet::At(ns(word(0)?, word(1)? * 1000)),
            TimeSet::At(ns(word(2)?, word(3)? * 1000)),
        )),
        wire::DK_TIMES_UTIMBUF => {
            Some((TimeSet::At(ns(word(0)?, 0)), TimeSet::At(ns(word(1)?, 0))))
        }
        _ => None,
    }
}

/// One completed change and who made it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Who did it and when.
    pub origin: Origin,
    /// What changed.
    pub change: Change,
}

struct PendingNs {
    origin: Origin,
    op: u32,
    mode: u32,
    arg: u64,
    flags: u32,
    strings: [Option<Vec<u8>>; wire::STR_SLOTS],
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
        let change = match h.kind {
            wire::DK_WRITE => {
                let len = field!(rec, dk_write.len)? as usize;
                Change::Write {
                    file: FileKey::from_kernel(
                        field!(rec, dk_write.dev)?,
                        field!(rec, dk_write.ino)?,
                    ),
                    offset: field!(rec, dk_write.offset)?,
                    data: rec.bytes(offset_of!(dk_write, data), len)?.to_vec(),
                }
            }
            wire::DK_INODE => {
                let len = field!(rec, dk_inode.path_len)? as usize;
                let file =
                    FileKey::from_kernel(field!(rec, dk_inode.dev)?, field!(rec, dk_inode.ino)?);
                let owner = Owner {
                    uid: field!(rec, dk_inode.uid)?,
                    gid: field!(rec, dk_inode.gid)?,
                };
                let mtime_ns = i128::from(field!(rec, dk_inode.mtime_sec)?) * 1_000_000_000
                    + i128::from(field!(rec, dk_inode.mtime_nsec)?);
                let path = rec.bytes(offset_of!(dk_inode, path), len)?.to_vec();
                let mode = field!(rec, dk_inode.mode)?;
                if h.flags & wire::DK_INODE_META != 0 {
                    return Ok(Some(Event {
                        origin,
                        change: Change::Meta {
                            file,
                            path,
                            mode,
                            owner,
                            mtime_ns,
                            cut: h.flags & wire::DK_INODE_PATH_CUT != 0,
                            xattrs: h.flags & wire::DK_INODE_XATTR != 0,
                        },
                    }));
                }
                Change::Inode {
                    file,
                    size: field!(rec, dk_inode.size)?,
                    mode,
                    owner,
                    mtime_ns,
                    path,
                    created: h.flags & wire::DK_INODE_CREATED != 0,
                    truncated: h.flags & wire::DK_INODE_TRUNCATED != 0,
                    unlinked: h.flags & wire::DK_INODE_UNLINKED != 0,
                    cut: h.flags & wire::DK_INODE_PATH_CUT != 0,
                }
            }
            wire::DK_NS_ENTER => {
                // A thread that died between enter and exit leaves a stale entry: replaced here.
                self.pending.insert(
                    h.tid,
                    PendingNs {
                        origin,
                        op: field!(rec, dk_ns.op)?,
                        mode: field!(rec, dk_ns.mode)?,
                        arg: field!(rec, dk_ns.arg)?,
                        flags: field!(rec, dk_ns.flags)?,
                        strings: Default::default(),
                        cut: false,
                    },
                );
                return Ok(None);
            }
            wire::DK_STR => {
                let slot = field!(rec, dk_str.slot)? as usize;
                let truncated = field!(rec, dk_str.truncated)? != 0;
                let len = field!(rec, dk_str.len)? as usize;
                let data = rec.bytes(offset_of!(dk_str, data), len)?.to_vec();
                if let Some(p) = self.pending.get_mut(&h.tid) {
                    if slot < wire::STR_SLOTS {
                        p.strings[slot] = Some(data);
                        p.cut |= truncated;
                    }
                }
                return Ok(None);
            }
            wire::DK_NS_EXIT => {
                let ret = field!(rec, dk_ret.ret)?;
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
                let file =
                    FileKey::from_kernel(field!(rec, dk_fd_op.dev)?, field!(rec, dk_fd_op.ino)?);
                let arg = field!(rec, dk_fd_op.arg)?;
                match field!(rec, dk_fd_op.op)? {
                    wire::DK_FD_TRUNCATE => Change::FdTruncate { file, size: arg },
                    wire::DK_FD_CHMOD => Change::FdChmod {
                        file,
                        mode: arg as u32,
                    },
                    wire::DK_FD_DIRTY => Change::Dirty {
                        file: (file.ino != 0).then_some(file),
                        reason: DirtyReason::from_wire(arg),
                    },
                    wire::DK_FD_CLOSE => Change::Close { file },
                    wire::DK_FD_SYNC => Change::Sync,
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
                let arg = field!(rec, dk_proc.arg)?;
                match field!(rec, dk_proc.op)? {
                    wire::DK_PROC_FORK => Change::Fork { parent: arg as u32 },
                    wire::DK_PROC_EXEC => Change::Exec,
                    wire::DK_PROC_EXIT => Change::Exit {
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
        let follow = self.flags & wire::DK_NS_NOFOLLOW == 0;
        let made = match self.op {
            wire::DK_NS_RENAME => a.zip(b()).map(|(from, to)| Change::Rename {
                from,
                to,
                exchange: self.flags & RENAME_EXCHANGE != 0,
            }),
            wire::DK_NS_UNLINK => a.map(|path| Change::Unlink { path }),
            wire::DK_NS_RMDIR => a.map(|path| Change::Rmdir { path }),
            wire::DK_NS_MKDIR => a.map(|path| Change::Mkdir {
                path,
                mode: self.mode,
            }),
            wire::DK_NS_SYMLINK => a
                .zip(self.strings[3].clone())
                .map(|(path, target)| Change::Symlink { path, target }),
            wire::DK_NS_LINK => a
                .zip(b())
                .map(|(existing, new)| Change::Link { existing, new }),
            wire::DK_NS_CHMOD => a.map(|path| Change::Chmod {
                path,
                mode: self.mode,
            }),
            wire::DK_NS_TRUNCATE => a.map(|path| Change::Truncate {
                path,
                size: self.arg,
            }),
            wire::DK_NS_CHOWN => {
                let id = |v: u64| (v as u32 != u32::MAX).then_some(v as u32);
                a.map(|path| Change::Chown {
                    path,
                    uid: id(self.arg >> 32),
                    gid: id(self.arg),
                    follow,
                })
            }
            wire::DK_NS_SETXATTR => {
                a.zip(self.strings[3].clone())
                    .map(|(path, name)| Change::SetXattr {
                        path,
                        name,
                        value: self.strings[wire::DK_SLOT_VALUE]
                            .clone()
                            .unwrap_or_default(),
                        follow,
                    })
            }
            wire::DK_NS_REMOVEXATTR => a
                .zip(self.strings[3].clone())
                .map(|(path, name)| Change::RemoveXattr { path, name, follow }),
            wire::DK_NS_UTIMES => a
                .zip(decode_times(
                    self.mode,
                    self.strings[wire::DK_SLOT_VALUE].as_deref(),
                ))
                .map(|(path, (atime, mtime))| Change::SetTimes {
                    path,
                    atime,
                    mtime,
                    follow,
                }),
            _ => None,
        };
        made.unwrap_or(Change::NamespaceLost)
    }
}

fn comm_string(raw: &[u8; wire::COMM_LEN]) -> String {
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

#[cfg(test)]
mod tests {
    //! The assembler on records built by hand with the wire mirrors, as the kernel lays them out.

    use super::*;
    use crate::wire::dk_hdr;

    const TID: u32 = 77;

    fn hdr(kind: u16, flags: u16) -> dk_hdr {
        let mut comm = [0u8; wire::COMM_LEN];
        comm[..4].copy_from_slice(b"sh\0x");
        dk_hdr {
            kind,
            flags,
            ts: 1_000,
            pid: 7,
            tid: TID,
            cgroup: 99,
            comm,
            fsuid: 1000,
            fsgid: 100,
            ..Default::default()
        }
    }

    /// The record's bytes: the struct (plain integers, no implicit padding) then its payload.
    fn record<T: Copy>(fixed: T, payload: &[u8]) -> Vec<u8> {
        // SAFETY: the mirrors are repr(C) integers and byte arrays with explicit padding
        // fields (checked against the object's BTF), so every byte is initialized.
        let head =
            unsafe { std::slice::from_raw_parts(&fixed as *const T as *const u8, size_of::<T>()) };
        [head, payload].concat()
    }

    fn string(slot: u16, s: &[u8], truncated: bool) -> Vec<u8> {
        record(
            dk_str {
                h: hdr(wire::DK_STR, 0),
                slot,
                truncated: truncated as u16,
                len: s.len() as u32,
                data: [],
            },
            s,
        )
    }

    fn enter(op: u32, flags: u32) -> Vec<u8> {
        record(
            dk_ns {
                h: hdr(wire::DK_NS_ENTER, 0),
                op,
                mode: 0o755,
                arg: 5,
                flags,
                _pad: 0,
            },
            &[],
        )
    }

    fn exit(ret: i64) -> Vec<u8> {
        record(
            dk_ret {
                h: hdr(wire::DK_NS_EXIT, 0),
                ret,
            },
            &[],
        )
    }

    const KERNEL_DEV: u64 = (8 << 20) | 1;

    #[test]
    fn a_write_record_decodes_to_its_bytes_at_its_offset() {
        let mut a = Assembler::default();
        let rec = record(
            dk_write {
                h: hdr(wire::DK_WRITE, 1),
                dev: KERNEL_DEV,
                ino: 42,
                offset: 10,
                len: 3,
                ..Default::default()
            },
            b"abcdef", // room past `len` is not data
        );
        let ev = a.push(&rec).unwrap();
        assert_eq!(
            ev.origin,
            Origin {
                time: 1_000,
                pid: 7,
                tid: TID,
                cgroup: 99,
                comm: "sh".into(),
                fsuid: 1000,
                fsgid: 100,
            }
        );
        let file = FileKey {
            dev: libc::makedev(8, 1),
            ino: 42,
        };
        assert_eq!(
            ev.change,
            Change::Write {
                file,
                offset: 10,
                data: b"abc".to_vec()
            }
        );
        assert_eq!(file.kernel_dev(), KERNEL_DEV);
    }

    #[test]
    fn an_inode_record_carries_its_path_and_flags() {
        let mut a = Assembler::default();
        let flags = wire::DK_INODE_CREATED | wire::DK_INODE_PATH_CUT;
        let rec = record(
            dk_inode {
                h: hdr(wire::DK_INODE, flags),
                dev: KERNEL_DEV,
                ino: 3,
                size: 4096,
                mtime_sec: 5,
                mtime_nsec: 6,
                mode: 0o100644,
                uid: 1000,
                gid: 100,
                path_len: 4,
                _pad: 0,
                path: [],
            },
            b"/a/b",
        );
        assert_eq!(
            a.push(&rec).unwrap().change,
            Change::Inode {
                file: FileKey::from_kernel(KERNEL_DEV, 3),
                path: b"/a/b".to_vec(),
                mode: 0o100644,
                owner: Owner {
                    uid: 1000,
                    gid: 100
                },
                mtime_ns: 5_000_000_006,
                size: 4096,
                created: true,
                truncated: false,
                unlinked: false,
                cut: true,
            }
        );
    }

    #[test]
    fn a_rename_is_joined_from_enter_strings_and_exit() {
        let mut a = Assembler::default();
        assert_eq!(a.push(&enter(wire::DK_NS_RENAME, RENAME_EXCHANGE)), None);
        // A relative name joins its base; an absolute one stands alone.
        assert_eq!(a.push(&string(0, b"/d", false)), None);
        assert_eq!(a.push(&string(1, b"x", false)), None);
        assert_eq!(a.push(&string(3, b"/abs/y", false)), None);
        let ev = a.push(&exit(0)).unwrap();
        assert_eq!(
            ev.change,
            Change::Rename {
                from: b"/d/x".to_vec(),
                to: b"/abs/y".to_vec(),
                exchange: true
            }
        );
        assert_eq!(a.malformed, 0);
    }

    #[test]
    fn a_failed_syscall_changes_nothing_and_a_cut_string_asks_for_a_rescan() {
        let mut a = Assembler::default();
        a.push(&enter(wire::DK_NS_UNLINK, 0));
        a.push(&string(1, b"/f", false));
        assert_eq!(a.push(&exit(-2)), None, "ENOENT: nothing was unlinked");

        a.push(&enter(wire::DK_NS_MKDIR, 0));
        a.push(&string(1, b"/very/lo", true));
        assert_eq!(a.push(&exit(0)).unwrap().change, Change::NamespaceLost);

        a.push(&enter(wire::DK_NS_MKDIR, 0));
        a.push(&string(1, b"/m", false));
        assert_eq!(
            a.push(&exit(0)).unwrap().change,
            Change::Mkdir {
                path: b"/m".to_vec(),
                mode: 0o755
            }
        );
        // An exit with no enter (the agent started mid-syscall) is dropped.
        assert_eq!(a.push(&exit(0)), None);
    }

    #[test]
    fn fd_and_process_records_decode() {
        let mut a = Assembler::default();
        let fd_op = |op, ino, arg| {
            record(
                dk_fd_op {
                    h: hdr(wire::DK_FD_OP, 0),
                    op,
                    _pad: 0,
                    dev: KERNEL_DEV,
                    ino,
                    arg,
                },
                &[],
            )
        };
        let file = FileKey::from_kernel(KERNEL_DEV, 9);
        assert_eq!(
            a.push(&fd_op(wire::DK_FD_TRUNCATE, 9, 100)).unwrap().change,
            Change::FdTruncate { file, size: 100 }
        );
        assert_eq!(
            a.push(&fd_op(wire::DK_FD_DIRTY, 0, 5)).unwrap().change,
            Change::Dirty {
                file: None,
                reason: DirtyReason::IoUring
            }
        );
        let proc_op = |op, arg| {
            record(
                dk_proc {
                    h: hdr(wire::DK_PROC, 0),
                    op,
                    _pad: 0,
                    arg,
                },
                &[],
            )
        };
        assert_eq!(
            a.push(&proc_op(wire::DK_PROC_EXIT, 0x0100)).unwrap().change,
            Change::Exit { code: 1 }
        );
        assert_eq!(
            a.push(&proc_op(wire::DK_PROC_EXIT, 9)).unwrap().change,
            Change::Exit { code: 137 },
            "killed by SIGKILL"
        );
        assert_eq!(
            a.push(&proc_op(wire::DK_PROC_FORK, 6)).unwrap().change,
            Change::Fork { parent: 6 }
        );
        assert_eq!(a.malformed, 0);
    }

    #[test]
    fn malformed_records_are_counted_and_skipped() {
        let mut a = Assembler::default();
        assert_eq!(a.push(&[0u8; 12]), None);
        assert_eq!(a.push(&record(hdr(99, 0), &[])), None);
        // A write whose length runs past the record.
        let short = record(
            dk_write {
                h: hdr(wire::DK_WRITE, 0),
                len: 100,
                ..Default::default()
            },
            b"abc",
        );
        assert_eq!(a.push(&short), None);
        assert_eq!(a.malformed, 3);
    }

    #[test]
    fn dirty_reasons_survive_the_round_trip_through_the_wire() {
        for reason in [
            DirtyReason::OverCap,
            DirtyReason::Lost,
            DirtyReason::Mmap,
            DirtyReason::Splice,
            DirtyReason::IoUring,
            DirtyReason::Fault,
            DirtyReason::Adopted,
        ] {
            assert_eq!(DirtyReason::from_wire(reason.to_wire() as u64), reason);
        }
    }
}
