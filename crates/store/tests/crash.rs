//! kill -9 in the middle of writing: the store must reopen with a consistent prefix of the log
//! that holds at least everything reported flushed, and a resumed writer must carry on.
//!
//! The writer runs in a child process: this same test binary, re-executed as
//! `--ignored --exact child_writer` with `DK_CRASH_CHILD_DIR` set. `child_writer` is ignored in
//! a normal run (it never ends by itself) and fails if started without that variable, so it can
//! never count as a pass on its own.

use diffkeeper_store::{
    Event, MarkerKind, NodeId, Op, RecPath, RecordingInfo, Seq, Store, Target, Writer,
    WriterOptions,
};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CHILD_ENV: &str = "DK_CRASH_CHILD_DIR";
const FILES: u64 = 6;
const MONO0: u64 = 1_000_000_000;

fn path(s: &str) -> RecPath {
    RecPath::normalize(s.as_bytes()).unwrap()
}

/// File node of file `k` (node 1 is the directory).
fn file_node(k: u64) -> NodeId {
    2 + k
}

/// The event with number `seq`: a pure function, so any reader can check what it finds.
fn event_for(seq: Seq) -> Event {
    let k = seq % FILES;
    let op = if seq == 1 {
        Op::Mkdir {
            node: 1,
            path: path("/d"),
            mode: 0o755,
        }
    } else if seq <= 1 + FILES {
        let k = seq - 2;
        Op::Create {
            node: file_node(k),
            path: path(&format!("/d/f{k}")),
            mode: 0o644,
        }
    } else if seq.is_multiple_of(97) {
        Op::Truncate {
            target: Target::Node(file_node(k)),
            size: seq % 3000,
        }
    } else if seq.is_multiple_of(89) {
        Op::Chmod {
            target: Target::Path(path(&format!("/d/f{k}"))),
            mode: 0o600 + (seq % 8) as u32,
        }
    } else if seq.is_multiple_of(211) {
        Op::Marker {
            kind: MarkerKind::Note,
            detail: format!("marker {seq}"),
        }
    } else {
        let len = 1 + (seq * 7919 % 300) as usize;
        let data = (0..len)
            .map(|i| (seq as usize * 13 + i * 7) as u8)
            .collect();
        Op::Write {
            node: file_node(k),
            offset: seq * 37 % 5000,
            data,
        }
    };
    Event {
        time: MONO0 + seq * 1_000,
        process: None,
        op,
    }
}

fn options() -> WriterOptions {
    // Small thresholds so keyframes and checkpoints are being written when the kill lands.
    WriterOptions {
        keyframe_min_bytes: 4096,
        keyframe_size_factor: 1,
        keyframe_min_ops: 40,
        keyframe_bytes_per_op: 1 << 20,
        full_keyframe_every: 4,
        checkpoint_min_events: 300,
        // Small segments, so kills also land around a seal.
        segment_bytes: 16 << 10,
        ..WriterOptions::default()
    }
}

fn info() -> RecordingInfo {
    RecordingInfo {
        command: vec!["crash-writer".into()],
        started_wall_ns: 1_790_000_000_000_000_000,
        started_mono_ns: MONO0,
        hostname: "test".into(),
        labels: Default::default(),
    }
}

/// The child: appends events forever, flushing every few and reporting each flushed seq.
#[test]
#[ignore = "the writer survives_kill_9 starts and kills; it runs until killed"]
fn child_writer() {
    let dir = std::env::var(CHILD_ENV)
        .unwrap_or_else(|_| panic!("{CHILD_ENV} is unset: survives_kill_9 runs this test"));
    let dir = Path::new(&dir);
    let mut w = if dir.join("db").exists() {
        Writer::resume_with(dir, options()).unwrap()
    } else {
        Writer::create_with(dir, info(), options()).unwrap()
    };
    let mut seq = w.stats().committed_seq;
    let mut out = std::io::stdout().lock();
    loop {
        for _ in 0..(1 + seq % 53) {
            seq += 1;
            assert_eq!(w.append(event_for(seq)).unwrap(), seq);
            if seq.is_multiple_of(7) {
                w.commit().unwrap(); // committed but not flushed: may or may not survive
            }
        }
        w.flush().unwrap();
        writeln!(out, "flushed {seq}").unwrap();
        out.flush().unwrap();
    }
}

