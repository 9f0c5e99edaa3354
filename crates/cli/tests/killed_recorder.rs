//! A recorder killed with SIGKILL (an OOM kill, a lost CI runner): what it committed stays
//! readable, readers say the history was cut short, and the cgroup it could not remove is
//! removed by the next recorder once its workload is gone too. Needs root and BPF.

mod command;

use command::diffkeeper;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn cgroup2_mount() -> PathBuf {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            (right.split_whitespace().next() == Some("cgroup2"))
                .then(|| PathBuf::from(left.split_whitespace().nth(4).unwrap()))
        })
        .expect("no cgroup2 mount: DiffKeeper needs one (see scripts/setup.sh)")
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn procs(cgroup: &Path) -> Vec<i32> {
    std::fs::read_to_string(cgroup.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

#[test]
fn a_killed_recorder_leaves_a_readable_history_and_its_cgroup_is_cleaned_up() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "needs root and BPF: run scripts/test.sh as root"
    );
    let tmp = tempfile::tempdir().unwrap();
    let (work, state) = (tmp.path().join("w"), tmp.path().join("state"));
    std::fs::create_dir_all(&work).unwrap();
    let mut recorder = Command::new(env!("CARGO_BIN_EXE_diffkeeper"))
        .arg("record")
        .arg(format!("--state-dir={}", state.display()))
        .args(["--", "sh", "-c", "echo before > f.txt; exec sleep 60"])
        .current_dir(&work)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let cgroup = cgroup2_mount()
        .join("diffkeeper")
        .join(format!("rec-{}", recorder.id()));
    wait_for("the workload to start in its cgroup", || {
        procs(&cgroup).iter().any(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sleep")
        })
    });
    // Past one commit interval (1 s), so the write is durable before the kill.
    std::thread::sleep(Duration::from_millis(2500));
    recorder.kill().unwrap();
    recorder.wait().unwrap();

    // The history is readable and says it was cut short.
    let log = diffkeeper(&["log", &format!("--state-dir={}", state.display())]);
    assert!(
        log.status.success(),
        "{}",
        String::from_utf8_lossy(&log.stderr)
    );
    let (stdout, stderr) = (
        String::from_utf8_lossy(&log.stdout),
        String::from_utf8_lossy(&log.stderr),
    );
    assert!(stdout.contains("f.txt"), "{stdout}");
    assert!(stderr.contains("cut short"), "{stderr}");

    // The workload outlived its recorder: its cgroup is left alone while it runs...
    assert!(cgroup.is_dir());
    let other = tmp.path().join("other");
    let run = |dir: &Path| {
        let st = Command::new(env!("CARGO_BIN_EXE_diffkeeper"))
            .arg("record")
            .arg(format!("--state-dir={}", dir.display()))
            .args(["--", "true"])
            .current_dir(&work)
            .status()
            .unwrap();
        assert!(st.success());
    };
    run(&other.join("1"));
    assert!(cgroup.is_dir(), "a cgroup with live processes was removed");
    // ...and removed by the next recorder once it is empty.
    for pid in procs(&cgroup) {
        // SAFETY: kills the workload the killed recorder left in its cgroup.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    wait_for("the workload to be gone", || procs(&cgroup).is_empty());
    run(&other.join("2"));
    assert!(
        !cgroup.exists(),
        "the dead recorder's empty cgroup is still there"
    );
}
