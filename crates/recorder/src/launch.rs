//! Starting the recorded command: forked at once into its cgroup, then parked until the probe
//! is attached and the baselines are taken.
//!
//! Forking first hides two costs of start-up behind the programs' verification: the move into
//! the cgroup (a cgroup migration waits out an RCU grace period: 10-25 ms here) and the fork
//! itself, made while the recorder's address space is still small (before the ring and the
//! store are mapped). The command's own code runs only after [`Launch::go`], so not one of its
//! syscalls escapes the filter.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::thread::JoinHandle;

use crate::cgroup::RecordingCgroup;

/// A forked command waiting in its cgroup for the word to exec.
pub struct Launch {
    /// The pipe's write end: one byte says go; closing it without one says give up.
    go: Option<OwnedFd>,
    /// `Command::spawn` returns only once the child has exec'd (or failed to), so it waits on a
    /// thread of its own while the recorder gets ready.
    spawner: Option<JoinHandle<io::Result<Child>>>,
}

impl Launch {
    /// Forks `command` into `cgroup`; it waits there until [`Launch::go`].
    pub fn fork(cgroup: &RecordingCgroup, mut command: Command) -> io::Result<Launch> {
        let procs = cgroup
            .procs_handle()
            .map_err(|e| io::Error::other(e.to_string()))?;
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two descriptors into the array; each is owned from here on.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let (wait, go) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let go_fd = go.as_raw_fd();
        // The recorder makes its store private with umask(077) while the spawner thread may
        // not have forked yet: the command gets the umask the recorder was started with,
        // whichever comes first. Read now, before any other thread runs.
        // SAFETY: umask cannot fail; it is set back at once.
        let umask = unsafe {
            let mask = libc::umask(0o077);
            libc::umask(mask);
            mask
        };
        // SAFETY: between fork and exec the child only calls umask(2), close(2), write(2) and
        // read(2).
        unsafe {
            command.pre_exec(move || {
                libc::umask(umask);
                // The child's copy of the write end would keep its own read from ever seeing
                // the recorder give up.
                libc::close(go_fd);
                RecordingCgroup::join_from_child(&procs)?;
                let mut word = 0u8;
                loop {
                    let n = libc::read(wait.as_raw_fd(), (&mut word as *mut u8).cast(), 1);
                    if n == 1 {
                        return Ok(());
                    }
                    if n == 0 {
                        return Err(io::Error::other("the recorder could not start"));
                    }
                    if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                        return Err(io::Error::last_os_error());
                    }
                }
            });
        }
        let spawner = std::thread::Builder::new()
            .name("dk-spawn".into())
            .spawn(move || command.spawn())?;
        Ok(Launch {
            go: Some(go),
            spawner: Some(spawner),
        })
    }

    /// Lets the command exec; returns it running, or why it could not start.
    pub fn go(mut self) -> io::Result<Child> {
        let go = self.go.take().expect("go is said once");
        // SAFETY: a one-byte write from a live byte to our own pipe.
        let n = unsafe { libc::write(go.as_raw_fd(), b"g".as_ptr().cast(), 1) };
        if n != 1 {
            return Err(io::Error::last_os_error());
        }
        drop(go);
        self.spawner
            .take()
            .expect("joined once")
            .join()
            .map_err(|_| io::Error::other("the thread starting the command panicked"))?
    }
}

impl Drop for Launch {
    /// Never told to go (the recorder failed to start): the child gives up before exec.
    fn drop(&mut self) {
        drop(self.go.take());
        if let Some(spawner) = self.spawner.take() {
            let _ = spawner.join();
        }
    }
}
