//! What the operator tests share beyond the cluster itself (a client, the CRDs and a namespace
//! per test come from `diffkeeper-test-cluster`): the operator as a real child process, waiting
//! for what it does, and reading its HTTP port (a socket the test holds and passes to it, so no
//! other process can take the port between the test choosing it and the operator serving).

#![allow(dead_code)] // each test binary uses a different part

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `diffkeeper operator` as a real process, confined to one namespace so tests run side by side.
pub struct Operator {
    child: Child,
    pub http: String,
    /// The operator's listening socket, kept open by the test for the operator's lifetime.
    _listener: std::net::TcpListener,
}

impl Operator {
    pub fn start(namespace: &str, identity: &str) -> Operator {
        let listener = diffkeeper_test_cluster::loopback_listener();
        let http = listener.local_addr().unwrap().to_string();
        let mut command = Command::new(env!("CARGO_BIN_EXE_diffkeeper"));
        command
            .args(["operator", "--watch-namespace", namespace])
            .args(["--operator-namespace", namespace, "--identity", identity])
            .args(["--snapshot-image", "diffkeeper:test"])
            .env("DIFFKEEPER_LOG", "info,kube=warn")
            .stdin(Stdio::null());
        diffkeeper_test_cluster::pass_listener(&mut command, &listener);
        let child = command.spawn().expect("starting diffkeeper operator");
        Operator {
            child,
            http,
            _listener: listener,
        }
    }

    /// SIGKILL: no chance to release the Lease or finish a reconcile.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, as a pod being stopped gets; returns the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "operator did not stop within 20 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `probe` until it yields a value, or fails the test naming what never happened.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A plain HTTP GET on loopback (the operator's metrics and health port): (status, body).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream =
        std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}
