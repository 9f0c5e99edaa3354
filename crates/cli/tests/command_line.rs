//! What the command line does with mistakes and hostile input, on the real kernel: the state
//! dir's privacy, commands that cannot start, names that would forge output, moments out of
//! range, and where an export may write. Needs root and a BTF kernel (record), as CI has.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output, Stdio};

const DK: &str = env!("CARGO_BIN_EXE_diffkeeper");

fn dk(args: &[&str], cwd: &Path) -> Output {
    Command::new(DK)
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Records `script` (sh) run in `work`, into `state`; the recording must finish.
fn record_sh(state: &Path, work: &Path, script: &str) -> Output {
    let out = dk(
        &[
            "record",
            &format!("--state-dir={}", state.display()),
            "--",
            "sh",
            "-c",
            script,
        ],
        work,
    );
    assert!(
        text(&out.stderr).contains("diffkeeper: recorded"),
        "{:?}\n{}",
        out.status,
        text(&out.stderr)
    );
    out
}

fn modes_below(dir: &Path, out: &mut Vec<(String, u32)>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let meta = fs::symlink_metadata(&path).unwrap();
        out.push((path.display().to_string(), meta.mode() & 0o7777));
        if meta.is_dir() {
            modes_below(&path, out);
        }
    }
}

#[test]
fn the_state_dir_and_its_files_are_private_and_the_workload_keeps_its_umask() {
    let tmp = tempfile::tempdir().unwrap();
    let (work, state) = (tmp.path().join("work"), tmp.path().join("state"));
    fs::create_dir(&work).unwrap();
    // What the workload must see: the umask diffkeeper was started with.
    let mut cmd = Command::new(DK);
    cmd.args([
        "record",
        &format!("--state-dir={}", state.display()),
        "--",
        "sh",
        "-c",
        "umask > umask.txt; echo hi > f",
    ])
    .current_dir(&work)
    .stdin(Stdio::null());
    // SAFETY: umask is async-signal-safe.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            libc::umask(0o022);
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        fs::read_to_string(work.join("umask.txt")).unwrap(),
        "0022\n"
    );
    assert_eq!(fs::metadata(work.join("f")).unwrap().mode() & 0o777, 0o644);

    assert_eq!(fs::metadata(&state).unwrap().mode() & 0o7777, 0o700);
    let mut modes = Vec::new();
    modes_below(&state, &mut modes);
    assert!(!modes.is_empty());
    for (path, mode) in modes {
        assert_eq!(mode & 0o077, 0, "{path} is mode {mode:04o}");
    }

    // A state dir that already exists (here world-readable) is made private too.
    let shared = tmp.path().join("shared");
    fs::create_dir(&shared).unwrap();
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o755)).unwrap();
    record_sh(&shared, &work, "true");
    assert_eq!(fs::metadata(&shared).unwrap().mode() & 0o7777, 0o700);
}

#[test]
fn a_command_that_cannot_start_exits_as_in_a_shell_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let state_arg = format!("--state-dir={}", state.display());
    let out = dk(
        &["record", &state_arg, "--", "no-such-command-dk"],
        tmp.path(),
    );
    assert_eq!(out.status.code(), Some(127), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("no-such-command-dk: command not found"),
        "{}",
        text(&out.stderr)
    );
    assert!(!state.exists(), "a stub recording was left behind");

    let script = tmp.path().join("not-executable.sh");
    fs::write(&script, "#!/bin/sh\ntrue\n").unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o644)).unwrap();
    let out = dk(
        &["record", &state_arg, "--", script.to_str().unwrap()],
        tmp.path(),
    );
    assert_eq!(out.status.code(), Some(126), "{}", text(&out.stderr));
    let out = dk(&["record", &state_arg, "--", "/"], tmp.path());
    assert_eq!(out.status.code(), Some(126), "{}", text(&out.stderr));
    // Found through PATH but not executable: 126 too, as bash says.
    let out = Command::new(DK)
        .args(["record", &state_arg, "--", "not-executable.sh"])
        .env("PATH", format!("{}:/usr/bin:/bin", tmp.path().display()))
        .current_dir(tmp.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(126), "{}", text(&out.stderr));
    assert!(!state.exists());

    // The dir is free for the recording that was meant.
    record_sh(&state, tmp.path(), "true");
}

