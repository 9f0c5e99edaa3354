//! Running the built `diffkeeper` the way a person does, for the tests that drive it whole.

#![allow(dead_code)] // each test binary uses a different part

use std::path::Path;
use std::process::{Command, ExitStatus, Output};

/// `diffkeeper ARGS...`, output captured.
pub fn diffkeeper(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_diffkeeper"))
        .args(args)
        .output()
        .expect("running the built diffkeeper")
}

/// `diffkeeper ARGS...`, which must succeed: its stdout.
pub fn ok(args: &[&str]) -> String {
    let out = diffkeeper(args);
    assert!(
        out.status.success(),
        "diffkeeper {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("diffkeeper prints UTF-8")
}

/// `diffkeeper ARGS...`, which must be refused (exit 2): its stderr.
pub fn refused(args: &[&str]) -> String {
    let out = diffkeeper(args);
    assert_eq!(
        out.status.code(),
        Some(2),
        "diffkeeper {args:?} should fail"
    );
    String::from_utf8(out.stderr).expect("diffkeeper prints UTF-8")
}

/// Records `sh -c SCRIPT` run in WORK into STATE with real eBPF; the recorder's exit status.
pub fn record_sh(work: &Path, state: &Path, script: &str) -> ExitStatus {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test records with eBPF: run it as root (sudo bash scripts/test.sh)"
    );
    std::fs::create_dir_all(work).unwrap();
    Command::new(env!("CARGO_BIN_EXE_diffkeeper"))
        .arg("record")
        .arg(format!("--state-dir={}", state.display()))
        .args(["--", "sh", "-c", script])
        .current_dir(work)
        .status()
        .expect("running diffkeeper record")
}

/// Checkpoints of a differential workload: checkpoint N creates MARKS/cpN, and the seq of that
/// create event is the checkpoint's moment. The seqs, in checkpoint order.
pub fn checkpoint_seqs(state: &Path, marks: &Path) -> Vec<u64> {
    use diffkeeper_store::{OpKind, Store};
    let store = Store::open(state).unwrap();
    let last = store.span().last_seq;
    let prefix = format!("{}/cp", marks.display());
    let mut seqs = std::collections::BTreeMap::new();
    for s in store.summaries(1, last) {
        let s = s.unwrap();
        if s.op.kind != OpKind::Create {
            continue;
        }
        for p in &s.op.paths {
            if let Some(n) = p
                .to_string()
                .strip_prefix(&prefix)
                .and_then(|n| n.parse::<u32>().ok())
            {
                seqs.insert(n, s.seq);
            }
        }
    }
    seqs.into_values().collect()
}

/// `diffkeeper record --state-dir=STATE EXTRA... -- COMMAND...` run in CWD with stdin closed;
/// the recording must have finished (stderr says so). Its output.
pub fn record_command(
    state: &Path,
    cwd: &Path,
    extra: &[&str],
    command: &[&std::ffi::OsStr],
) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_diffkeeper"))
        .arg("record")
        .arg(format!("--state-dir={}", state.display()))
        .args(extra)
        .arg("--")
        .args(command)
        .current_dir(cwd)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run diffkeeper record");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("diffkeeper: recorded"),
        "record did not finish: status {:?}\nstdout: {}\nstderr: {stderr}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    out
}
