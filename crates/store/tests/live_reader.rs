//! A recording still being written can be read (the agent serves live containers' histories),
//! and each view is one consistent moment: what was committed when it was taken.

use diffkeeper_store::{Event, Op, RecPath, RecordingInfo, Writer};

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

#[test]
fn a_view_of_a_live_recording_sees_what_was_committed_then() {
    let tmp = tempfile::tempdir().unwrap();
    let info = RecordingInfo {
        started_mono_ns: 1_000,
        ..RecordingInfo::default()
    };
    let mut writer = Writer::create(tmp.path(), info).unwrap();
    let node = writer.new_node();
    append(
        &mut writer,
        2_000,
        Op::Create {
            node,
            path: path("/f"),
            mode: 0o644,
        },
    );
    append(
        &mut writer,
        3_000,
        Op::Write {
            node,
            offset: 0,
            data: b"first".to_vec(),
        },
    );
    writer.commit().unwrap();
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
