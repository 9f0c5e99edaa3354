//! The state dir's file system fills up while the command runs (a small PVC, a full node disk):
//! the recorder must not hang, the command runs to its end and its exit code is still the one
//! returned, the failure is said plainly, and what was committed stays readable. Needs root
//! (a tmpfs mount) and BPF.

mod command;

use command::diffkeeper;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A 4 MiB tmpfs, unmounted when dropped.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(at: &Path) -> SmallDisk {
        std::fs::create_dir_all(at).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
            .arg(at)
            .status()
            .unwrap();
        assert!(
            st.success(),
            "mounting a tmpfs needs root: run scripts/test.sh as root"
        );
        SmallDisk(at.to_path_buf())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_stops_the_recording_not_the_command() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "needs root and BPF: run scripts/test.sh as root"
    );
    let tmp = tempfile::tempdir().unwrap();
    let disk = SmallDisk::mount(&tmp.path().join("small"));
    let (work, state) = (tmp.path().join("w"), disk.0.join("state"));
    std::fs::create_dir_all(&work).unwrap();
    // 10 MiB of incompressible data: more than the 4 MiB the store may use.
    let script = "for i in $(seq 1 40); do head -c 262144 /dev/urandom > f$i; sleep 0.02; done; \
                  echo done > finished; exit 4";
    let mut recorder = Command::new(env!("CARGO_BIN_EXE_diffkeeper"))
        .arg("record")
        .arg(format!("--state-dir={}", state.display()))
        .args(["--", "sh", "-c", script])
        .current_dir(&work)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(status) = recorder.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = recorder.kill();
            panic!("the recorder hung on a full disk");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(recorder.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(4), "the command's exit code: {stderr}");
    assert!(
        stderr.contains("recording stopped") && stderr.contains("No space left"),
        "{stderr}"
    );
    assert!(
        work.join("finished").exists() && work.join("f40").exists(),
        "the command did not run to its end"
    );
    // What was committed before the disk filled is readable, and said to be incomplete.
    let log = diffkeeper(&["log", &format!("--state-dir={}", state.display())]);
    let log_err = String::from_utf8_lossy(&log.stderr);
    assert!(log.status.success(), "{log_err}");
    let log_out = String::from_utf8_lossy(&log.stdout);
    assert!(
        log_err.contains("cut short") || log_out.contains("recording stopped here"),
        "{log_out}\n{log_err}"
    );
}
