//! A resting writer (the node agent rests idle histories to free their sled index) loses
//! nothing: what it appended before and after resting is committed and read back, and it does
//! not let go of a database a lent view still reads.

use diffkeeper_store::{Event, Op, RecPath, RecordingInfo, Store, Writer};

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

/// `node`'s whole content becomes `data`, as a read-back or a rewrite stores it (a delta
/// against the previous version when the writer still holds that).
fn write(writer: &mut Writer, time: u64, node: diffkeeper_store::NodeId, data: &[u8]) {
    append(
        writer,
        time,
        Op::Resync {
            node,
            data: data.to_vec(),
        },
    );
}

#[test]
fn a_writer_rests_between_writes_and_keeps_every_version() {
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
            path: path("/data/now"),
            mode: 0o644,
        },
    );
    // Versions written while the writer was resting a moment before: each reopens the index.
    let mut versions = Vec::new();
    for i in 0..40u64 {
        let data = format!("heartbeat {i}\n").repeat(1 + i as usize % 7);
        write(&mut writer, 10_000 + i * 1_000, node, data.as_bytes());
        if i % 3 != 0 {
            // Appended but not yet committed: resting commits it first.
            assert!(writer.rest().unwrap());
            assert!(writer.is_resting());
        } else {
            writer.commit().unwrap();
        }
        versions.push((writer.stats().committed_seq, data));
    }
    assert!(
        writer.stats().store_bytes > 0,
        "a resting store still has a size"
    );
    let end = writer.last_time().unwrap();
    writer.finish(end).unwrap();

    let store = Store::open(tmp.path()).unwrap();
    assert!(store.span().finished);
    for (seq, data) in versions {
        let tree = store.tree_at(seq).unwrap();
        let entry = &tree.entries[&path("/data/now")];
        assert_eq!(
            store.read_content(entry.node, seq).unwrap(),
            data.as_bytes(),
            "the version committed at seq {seq}"
        );
    }
}

#[test]
fn a_writer_does_not_rest_while_a_lent_view_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let mut writer = Writer::create(tmp.path(), RecordingInfo::default()).unwrap();
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
    write(&mut writer, 3_000, node, b"first");
    writer.commit().unwrap();
    let view = writer.reader().unwrap();
    let copy = view.view().unwrap();
    drop(view);
    assert!(!writer.rest().unwrap(), "a view of the open index is alive");
    assert!(!writer.is_resting());
    let seq = copy.span().last_seq;
    let entry = &copy.tree_at(seq).unwrap().entries[&path("/f")];
    assert_eq!(copy.read_content(entry.node, seq).unwrap(), b"first");
    drop(copy);
    assert!(writer.rest().unwrap());
    // A view asked of a resting writer reopens its index.
    write(&mut writer, 4_000, node, b"second");
    let view = writer.reader().unwrap();
    assert!(!writer.is_resting());
    // The uncommitted write is not in the view, as for any live view.
    let seq = view.span().last_seq;
    let entry = &view.tree_at(seq).unwrap().entries[&path("/f")];
    assert_eq!(view.read_content(entry.node, seq).unwrap(), b"first");
}
