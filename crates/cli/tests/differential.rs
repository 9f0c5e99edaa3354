//! Differential tests on the real kernel: a workload changes files in every way the recorder
//! claims to capture, copies its tree aside at quiescent checkpoints (the ground truth), and the
//! export at each checkpoint must equal that copy exactly: content, type, mode, symlink target,
//! and no extra or missing entries. Needs root and a BTF kernel, as CI has; without them the
//! tests fail (they do not skip).

mod command;

use diffkeeper_store::{MarkerKind, OpKind, Store};
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const DK: &str = env!("CARGO_BIN_EXE_diffkeeper");

/// The workload. Checkpoint N: create marks/cpN (its create event is the moment), then copy the
/// recorded directories to truth/N. Everything is quiescent at that point: no file is open for
/// writing and no mapping is live.
const WORKLOAD: &str = r#"
import mmap, os, shutil, sqlite3, sys
top, marks, truth = sys.argv[1], sys.argv[2], sys.argv[3]
work, outside = os.path.join(top, "work"), os.path.join(top, "outside")
n = 0
def checkpoint():
    global n
    os.close(os.open(os.path.join(marks, "cp%d" % n), os.O_CREAT | os.O_WRONLY, 0o644))
    for name, src in (("work", work), ("outside", outside)):
        shutil.copytree(src, os.path.join(truth, str(n), name), symlinks=True)
    n += 1

def w(path, data, flags=os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode=0o644):
    fd = os.open(path, flags, mode)
    os.write(fd, data)
    os.close(fd)

os.chdir(work)
checkpoint()                                              # 0: the baseline alone

w("a.txt", b"hello\n")
w("a.txt", b"appended\n", os.O_WRONLY | os.O_APPEND)
w("b.txt", b"0123456789" * 100)
fd = os.open("b.txt", os.O_WRONLY); os.pwrite(fd, b"MIDDLE", 500); os.close(fd)
fd = os.open("base.txt", os.O_WRONLY); os.pwrite(fd, b"EDIT", 3); os.close(fd)  # baseline file
fd = os.open("v.txt", os.O_WRONLY | os.O_CREAT, 0o640)
os.writev(fd, [b"one ", b"two ", b"three\n" * 1000]); os.close(fd)
fd = os.open("p.txt", os.O_WRONLY | os.O_CREAT, 0o644)
os.pwrite(fd, b"past the end", 10000); os.close(fd)   # a hole before the data
checkpoint()                                              # 1

os.truncate("b.txt", 300)
fd = os.open("v.txt", os.O_WRONLY); os.ftruncate(fd, 20000); os.close(fd)
os.rename("a.txt", "b.txt")                               # rename over an existing file
os.unlink("p.txt")
os.chmod("v.txt", 0o600)
os.symlink("v.txt", "link-rel")
os.symlink("/etc/hostname", "link-abs")
os.makedirs("d1/d2/d3")
w("d1/d2/d3/deep.txt", b"deep")
os.makedirs("gone/sub"); w("gone/sub/x", b"x")
os.unlink("gone/sub/x"); os.rmdir("gone/sub"); os.rmdir("gone")
os.mkdir("private", 0o700)
checkpoint()                                              # 2

