//! A recording still being written can be read (the agent serves live containers' histories),
//! and each view is one consistent moment: what was committed when it was taken.

use diffkeeper_store::{Event, Op, RecPath, RecordingInfo, Store, StoreError, Writer, LIVE_SOCKET};

fn path(p: &str) -> RecPath {
    RecPath::normalize(p.as_bytes()).unwrap()
}

fn append(writer: &mut Writer, time: u64, op: Op) {
    writer
        .append(Event {
            time,
            process: None,
            op,
        })
        .unwrap();
}

/// `/f` created holding "first" (events 1 and 2), committed; returns its node.
fn commit_first(writer: &mut Writer) -> diffkeeper_store::NodeId {
    let node = writer.new_node();
    append(
        writer,
        2_000,
        Op::Create {
            node,
            path: path("/f"),
            mode: 0o644,
        },
    );
    append(
        writer,
        3_000,
        Op::Write {
            node,
            offset: 0,
            data: b"first".to_vec(),
        },
    );
    writer.commit().unwrap();
    node
}

#[test]
fn a_view_of_a_live_recording_sees_what_was_committed_then() {
    let tmp = tempfile::tempdir().unwrap();
    let info = RecordingInfo {
        started_mono_ns: 1_000,
        ..RecordingInfo::default()
    };
    let mut writer = Writer::create(tmp.path(), info).unwrap();
    let node = commit_first(&mut writer);
    let early = writer.reader().unwrap();

    append(
        &mut writer,
        4_000,
        Op::Write {
            node,
            offset: 0,
            data: b"later".to_vec(),
        },
    );
    let uncommitted = writer.reader().unwrap();
    writer.commit().unwrap();
    let late = writer.reader().unwrap();

    for (view, seq, want) in [
        (&early, 2, &b"first"[..]),
        (&uncommitted, 2, b"first"),
        (&late, 3, b"later"),
    ] {
        let span = view.span();
        assert_eq!(span.last_seq, seq);
        assert!(!span.finished, "a live recording is not finished");
        let tree = view.tree_at(seq).unwrap();
        let entry = &tree.entries[&path("/f")];
        assert_eq!(view.read_content(entry.node, seq).unwrap(), want);
    }
    // Views hold no lock of their own: the writer goes on and finishes while they live.
    writer.finish(5_000).unwrap();
    assert_eq!(early.span().last_seq, 2);
}

/// What a reader in another process sees: the flock refuses it (in this process too, since an
/// flock belongs to an open file), so `Store::open` asks the writer's live server instead.
#[test]
fn another_reader_opens_a_live_recording_through_its_writer() {
    let tmp = tempfile::tempdir().unwrap();
    // Longer than a socket address holds: the socket is then reached through the dir's fd.
    let dir = tmp.path().join("a".repeat(60)).join("b".repeat(60));
    let mut writer = Writer::create(&dir, RecordingInfo::default()).unwrap();
    let server = writer.serve_live().unwrap();
    let node = commit_first(&mut writer);

    let early = Store::open(&dir).unwrap();
    assert_eq!(early.live_recorder(), Some(std::process::id()));
    assert_eq!(early.span().last_seq, 2);
    assert!(!early.span().finished);

    append(
        &mut writer,
        4_000,
        Op::Write {
            node,
            offset: 0,
            data: b"later".to_vec(),
        },
    );
    // Not committed yet: invisible to a new reader as well.
    assert_eq!(Store::open(&dir).unwrap().span().last_seq, 2);
    assert_eq!(
        Store::live_committed(&dir).unwrap(),
        Some((2, std::process::id()))
    );
    writer.commit().unwrap();
    assert_eq!(
        Store::live_committed(&dir).unwrap(),
        Some((3, std::process::id()))
    );
    let late = Store::open(&dir).unwrap();

    for (view, seq, want) in [(&early, 2, &b"first"[..]), (&late, 3, b"later")] {
        assert_eq!(view.span().last_seq, seq);
        let tree = view.tree_at(seq).unwrap();
        let entry = &tree.entries[&path("/f")];
        assert_eq!(view.read_content(entry.node, seq).unwrap(), want);
    }
    // The views outlive the server and the writer: they read their own index copy and the
    // segments.
    drop(server);
    assert!(
        !dir.join(LIVE_SOCKET).exists(),
        "the server removes its socket"
    );
    let err = Store::open(&dir).unwrap_err();
    assert!(matches!(err, StoreError::Locked { .. }), "{err:?}");
    assert_eq!(Store::live_committed(&dir).unwrap(), None);
    writer.finish(5_000).unwrap();
    let tree = late.tree_at(3).unwrap();
    assert_eq!(
        late.read_content(tree.entries[&path("/f")].node, 3)
            .unwrap(),
        b"later"
    );
    let finished = Store::open(&dir).unwrap();
    assert_eq!(finished.live_recorder(), None);
    assert!(finished.span().finished);
}

/// A recorder killed by SIGKILL leaves its socket behind: readers then see the plain lock
/// refusal while something else holds the dir, open it normally once nothing does, and the
/// next writer serves on a fresh socket.
#[test]
fn a_socket_left_by_a_dead_recorder_is_ignored_and_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("rec");
    Writer::create(&dir, RecordingInfo::default())
        .unwrap()
        .finish(1_000)
        .unwrap();
    drop(std::os::unix::net::UnixListener::bind(dir.join(LIVE_SOCKET)).unwrap());
    assert!(dir.join(LIVE_SOCKET).exists());

    let mut writer = Writer::resume(&dir).unwrap();
    let err = Store::open(&dir).unwrap_err();
    assert!(matches!(err, StoreError::Locked { .. }), "{err:?}");
    let server = writer.serve_live().unwrap();
    assert!(Store::open(&dir).unwrap().live_recorder().is_some());
    drop(server);
    writer.finish(2_000).unwrap();
    assert!(Store::open(&dir).unwrap().span().finished);
}

/// The index names every file the workload touched: only root and the recorder's own user may
/// read it, even when the socket is reachable (here: made world-writable on purpose).
#[test]
fn another_user_is_refused_by_the_live_server() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test runs a reader as another user: run it as root"
    );
    let tmp = tempfile::tempdir().unwrap();
    let mut writer = Writer::create(tmp.path(), RecordingInfo::default()).unwrap();
    let _server = writer.serve_live().unwrap();
    let socket = tmp.path().join(LIVE_SOCKET);
    assert_eq!(
        std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777,
        0o600
    );
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "peer_child", "--nocapture"])
        .env("DK_LIVE_PEER_DIR", tmp.path())
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("uid 65534 may not read this live recording: only root and uid 0"),
        "{said}"
    );
    writer.finish(1).unwrap();
}

#[test]
#[ignore = "another_user_is_refused_by_the_live_server runs it as another user"]
fn peer_child() {
    let dir = std::env::var_os("DK_LIVE_PEER_DIR").expect("run by its parent test");
    let err = Store::live_committed(std::path::Path::new(&dir)).unwrap_err();
    assert!(matches!(err, StoreError::Live { .. }), "{err:?}");
    println!("{err}");
}
