//! `DIR/env`, written by `scripts/e2e-runtime.sh start DIR`: how to reach the private containerd
//! it started and which images it imported.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeEnv {
    /// containerd's gRPC socket, which also serves the CRI.
    pub containerd_address: PathBuf,
    pub containerd_pid: u32,
    /// A busybox image (default command /bin/sh, PATH=/bin).
    pub busybox_image: String,
    /// The sandbox image containerd is configured with.
    pub pause_image: String,
}

impl RuntimeEnv {
    /// Reads `dir/env`.
    pub fn load(dir: &Path) -> io::Result<RuntimeEnv> {
        let path = dir.join("env");
        let text = std::fs::read_to_string(&path)?;
        let vars: BTreeMap<&str, &str> = text
            .lines()
            .filter_map(|line| line.split_once('='))
            .collect();
        let var = |name: &str| {
            vars.get(name)
                .map(|value| value.to_string())
                .ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{}: no {name}", path.display()),
                    )
                })
        };
        let pid = var("CONTAINERD_PID")?;
        Ok(RuntimeEnv {
            containerd_address: PathBuf::from(var("CONTAINERD_ADDRESS")?),
            containerd_pid: pid.parse().map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: CONTAINERD_PID={pid} is no pid", path.display()),
                )
            })?,
            busybox_image: var("DK_E2E_BUSYBOX_IMAGE")?,
            pause_image: var("DK_E2E_PAUSE_IMAGE")?,
        })
    }
}
