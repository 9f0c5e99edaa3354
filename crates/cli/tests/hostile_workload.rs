//! A workload that attacks the recorder, on the real kernel: `diffkeeper record` runs as root,
//! the recorded command as an unprivileged user (nobody, via setpriv). Nothing a workload does
//! may make the recorder copy what the workload itself could not read into the recording.
//! Needs root and a BTF kernel; without them the tests fail (they do not skip).

use std::fs;
use std::os::unix::fs::{chown, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const DK: &str = env!("CARGO_BIN_EXE_diffkeeper");
const NOBODY: u32 = 65534;
const SECRET: &str = "k3y-0f-r00t-5d9c1e7a44b2f0a9e6c3d8b1f7a2e5c4d9b0a3f6e1c8";

/// As nobody, in the recorded working directory `pub`: make `x` a directory with a file the
/// log records, a symlink `s` to root's private directory, then swap the two with
/// renameat2(RENAME_EXCHANGE) from a working directory deeper than the kernel side resolves,
/// so the swap's record is cut and the recorder only learns of it in its end-of-run sweep.
const ATTACK: &str = r#"
import ctypes, os, sys
pub, private = sys.argv[1], sys.argv[2]
os.chdir(pub)
os.mkdir("x")
with open("x/key", "w") as f:
    f.write("public key\n")
os.symlink(private, "s")
for _ in range(70):
    os.mkdir("d")
    os.chdir("d")
up = "../" * 70
libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD, RENAME_EXCHANGE, NR_renameat2 = -100, 2, 316
rc = libc.syscall(NR_renameat2, AT_FDCWD, (up + "x").encode(), AT_FDCWD, (up + "s").encode(),
                  RENAME_EXCHANGE)
assert rc == 0, os.strerror(ctypes.get_errno())
"#;

struct Scene {
    _tmp: tempfile::TempDir,
    public: PathBuf,
    private: PathBuf,
    state: PathBuf,
    script: PathBuf,
}

fn scene() -> Scene {
    let tmp = tempfile::tempdir().unwrap();
    // Everyone must be able to reach the scene, as /tmp itself can be reached.
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let public = tmp.path().join("pub");
    let private = tmp.path().join("private");
    fs::create_dir(&public).unwrap();
    chown(&public, Some(NOBODY), Some(NOBODY)).unwrap();
    fs::create_dir(&private).unwrap();
    fs::set_permissions(&private, fs::Permissions::from_mode(0o700)).unwrap();
    fs::write(private.join("key"), SECRET).unwrap();
    fs::set_permissions(private.join("key"), fs::Permissions::from_mode(0o600)).unwrap();
    let script = tmp.path().join("attack.py");
    fs::write(&script, ATTACK).unwrap();
    Scene {
        state: tmp.path().join("state"),
        _tmp: tmp,
        public,
        private,
        script,
    }
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Every regular file's bytes below `dir`, symlinks not followed.
fn all_file_bytes(dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let meta = fs::symlink_metadata(&path).unwrap();
        if meta.is_dir() {
            all_file_bytes(&path, out);
        } else if meta.is_file() {
            out.push((path.clone(), fs::read(&path).unwrap()));
        }
    }
}

#[test]
fn a_symlink_swapped_in_behind_a_lost_record_does_not_leak_roots_files() {
    let s = scene();
    let out = run(Command::new(DK)
        .arg("record")
        .arg(format!("--state-dir={}", s.state.display()))
        .args([
            "--",
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ])
        .arg("/usr/bin/python3")
        .arg(&s.script)
        .arg(&s.public)
        .arg(&s.private)
        .current_dir(&s.public));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("command exited with 0"), "{stderr}");
    // The attack happened as described: on disk, x is now the symlink.
    assert!(fs::symlink_metadata(s.public.join("x"))
        .unwrap()
        .file_type()
        .is_symlink());

    let export = s.state.parent().unwrap().join("export");
    run(Command::new(DK)
        .arg("export")
        .arg(format!("--state-dir={}", s.state.display()))
        .arg(format!("--out={}", export.display())));
    let mut files = Vec::new();
    all_file_bytes(&export, &mut files);
    for (path, bytes) in &files {
        assert!(
            !String::from_utf8_lossy(bytes).contains(SECRET),
            "root's secret was recorded, as {}",
            path.display()
        );
    }
    let log = run(Command::new(DK)
        .arg("log")
        .arg(format!("--state-dir={}", s.state.display())));
    let log = String::from_utf8_lossy(&log.stdout);
    let x = export.join(s.public.strip_prefix("/").unwrap()).join("x");
    let meta = fs::symlink_metadata(&x).unwrap();
    assert!(
        meta.file_type().is_symlink(),
        "x exported as {:?}, not the symlink it is\n{log}",
        meta.file_type()
    );
    assert_eq!(fs::read_link(&x).unwrap(), s.private);
    // The former x, now at s, is the workload's own directory with its own file.
    let moved = export
        .join(s.public.strip_prefix("/").unwrap())
        .join("s/key");
    assert_eq!(fs::read(moved).unwrap(), b"public key\n");
    // Nothing of the secret in the recording's files either (payloads are stored whole when
    // they do not compress, as 56 random-looking bytes do not).
    let mut raw = Vec::new();
    all_file_bytes(&s.state, &mut raw);
    for (path, bytes) in &raw {
        assert!(
            !bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
            "root's secret is in the store file {}",
            path.display()
        );
    }
}

