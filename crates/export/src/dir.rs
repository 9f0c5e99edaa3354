//! Writing a recorded tree into a real directory without ever leaving it.
//!
//! Every file-system call is relative to a directory descriptor that was opened one component
//! at a time with `O_NOFOLLOW | O_DIRECTORY`, and every new name is created exclusively
//! (`mkdirat`, `O_CREAT | O_EXCL`, `symlinkat`), so neither a symlink the export itself created
//! nor one that appeared in the destination concurrently is ever followed.

use crate::{split_ns, Destination, ExportError, FileData, Item, Written};
use diffkeeper_store::model::{Owner, RecPath, Xattrs};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{AtFlags, Mode, OFlags, Timespec, Timestamps};
use rustix::io::Errno;
use std::path::Path;
use tracing::{debug, warn};

/// Owner-only, fully usable: children can be created inside whatever the recorded mode is, and
/// nobody else can meddle with a directory before its recorded mode is applied at the end.
const WORKING_DIR_MODE: u32 = 0o700;
/// Owner-only until the recorded mode is applied, for the same reason.
const WORKING_FILE_MODE: u32 = 0o600;

/// Flags for walking: `O_PATH` needs no read permission, and the descriptor only ever serves as
/// the base of `*at` calls.
fn walk_flags() -> OFlags {
    OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

/// A directory's mode and mtime, applied after everything inside it is written: creating
/// children changes a directory's mtime, and a recorded mode such as 0555 would forbid them.
struct PendingDir {
    path: RecPath,
    mode: u32,
    mtime_ns: Option<i128>,
    owner: Option<Owner>,
    xattrs: Xattrs,
}

pub(crate) struct DirDestination {
    root: OwnedFd,
    /// The most recently opened parent directory. Entries arrive in path order, so siblings
    /// share it and the walk from the root happens once per directory, not once per file.
    cached_parent: Option<(RecPath, OwnedFd)>,
    pending_dirs: Vec<PendingDir>,
    /// Give entries their recorded owners (the caller checked that it may).
    owners: bool,
}

impl DirDestination {
    /// Creates `out` if missing, or accepts it if it is an empty directory.
    pub(crate) fn create(out: &Path, owners: bool) -> Result<Self, ExportError> {
        let destination_err = |source| ExportError::Destination {
            path: out.to_owned(),
            source,
        };
        match std::fs::metadata(out) {
            Ok(meta) if !meta.is_dir() => {
                return Err(ExportError::DestinationNotDirectory {
                    path: out.to_owned(),
                })
            }
            Ok(_) => {
                let mut listing = std::fs::read_dir(out).map_err(destination_err)?;
                if let Some(first) = listing.next() {
                    let first = first.map_err(destination_err)?;
                    return Err(ExportError::DestinationNotEmpty {
                        path: out.to_owned(),
                        example: first.file_name().to_string_lossy().into_owned(),
                    });
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(out).map_err(destination_err)?;
                debug!(out = %out.display(), "created export destination");
            }
            Err(e) => return Err(destination_err(e)),
        }
        // `out` itself is the caller's choice and may be reached through symlinks; from here on
        // nothing is followed.
        let root = rustix::fs::open(
            out,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| destination_err(e.into()))?;
        Ok(DirDestination {
            root,
            cached_parent: None,
            pending_dirs: Vec::new(),
            owners,
        })
    }

    /// The directory that holds `path`, and `path`'s last component.
    fn parent_of<'p>(&mut self, path: &'p RecPath) -> Result<(BorrowedFd<'_>, &'p [u8]), Errno> {
        let name = path
            .file_name()
            .expect("the walk never hands over the root itself");
        let parent = path.parent().expect("a non-root path has a parent");
        if parent.is_root() {
            return Ok((self.root.as_fd(), name));
        }
        let cached = matches!(&self.cached_parent, Some((p, _)) if *p == parent);
        if !cached {
            let fd = open_below(self.root.as_fd(), &parent, walk_flags())?;
            self.cached_parent = Some((parent, fd));
        }
        let (_, fd) = self.cached_parent.as_ref().expect("just filled");
        Ok((fd.as_fd(), name))
    }

    fn apply_dir_metadata(&self, dir: &PendingDir) -> Result<(), Errno> {
        // A real descriptor (not O_PATH) because fchmod needs one; our working mode grants read.
        let fd = open_below(
            self.root.as_fd(),
            &dir.path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        )?;
        // The owner before the mode: chown clears set-ID bits.
        if let Some(owner) = dir.owner.filter(|_| self.owners) {
            rustix::fs::fchown(&fd, Some(uid(owner)), Some(gid(owner)))?;
            set_xattrs(&fd, &dir.xattrs)?;
        }
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(dir.mode))?;
        if let Some(times) = dir.mtime_ns.and_then(|ns| timestamps(&dir.path, ns)) {
            rustix::fs::futimens(&fd, &times)?;
        }
        Ok(())
    }
}

