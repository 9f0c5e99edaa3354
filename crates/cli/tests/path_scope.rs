//! `record --include/--exclude` (the local form of a Recording's `spec.paths`): nothing of a path
//! outside the scope reaches the store, the kernel stops copying such files' writes, files that
//! move across the scope's edge are right on both sides, and the readers say what was left out.
//! Needs root and BPF.

mod command;

use command::{diffkeeper, ok, record_command};
use diffkeeper_store::Store;
use std::ffi::OsStr;
use std::path::Path;

/// Bytes written to one file outside the scope after it was first seen: the kernel must drop
/// them, not copy them into the ring.
const OUTSIDE_STREAM: u64 = 16 << 20;

#[test]
fn only_the_scope_is_recorded_and_the_readers_say_so() {
    let tmp = tempfile::tempdir().unwrap();
    let (work, state) = (tmp.path().join("w"), tmp.path().join("state"));
    std::fs::create_dir_all(&work).unwrap();
    let w = work.display().to_string();
    let script = format!(
        "set -e
         mkdir -p keep/sub keep/cache out
         echo hello > keep/a.txt
         echo secret > out/secret.txt
         echo start > out/stream.bin
         sleep 0.5
         dd if=/dev/zero bs=4096 count={blocks} status=none >> out/stream.bin
         echo scratch > keep/sub/b.tmp
         echo cached > keep/cache/c
         echo moved-in > out/m.txt
         echo more >> out/m.txt
         mv out/m.txt keep/m.txt
         echo after >> keep/m.txt
         echo leaving > keep/l.txt
         mv keep/l.txt out/l.txt
         mkdir out/dir
         echo d > out/dir/f
         mv out/dir keep/dir
         ln out/secret.txt keep/hard.txt
         echo swapped-in > out/x
         echo swapped-out > keep/x
         mv -f out/x keep/x",
        blocks = OUTSIDE_STREAM / 4096,
    );
    let out = record_command(
        &state,
        &work,
        &[
            &format!("--include={w}/keep"),
            "--exclude=**/*.tmp",
            &format!("--exclude={w}/keep/cache"),
            "--no-cwd-baseline",
        ],
        &[OsStr::new("sh"), OsStr::new("-c"), OsStr::new(&script)],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");

    // The kernel dropped the outside stream instead of copying it.
    let captured = captured_bytes(&stderr);
    eprintln!("captured {captured} bytes");
    assert!(
        captured < OUTSIDE_STREAM / 16,
        "{captured} bytes captured: the writes outside the scope were copied\n{stderr}"
    );

    // Not one event of the store names a path outside the scope.
    let store = Store::open(&state).unwrap();
    assert_eq!(
        store.scope().include,
        vec![format!("{w}/keep")],
        "the store keeps its scope"
    );
    let keep = format!("{w}/keep");
    for s in store.summaries(1, store.span().last_seq) {
        let s = s.unwrap();
        for p in &s.op.paths {
            let p = p.to_string();
            let inside = p == keep || p.starts_with(&format!("{keep}/"));
            assert!(
                inside && !p.ends_with(".tmp") && !p.starts_with(&format!("{keep}/cache")),
                "event {} records {p}, outside the scope",
                s.seq
            );
        }
    }
    drop(store);

    // The export holds exactly the scope's files as they ended.
    let st = format!("--state-dir={}", state.display());
    let dest = tmp.path().join("export");
    let export = diffkeeper(&["export", &st, &format!("--out={}", dest.display())]);
    let export_err = String::from_utf8_lossy(&export.stderr);
    assert!(export.status.success(), "{export_err}");
    assert!(
        export_err.contains(&format!("kept only {w}/keep; not **/*.tmp, {w}/keep/cache")),
        "the export does not say what was left out: {export_err}"
    );
    let root = dest.join(work.strip_prefix("/").unwrap());
    let mut files = Vec::new();
    list(&root, &root, &mut files);
    files.sort();
    let expected = [
        ("keep/a.txt", "hello\n"),
        ("keep/dir/f", "d\n"),
        ("keep/hard.txt", "secret\n"),
        ("keep/m.txt", "moved-in\nmore\nafter\n"),
        ("keep/x", "swapped-in\n"),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(p, c)| (p.to_string(), c.to_string()))
        .collect();
    assert_eq!(files, expected);
    assert!(
        root.join("keep/sub").is_dir(),
        "an included directory is kept"
    );
    assert!(
        !root.join("out").exists(),
        "a directory outside the scope was exported"
    );

    let log = ok(&["log", &st]);
    assert!(
        !log.contains("/out/"),
        "log shows a path outside the scope: {log}"
    );
}

/// The "N captured" figure of record's closing line, in bytes.
fn captured_bytes(stderr: &str) -> u64 {
    let line = stderr
        .lines()
        .find(|l| l.contains("diffkeeper: recorded"))
        .expect("record's closing line");
    let before = line.split(" captured").next().unwrap();
    let figure = before.rsplit(", ").next().unwrap();
    let (number, unit) = figure.split_once(' ').expect("a figure with a unit");
    let number: f64 = number.parse().expect("a number");
    let scale = match unit {
        "B" => 1.0,
        "KB" | "kB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        other => panic!("unit {other:?} in {line:?}"),
    };
    (number * scale) as u64
}

/// Every file below `dir`, as (path relative to `root`, content).
fn list(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            list(root, &path, out);
        } else {
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            out.push((rel, std::fs::read_to_string(&path).unwrap()));
        }
    }
}
