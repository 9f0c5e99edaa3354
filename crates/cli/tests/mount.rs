//! `diffkeeper mount` on a real recording, looked at with real tools: `find`, `cat`, `stat` and
//! `diff -r` must see what `export` writes at the same moment, writes must fail with EROFS, and
//! Ctrl-C must take the mount away. Needs root, BPF (the workload really runs under `record`)
//! and /dev/fuse (the mount is a real FUSE mount).

use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_diffkeeper");

fn require_root_and_fuse() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test records with eBPF and mounts FUSE: run it as root"
    );
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing: load the fuse module (modprobe fuse) or install Debian's fuse3"
    );
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(cmd: &mut Command) -> String {
    String::from_utf8(run(cmd).stdout).unwrap()
}

/// Two phases a moment apart: the first writes a config, a log, a binary file, a symlink and a
/// private file; the second rewrites the config, appends to the log, deletes a file, renames a
/// directory and drops `phase2` (whose creation marks where phase two begins).
fn record(work: &Path, state: &Path) {
    std::fs::create_dir_all(work).unwrap();
    let script = "mkdir -p etc data/deep; \
                  printf 'version: 1\\nretries: 0\\n' > etc/app.yaml; \
                  echo started > app.log; \
                  head -c 300000 /dev/urandom > data/blob.bin; \
                  echo secret > etc/key; chmod 600 etc/key; chmod 750 data/deep; \
                  echo doomed > data/deep/tmp.txt; \
                  ln -s etc/app.yaml current; ln -s /etc/hostname abs-link; \
                  sleep 0.3; \
                  touch phase2; \
                  printf 'version: 2\\nretries: 3\\n' > etc/app.yaml; \
                  echo 'PANIC: retries exhausted' >> app.log; \
                  rm data/deep/tmp.txt; mv data/deep data/moved";
    run(Command::new(BIN)
        .arg("record")
        .arg(format!("--state-dir={}", state.display()))
        .args(["--", "sh", "-c", script])
        .current_dir(work));
}

/// The last event before phase two began.
fn end_of_phase_one(state: &Path, work: &Path) -> u64 {
    let log = stdout(Command::new(BIN).args([
        "log",
        &format!("--state-dir={}", state.display()),
        "--json",
    ]));
    let marker = format!("{}/phase2", work.display());
    for line in log.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        let paths = &v["summary"]["op"]["paths"];
        let touches = paths.as_array().into_iter().flatten().any(|p| {
            let bytes: Vec<u8> = serde_json::from_value(p.clone()).unwrap();
            bytes == marker.as_bytes()
        });
        if touches {
            return v["summary"]["seq"].as_u64().unwrap() - 1;
        }
    }
    panic!("no event created {marker}:\n{log}");
}

fn export(state: &Path, time: &str, out: &Path) {
    run(Command::new(BIN).args([
        "export",
        &format!("--state-dir={}", state.display()),
        &format!("--time={time}"),
        &format!("--out={}", out.display()),
    ]));
}

fn mounted(path: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let path = path.to_str().unwrap();
    info.lines().any(|l| l.split(' ').nth(4) == Some(path))
}

/// A running `diffkeeper mount`; dropping it without `stop` kills it and lazily unmounts, so a
/// failed assertion leaves no mount behind.
struct Mount {
    child: Option<Child>,
    at: PathBuf,
}

