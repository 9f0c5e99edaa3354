//! Whose permissions a read-back uses: the recorder runs as root, and a read on behalf of an
//! unprivileged workload must open only what that workload could.
//!
//! File system ids (fsuid, fsgid) are per thread, and the kernel checks every lookup and open
//! against them; with a non-zero fsuid it also drops the file system capabilities
//! (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, ...) from the thread's effective set, and restores
//! them when the fsuid is 0 again. So a read-back switches its own thread's ids for the duration
//! of the read, and nothing else in the process is affected.

use rustix::process::Gid;
use std::io;

/// A recorded process's file system user and group ids, as the kernel side reported them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct FsIds {
    pub uid: u32,
    pub gid: u32,
}

impl FsIds {
    pub(crate) const ROOT: FsIds = FsIds { uid: 0, gid: 0 };

    /// Runs `read` with this thread's file system ids set to `self`, and its supplementary
    /// groups to just `self.gid` (the recorded process's own groups are not known, so a file
    /// only they open stays unread: a read-back that fails is reported, never a leak).
    pub(crate) fn reading<T>(self, read: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
        let mine = FsIds {
            uid: rustix::process::geteuid().as_raw(),
            gid: rustix::process::getegid().as_raw(),
        };
        if self == mine {
            return read();
        }
        let _assumed = Assumed::take(self, mine)?;
        read()
    }
}

/// This thread as another set of ids until dropped.
struct Assumed {
    mine: FsIds,
    groups: Vec<Gid>,
}

impl Assumed {
    fn take(ids: FsIds, mine: FsIds) -> io::Result<Assumed> {
        let groups = rustix::process::getgroups()?;
        // The kernel's per-thread setgroups (not glibc's, which changes every thread).
        rustix::thread::set_thread_groups(&[Gid::from_raw(ids.gid)])?;
        let assumed = Assumed { mine, groups };
        // setfsuid and setfsgid report no errors: they return the previous id, whatever
        // happened. Asking again with an invalid id (-1) returns the current one unchanged.
        // SAFETY: plain syscalls on this thread's credentials.
        unsafe {
            libc::setfsgid(ids.gid);
            libc::setfsuid(ids.uid);
        }
        let (uid, gid) = unsafe { (libc::setfsuid(u32::MAX), libc::setfsgid(u32::MAX)) };
        if uid as u32 != ids.uid || gid as u32 != ids.gid {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("cannot read as uid {} gid {}", ids.uid, ids.gid),
            ));
        }
        Ok(assumed)
    }
}

impl Drop for Assumed {
    fn drop(&mut self) {
        // SAFETY: as in `take`; the uid first, so the capabilities needed for the gid and the
        // groups are back.
        unsafe {
            libc::setfsuid(self.mine.uid);
            libc::setfsgid(self.mine.gid);
        }
        if let Err(e) = rustix::thread::set_thread_groups(&self.groups) {
            tracing::error!("cannot restore the recorder's supplementary groups: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn reads_only_what_those_ids_may_and_then_is_root_again() {
        assert!(rustix::process::geteuid().is_root(), "needs root");
        let tmp = tempfile::tempdir().unwrap();
        let private = tmp.path().join("key");
        std::fs::write(&private, b"root only").unwrap();
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o600)).unwrap();
        let nobody = FsIds {
            uid: 65534,
            gid: 65534,
        };
        let e = nobody.reading(|| std::fs::read(&private)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        // Group root does not help either: the recorder's own groups are set aside.
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = nobody.reading(|| std::fs::read(&private)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        assert_eq!(
            FsIds::ROOT.reading(|| std::fs::read(&private)).unwrap(),
            b"root only"
        );
        assert_eq!(std::fs::read(&private).unwrap(), b"root only");
        let groups = rustix::process::getgroups().unwrap();
        nobody.reading(|| Ok(())).unwrap();
        assert_eq!(rustix::process::getgroups().unwrap(), groups);
    }
}
