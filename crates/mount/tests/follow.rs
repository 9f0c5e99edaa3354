//! `follow` on a real FUSE mount: a recording that a writer resumes, extends and closes again
//! while it is mounted must show up in the view, through the kernel, with the same inode
//! numbers. Needs root and /dev/fuse.

use diffkeeper_mount::{mount, RecordingFs, ViewOptions};
use diffkeeper_store::{Event, Op, RecPath, RecordingInfo, StoreError, TimeExpr, Writer};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

fn path(s: &str) -> RecPath {
    RecPath::normalize(s.as_bytes()).unwrap()
}

fn event(time: u64, op: Op) -> Event {
    Event {
        time,
        process: None,
        op,
    }
}

/// Resumes the recording, waiting out the moments the view's refresh holds it.
fn resume(dir: &Path) -> Writer {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Writer::resume(dir) {
            Ok(w) => return w,
            Err(StoreError::Locked { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("resuming the recording: {e}"),
        }
    }
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ok() {
        assert!(Instant::now() < deadline, "the view never showed {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn follow_moves_the_view_when_the_recording_grows() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "mounting FUSE needs root");
    assert!(Path::new("/dev/fuse").exists(), "/dev/fuse is missing");
    let tmp = tempfile::tempdir().unwrap();
    let (state, mnt) = (tmp.path().join("state"), tmp.path().join("mnt"));
    std::fs::create_dir(&mnt).unwrap();

    let mut w = Writer::create(&state, RecordingInfo::default()).unwrap();
    let (d, a) = (w.new_node(), w.new_node());
    w.append(event(
        10,
        Op::Mkdir {
            node: d,
            path: path("/d"),
            mode: 0o755,
        },
    ))
    .unwrap();
    w.append(event(
        11,
        Op::Create {
            node: a,
            path: path("/d/a"),
            mode: 0o644,
        },
    ))
    .unwrap();
    w.append(event(
        12,
        Op::Write {
            node: a,
            offset: 0,
            data: b"one".to_vec(),
        },
    ))
    .unwrap();
    w.finish(13).unwrap();

    let opts = ViewOptions {
        time: TimeExpr::End,
        follow: true,
        refresh: Duration::from_millis(200),
        cache_bytes: 1 << 20,
    };
    let fs = RecordingFs::new(&state, &opts).unwrap();
    let mounted = mount(fs, &mnt, &opts).unwrap();
    let file = mnt.join("d/a");
    assert_eq!(std::fs::read(&file).unwrap(), b"one");
    let ino = std::fs::metadata(&file).unwrap().ino();
    assert!(!mnt.join("d/b").exists());
    let first = mounted.seq();

    let mut w = resume(&state);
    let b = w.new_node();
    w.append(event(
        20,
        Op::Write {
            node: a,
            offset: 3,
            data: b"two".to_vec(),
        },
    ))
    .unwrap();
    w.append(event(
        21,
        Op::Create {
            node: b,
            path: path("/d/b"),
            mode: 0o600,
        },
    ))
    .unwrap();
    w.finish(22).unwrap();

    wait_for("the appended bytes", || {
        std::fs::read(&file).unwrap() == b"onetwo"
    });
    wait_for("the new file", || mnt.join("d/b").exists());
    assert!(mounted.seq() > first);
    let meta = std::fs::metadata(&file).unwrap();
    assert_eq!(
        (meta.ino(), meta.len()),
        (ino, 6),
        "inode and size after the move"
    );
    assert_eq!(
        std::fs::metadata(mnt.join("d/b")).unwrap().mode() & 0o7777,
        0o600
    );

    // A removal shows too.
    let mut w = resume(&state);
    w.append(event(30, Op::Unlink { path: path("/d/b") }))
        .unwrap();
    w.finish(31).unwrap();
    wait_for("the removal", || !mnt.join("d/b").exists());

    mounted.unmount().unwrap();
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !info.contains(mnt.to_str().unwrap()),
        "still mounted: {info}"
    );
}
