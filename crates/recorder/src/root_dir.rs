//! The recording's root as a directory fd, through which every read-back, sweep and stat
//! resolves recorded paths.
//!
//! The recorder runs as root; the workload may not. A path-based call would follow a symlink
//! the workload put in any component of a recorded name (swapped in with renameat2, say, behind
//! a record the kernel side could not send), and the recorder would copy whatever it points to
//! into the store. Recorded paths are the kernel's resolved names, so no component of a true
//! one is a symlink: resolving with `RESOLVE_NO_SYMLINKS | RESOLVE_BENEATH` from the root's fd
//! finds exactly the entry the name means, or fails.

use crate::fs_ids::FsIds;
use diffkeeper_capture::FileKey;
use diffkeeper_store::{xattr_kept, RecPath, Xattrs};
use rustix::fs::{Mode, OFlags, ResolveFlags};
use std::ffi::OsString;
use std::fs::{File, Metadata};
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

/// How a recorded name is resolved below the root: no symlink anywhere (the last component
/// included, unless it is opened as the symlink itself), never above the root.
const RESOLVE: ResolveFlags = ResolveFlags::NO_SYMLINKS
    .union(ResolveFlags::BENEATH)
    .union(ResolveFlags::NO_MAGICLINKS);

/// openat2 fails with EAGAIN when a rename or mount raced the lookup: it may be retried.
const RACE_RETRIES: usize = 16;

/// A directory every recorded path is resolved below.
pub(crate) struct RootDir {
    fd: Result<OwnedFd, io::ErrorKind>,
}

impl RootDir {
    /// Opens `path` (the host's "/" or a container's root, e.g. /proc/PID/root). A root that
    /// cannot be opened makes every lookup fail, as every name below it is unreachable.
    pub(crate) fn open(path: &Path) -> Self {
        let fd = rustix::fs::open(
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io::Error::from(e).kind());
        RootDir { fd }
    }

    /// Opens the entry `path` names with `flags` (plus O_NOFOLLOW and O_CLOEXEC), with the
    /// permissions of `who`: every component must be searchable by them.
    fn open_entry(&self, who: FsIds, path: &RecPath, flags: OFlags) -> io::Result<OwnedFd> {
        who.reading(|| self.open_entry_as_is(path, flags))
    }