/// The command is forked before the probe loads and parked in its cgroup (start-up, issue 15):
/// when the recording cannot start after that, it must never run, and its cgroup must go.
#[test]
fn a_recording_that_cannot_start_never_runs_the_parked_command_nor_leaves_its_cgroup() {
    let tmp = tempfile::tempdir().unwrap();
    let not_a_dir = tmp.path().join("a-file");
    fs::write(&not_a_dir, "not a state dir").unwrap();
    let ran = tmp.path().join("ran");
    let child = Command::new(DK)
        .args([
            "record",
            &format!("--state-dir={}", not_a_dir.display()),
            "--",
        ])
        .args(["touch", ran.to_str().unwrap()])
        .current_dir(tmp.path())
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let cgroup = diffkeeper_recorder::cgroup2_mount()
        .unwrap()
        .join(format!("diffkeeper/rec-{}", child.id()));
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("cannot access the state dir"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        !ran.exists(),
        "the command ran although recording never started"
    );
    assert!(!cgroup.exists(), "{} was left behind", cgroup.display());
    assert_eq!(fs::read_to_string(&not_a_dir).unwrap(), "not a state dir");
}

#[test]
fn a_working_directory_too_large_to_be_the_project_is_refused_before_anything_is_made() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("home");
    fs::create_dir_all(work.join("cache")).unwrap();
    fs::write(work.join("cache/blob"), vec![7u8; 64 * 1024]).unwrap();
    let state = tmp.path().join("state");
    let state_arg = format!("--state-dir={}", state.display());
    let out = dk(
        &[
            "record",
            &state_arg,
            "--cwd-baseline-limit=32KiB",
            "--",
            "true",
        ],
        &work,
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let msg = text(&out.stderr);
    assert!(
        msg.contains("too large to be the project") && msg.contains("--no-cwd-baseline"),
        "{msg}"
    );
    assert!(!state.exists(), "a stub recording was left behind");
    // Either way out works: a larger limit, or no snapshot of the working directory.
    record_sh(&state, &work, "true");
    let other = tmp.path().join("state2");
    let out = dk(
        &[
            "record",
            &format!("--state-dir={}", other.display()),
            "--cwd-baseline-limit=32KiB",
            "--no-cwd-baseline",
            "--",
            "true",
        ],
        &work,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// A name that would forge a `log` line if printed raw, and one that would recolour the
/// terminal.
const FORGED: &[u8] =
    b"a\n     +0.000s  2026-01-01 00:00:00.000  write    passwd  0 B  pid 1 (init)";
const COLOURED: &[u8] = b"e\x1b[31mred";

#[test]
fn log_and_diff_quote_hostile_names_and_json_keeps_them_exact() {
    use std::os::unix::ffi::OsStrExt;
    let tmp = tempfile::tempdir().unwrap();
    let (work, state) = (tmp.path().join("work"), tmp.path().join("state"));
    fs::create_dir(&work).unwrap();
    let name = |b: &[u8]| std::ffi::OsStr::from_bytes(b).to_owned();
    // Written through environment variables: the shell passes the bytes through untouched.
    let out = Command::new(DK)
        .args([
            "record",
            &format!("--state-dir={}", state.display()),
            "--",
            "sh",
            "-c",
            r#"echo one > "$FORGED"; echo two > "$COLOURED"; ln -s "$COLOURED" "l$FORGED""#,
        ])
        .env("FORGED", name(FORGED))
        .env("COLOURED", name(COLOURED))
        .current_dir(&work)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(fs::read(work.join(name(FORGED))).unwrap(), b"one\n");

    let state_arg = format!("--state-dir={}", state.display());
    let log = dk(&["log", &state_arg], &work);
    assert!(log.status.success());
    let diff = dk(&["diff", &state_arg], &work);
    assert!(diff.status.success());
    let w = work.display();
    for (what, out) in [("log", &log.stdout), ("diff", &diff.stdout)] {
        assert!(
            !out.contains(&0x1b),
            "{what} printed an escape byte:\n{}",
            text(out)
        );
        let forged = text(out)
            .lines()
            .filter(|l| l.trim_start().starts_with("+0.000s  2026-01-01"))
            .count();
        assert_eq!(forged, 0, "{what} printed a forged line:\n{}", text(out));
    }
    let log = text(&log.stdout);
    let forged = r#"a\n     +0.000s  2026-01-01 00:00:00.000  write    passwd  0 B  pid 1 (init)"#;
    assert!(log.contains(&format!("\"{w}/{forged}\"")), "{log}");
    assert!(log.contains(&format!("\"{w}/e\\033[31mred\"")), "{log}");
    assert!(log.contains("-> \"e\\033[31mred\""), "{log}");
    let diff = text(&diff.stdout);
    assert!(
        diff.contains(&format!("+++ \"b{w}/e\\033[31mred\"")),
        "{diff}"
    );
    assert!(
        diff.contains(&format!("added    \"{w}/{forged}\"")),
        "{diff}"
    );

    let json = dk(&["log", "--json", &state_arg], &work);
    assert!(json.status.success());
    let exact: Vec<u8> = [work.as_os_str().as_bytes(), b"/", FORGED].concat();
    let found = text(&json.stdout).lines().any(|line| {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        v["summary"]["op"]["paths"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|p| serde_json::from_value::<Vec<u8>>(p.clone()).ok() == Some(exact.clone()))
    });
    assert!(found, "--json lost the exact name:\n{}", text(&json.stdout));
}

#[test]
fn export_never_overwrites_follows_a_symlink_or_writes_into_the_recording() {
    let tmp = tempfile::tempdir().unwrap();
    let (work, state) = (tmp.path().join("work"), tmp.path().join("state"));
    fs::create_dir(&work).unwrap();
    record_sh(&state, &work, "echo data > f");
    let state_arg = format!("--state-dir={}", state.display());
    let export = |out: &Path, extra: &[&str]| {
        let out_arg = format!("--out={}", out.display());
        let mut args = vec!["export", &state_arg, "--format=tar", &out_arg];
        args.extend_from_slice(extra);
        dk(&args, &work)
    };

    let existing = tmp.path().join("existing.tar");
    fs::write(&existing, b"keep me").unwrap();
    let out = export(&existing, &[]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("pass --force"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(fs::read(&existing).unwrap(), b"keep me");

    let victim = tmp.path().join("victim");
    fs::write(&victim, b"not yours").unwrap();
    let link = tmp.path().join("link.tar");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    for extra in [&[][..], &["--force"]] {
        let out = export(&link, extra);
        assert!(!out.status.success(), "{extra:?}");
        assert!(
            text(&out.stderr).contains("symlink"),
            "{}",
            text(&out.stderr)
        );
    }
    assert_eq!(fs::read(&victim).unwrap(), b"not yours");

    let out = export(&existing, &["--force"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let tar = fs::read(&existing).unwrap();
    assert_eq!(&tar[257..262], b"ustar");

    let fresh = tmp.path().join("fresh.tar");
    assert!(export(&fresh, &[]).status.success());
    assert_eq!(fs::metadata(&fresh).unwrap().mode() & 0o777, 0o600);

    // Inside the state dir, by any spelling, as a tar or a directory: refused, and the
    // recording still opens.
    let inside = [
        state.join("x.tar"),
        state.join("db"),
        tmp.path().join("work/../state/y.tar"),
    ];
    for out in &inside {
        let r = export(out, &["--force"]);
        assert!(!r.status.success(), "{}", out.display());
        assert!(
            text(&r.stderr).contains("inside the recording"),
            "{}",
            text(&r.stderr)
        );
    }
    let as_dir = dk(
        &[
            "export",
            &state_arg,
            &format!("--out={}", state.join("tree").display()),
        ],
        &work,
    );
    assert!(!as_dir.status.success());
    let log = dk(&["log", &state_arg], &work);
    assert!(log.status.success(), "{}", text(&log.stderr));
    assert!(text(&log.stdout).contains("/f"), "{}", text(&log.stdout));
}

#[test]
fn moments_past_the_end_are_said_and_a_reversed_log_range_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (work, state) = (tmp.path().join("work"), tmp.path().join("state"));
    fs::create_dir(&work).unwrap();
    record_sh(&state, &work, "echo a > f");
    let span = diffkeeper_store::Store::open(&state).unwrap().span();
    let past = (span.end_mono_ns - span.start_mono_ns) / 1_000_000 + 500;
    let state_arg = format!("--state-dir={}", state.display());
    let out_arg = format!("--out={}", tmp.path().join("out").display());
    let time_arg = format!("--time={past}ms");
    let out = dk(&["export", &state_arg, &out_arg, &time_arg], &work);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains(&format!("warning: {past}ms is after the recording's end")),
        "{}",
        text(&out.stderr)
    );
    let inside = dk(
        &[
            "export",
            &state_arg,
            &format!("--out={}", tmp.path().join("o2").display()),
            "--time=0s",
        ],
        &work,
    );
    assert!(!text(&inside.stderr).contains("after the recording's end"));

    let out = dk(&["log", &state_arg, "--from=end", "--to=start"], &work);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("is after --to"),
        "{}",
        text(&out.stderr)
    );
    assert!(out.stdout.is_empty());
    let same = dk(&["log", &state_arg, "--from=end", "--to=end"], &work);
    assert!(same.status.success());
}

/// A path longer than PATH_MAX and one deeper than the kernel side walks.
const TOO_LONG_AND_DEEP: &str = r#"
import os, sys
top = os.getcwd()
for _ in range(20):
    os.mkdir("x" * 250)
    os.chdir("x" * 250)
with open("long.txt", "w") as f:
    f.write("long\n")
os.chdir(top)
for _ in range(70):
    os.mkdir("d")
    os.chdir("d")
with open("deep.txt", "w") as f:
    f.write("deep\n")
"#;

#[test]
fn paths_too_long_or_too_deep_are_counted_and_reported_as_gaps() {
    let tmp = tempfile::tempdir().unwrap();
    let (work, state) = (tmp.path().join("work"), tmp.path().join("state"));
    fs::create_dir(&work).unwrap();
    let script = tmp.path().join("deep.py");
    fs::write(&script, TOO_LONG_AND_DEEP).unwrap();
    let out = dk(
        &[
            "record",
            &format!("--state-dir={}", state.display()),
            "--",
            "/usr/bin/python3",
            script.to_str().unwrap(),
        ],
        &work,
    );
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("path change(s) were too deep (over 64 levels) or too long"),
        "{stderr}"
    );
    let state_arg = format!("--state-dir={}", state.display());
    let log = text(&dk(&["log", &state_arg], &work).stdout);
    // The long names are long: show only what the assertions are about.
    let relevant: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("GAP") || l.contains(".txt"))
        .map(|l| &l[..l.len().min(300)])
        .collect();
    assert!(
        relevant
            .iter()
            .any(|l| l.contains("GAP") && l.contains("could not be captured whole")),
        "{relevant:#?}"
    );
    // Healed at the end: both files are in the recording.
    assert!(log.contains("/long.txt"), "{relevant:#?}");
    assert!(log.contains("/deep.txt"), "{relevant:#?}");
    // A moment before the end (here, among the first mkdirs) says it may lack them.
    let out = dk(
        &[
            "export",
            &state_arg,
            &format!("--out={}", tmp.path().join("mid").display()),
            "--time=@seq:3",
        ],
        &work,
    );
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("capture records were lost"), "{stderr}");
    assert!(!stderr.contains("--ring-size"), "{stderr}");
}

