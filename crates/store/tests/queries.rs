//! log / history / diff queries: what they report, and that `log` never reads data bytes.

use diffkeeper_store::{
    ChangeKind, Event, MarkerKind, Op, OpKind, Process, RecPath, RecordingInfo, Store, Target,
    Writer,
};

fn p(s: &str) -> RecPath {
    RecPath::normalize(s.as_bytes()).unwrap()
}

fn ev(time: u64, op: Op) -> Event {
    Event {
        time,
        process: Some(Process {
            pid: 42,
            comm: "app".into(),
            cgroup: 7,
        }),
        op,
    }
}

/// 1 create /a, 2..=65 write 16 KiB each, 66 rename /a -> /b, 67 link /c, 68 unlink /b,
/// 69 write via node, 70 chmod, 71 marker, 72 create /d, 73 truncate /d (no-op change), 74 mkdir /e/f.
fn build(dir: &std::path::Path) -> u64 {
    let info = RecordingInfo {
        started_mono_ns: 0,
        ..Default::default()
    };
    let mut w = Writer::create(dir, info).unwrap();
    let a = w.new_node();
    let mut t = 0;
    let mut next = || {
        t += 10;
        t
    };
    w.append(ev(
        next(),
        Op::Create {
            node: a,
            path: p("/a"),
            mode: 0o644,
        },
    ))
    .unwrap();
    for i in 0..64u64 {
        let data: Vec<u8> = (0..16384u32)
            .map(|j| (j.wrapping_mul(2654435761) >> 13) as u8 ^ i as u8)
            .collect();
        w.append(ev(
            next(),
            Op::Write {
                node: a,
                offset: i * 16384,
                data,
            },
        ))
        .unwrap();
    }
    w.append(ev(
        next(),
        Op::Rename {
            from: p("/a"),
            to: p("/b"),
        },
    ))
    .unwrap();
    w.append(ev(
        next(),
        Op::Link {
            node: a,
            path: p("/c"),
        },
    ))
    .unwrap();
    w.append(ev(next(), Op::Unlink { path: p("/b") })).unwrap();
    w.append(ev(
        next(),
        Op::Write {
            node: a,
            offset: 0,
            data: b"hello".to_vec(),
        },
    ))
    .unwrap();
    w.append(ev(
        next(),
        Op::Chmod {
            target: Target::Node(a),
            mode: 0o600,
        },
    ))
    .unwrap();
    w.append(ev(
        next(),
        Op::Marker {
            kind: MarkerKind::Gap,
            detail: "lost 3 events".into(),
        },
    ))
    .unwrap();
    let d = w.new_node();
    w.append(ev(
        next(),
        Op::Create {
            node: d,
            path: p("/d"),
            mode: 0o644,
        },
    ))
    .unwrap();
    w.append(ev(
        next(),
        Op::Truncate {
            target: Target::Path(p("/d")),
            size: 0,
        },
    ))
    .unwrap();
    let f = w.new_node();
    let last = w
        .append(ev(
            next(),
            Op::Mkdir {
                node: f,
                path: p("/e/f"),
                mode: 0o700,
            },
        ))
        .unwrap();
    assert_eq!(w.path_of(a), Some(p("/c")));
    assert_eq!(w.entry(&p("/c")).unwrap().mode, 0o600);
    w.finish(t).unwrap();
    last
}