    fn open_entry_as_is(&self, path: &RecPath, flags: OFlags) -> io::Result<OwnedFd> {
        let root = self.fd.as_ref().map_err(|&kind| io::Error::from(kind))?;
        let rel = relative(path);
        let mut rest = rel.as_os_str().as_bytes();
        // A name longer than PATH_MAX is resolved a directory at a time, each step below the
        // last one's fd, with the same rules.
        let mut dir: Option<OwnedFd> = None;
        while rest.len() >= PATH_MAX {
            let cut = rest[..PATH_MAX]
                .iter()
                .rposition(|&b| b == b'/')
                .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidFilename))?;
            let at = dir.as_ref().unwrap_or(root).as_fd();
            let step = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            dir = Some(open_beneath(at, &rest[..cut], step)?);
            rest = &rest[cut + 1..];
        }
        let at = dir.as_ref().unwrap_or(root).as_fd();
        open_beneath(at, rest, flags | OFlags::NOFOLLOW | OFlags::CLOEXEC)
    }

    /// The entry itself, a symlink not followed (lstat).
    pub(crate) fn metadata(&self, who: FsIds, path: &RecPath) -> io::Result<Metadata> {
        File::from(self.open_entry(who, path, OFlags::PATH)?).metadata()
    }

    /// The extended attributes worth keeping of a file or directory (a symlink has none that
    /// matter: user.* is refused on one). Read through the entry's O_PATH descriptor's
    /// /proc/self/fd link, which getxattr follows to the entry itself, and as `who`.
    pub(crate) fn xattrs(&self, who: FsIds, path: &RecPath) -> io::Result<Xattrs> {
        who.reading(|| {
            let fd = self.open_entry_as_is(path, OFlags::PATH)?;
            if File::from(fd.try_clone()?)
                .metadata()?
                .file_type()
                .is_symlink()
            {
                return Ok(Xattrs::new());
            }
            let link = format!("/proc/self/fd/{}", fd.as_raw_fd());
            let mut names = vec![0u8; rustix::fs::listxattr_query(&link)?.max(1)];
            let n = rustix::fs::listxattr(&link, &mut names[..])?;
            let mut out = Xattrs::new();
            for name in names[..n].split(|b| *b == 0).filter(|n| xattr_kept(n)) {
                let name = std::ffi::CString::new(name).map_err(io::Error::other)?;
                let mut value = vec![0u8; rustix::fs::getxattr_query(&link, &name)?];
                let len = rustix::fs::getxattr(&link, &name, &mut value[..])?;
                value.truncate(len);
                out.insert(name.into_bytes(), value);
            }
            Ok(out)
        })
    }

    /// A symlink's target.
    pub(crate) fn read_link(&self, who: FsIds, path: &RecPath) -> io::Result<PathBuf> {
        let fd = self.open_entry(who, path, OFlags::PATH)?;
        let target = rustix::fs::readlinkat(&fd, "", Vec::new())?;
        Ok(PathBuf::from(OsString::from_vec(target.into_bytes())))
    }

    /// A directory, opened for reading.
    pub(crate) fn open_dir(&self, who: FsIds, path: &RecPath) -> io::Result<OwnedFd> {
        self.open_entry(who, path, OFlags::RDONLY | OFlags::DIRECTORY)
    }

    /// The names in a directory (no "." or "..").
    pub(crate) fn read_dir(&self, who: FsIds, path: &RecPath) -> io::Result<Vec<OsString>> {
        let fd = self.open_dir(who, path)?;
        let mut names = Vec::new();
        for entry in rustix::fs::Dir::read_from(&fd)? {
            let name = entry?.file_name().to_bytes().to_vec();
            if name != b"." && name != b".." {
                names.push(OsString::from_vec(name));
            }
        }
        Ok(names)
    }

    /// Opens a regular file for reading. Non-blocking, so a fifo swapped in never stalls the
    /// recorder.
    pub(crate) fn open_file(&self, who: FsIds, path: &RecPath) -> io::Result<File> {
        let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY;
        Ok(File::from(self.open_entry(who, path, flags)?))
    }

    /// A regular file opened for a read-back, if it is still the inode `expect` (dev, ino): a
    /// rename may have put another file at that name.
    pub(crate) fn open_read_back(
        &self,
        who: FsIds,
        path: &RecPath,
        expect: FileKey,
    ) -> io::Result<File> {
        use std::os::unix::fs::MetadataExt;
        // Opened as `who`; reading an open file checks nothing more.
        let f = self.open_file(who, path)?;
        let meta = f.metadata()?;
        if !meta.is_file() || meta.dev() != expect.dev || meta.ino() != expect.ino {
            return Err(io::Error::other("another file is at this path now"));
        }
        Ok(f)
    }

    /// A regular file's bytes, whole (see [`Self::open_read_back`]): only for files known to be
    /// small, since it holds them in memory.
    pub(crate) fn read_file(
        &self,
        who: FsIds,
        path: &RecPath,
        expect: FileKey,
    ) -> io::Result<Vec<u8>> {
        let mut f = self.open_read_back(who, path, expect)?;
        let mut data = Vec::with_capacity(f.metadata()?.len() as usize);
        f.read_to_end(&mut data)?;
        Ok(data)
    }
}

/// The longest name openat2 takes, its terminating NUL included.
const PATH_MAX: usize = libc::PATH_MAX as usize;

fn open_beneath(dir: BorrowedFd<'_>, rel: &[u8], flags: OFlags) -> io::Result<OwnedFd> {
    let rel = std::ffi::OsStr::from_bytes(rel);
    let mut tries = 0;
    loop {
        match rustix::fs::openat2(dir, rel, flags, Mode::empty(), RESOLVE) {
            Err(rustix::io::Errno::AGAIN) if tries < RACE_RETRIES => tries += 1,
            result => return result.map_err(io::Error::from),
        }
    }
}