impl Destination for DirDestination {
    fn dir(&mut self, item: &Item) -> Result<Written, ExportError> {
        let path = item.path.as_ref();
        let created = self.parent_of(path).and_then(|(parent, name)| {
            rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(WORKING_DIR_MODE))
        });
        if let Err(errno) = created {
            return refused_or_fatal(errno, "create directory", path);
        }
        self.pending_dirs.push(PendingDir {
            path: path.clone(),
            mode: item.mode,
            mtime_ns: item.mtime_ns,
            owner: item.owner,
            xattrs: item.entry.map(|e| e.xattrs.clone()).unwrap_or_default(),
        });
        Ok(Written::Done)
    }

    fn file(
        &mut self,
        item: &Item,
        data: &mut dyn FileData,
        _len: u64,
    ) -> Result<Written, ExportError> {
        let path = item.path.as_ref();
        let opened = self.parent_of(path).and_then(|(parent, name)| {
            rustix::fs::openat(
                parent,
                name,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(WORKING_FILE_MODE),
            )
        });
        let file = match opened {
            Ok(fd) => std::fs::File::from(fd),
            Err(errno) => return refused_or_fatal(errno, "create file", path),
        };
        copy_sparse(data, &file).map_err(|source| ExportError::Write {
            action: "write file",
            path: path.clone(),
            source,
        })?;
        // The owner, then the mode, after writing: an unprivileged write and a chown both clear
        // setuid/setgid bits.
        // Xattrs after the owner: chown drops security.capability.
        let owned =
            match item.owner.filter(|_| self.owners) {
                Some(owner) => rustix::fs::fchown(&file, Some(uid(owner)), Some(gid(owner)))
                    .and_then(|()| match item.entry {
                        Some(e) => set_xattrs(&file, &e.xattrs),
                        None => Ok(()),
                    }),
                None => Ok(()),
            };
        let metadata = owned
            .and_then(|()| rustix::fs::fchmod(&file, Mode::from_raw_mode(item.mode)))
            .and_then(
                |()| match item.mtime_ns.and_then(|ns| timestamps(path, ns)) {
                    Some(times) => rustix::fs::futimens(&file, &times),
                    None => Ok(()),
                },
            );
        metadata.map_err(|errno| ExportError::Write {
            action: "set mode and mtime of",
            path: path.clone(),
            source: errno.into(),
        })?;
        Ok(Written::Done)
    }

    fn symlink(&mut self, item: &Item, target: &[u8]) -> Result<Written, ExportError> {
        let path = item.path.as_ref();
        let times = item.mtime_ns.and_then(|ns| timestamps(path, ns));
        let owner = item.owner.filter(|_| self.owners);
        let (parent, name) = match self.parent_of(path) {
            Ok(found) => found,
            Err(errno) => return refused_or_fatal(errno, "create symlink", path),
        };
        if let Err(errno) = rustix::fs::symlinkat(target, parent, name) {
            return refused_or_fatal(errno, "create symlink", path);
        }
        if let Some(owner) = owner {
            let flags = AtFlags::SYMLINK_NOFOLLOW;
            rustix::fs::chownat(parent, name, Some(uid(owner)), Some(gid(owner)), flags).map_err(
                |errno| ExportError::Write {
                    action: "set owner of symlink",
                    path: path.clone(),
                    source: errno.into(),
                },
            )?;
        }
        // Symlink permission bits are meaningless on Linux; only the time is restored, on the
        // link itself (SYMLINK_NOFOLLOW), never on whatever it points to.
        if let Some(times) = times {
            rustix::fs::utimensat(parent, name, &times, AtFlags::SYMLINK_NOFOLLOW).map_err(
                |errno| ExportError::Write {
                    action: "set mtime of symlink",
                    path: path.clone(),
                    source: errno.into(),
                },
            )?;
        }
        Ok(Written::Done)
    }

    fn discard(&mut self, item: &Item) -> Result<(), ExportError> {
        let path = item.path.as_ref();
        self.parent_of(path)
            .and_then(|(parent, name)| rustix::fs::unlinkat(parent, name, AtFlags::empty()))
            .map_err(|errno| ExportError::Write {
                action: "remove the unreadable file",
                path: path.clone(),
                source: errno.into(),
            })
    }

    fn finish(mut self) -> Result<(), ExportError> {
        self.cached_parent = None;
        // Deepest first: a child directory is reached through its parent, which must still be
        // searchable, so the parent's recorded (possibly restrictive) mode goes on after it.
        // Reverse path order guarantees every descendant comes before its ancestor.
        for dir in self.pending_dirs.iter().rev() {
            self.apply_dir_metadata(dir)
                .map_err(|errno| ExportError::Write {
                    action: "set mode and mtime of directory",
                    path: dir.path.clone(),
                    source: errno.into(),
                })?;
        }
        Ok(())
    }
}