fd = os.open("m.bin", os.O_RDWR | os.O_CREAT, 0o644)
os.ftruncate(fd, 8192)
m = mmap.mmap(fd, 8192, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
m[100:110] = b"MAPPEDDATA"; m[5000:5004] = b"TAIL"
m.flush(); m.close(); os.close(fd)
fd = os.open("tiny.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
for i in range(3000):
    os.write(fd, b"%063d\n" % i)
os.close(fd)
checkpoint()                                              # 3

for i in range(40):                                       # editor-style atomic saves
    w("config.tmp", b"version = %d\nname = demo\n" % i)
    os.rename("config.tmp", "config.ini")
db = sqlite3.connect("app.db")
db.execute("create table t (k integer primary key, v text)")
for i in range(20):
    with db:
        db.executemany("insert into t (v) values (?)", [("row %d-%d" % (i, j),) for j in range(10)])
db.close()
fd = os.open(os.path.join(outside, "pre.txt"), os.O_WRONLY)  # pre-existing, outside the baseline
os.pwrite(fd, b"OUT", 2); os.close(fd)
checkpoint()                                              # 4

os.link("v.txt", "v-hard.txt")
fd = os.open("v.txt", os.O_WRONLY)
os.pwritev(fd, [b"PW", b"RITEV"], 7); os.close(fd)
import ctypes                                             # renameat2(RENAME_EXCHANGE)
libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD, RENAME_EXCHANGE, NR_renameat2 = -100, 2, 316
w("swap-a", b"was a"); w("swap-b", b"was b")
assert libc.syscall(NR_renameat2, AT_FDCWD, b"swap-a", AT_FDCWD, b"swap-b", RENAME_EXCHANGE) == 0
os.rename("d1", "d9")                                     # a directory with its subtree
w("big.bin", os.urandom(3 << 20))                         # above the per-write capture cap
src = os.open("b.txt", os.O_RDONLY)
dst = os.open("copy.txt", os.O_WRONLY | os.O_CREAT, 0o644)
os.copy_file_range(src, dst, 1 << 20); os.close(src); os.close(dst)
# Past 64 open fds the table leaves files_struct's embedded array, and the kernel side reads
# files another way (file_facts): writes through it, here and for the rest of the workload.
held = [os.open("/dev/null", os.O_RDONLY) for _ in range(100)]
w("high-fd.txt", b"through a grown fd table\n")
w("high-fd.txt", b"appended\n", os.O_WRONLY | os.O_APPEND)
fd = os.open("high-fd.txt", os.O_WRONLY); assert fd > 64
os.pwrite(fd, b"GROWN", 8); os.ftruncate(fd, 30); os.close(fd)
for h in held:
    os.close(h)
checkpoint()                                              # 5
sys.exit(7)
"#;

struct Layout {
    top: PathBuf,
    work: PathBuf,
    outside: PathBuf,
    marks: PathBuf,
    truth: PathBuf,
    state: PathBuf,
    script: PathBuf,
}

fn layout(tmp: &Path) -> Layout {
    let l = Layout {
        top: tmp.to_path_buf(),
        work: tmp.join("work"),
        outside: tmp.join("outside"),
        marks: tmp.join("marks"),
        truth: tmp.join("truth"),
        state: tmp.join("state"),
        script: tmp.join("workload.py"),
    };
    for d in [&l.work, &l.outside, &l.marks, &l.truth] {
        fs::create_dir_all(d).unwrap();
    }
    fs::write(l.work.join("base.txt"), b"baseline content\n").unwrap();
    fs::write(l.work.join("keep.txt"), b"untouched\n").unwrap();
    fs::write(l.outside.join("pre.txt"), b"outside before\n").unwrap();
    fs::write(&l.script, WORKLOAD).unwrap();
    l
}

fn record(l: &Layout, extra: &[&str]) -> Output {
    command::record_command(
        &l.state,
        &l.work,
        extra,
        &[
            "python3".as_ref(),
            l.script.as_os_str(),
            l.top.as_os_str(),
            l.marks.as_os_str(),
            l.truth.as_os_str(),
        ],
    )
}

/// Runs export; returns its stderr (summary and warnings).
fn export(l: &Layout, time: &str, out: &Path) -> String {
    let st = Command::new(DK)
        .arg("export")
        .arg(format!("--state-dir={}", l.state.display()))
        .arg(format!("--out={}", out.display()))
        .arg(format!("--time={time}"))
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "export at {time} failed: {}",
        String::from_utf8_lossy(&st.stderr)
    );
    String::from_utf8_lossy(&st.stderr).into_owned()
}

/// What `diffkeeper log` prints for the recording.
fn log_text(l: &Layout) -> String {
    let out = Command::new(DK)
        .arg("log")
        .arg(format!("--state-dir={}", l.state.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The moment of checkpoint N: the seq of the create event of marks/cpN.
fn checkpoint_seqs(l: &Layout) -> Vec<u64> {
    command::checkpoint_seqs(&l.state, &l.marks)
}

#[derive(Debug, PartialEq, Eq)]
enum Node {
    File { mode: u32, content: Vec<u8> },
    Dir { mode: u32 },
    Symlink { target: PathBuf },
}

/// Everything below `root`, by relative path.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, Node> {
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Node>) {
    for e in fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let e = e.unwrap();
        let path = e.path();
        let meta = fs::symlink_metadata(&path).unwrap();
        let rel = path.strip_prefix(root).unwrap().to_path_buf();
        let mode = meta.permissions().mode() & 0o7777;
        let node = if meta.file_type().is_symlink() {
            Node::Symlink {
                target: fs::read_link(&path).unwrap(),
            }
        } else if meta.is_dir() {
            walk(root, &path, out);
            Node::Dir { mode }
        } else {
            Node::File {
                mode,
                content: fs::read(&path).unwrap(),
            }
        };
        out.insert(rel, node);
    }
}

fn assert_same_tree(what: &str, truth: &Path, exported: &Path) {
    let (want, got) = (snapshot(truth), snapshot(exported));
    let mut problems = Vec::new();
    for (p, w) in &want {
        match got.get(p) {
            None => problems.push(format!("missing {}", p.display())),
            Some(g) if g != w => problems.push(format!("differs {}: {}", p.display(), short(w, g))),
            _ => {}
        }
    }
    for p in got.keys().filter(|p| !want.contains_key(*p)) {
        problems.push(format!("extra {}", p.display()));
    }
    assert!(
        problems.is_empty(),
        "{what}: export differs from ground truth:\n  {}",
        problems.join("\n  ")
    );
}

fn short(want: &Node, got: &Node) -> String {
    match (want, got) {
        (
            Node::File {
                mode: m1,
                content: c1,
            },
            Node::File {
                mode: m2,
                content: c2,
            },
        ) => {
            let first = c1.iter().zip(c2).position(|(a, b)| a != b);
            format!(
                "want mode {m1:o} {} bytes, got mode {m2:o} {} bytes, first difference at {first:?}",
                c1.len(),
                c2.len()
            )
        }
        _ => format!("want {want:?}, got {got:?}"),
    }
}

/// Exported path of a host directory: absolute paths are mirrored below OUT.
fn mirrored(out: &Path, host: &Path) -> PathBuf {
    out.join(host.strip_prefix("/").unwrap())
}

// The kernel programs run the same code at both attach points (bpf/diffkeeper.bpf.c), but
// reach it through different contexts: each is checked against the ground truth.
#[test]
fn export_at_every_checkpoint_equals_the_ground_truth() {
    every_checkpoint_equals_the_ground_truth("raw");
}

#[test]
fn export_at_every_checkpoint_equals_the_ground_truth_with_syscall_tracepoints() {
    every_checkpoint_equals_the_ground_truth("syscalls");
}

fn every_checkpoint_equals_the_ground_truth(attach_point: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let l = layout(tmp.path());

    // Something outside the recorded cgroup writes at the same time: never recorded.
    let noise_dir = tmp.path().join("noise");
    fs::create_dir(&noise_dir).unwrap();
    let noise = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "for i in $(seq 1 200); do echo $i >> {0}/outsider.txt; sleep 0.01; done",
            noise_dir.display()
        ))
        .spawn()
        .unwrap();

    let out = record(&l, &[&format!("--attach-point={attach_point}")]);
    let mut noise = noise;
    noise.wait().unwrap();
    assert_eq!(
        out.status.code(),
        Some(7),
        "record passes the exit code through"
    );

    let seqs = checkpoint_seqs(&l);
    assert_eq!(seqs.len(), 6, "all six checkpoints are in the log");
    for (n, seq) in seqs.iter().enumerate() {
        let exported = tmp.path().join(format!("export-{n}"));
        let stderr = export(&l, &format!("@seq:{seq}"), &exported);
        assert!(
            !stderr.contains("records were lost"),
            "no loss, no warning: {stderr}"
        );
        // The outside file joins the recording when first written (checkpoint 4); before that
        // it is not part of what was recorded.
        let names: &[&str] = if n >= 4 {
            &["work", "outside"]
        } else {
            &["work"]
        };
        for &name in names {
            let host = if name == "work" { &l.work } else { &l.outside };
            assert_same_tree(
                &format!("checkpoint {n} ({name})"),
                &l.truth.join(n.to_string()).join(name),
                &mirrored(&exported, host),
            );
        }
    }

    let log = log_text(&l);
    assert!(log.contains("/work/a.txt"), "log names recorded files");
    assert!(log.contains("(python3)"), "log names the writing process");
    assert!(
        !log.contains("outsider.txt"),
        "a process outside the cgroup was recorded"
    );
}

