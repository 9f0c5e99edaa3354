//! One process at a time per state dir, with refusals that name the holder and the way out.

use diffkeeper_store::{RecordingInfo, Store, StoreError, Writer};
use std::path::Path;

fn assert_locked_by_us(result: Result<impl Sized, StoreError>, dir: &Path) {
    let Err(err) = result else {
        panic!("expected the state dir to be locked");
    };
    let msg = err.to_string();
    match err {
        StoreError::Locked { pid, dir: locked } => {
            assert_eq!(pid, std::process::id());
            assert_eq!(locked, dir);
        }
        other => panic!("expected Locked, got {other:?}"),
    }
    let pid = std::process::id();
    assert_eq!(
        msg,
        format!(
            "state dir {} is locked by pid {pid} (a recorder is still running, or another \
             diffkeeper command has it open); wait for it to finish or use another --state-dir",
            dir.display()
        )
    );
}

#[test]
fn a_live_writer_locks_out_everyone_else() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("rec");
    let writer = Writer::create(&dir, RecordingInfo::default()).unwrap();
    assert_locked_by_us(Writer::create(&dir, RecordingInfo::default()), &dir);
    assert_locked_by_us(Writer::resume(&dir), &dir);
    assert_locked_by_us(Store::open(&dir), &dir);
    writer.finish(0).unwrap();

    let store = Store::open(&dir).unwrap();
    assert_locked_by_us(Writer::resume(&dir), &dir);
    drop(store);
    Writer::resume(&dir).unwrap().finish(0).unwrap();
}

#[test]
fn a_stale_lock_file_does_not_block() {
    let tmp = tempfile::tempdir().unwrap();
    Writer::create(tmp.path(), RecordingInfo::default())
        .unwrap()
        .finish(0)
        .unwrap();
    // What a killed recorder leaves behind: its pid, but no flock.
    std::fs::write(tmp.path().join("LOCK"), "4194303").unwrap();
    Store::open(tmp.path()).unwrap();
}

#[test]
fn not_a_recording() {
    let tmp = tempfile::tempdir().unwrap();
    for dir in [tmp.path().to_path_buf(), tmp.path().join("missing")] {
        let err = Store::open(&dir).unwrap_err();
        assert!(matches!(err, StoreError::NotARecording { .. }), "{err:?}");
        assert!(err.to_string().contains("--state-dir"), "{err}");
        let err = Writer::resume(&dir).unwrap_err();
        assert!(matches!(err, StoreError::NotARecording { .. }), "{err:?}");
    }
    // Opening must not have created anything.
    assert!(!tmp.path().join("db").exists());
}

#[test]
fn create_refuses_an_existing_recording() {
    let tmp = tempfile::tempdir().unwrap();
    Writer::create(tmp.path(), RecordingInfo::default())
        .unwrap()
        .finish(0)
        .unwrap();
    let err = Writer::create(tmp.path(), RecordingInfo::default()).unwrap_err();
    assert!(matches!(err, StoreError::AlreadyRecorded { .. }), "{err:?}");
}

/// A child forked by another thread holds a copy of every descriptor until its exec closes them
/// (`cargo test` runs tests on threads, and some spawn processes): the lock must still be gone
/// the moment its Writer is dropped, not when the last copy closes. This failed as
/// `Locked { pid: 0 }` about once in 30 runs of delta_saves before Drop unlocked explicitly.
#[test]
fn a_forked_child_holding_the_descriptors_does_not_keep_the_dir_locked() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("rec");
    let writer = Writer::create(&dir, RecordingInfo::default()).unwrap();
    // SAFETY: the child only sleeps and _exits (async-signal-safe), as between fork and exec.
    let child = unsafe { libc::fork() };
    assert!(child >= 0, "fork: {}", std::io::Error::last_os_error());
    if child == 0 {
        unsafe {
            libc::usleep(500_000);
            libc::_exit(0);
        }
    }
    drop(writer);
    // sled's own file lock is still held by the child's copies until it exits; the store waits
    // for that (it is bounded), but our dir lock must not refuse.
    let resumed = Writer::resume(&dir);
    let mut status = 0;
    // SAFETY: waits for the child forked above.
    unsafe { libc::waitpid(child, &mut status, 0) };
    resumed.unwrap().finish(0).unwrap();
}
