//! Loopback ports a test owns for its whole life. "Bind port 0, drop the listener, hand the
//! number on" leaves a window in which any other process may take the port; these never let it
//! go.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, RawFd};
use std::process::Command;

use socket2::{Domain, Protocol, Socket, Type};

/// A loopback TCP port that is bound but not listening: connecting to it is refused, and no
/// other socket can take it while this value lives.
pub struct ReservedPort {
    socket: Socket,
    addr: SocketAddr,
}

impl ReservedPort {
    /// Binds a fresh loopback port.
    pub fn new() -> ReservedPort {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))
            .expect("creating a TCP socket");
        socket
            .bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into())
            .expect("binding a loopback port");
        let addr = socket
            .local_addr()
            .expect("the bound address")
            .as_socket()
            .expect("an IP address");
        ReservedPort { socket, addr }
    }

    /// The reserved address, `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Starts listening on the reserved port: connections are accepted from now on.
    pub fn listen(self) -> TcpListener {
        self.socket.listen(1024).expect("listening on a bound port");
        self.socket.into()
    }
}

impl Default for ReservedPort {
    fn default() -> Self {
        ReservedPort::new()
    }
}

/// A listening loopback socket, for a server the test starts as a child process.
pub fn loopback_listener() -> TcpListener {
    ReservedPort::new().listen()
}

/// Hands `listener` to the child `command` starts as systemd socket activation does
/// (`LISTEN_FDS=1`, the socket as fd 3), so the port is the test's from before the child starts
/// until after it is gone, across restarts of the child too.
pub fn pass_listener(command: &mut Command, listener: &TcpListener) {
    let fd: RawFd = listener.as_raw_fd();
    command.env("LISTEN_FDS", "1").env_remove("LISTEN_PID");
    // SAFETY: only async-signal-safe calls (dup2, fcntl) between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(command, move || {
            const PASSED: RawFd = 3;
            // dup2 onto itself would keep close-on-exec set, so that case clears it instead.
            let done = if fd == PASSED {
                libc::fcntl(PASSED, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, PASSED)
            };
            if done < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reserved_port_refuses_connections_until_it_listens() {
        let port = ReservedPort::new();
        let addr = port.addr();
        let refused = std::net::TcpStream::connect(addr).unwrap_err();
        assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
        // Nobody else can bind it meanwhile.
        assert!(TcpListener::bind(addr).is_err());
        let listener = port.listen();
        std::net::TcpStream::connect(addr).unwrap();
        drop(listener);
    }

    #[test]
    fn a_child_gets_the_listener_as_fd_3() {
        let listener = loopback_listener();
        let mut command = Command::new("sh");
        // The child sees a listening TCP socket on fd 3 with the test's port.
        command.args(["-c", "test -S /proc/self/fd/3 && echo $LISTEN_FDS"]);
        pass_listener(&mut command, &listener);
        let out = command.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");
    }
}