fn wait_for(path: &Path) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !path.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "{} never came",
            path.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn a_file_also_written_outside_the_recording_is_read_back_and_said_so() {
    use std::io::Write;
    use std::os::unix::fs::FileExt;
    let tmp = tempfile::tempdir().unwrap();
    let (work, state) = (tmp.path().join("work"), tmp.path().join("state"));
    fs::create_dir(&work).unwrap();
    // The recorded workload writes f, lets the test (outside the recording) append to it,
    // appends after that, then lets the test overwrite its start in place.
    // g is only overwritten in place, after its last recorded write: no gap, a later mtime.
    let script = "printf 'A%.0s' $(seq 100) > f; cp f g; touch ready1; \
                  while [ ! -e go1 ]; do sleep 0.02; done; printf C >> f; touch ready2; \
                  while [ ! -e go2 ]; do sleep 0.02; done";
    let record = Command::new(DK)
        .args([
            "record",
            &format!("--state-dir={}", state.display()),
            "--",
            "sh",
            "-c",
            script,
        ])
        .current_dir(&work)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&work.join("ready1"));
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(work.join("f"))
        .unwrap();
    f.write_all(&[b'B'; 10]).unwrap();
    fs::write(work.join("go1"), b"").unwrap();
    wait_for(&work.join("ready2"));
    std::thread::sleep(std::time::Duration::from_millis(300));
    // Not through the O_APPEND handle: there pwrite appends.
    let g = fs::OpenOptions::new()
        .write(true)
        .open(work.join("f"))
        .unwrap();
    g.write_all_at(b"ZZZZZ", 0).unwrap();
    let h = fs::OpenOptions::new()
        .write(true)
        .open(work.join("g"))
        .unwrap();
    h.write_all_at(b"YYY", 50).unwrap();
    fs::write(work.join("go2"), b"").unwrap();
    let out = record.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));

    let truth = fs::read(work.join("f")).unwrap();
    assert_eq!(truth.len(), 111);
    let exported = tmp.path().join("out");
    let state_arg = format!("--state-dir={}", state.display());
    let r = dk(
        &[
            "export",
            &state_arg,
            &format!("--out={}", exported.display()),
        ],
        &work,
    );
    assert!(r.status.success(), "{}", text(&r.stderr));
    let got = fs::read(exported.join(work.strip_prefix("/").unwrap()).join("f")).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(&truth)
    );
    let log = text(&dk(&["log", &state_arg], &work).stdout);
    assert!(
        log.lines().any(|l| l.contains("GAP")
            && l.contains("/f was also written by something the recording did not capture")),
        "{log}"
    );
}