/// Content every file should have after events 1..=last, rebuilt naively.
fn expected_files(last: Seq) -> HashMap<NodeId, (Vec<u8>, u32)> {
    let mut files: HashMap<NodeId, (Vec<u8>, u32)> = HashMap::new();
    for seq in 1..=last {
        match event_for(seq).op {
            Op::Create { node, mode, .. } => {
                files.insert(node, (Vec::new(), mode));
            }
            Op::Write { node, offset, data } => {
                let c = &mut files.get_mut(&node).unwrap().0;
                let end = offset as usize + data.len();
                if c.len() < end {
                    c.resize(end, 0);
                }
                c[offset as usize..end].copy_from_slice(&data);
            }
            Op::Truncate {
                target: Target::Node(node),
                size,
            } => files.get_mut(&node).unwrap().0.resize(size as usize, 0),
            Op::Chmod {
                target: Target::Path(p),
                mode,
            } => {
                let k: u64 = p.to_string()["/d/f".len()..].parse().unwrap();
                files.get_mut(&file_node(k)).unwrap().1 = mode;
            }
            _ => {}
        }
    }
    files
}

fn check_store(dir: &Path, at_least: Seq) -> Seq {
    let store = Store::open(dir).unwrap();
    let last = store.span().last_seq;
    assert!(
        last >= at_least,
        "store ends at @seq:{last}, but @seq:{at_least} was reported flushed"
    );
    let mut count = 0;
    for item in store.events(1, last) {
        let (seq, event) = item.unwrap();
        count += 1;
        assert_eq!(seq, count);
        assert_eq!(
            event,
            event_for(seq),
            "event @seq:{seq} differs from what was written"
        );
    }
    assert_eq!(count, last);
    let tree = store.tree_at(last).unwrap();
    let files = expected_files(last);
    let on_disk_files = tree.entries.values().filter(|e| e.node != 1).count();
    assert_eq!(on_disk_files, files.len());
    for (node, (content, mode)) in files {
        assert_eq!(
            store.read_content(node, last).unwrap(),
            content,
            "content of node {node} at @seq:{last}"
        );
        let entry = tree.entries.values().find(|e| e.node == node).unwrap();
        assert_eq!(entry.mode, mode);
    }
    last
}

/// xorshift, so the kill timing varies without a dependency; the seed is printed for replay.
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

const ROUNDS: u32 = 20;

#[test]
fn survives_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("rec");
    let mut rng = std::env::var("DK_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("DK_CRASH_SEED={rng}");
    let exe = std::env::current_exe().unwrap();
    let mut survived = 0;
    for round in 0..ROUNDS {
        let mut child = Command::new(&exe)
            .args([
                "--ignored",
                "--exact",
                "child_writer",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let flushed = Arc::new(Mutex::new(0u64));
        let reader = {
            let flushed = Arc::clone(&flushed);
            let stdout = child.stdout.take().unwrap();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if let Some(n) = line.strip_prefix("flushed ") {
                        *flushed.lock().unwrap() = n.trim().parse().unwrap();
                    }
                }
            })
        };
        // Wait until the child is past its first flush, then kill it at a random moment.
        let waited = Instant::now();
        while *flushed.lock().unwrap() <= survived {
            assert!(
                waited.elapsed() < Duration::from_secs(60),
                "child never flushed"
            );
            assert!(child.try_wait().unwrap().is_none(), "child exited early");
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_millis(next_random(&mut rng) % 300));
        // SAFETY: kill(2) on our own child's pid, which has not been reaped yet.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
        let status = child.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL),
            "the child writer ended by itself ({status}) before it was killed"
        );
        reader.join().unwrap();
        let reported = *flushed.lock().unwrap();
        survived = check_store(&dir, reported);
        eprintln!("round {round}: reported flushed @seq:{reported}, store holds @seq:{survived}");
    }
    let segments = std::fs::read_dir(dir.join("segments")).unwrap().count();
    assert!(
        segments > 1,
        "no segment was sealed while the writers were killed"
    );

    // A resumed writer carries on exactly where the surviving log ends.
    let mut w = Writer::resume_with(&dir, options()).unwrap();
    assert_eq!(w.stats().committed_seq, survived);
    assert_eq!(w.node_at(&path("/d/f0")), Some(file_node(0)));
    let fresh = w.new_node();
    assert!(
        fresh > file_node(FILES - 1),
        "node ids must not be reused after resume"
    );
    for seq in survived + 1..=survived + 500 {
        assert_eq!(w.append(event_for(seq)).unwrap(), seq);
    }
    w.finish(MONO0 + (survived + 600) * 1_000).unwrap();
    assert_eq!(check_store(&dir, survived + 500), survived + 500);
    assert!(Store::open(&dir).unwrap().span().finished);
}
