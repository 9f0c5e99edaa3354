//! The socket a server subcommand (agent, operator) serves on: the one its service manager
//! passed (systemd socket activation), else one bound to the address flag.
//!
//! A passed socket is how a supervisor (systemd, or a test) keeps the port across restarts of
//! the server and knows it before the server starts.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::{FromRawFd, RawFd};

use anyhow::{bail, Context};

/// The first passed descriptor, as sd_listen_fds(3) defines it.
const SD_LISTEN_FDS_START: RawFd = 3;

/// The passed socket if `LISTEN_FDS` says there is one for this process, else a fresh
/// listener on `addr` (`flag` names the option that gave it, for errors).
pub(crate) fn listener(addr: SocketAddr, flag: &str) -> anyhow::Result<TcpListener> {
    let listener = match passed()? {
        Some(listener) => {
            let local = listener
                .local_addr()
                .context("fd 3, passed with LISTEN_FDS=1, is not a TCP socket")?;
            tracing::info!(%local, "serving on the socket passed by the service manager (LISTEN_FDS); {flag} is not used");
            listener
        }
        None => TcpListener::bind(addr)
            .with_context(|| format!("cannot listen on {flag}={addr}: is the port taken?"))?,
    };
    // tokio takes over only non-blocking sockets.
    listener
        .set_nonblocking(true)
        .context("making the listening socket non-blocking")?;
    Ok(listener)
}

fn passed() -> anyhow::Result<Option<TcpListener>> {
    let Ok(count) = std::env::var("LISTEN_FDS") else {
        return Ok(None);
    };
    // LISTEN_PID, when set, names the process the sockets are for; a child that inherited the
    // variables from its parent must not take them.
    if let Ok(pid) = std::env::var("LISTEN_PID") {
        if pid.parse::<u32>().ok() != Some(std::process::id()) {
            return Ok(None);
        }
    }
    // Called before any thread starts, so changing the environment races with nothing; the
    // servers' own children must not think the socket is theirs.
    for var in ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"] {
        std::env::remove_var(var);
    }
    match count.parse::<u32>() {
        Ok(0) => Ok(None),
        Ok(1) => {
            let fd = SD_LISTEN_FDS_START;
            // SAFETY: fcntl on a descriptor number has no memory preconditions.
            if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
                bail!(
                    "LISTEN_FDS=1 but fd {fd} is not open: {}",
                    std::io::Error::last_os_error()
                );
            }
            // SAFETY: the service manager passed fd 3 for this process to own.
            Ok(Some(unsafe { TcpListener::from_raw_fd(fd) }))
        }
        _ => bail!("LISTEN_FDS={count:?}: this server serves on exactly one passed socket"),
    }
}