/// `path` relative to the root: "." for the root itself.
fn relative(path: &RecPath) -> PathBuf {
    match &path.as_bytes()[1..] {
        [] => PathBuf::from("."),
        rel => PathBuf::from(std::ffi::OsStr::from_bytes(rel)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    const R: FsIds = FsIds::ROOT;

    fn rp(root: &Path, rel: &str) -> RecPath {
        RecPath::normalize(root.join(rel).as_os_str().as_bytes()).unwrap()
    }

    #[test]
    fn never_follows_a_symlink_in_any_component() {
        let tmp = tempfile::tempdir().unwrap();
        let top = tmp.path();
        fs::create_dir(top.join("private")).unwrap();
        fs::write(top.join("private/key"), b"secret").unwrap();
        std::os::unix::fs::symlink(top.join("private"), top.join("x")).unwrap();
        std::os::unix::fs::symlink("private", top.join("rel")).unwrap();
        let root = RootDir::open(Path::new("/"));
        for name in ["x/key", "rel/key"] {
            let e = root
                .read_file(R, &rp(top, name), FileKey { dev: 0, ino: 0 })
                .unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::ELOOP), "{name}: {e}");
            assert!(root.metadata(R, &rp(top, name)).is_err(), "{name}");
            assert!(root
                .read_dir(R, &rp(top, name.split('/').next().unwrap()))
                .is_err());
        }
        assert!(root
            .metadata(R, &rp(top, "x"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(
            root.read_link(R, &rp(top, "x")).unwrap(),
            top.join("private")
        );
        assert_eq!(root.read_dir(R, &rp(top, "private")).unwrap(), vec!["key"]);
    }

    #[test]
    fn resolves_names_longer_than_path_max_and_still_refuses_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        let long = "y".repeat(250);
        let mut dir = tmp.path().to_path_buf();
        // Made by relative names from a directory fd: the whole name is past PATH_MAX.
        let mut at = File::open(tmp.path()).unwrap();
        for _ in 0..20 {
            rustix::fs::mkdirat(&at, long.as_str(), Mode::from_raw_mode(0o755)).unwrap();
            let next = rustix::fs::openat(&at, long.as_str(), OFlags::RDONLY, Mode::empty());
            at = File::from(next.unwrap());
            dir.push(&long);
        }
        let f = rustix::fs::openat(
            &at,
            "f",
            OFlags::WRONLY | OFlags::CREATE,
            Mode::from_raw_mode(0o644),
        );
        rustix::io::write(f.unwrap(), b"far").unwrap();
        rustix::fs::symlinkat("/etc", &at, "link").unwrap();
        let root = RootDir::open(Path::new("/"));
        let f = RecPath::normalize(dir.join("f").as_os_str().as_bytes()).unwrap();
        assert!(f.as_bytes().len() > PATH_MAX);
        let meta = root.metadata(R, &f).unwrap();
        use std::os::unix::fs::MetadataExt;
        let key = FileKey {
            dev: meta.dev(),
            ino: meta.ino(),
        };
        assert_eq!(root.read_file(R, &f, key).unwrap(), b"far");
        let through = RecPath::normalize(dir.join("link/hostname").as_os_str().as_bytes()).unwrap();
        let e = root.metadata(R, &through).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP));
    }

    #[test]
    fn resolves_below_a_root_other_than_slash() {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir(tmp.path().join("etc")).unwrap();
        fs::write(tmp.path().join("etc/hosts"), b"container").unwrap();
        let root = RootDir::open(tmp.path());
        let hosts = RecPath::normalize(b"/etc/hosts").unwrap();
        let meta = root.metadata(R, &hosts).unwrap();
        use std::os::unix::fs::MetadataExt;
        let key = FileKey {
            dev: meta.dev(),
            ino: meta.ino(),
        };
        let data = root.read_file(R, &hosts, key).unwrap();
        assert_eq!(data, b"container");
        assert!(root.metadata(R, &RecPath::root()).unwrap().is_dir());
    }
}
