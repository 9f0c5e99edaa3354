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
