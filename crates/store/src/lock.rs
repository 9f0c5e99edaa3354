//! One process at a time per state dir: an flock on `DIR/LOCK`, which holds the owner's pid so
//! that the refusal can name it. The kernel drops an flock when its holder dies, so a lock file
//! left behind by a killed recorder never blocks anyone.

use crate::error::StoreError;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::Path;

pub(crate) const LOCK_FILE: &str = "LOCK";

/// Held for the lifetime of a Writer or Store; dropping it (or dying) releases the lock.
#[derive(Debug)]
pub(crate) struct DirLock {
    file: File,
    /// A writer's lock holds its pid; a reader's changes nothing in the dir.
    wrote_pid: bool,
}

impl DirLock {
    /// The writer's lock: creates `LOCK` if needed and writes the holder's pid into it.
    pub(crate) fn acquire(dir: &Path) -> Result<DirLock, StoreError> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(LOCK_FILE))?;
        lock(&mut file, dir)?;
        file.set_len(0)?;
        file.seek(SeekFrom::Start(0))?;
        write!(file, "{}", std::process::id())?;
        file.flush()?;
        Ok(DirLock {
            file,
            wrote_pid: true,
        })
    }

    /// A reader's lock: the same flock, taken through a read-only descriptor, so that reading
    /// works on a read-only copy of a recording and leaves every file as it was. `None` when the
    /// dir has no `LOCK` (nothing ever wrote there, or a copy without it): creating one would be
    /// a change.
    pub(crate) fn acquire_reading(dir: &Path) -> Result<Option<DirLock>, StoreError> {
        let mut file = match File::open(dir.join(LOCK_FILE)) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        lock(&mut file, dir)?;
        Ok(Some(DirLock {
            file,
            wrote_pid: false,
        }))
    }
}

fn lock(file: &mut File, dir: &Path) -> Result<(), StoreError> {
    // SAFETY: flock only reads the descriptor, which `file` keeps open for the call.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
        return Err(err.into());
    }
    // The kernel's lock table names the holder, reader or writer (a reader writes no pid, and
    // a pid in the file may be stale, left by a killed writer). Without /proc, a writer's pid
    // in the file is the best guess; an unknown holder shows as 0.
    let mut text = String::new();
    let pid = flock_holder(file).unwrap_or_else(|| {
        let _ = file.read_to_string(&mut text);
        text.trim().parse().unwrap_or(0)
    });
    Err(StoreError::Locked {
        pid,
        dir: dir.to_path_buf(),
    })
}

/// The pid holding an flock on `file`, from /proc/locks (`N: FLOCK ADVISORY WRITE pid maj:min:ino ...`).
fn flock_holder(file: &File) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let ino = file.metadata().ok()?.ino();
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let at = fields.iter().position(|f| *f == "FLOCK")?;
        let pid = fields.get(at + 3)?.parse().ok()?;
        let inode = fields
            .get(at + 4)?
            .rsplit(':')
            .next()?
            .parse::<u64>()
            .ok()?;
        (inode == ino).then_some(pid)
    })
}

impl Drop for DirLock {
    fn drop(&mut self) {
        // Clearing the pid is cosmetic (the flock is what counts) but avoids pointing at a
        // process that no longer has anything to do with this dir.
        if self.wrote_pid {
            let _ = self.file.set_len(0);
        }
        // Unlock explicitly rather than by closing: an flock belongs to the open file
        // description, and a child forked by any thread of this process (before its exec closes
        // our O_CLOEXEC descriptors) holds a copy of it. Closing only our copy would then leave
        // the dir locked for a moment, and a Writer reopened in this process would be refused
        // with `Locked { pid: 0 }`. LOCK_UN releases the description's lock for every copy.
        // SAFETY: flock only reads the descriptor, which `self.file` keeps open for the call.
        unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_UN) };
    }
}
