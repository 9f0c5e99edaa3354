//! Files born in a block share their index records with their neighbours (format 6): many small
//! files cost a few dozen bytes of index each, and every version still reads back whether a
//! node's records are grouped, its own, or both, across group boundaries, rests and resumes.

use diffkeeper_store::{EntryKind, Event, NodeId, Op, RecPath, RecordingInfo, Store, Writer};
use std::collections::BTreeMap;

mod common;
use common::{du, index_record_bytes};

fn path(p: &str) -> RecPath {
    RecPath::normalize(p.as_bytes()).unwrap()
}

fn append(writer: &mut Writer, time: &mut u64, op: Op) -> u64 {
    *time += 1_000;
    writer
        .append(Event {
            time: *time,
            process: None,
            op,
        })
        .unwrap()
}

#[test]
fn many_small_files_cost_a_few_dozen_bytes_of_index_records_each() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = common::empty_recording(tmp.path());
    let dir = tmp.path().join("rec");
    let mut w = Writer::create(&dir, RecordingInfo::default()).unwrap();
    let mut time = 0;
    const FILES: u64 = 20_000;
    for f in 0..FILES {
        let node = w.new_node();
        let op = Op::Create {
            node,
            path: path(&format!("/src/d{}/f{f}.txt", f % 50)),
            mode: 0o644,
        };
        append(&mut w, &mut time, op);
        let data = format!("file {f}: a line of text\n").into_bytes();
        append(
            &mut w,
            &mut time,
            Op::Write {
                node,
                offset: 0,
                data,
            },
        );
        // The recorder commits about once a second: a few thousand files at a time.
        if f % 2_000 == 1_999 {
            w.commit().unwrap();
        }
    }
    w.finish(time + 1).unwrap();

    let index = du(&dir.join("db")).saturating_sub(du(&empty.join("db")));
    let records = index_record_bytes(&dir) - index_record_bytes(&empty);
    eprintln!(
        "{FILES} small files: {} B of index records a file, {} B on disk a file",
        records / FILES,
        index / FILES
    );
    // Before format 6: two records a file, 600 B on disk; now a few dozen bytes of records.
    // sled then rewrites each leaf it adds to at every commit (leaves of 16 items), so on disk
    // a file costs several times its records' bytes: 142-316 B measured, from 5,000 files a
    // commit to 100.
    assert!(
        records / FILES <= 48,
        "{} B of index records a file",
        records / FILES
    );
    assert!(
        index / FILES <= 300,
        "{} B of index on disk a file",
        index / FILES
    );

    let store = Store::open(&dir).unwrap();
    let tree = store.tree_at(store.span().last_seq).unwrap();
    let mut files = 0;
    for (p, entry) in &tree.entries {
        if let EntryKind::File { .. } = entry.kind {
            let f = p.to_string();
            let f = f.rsplit_once("/f").unwrap().1.trim_end_matches(".txt");
            let content = store.read_content(entry.node, tree.seq).unwrap();
            assert_eq!(content, format!("file {f}: a line of text\n").into_bytes());
            files += 1;
        }
    }
    assert_eq!(files, FILES);
}

/// Each file's path and content.
type Files = BTreeMap<NodeId, (RecPath, Vec<u8>)>;

/// What each file holds after each commit, kept beside the writer.
#[derive(Default)]
struct Expected {
    files: Files,
    /// (committed seq, the files then).
    versions: Vec<(u64, Files)>,
}

impl Expected {
    fn write(&mut self, node: NodeId, offset: usize, data: &[u8]) {
        let content = &mut self.files.get_mut(&node).unwrap().1;
        if content.len() < offset + data.len() {
            content.resize(offset + data.len(), 0);
        }
        content[offset..offset + data.len()].copy_from_slice(data);
    }

    fn committed(&mut self, seq: u64) {
        self.versions.push((seq, self.files.clone()));
    }
}