/// As nobody: move a root-only file out of a directory nobody may write (so may rename in) into
/// the recorded working directory, behind a cut record. The end-of-run sweep finds a name the
/// log lacks in a directory the recording owns; it must read it as the workload, who cannot.
const STEAL: &str = r#"
import os, sys
work = sys.argv[1]
os.chdir(work)
for _ in range(70):
    os.mkdir("d")
    os.chdir("d")
up = "../" * 70
os.rename(up + "../drop/secret", up + "stolen")
"#;

#[test]
fn a_root_only_file_moved_in_behind_a_lost_record_is_read_as_the_workload() {
    let s = scene();
    let (work, drop) = (s.public.clone(), s.public.parent().unwrap().join("drop"));
    fs::create_dir(&drop).unwrap();
    chown(&drop, Some(NOBODY), Some(NOBODY)).unwrap();
    fs::write(drop.join("secret"), SECRET).unwrap();
    fs::set_permissions(drop.join("secret"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(&s.script, STEAL).unwrap();
    let out = run(Command::new(DK)
        .arg("record")
        .arg(format!("--state-dir={}", s.state.display()))
        .args([
            "--",
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ])
        .arg("/usr/bin/python3")
        .arg(&s.script)
        .arg(&work)
        .current_dir(&work));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("command exited with 0"), "{stderr}");
    assert_eq!(fs::read(work.join("stolen")).unwrap(), SECRET.as_bytes());

    let export = s.state.parent().unwrap().join("export");
    let exported = run(Command::new(DK)
        .arg("export")
        .arg(format!("--state-dir={}", s.state.display()))
        .arg(format!("--out={}", export.display())));
    let mut files = Vec::new();
    all_file_bytes(&export, &mut files);
    for (path, bytes) in &files {
        assert!(
            !String::from_utf8_lossy(bytes).contains(SECRET),
            "root's secret was recorded, as {}",
            path.display()
        );
    }
    // The name is there, its content unknown, and the export says so.
    let stolen = export.join(work.strip_prefix("/").unwrap()).join("stolen");
    assert!(fs::symlink_metadata(&stolen).unwrap().is_file());
    let warnings = String::from_utf8_lossy(&exported.stderr);
    assert!(
        warnings.contains("not known byte-exactly") && warnings.contains("stolen"),
        "{warnings}"
    );
    let mut raw = Vec::new();
    all_file_bytes(&s.state, &mut raw);
    for (path, bytes) in &raw {
        assert!(
            !bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
            "root's secret is in the store file {}",
            path.display()
        );
    }
}
