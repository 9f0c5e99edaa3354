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
}

impl DirLock {
    pub(crate) fn acquire(dir: &Path) -> Result<DirLock, StoreError> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(LOCK_FILE))?;
        // SAFETY: flock only reads the descriptor, which `file` keeps open for the call.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut text = String::new();
                // The holder writes its pid right after locking; an unreadable pid shows as 0.
                let _ = file.read_to_string(&mut text);
                return Err(StoreError::Locked {
                    pid: text.trim().parse().unwrap_or(0),
                    dir: dir.to_path_buf(),
                });
            }
            return Err(err.into());
        }
        file.set_len(0)?;
        file.seek(SeekFrom::Start(0))?;
        write!(file, "{}", std::process::id())?;
        file.flush()?;
        Ok(DirLock { file })
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        // Clearing the pid is cosmetic (the flock is what counts) but avoids pointing at a
        // process that no longer has anything to do with this dir.
        let _ = self.file.set_len(0);
        // Unlock explicitly rather than by closing: an flock belongs to the open file
        // description, and a child forked by any thread of this process (before its exec closes
        // our O_CLOEXEC descriptors) holds a copy of it. Closing only our copy would then leave
        // the dir locked for a moment, and a Writer reopened in this process would be refused
        // with `Locked { pid: 0 }`. LOCK_UN releases the description's lock for every copy.
        // SAFETY: flock only reads the descriptor, which `self.file` keeps open for the call.
        unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_UN) };
    }
}