struct Run {
    w: Writer,
    time: u64,
    expected: Expected,
}

impl Run {
    fn create(&mut self, node: NodeId, p: &str) {
        let path = path(p);
        self.expected.files.insert(node, (path.clone(), Vec::new()));
        append(
            &mut self.w,
            &mut self.time,
            Op::Create {
                node,
                path,
                mode: 0o644,
            },
        );
    }

    fn write(&mut self, node: NodeId, offset: usize, data: &[u8]) {
        self.expected.write(node, offset, data);
        append(
            &mut self.w,
            &mut self.time,
            Op::Write {
                node,
                offset: offset as u64,
                data: data.to_vec(),
            },
        );
    }

    fn commit(&mut self) {
        self.w.commit().unwrap();
        let seq = self.w.stats().committed_seq;
        self.expected.committed(seq);
    }
}

#[test]
fn grouped_and_own_records_of_a_node_read_back_as_one_history() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("rec");
    let mut run = Run {
        w: Writer::create(&dir, RecordingInfo::default()).unwrap(),
        time: 0,
        expected: Expected::default(),
    };
    // Block 1: ids 1..=70 cross a group boundary (64); node 5 changes in more ops than a
    // grouped node may, so its records are its own from the start.
    let mut nodes = Vec::new();
    for i in 0..70 {
        let node = run.w.new_node();
        run.create(node, &format!("/a/{i}"));
        run.write(node, 0, format!("first {i}\n").as_bytes());
        nodes.push(node);
    }
    for k in 0..20 {
        run.write(nodes[4], 10 + k * 3, b"xyz");
    }
    run.commit();
    // Later blocks: grouped nodes grow with records of their own; ids a caller chose itself,
    // far from the rest, start a group of their own.
    for round in 0..5usize {
        for (i, node) in nodes.iter().enumerate().step_by(7) {
            run.write(*node, 4 + round, format!("<{round}.{i}>").as_bytes());
        }
        let chosen = 10_000 + round as u64;
        run.create(chosen, &format!("/b/{round}"));
        run.write(chosen, 0, b"chosen\n");
        if round == 2 {
            // A resting writer reopens its index: nodes born after that still group.
            run.commit();
            assert!(run.w.rest().unwrap());
            let node = run.w.new_node();
            run.create(node, "/c/after-rest");
            run.write(node, 0, b"rested\n");
            nodes.push(node);
        }
        run.commit();
    }
    // A resumed writer, then more files and more writes to old ones.
    let Run {
        w, time, expected, ..
    } = run;
    drop(w);
    let mut run = Run {
        w: Writer::resume(&dir).unwrap(),
        time,
        expected,
    };
    for i in 0..10 {
        let node = run.w.new_node();
        run.create(node, &format!("/d/{i}"));
        run.write(node, 0, b"resumed\n");
        run.write(nodes[i * 3], 0, b"R");
    }
    run.commit();
    let Run { w, time, expected } = run;
    w.finish(time + 1).unwrap();

    // What the history is meant to hold: records of both kinds for the same nodes.
    let grouped = common::index_records_of_kind(&dir, b'N');
    let own = common::index_records_of_kind(&dir, b'n');
    assert!(
        grouped > 0 && own > 0,
        "grouped records {grouped}, own {own}"
    );
    let store = Store::open(&dir).unwrap();
    for (seq, files) in &expected.versions {
        let tree = store.tree_at(*seq).unwrap();
        for (node, (p, content)) in files {
            let entry = tree
                .entries
                .get(p)
                .unwrap_or_else(|| panic!("{p} at @{seq}"));
            assert_eq!(entry.node, *node);
            let got = store.read_content(*node, *seq).unwrap();
            assert_eq!(
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(content),
                "{p} at @seq:{seq}"
            );
        }
    }
    let verification = store.verify().unwrap();
    assert!(verification.damage.is_empty(), "{:?}", verification.damage);
}