/// Opens `path` below `root` one component at a time, refusing symlinks at every step.
pub(crate) fn open_below(
    root: BorrowedFd<'_>,
    path: &RecPath,
    last_flags: OFlags,
) -> Result<OwnedFd, Errno> {
    let mut components = path.components().peekable();
    let mut current: Option<OwnedFd> = None;
    while let Some(component) = components.next() {
        let flags = if components.peek().is_some() {
            walk_flags()
        } else {
            last_flags
        };
        let base = current.as_ref().map_or(root, |fd| fd.as_fd());
        current = Some(rustix::fs::openat(base, component, flags, Mode::empty())?);
    }
    // The walk never asks for the root itself, whose descriptor it already holds.
    current.ok_or(Errno::INVAL)
}

/// Sorts a failed call into "this entry cannot be exported here" (skip it, go on) and "the
/// destination is unusable" (stop): a name too long for this file system or a clash on a
/// case-insensitive one concerns one entry; a full disk concerns all of them.
fn refused_or_fatal(
    errno: Errno,
    action: &'static str,
    path: &RecPath,
) -> Result<Written, ExportError> {
    let reason = match errno {
        Errno::NAMETOOLONG => "the name is too long for the destination file system",
        Errno::EXIST => {
            "the name already exists in the destination (a file system that folds case or \
             normalizes names merges it with another recorded entry)"
        }
        Errno::NOTDIR | Errno::LOOP => {
            "something that is not a directory is in the way in the destination; not following it"
        }
        Errno::INVAL | Errno::ILSEQ => "the destination file system does not accept this name",
        Errno::NOENT => "a directory leading to it is missing from the destination",
        _ => {
            return Err(ExportError::Write {
                action,
                path: path.clone(),
                source: errno.into(),
            })
        }
    };
    Ok(Written::Refused(format!(
        "cannot {action}: {reason} ({errno})"
    )))
}

fn timestamps(path: &RecPath, mtime_ns: i128) -> Option<Timestamps> {
    let Some((secs, nanos)) = split_ns(mtime_ns) else {
        warn!(%path, mtime_ns, "recorded mtime is out of range; leaving the export time");
        return None;
    };
    let time = Timespec {
        tv_sec: secs,
        tv_nsec: nanos.into(),
    };
    // No access time is recorded; using the mtime keeps repeated exports identical.
    Some(Timestamps {
        last_access: time,
        last_modification: time,
    })
}

/// Bytes gathered before each write: small recorded extents (a log grown 64 bytes at a time)
/// still reach the file system in large writes.
const WRITE_CHUNK: usize = 256 << 10;

/// Writes `data` into the empty `file`, leaving its holes unwritten so a sparse file stays sparse.
fn copy_sparse(data: &mut dyn FileData, file: &std::fs::File) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; WRITE_CHUNK];
    let mut at = 0u64;
    loop {
        let hole = data.hole_len();
        if hole > 0 {
            data.skip_hole(hole);
            at += hole;
            continue;
        }
        let mut filled = 0;
        while filled < buf.len() {
            let n = match data.read(&mut buf[filled..]) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            filled += n;
            if n == 0 || data.hole_len() > 0 {
                break;
            }
        }
        if filled == 0 {
            break;
        }
        file.write_all_at(&buf[..filled], at)?;
        at += filled as u64;
    }
    // A hole at the end has no data after it to give the file its length.
    file.set_len(at)
}

fn uid(owner: Owner) -> rustix::fs::Uid {
    rustix::fs::Uid::from_raw(owner.uid)
}

fn gid(owner: Owner) -> rustix::fs::Gid {
    rustix::fs::Gid::from_raw(owner.gid)
}

/// Gives a file or directory its recorded xattrs (as root: security.capability needs it). An
/// access ACL goes on before the mode, which then sets its mask as a chmod does.
fn set_xattrs(fd: impl AsFd, xattrs: &Xattrs) -> Result<(), Errno> {
    for (name, value) in xattrs {
        let Ok(name) = std::ffi::CString::new(name.clone()) else {
            continue; // a name with a NUL cannot have been read from the kernel
        };
        rustix::fs::fsetxattr(&fd, &name, value, rustix::fs::XattrFlags::empty())?;
    }
    Ok(())
}