impl Mount {
    fn start(state: &Path, extra: &[&str], at: &Path) -> Mount {
        std::fs::create_dir_all(at).unwrap();
        let child = Command::new(BIN)
            .arg("mount")
            .arg(format!("--state-dir={}", state.display()))
            .args(extra)
            .arg(at)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut m = Mount {
            child: Some(child),
            at: at.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !mounted(at) {
            if let Some(status) = m.child.as_mut().unwrap().try_wait().unwrap() {
                let out = m.child.take().unwrap().wait_with_output().unwrap();
                panic!(
                    "diffkeeper mount exited ({status}) before mounting: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} never got mounted",
                at.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        m
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    /// Sends `signal` and returns the exit status and stderr; whatever mount is left is the
    /// caller's to check (and clean up).
    fn stop(mut self, signal: i32) -> (std::process::ExitStatus, String) {
        std::mem::take(&mut self.at);
        // SAFETY: kill has no memory-safety preconditions; the pid is our own child.
        assert_eq!(unsafe { libc::kill(self.pid(), signal) }, 0);
        let out = self.child.take().unwrap().wait_with_output().unwrap();
        (
            out.status,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if mounted(&self.at) {
            let _ = Command::new("umount").arg("-l").arg(&self.at).status();
        }
    }
}

/// Lazily unmounts whatever a failed test left mounted below `0` (declare it after the tempdir,
/// so it runs first).
struct LeftMounts(PathBuf);

impl Drop for LeftMounts {
    fn drop(&mut self) {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        for m in info.lines().filter_map(|l| l.split(' ').nth(4)) {
            if Path::new(m).starts_with(&self.0) {
                let _ = Command::new("umount").arg("-l").arg(m).status();
            }
        }
    }
}

/// `find` with type, mode, size (files and symlinks) and mtime of everything below `root`.
fn listing(root: &Path) -> String {
    let files = stdout(Command::new("find").arg(root).args([
        "-mindepth",
        "1",
        "-printf",
        "%P %y %m %T@\n",
    ]));
    let sizes = stdout(Command::new("find").arg(root).args([
        "-mindepth",
        "1",
        "!",
        "-type",
        "d",
        "-printf",
        "%P %s\n",
    ]));
    let mut lines: Vec<&str> = files.lines().chain(sizes.lines()).collect();
    lines.sort();
    lines.join("\n")
}

/// The checks every moment must pass: same entries, bytes, modes, sizes and mtimes as the
/// export, and `diff -r` finds nothing.
fn same_as_export(mnt: &Path, exported: &Path) {
    let (mine, theirs) = (listing(mnt), listing(exported));
    assert!(
        !theirs.is_empty(),
        "the export is empty: nothing was compared"
    );
    assert_eq!(mine, theirs, "find over the mount and over the export");
    let diff = Command::new("diff")
        .args(["-r", "--no-dereference"])
        .arg(mnt)
        .arg(exported)
        .output()
        .unwrap();
    assert!(
        diff.status.success(),
        "diff -r between the mount and the export: {}{}",
        String::from_utf8_lossy(&diff.stdout),
        String::from_utf8_lossy(&diff.stderr)
    );
}

fn cat(path: &Path) -> Vec<u8> {
    run(Command::new("cat").arg(path)).stdout
}

fn stat(path: &Path) -> String {
    stdout(Command::new("stat").args(["-c", "%F %a %s"]).arg(path))
        .trim()
        .to_string()
}

fn below(root: &Path, recorded: &Path) -> PathBuf {
    root.join(recorded.strip_prefix("/").unwrap())
}

#[test]
fn mount_shows_what_export_writes_at_the_end_and_in_the_middle() {
    require_root_and_fuse();
    let tmp = tempfile::tempdir().unwrap();
    let _left = LeftMounts(tmp.path().to_path_buf());
    let (work, state) = (tmp.path().join("w"), tmp.path().join("state"));
    record(&work, &state);
    let mid = end_of_phase_one(&state, &work);
    let mid_time = format!("@seq:{mid}");
    let (exp_end, exp_mid) = (tmp.path().join("exp-end"), tmp.path().join("exp-mid"));
    export(&state, "end", &exp_end);
    export(&state, &mid_time, &exp_mid);

    // The end (the default moment).
    let mnt = tmp.path().join("mnt-end");
    let m = Mount::start(&state, &[], &mnt);
    same_as_export(&mnt, &exp_end);
    let w = below(&mnt, &work);
    assert_eq!(cat(&w.join("etc/app.yaml")), b"version: 2\nretries: 3\n");
    assert_eq!(
        cat(&w.join("app.log")),
        b"started\nPANIC: retries exhausted\n"
    );
    assert_eq!(
        cat(&w.join("data/blob.bin")),
        std::fs::read(below(&exp_end, &work).join("data/blob.bin")).unwrap()
    );
    assert_eq!(stat(&w.join("data/blob.bin")), "regular file 644 300000");
    assert_eq!(stat(&w.join("etc/key")), "regular file 600 7");
    assert_eq!(stat(&w.join("data/moved")), "directory 750 0");
    assert!(!w.join("data/deep").exists());
    // Symlinks give their recorded target and are never followed by the view itself.
    assert_eq!(
        std::fs::read_link(w.join("current")).unwrap(),
        Path::new("etc/app.yaml")
    );
    assert_eq!(
        std::fs::read_link(w.join("abs-link")).unwrap(),
        Path::new("/etc/hostname")
    );
    assert_eq!(cat(&w.join("current")), b"version: 2\nretries: 3\n");

    // Read-only: real tools and raw syscalls are refused with EROFS.
    for (tool, args) in [
        (
            "sh",
            vec![
                "-c".to_string(),
                format!("echo x >> {}", w.join("app.log").display()),
            ],
        ),
        ("touch", vec![w.join("new").display().to_string()]),
        ("mkdir", vec![w.join("newdir").display().to_string()]),
        ("rm", vec![w.join("app.log").display().to_string()]),
        (
            "chmod",
            vec!["777".into(), w.join("app.log").display().to_string()],
        ),
        (
            "mv",
            vec![
                w.join("app.log").display().to_string(),
                w.join("x").display().to_string(),
            ],
        ),
    ] {
        let out = Command::new(tool).args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("Read-only file system"),
            "{tool} {args:?} should fail with EROFS: {err}"
        );
    }
    let write = std::fs::OpenOptions::new()
        .write(true)
        .open(w.join("app.log"))
        .unwrap_err();
    assert_eq!(write.raw_os_error(), Some(libc::EROFS), "{write}");
    let perms = std::fs::Permissions::from_mode(0o777);
    let chmod = std::fs::set_permissions(w.join("etc"), perms).unwrap_err();
    assert_eq!(chmod.raw_os_error(), Some(libc::EROFS), "{chmod}");
    assert_eq!(
        cat(&w.join("app.log")),
        b"started\nPANIC: retries exhausted\n"
    );

    // Idle, the mount lets go of the recording, so the other commands still work.
    std::thread::sleep(Duration::from_secs(3));
    stdout(Command::new(BIN).args(["log", &format!("--state-dir={}", state.display())]));

    // Ctrl-C unmounts and exits 0, even with a file still open in the view (then the mount is
    // detached: gone for everyone, not left dead).
    let held = std::fs::File::open(w.join("app.log")).unwrap();
    let (status, err) = m.stop(libc::SIGINT);
    drop(held);
    assert!(status.success(), "mount after SIGINT: {status}: {err}");
    assert!(
        !mounted(&mnt),
        "{} is still mounted after SIGINT",
        mnt.display()
    );
    assert!(err.contains("unmounted"), "{err}");

    // The middle: the first config, the log's first line, the directory not yet renamed.
    let mnt = tmp.path().join("mnt-mid");
    let m = Mount::start(&state, &[&format!("--time={mid_time}")], &mnt);
    same_as_export(&mnt, &exp_mid);
    let w = below(&mnt, &work);
    assert_eq!(cat(&w.join("etc/app.yaml")), b"version: 1\nretries: 0\n");
    assert_eq!(cat(&w.join("app.log")), b"started\n");
    assert_eq!(cat(&w.join("data/deep/tmp.txt")), b"doomed\n");
    assert_eq!(stat(&w.join("data/deep")), "directory 750 0");
    assert!(!w.join("phase2").exists());
    assert!(!w.join("data/moved").exists());
    let (status, err) = m.stop(libc::SIGTERM);
    assert!(status.success(), "mount after SIGTERM: {status}: {err}");
    assert!(
        !mounted(&mnt),
        "{} is still mounted after SIGTERM",
        mnt.display()
    );
}

fn refused(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "diffkeeper {args:?} should fail"
    );
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn mount_refuses_bad_mountpoints_and_explains_a_stale_mount() {
    require_root_and_fuse();
    let tmp = tempfile::tempdir().unwrap();
    let _left = LeftMounts(tmp.path().to_path_buf());
    let (work, state) = (tmp.path().join("w"), tmp.path().join("state"));
    record(&work, &state);
    let st = format!("--state-dir={}", state.display());

    let full = tmp.path().join("full");
    std::fs::create_dir_all(&full).unwrap();
    std::fs::write(full.join("x"), "keep").unwrap();
    let err = refused(&["mount", &st, full.to_str().unwrap()]);
    assert!(err.contains("is not empty"), "{err}");
    let missing = tmp.path().join("missing");
    let err = refused(&["mount", &st, missing.to_str().unwrap()]);
    assert!(
        err.contains("does not exist") && err.contains("mkdir -p"),
        "{err}"
    );
    let file = full.join("x");
    let err = refused(&["mount", &st, file.to_str().unwrap()]);
    assert!(err.contains("is not a directory"), "{err}");

    // A killed mount leaves its mount behind: the next one names the cleanup.
    let mnt = tmp.path().join("mnt");
    let m = Mount::start(&state, &[], &mnt);
    assert_eq!(cat(&below(&mnt, &work).join("etc/key")), b"secret\n");
    let (status, _) = m.stop(libc::SIGKILL);
    assert!(!status.success());
    assert!(
        mounted(&mnt),
        "a SIGKILLed FUSE server should leave its mount"
    );
    let err = refused(&["mount", &st, mnt.to_str().unwrap()]);
    assert!(
        err.contains(&format!("umount -l {}", mnt.display())),
        "{err}"
    );
    run(Command::new("umount").arg("-l").arg(&mnt));
    assert!(!mounted(&mnt));
    // And after the cleanup it mounts again.
    let m = Mount::start(&state, &[], &mnt);
    assert_eq!(
        cat(&below(&mnt, &work).join("app.log")),
        b"started\nPANIC: retries exhausted\n"
    );
    // The first mount holds the recording for a moment after that read; a second one waits
    // for it instead of failing, and both serve.
    let mnt2 = tmp.path().join("mnt2");
    let m2 = Mount::start(&state, &[], &mnt2);
    assert_eq!(
        cat(&below(&mnt2, &work).join("etc/app.yaml")),
        cat(&below(&mnt, &work).join("etc/app.yaml"))
    );
    for m in [m, m2] {
        let (status, err) = m.stop(libc::SIGINT);
        assert!(status.success(), "{err}");
    }
}

/// Waits up to 20 s for `file` to hold `want`, reading it the way a person would.
fn wait_for_content(file: &Path, want: &[u8]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = std::fs::read(file).ok();
        if now.as_deref() == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} never held {:?}; last read {:?}",
            file.display(),
            String::from_utf8_lossy(want),
            now.map(|b| String::from_utf8_lossy(&b).into_owned())
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The 2 a.m. case: a job is still running (hung, or slow) and someone wants to look at what
/// it has written so far, from another shell. `mount --follow`, `log` and `export` read the
/// live recording through its recorder, and the mount moves on as the job writes and after it
/// ends.
#[test]
fn follow_moves_with_a_live_recording_in_another_process() {
    require_root_and_fuse();
    let tmp = tempfile::tempdir().unwrap();
    let _left = LeftMounts(tmp.path().to_path_buf());
    let (work, state) = (tmp.path().join("w"), tmp.path().join("state"));
    std::fs::create_dir_all(&work).unwrap();
    // The test steps the job through its phases with flag files it creates from outside the
    // recording (so they are not recorded).
    let gate = tmp.path().join("gate");
    std::fs::create_dir_all(&gate).unwrap();
    let script = format!(
        "echo one > a; \
         until [ -e {g}/go ]; do sleep 0.05; done; echo two >> a; mkdir later; echo x > later/b; \
         until [ -e {g}/end ]; do sleep 0.05; done; echo three >> a",
        g = gate.display()
    );
    let mut recorder = Command::new(BIN)
        .arg("record")
        .arg(format!("--state-dir={}", state.display()))
        .args(["--", "sh", "-c", &script])
        .current_dir(&work)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !state.join("live.sock").exists() {
        assert!(
            Instant::now() < deadline,
            "the recorder never served its recording"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mnt = tmp.path().join("mnt");
    let m = Mount::start(&state, &["--follow"], &mnt);
    let a = below(&mnt, &work).join("a");
    wait_for_content(&a, b"one\n");
    assert!(!below(&mnt, &work).join("later").exists());

    // log and export work on the live recording too, and say it is still running.
    let st = format!("--state-dir={}", state.display());
    let log = run(Command::new(BIN).args(["log", &st]));
    let err = String::from_utf8_lossy(&log.stderr);
    assert!(err.contains("still running (recorder pid"), "{err}");
    assert!(!err.contains("cut short"), "{err}");
    let out = tmp.path().join("live-export");
    export(&state, "end", &out);
    assert_eq!(cat(&below(&out, &work).join("a")), b"one\n");

    std::fs::write(gate.join("go"), "").unwrap();
    wait_for_content(&a, b"one\ntwo\n");
    wait_for_content(&below(&mnt, &work).join("later/b"), b"x\n");

    // The recorder finishes (it stops serving, then lets go of the store): the view follows
    // the finished recording to its end without a hitch.
    std::fs::write(gate.join("end"), "").unwrap();
    let status = recorder.wait().unwrap();
    let mut rec_err = String::new();
    std::io::Read::read_to_string(recorder.stderr.as_mut().unwrap(), &mut rec_err).unwrap();
    assert!(status.success(), "{rec_err}");
    wait_for_content(&a, b"one\ntwo\nthree\n");
    assert!(!state.join("live.sock").exists());
    assert!(mounted(&mnt));
    let (status, err) = m.stop(libc::SIGINT);
    assert!(status.success(), "{err}");
    assert!(
        !err.contains("WARN"),
        "the mount warned while following: {err}"
    );
    assert!(!mounted(&mnt));
}
