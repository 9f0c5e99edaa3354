//! Reading a recording changes none of its files, so `log` and `export` work on a read-only
//! copy and the recording stays exactly as the recorder left it.

use diffkeeper_store::{
    EntryKind, Event, Op, RecPath, RecordingInfo, Store, Target, Writer, WriterOptions,
};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn path(s: &str) -> RecPath {
    RecPath::normalize(s.as_bytes()).unwrap()
}

/// Every file under `dir` with the sha256 of its bytes, and its size.
fn hash_tree(dir: &Path, out: &mut BTreeMap<PathBuf, (String, u64)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let p = entry.path();
        if entry.file_type().unwrap().is_dir() {
            hash_tree(&p, out);
        } else {
            let bytes = std::fs::read(&p).unwrap();
            let sha = Sha256::digest(&bytes)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            out.insert(p, (sha, bytes.len() as u64));
        }
    }
}

fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (String, u64)> {
    let mut out = BTreeMap::new();
    hash_tree(dir, &mut out);
    out
}

/// A recording with data in segments, keyframes, deltas, renames and deletes.
fn record(dir: &Path) {
    let opts = WriterOptions {
        keyframe_min_bytes: 4096,
        keyframe_size_factor: 1,
        keyframe_min_ops: 10,
        segment_bytes: 32 << 10,
        checkpoint_min_events: 50,
        ..WriterOptions::default()
    };
    let mut w = Writer::create_with(dir, RecordingInfo::default(), opts).unwrap();
    let mut time = 1_000;
    let mut append = |w: &mut Writer, op: Op| {
        time += 1_000;
        w.append(Event {
            time,
            process: None,
            op,
        })
        .unwrap();
    };
    for f in 0..8u64 {
        let node = w.new_node();
        append(
            &mut w,
            Op::Create {
                node,
                path: path(&format!("/f{f}")),
                mode: 0o644,
            },
        );
        for i in 0..30u64 {
            let data = format!("file {f} line {i}\n").repeat(20).into_bytes();
            append(
                &mut w,
                Op::Write {
                    node,
                    offset: i * 97,
                    data,
                },
            );
            if i % 10 == 9 {
                w.commit().unwrap();
            }
        }
        if f % 2 == 1 {
            append(
                &mut w,
                Op::Truncate {
                    target: Target::Node(node),
                    size: 0,
                },
            );
        }
    }
    append(
        &mut w,
        Op::Rename {
            from: path("/f0"),
            to: path("/g0"),
        },
    );
    append(&mut w, Op::Unlink { path: path("/f2") });
    w.finish(time + 1).unwrap();
}

/// Reads everything there is to read: every event and every file at every tenth moment.
fn read_everything(dir: &Path) -> usize {
    let store = Store::open(dir).unwrap();
    let last = store.span().last_seq;
    let mut read = 0;
    for item in store.events(1, last) {
        item.unwrap();
        read += 1;
    }
    for seq in (0..=last).step_by(10).chain([last]) {
        for entry in store.tree_at(seq).unwrap().entries.values() {
            if let EntryKind::File { size } = entry.kind {
                let content = store.read_content(entry.node, seq).unwrap();
                assert_eq!(content.len() as u64, size);
                read += 1;
            }
        }
    }
    read
}

#[test]
fn reading_changes_no_file_of_the_state_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("rec");
    record(&dir);
    let before = snapshot(&dir);
    assert!(
        before.keys().any(|p| p.to_string_lossy().ends_with(".seg")),
        "the recording has segments"
    );
    assert!(read_everything(&dir) > 100);
    // Twice: a second reader must not find anything the first left behind either.
    read_everything(&dir);
    assert_eq!(snapshot(&dir), before, "reading changed the state dir");
}

/// Unmounts on drop, so a failing test leaves no mount behind.
struct BindMount(PathBuf);

impl Drop for BindMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_recording_on_a_read_only_mount_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("rec");
    record(&dir);
    let mount = tmp.path().join("ro");
    std::fs::create_dir(&mount).unwrap();
    // The tests run as root (eBPF needs it anyway); a read-only bind mount is the real thing.
    let status = Command::new("mount")
        .args(["--bind", "-o", "ro"])
        .arg(&dir)
        .arg(&mount)
        .status()
        .expect("mount runs");
    assert!(status.success(), "mount --bind -o ro failed: {status}");
    let _mounted = BindMount(mount.clone());
    assert!(
        std::fs::write(mount.join("probe"), b"x").is_err(),
        "the mount is not read-only"
    );
    assert!(read_everything(&mount) > 100);
}