#[test]
fn summaries_describe_without_reading_data() {
    let tmp = tempfile::tempdir().unwrap();
    let last = build(tmp.path());
    let store = Store::open(tmp.path()).unwrap();
    let before = store.read_stats();
    let all: Vec<_> = store.summaries(1, last).map(Result::unwrap).collect();
    let cost = store.read_stats().bytes_read - before.bytes_read;
    assert_eq!(all.len() as u64, last);
    assert!(
        cost < 20_000,
        "log read {cost} bytes; it must not read the 1 MiB of write data"
    );

    let write = &all[1];
    assert_eq!(write.op.kind, OpKind::Write);
    assert_eq!(write.op.paths, vec![p("/a")]);
    assert_eq!((write.op.bytes, write.op.offset), (Some(16384), Some(0)));
    assert_eq!(write.process.as_ref().unwrap().comm, "app");
    let rename = &all[65];
    assert_eq!(rename.op.paths, vec![p("/a"), p("/b")]);
    // Written after its name /b was unlinked: resolved to the name it still has.
    assert_eq!(all[68].op.paths, vec![p("/c")]);
    assert_eq!(all[70].op.marker, Some(MarkerKind::Gap));
    assert_eq!(all[70].op.detail.as_deref(), Some("lost 3 events"));

    // A window in the middle resolves names as of its start.
    let window: Vec<_> = store.summaries(66, 69).map(Result::unwrap).collect();
    assert_eq!(
        window.iter().map(|s| s.seq).collect::<Vec<_>>(),
        [66, 67, 68, 69]
    );
    assert_eq!(window[3].op.paths, vec![p("/c")]);

    let events: Vec<_> = store.events(2, 2).map(Result::unwrap).collect();
    assert!(matches!(&events[0].1.op, Op::Write { data, .. } if data.len() == 16384));
}

#[test]
fn history_follows_the_node_across_names() {
    let tmp = tempfile::tempdir().unwrap();
    build(tmp.path());
    let store = Store::open(tmp.path()).unwrap();
    let seqs = |path: &str| -> Vec<u64> {
        store
            .history(&p(path))
            .unwrap()
            .iter()
            .map(|s| s.seq)
            .collect()
    };
    let c = seqs("/c");
    // Everything that happened to the node that is /c: creation as /a, its writes, the rename,
    // the link, the unlink of its other name, and later changes.
    assert_eq!(c.first(), Some(&1));
    assert!(c.contains(&66) && c.contains(&67) && c.contains(&69) && c.contains(&70));
    assert!(!c.contains(&71) && !c.contains(&72));
    assert_eq!(seqs("/e/f"), [74]);
    assert_eq!(seqs("/e"), [74]);
    assert!(seqs("/nothing").is_empty());
}

#[test]
fn changes_between_moments() {
    let tmp = tempfile::tempdir().unwrap();
    build(tmp.path());
    let store = Store::open(tmp.path()).unwrap();
    let changes = |a, b| -> Vec<(String, ChangeKind)> {
        store
            .changes(a, b)
            .unwrap()
            .into_iter()
            .map(|c| (c.path.to_string(), c.kind))
            .collect()
    };
    assert_eq!(changes(0, 1), [("/a".to_string(), ChangeKind::Added)]);
    assert_eq!(changes(1, 2), [("/a".to_string(), ChangeKind::Modified)]);
    assert_eq!(
        changes(65, 66),
        [
            ("/a".to_string(), ChangeKind::Removed),
            ("/b".to_string(), ChangeKind::Added)
        ]
    );
    // Truncating an empty file to 0 changes nothing a person could see.
    assert!(changes(72, 73).is_empty());
    assert_eq!(
        changes(73, 74),
        [
            ("/e".to_string(), ChangeKind::Added),
            ("/e/f".to_string(), ChangeKind::Added)
        ]
    );
    let c = store.changes(67, 69).unwrap();
    assert_eq!(c.len(), 2);
    assert_eq!(
        (c[0].path.to_string(), c[0].kind),
        ("/b".to_string(), ChangeKind::Removed)
    );
    assert_eq!(
        (c[1].path.to_string(), c[1].kind),
        ("/c".to_string(), ChangeKind::Modified)
    );
    assert_eq!(
        c[1].before.as_ref().unwrap().node,
        c[1].after.as_ref().unwrap().node
    );

    let tree = store.tree_at(74).unwrap();
    let f = &tree.entries[&p("/e")];
    assert_eq!((f.mode, f.node >> 63), (0o755, 1), "implicit parent");
    let content = store.read_content(tree.entries[&p("/c")].node, 74).unwrap();
    assert_eq!(content.len(), 64 * 16384);
    assert_eq!(&content[..5], b"hello");
}