#[test]
fn a_starved_ring_buffer_still_ends_byte_identical_and_reports_healing() {
    let tmp = tempfile::tempdir().unwrap();
    let l = layout(tmp.path());
    // One page of ring: most records are lost; everything must be healed by read-back.
    let out = record(&l, &["--ring-size=4096"]);
    assert_eq!(out.status.code(), Some(7));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lost: u64 = stderr
        .split(" records lost")
        .next()
        .and_then(|s| s.rsplit('(').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no lost count in summary: {stderr}"));
    let healed: u64 = stderr
        .split(" drops healed")
        .next()
        .and_then(|s| s.rsplit(", ").next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no healed count in summary: {stderr}"));
    assert!(lost > 0, "a 4 KiB ring must lose records: {stderr}");
    assert!(healed > 0, "lost records must be healed: {stderr}");

    let exported = tmp.path().join("export-end");
    let st = export(&l, "end", &exported);
    assert!(
        !st.contains("records were lost"),
        "the end is exact and says nothing: {st}"
    );
    // Right at the first gap marker, the export may miss what was lost: it must say so.
    let first_gap = {
        let store = Store::open(&l.state).unwrap();
        let last = store.span().last_seq;
        let seq = store
            .summaries(1, last)
            .map(Result::unwrap)
            .find(|s| s.op.kind == OpKind::Marker && s.op.marker == Some(MarkerKind::Gap))
            .expect("a starved recording has a gap marker")
            .seq;
        seq
    };
    let middle = export(
        &l,
        &format!("@seq:{first_gap}"),
        &tmp.path().join("export-mid"),
    );
    assert!(
        middle.contains("capture records were lost"),
        "a moment after losses warns that it may be incomplete: {middle}"
    );
    for host in [&l.work, &l.outside] {
        assert_same_tree(
            &format!("end of a starved recording ({})", host.display()),
            host,
            &mirrored(&exported, host),
        );
    }
    assert!(
        log_text(&l).contains("lost to a full ring buffer"),
        "the gap is marked in the log"
    );
}

#[test]
fn an_interrupted_recording_is_still_finalized() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let work = tmp.path().join("work");
    fs::create_dir(&work).unwrap();
    let mut record = Command::new(DK);
    record
        .arg("record")
        .arg(format!("--state-dir={}", state.display()))
        .arg("--")
        .arg("sh")
        .arg("-c")
        .arg("echo before > started.txt; sleep 60")
        .current_dir(&work)
        .stdin(Stdio::null())
        .stderr(Stdio::piped());
    // A test run started in the background of a non-interactive shell inherits SIGINT ignored,
    // and so would the recorded command, which would then rightly outlive the interrupt.
    // SAFETY: signal(2) is async-signal-safe.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut record, || {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            Ok(())
        });
    }
    let child = record.spawn().unwrap();
    // Wait until the command runs (its first file exists), then interrupt the recorder only.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !work.join("started.txt").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the command never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(130),
        "the command died of SIGINT, and record says so: {stderr}"
    );
    assert!(stderr.contains("diffkeeper: recorded"), "{stderr}");
    let exported = tmp.path().join("out");
    let st = Command::new(DK)
        .arg("export")
        .arg(format!("--state-dir={}", state.display()))
        .arg(format!("--out={}", exported.display()))
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    assert_eq!(
        fs::read(mirrored(&exported, &work).join("started.txt")).unwrap(),
        b"before\n"
    );
}
