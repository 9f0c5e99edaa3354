//! The streaming content reader gives the same bytes as `read_content`, and reads a huge sparse
//! file without building it in memory, telling its holes apart.

use diffkeeper_store::{Event, Op, RecPath, RecordingInfo, Store, Target, Writer, WriterOptions};
use proptest::prelude::*;
use std::io::Read;

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

#[derive(Clone, Debug)]
enum Step {
    Write {
        file: usize,
        offset: u64,
        len: usize,
        seed: u8,
    },
    Truncate {
        file: usize,
        size: u64,
    },
    Resync {
        file: usize,
        len: usize,
        seed: u8,
    },
    Commit,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0..2usize, 0..6000u64, 1..700usize, any::<u8>())
            .prop_map(|(file, offset, len, seed)| Step::Write { file, offset, len, seed }),
        2 => (0..2usize, 0..7000u64).prop_map(|(file, size)| Step::Truncate { file, size }),
        1 => (0..2usize, 0..3000usize, any::<u8>())
            .prop_map(|(file, len, seed)| Step::Resync { file, len, seed }),
        2 => Just(Step::Commit),
    ]
}

fn bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect()
}

/// Reads all of `node` at `seq` through the streaming reader, in reads of `chunk` bytes.
fn streamed(store: &Store, node: u64, seq: u64, chunk: usize) -> Vec<u8> {
    let mut reader = store.content_reader(node, seq).unwrap();
    let mut out = Vec::new();
    let mut buf = vec![0u8; chunk];
    loop {
        let n = reader.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    assert_eq!(out.len() as u64, reader.len());
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn streamed_content_equals_read_content(
        steps in proptest::collection::vec(step(), 1..80),
        chunk in 1usize..5000,
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let opts = WriterOptions {
            keyframe_min_bytes: 2000,
            keyframe_size_factor: 1,
            keyframe_min_ops: 6,
            keyframe_bytes_per_op: 1 << 20,
            full_keyframe_every: 3,
            segment_bytes: 16 << 10,
            ..WriterOptions::default()
        };
        let mut w = Writer::create_with(tmp.path(), RecordingInfo::default(), opts).unwrap();
        let mut time = 1_000;
        let mut nodes = Vec::new();
        for f in 0..2 {
            let node = w.new_node();
            time += 1;
            w.append(event(time, Op::Create { node, path: path(&format!("/f{f}")), mode: 0o644 })).unwrap();
            nodes.push(node);
        }
        for step in steps {
            time += 1;
            let op = match step {
                Step::Write { file, offset, len, seed } => Op::Write { node: nodes[file], offset, data: bytes(len, seed) },
                Step::Truncate { file, size } => Op::Truncate { target: Target::Node(nodes[file]), size },
                Step::Resync { file, len, seed } => Op::Resync { node: nodes[file], data: bytes(len, seed) },
                Step::Commit => {
                    w.commit().unwrap();
                    continue;
                }
            };
            w.append(event(time, op)).unwrap();
        }
        w.finish(time + 1).unwrap();
        let store = Store::open(tmp.path()).unwrap();
        for seq in 3..=store.span().last_seq {
            for &node in &nodes {
                let whole = store.read_content(node, seq).unwrap();
                let got = streamed(&store, node, seq, chunk);
                prop_assert!(got == whole, "node {} at @seq:{}: {} streamed bytes, {} whole", node, seq, got.len(), whole.len());
            }
        }
    }
}

#[test]
fn a_100_gib_sparse_file_streams_with_its_holes() {
    const GIB: u64 = 1 << 30;
    let size = 100 * GIB;
    let tmp = tempfile::tempdir().unwrap();
    let mut w = Writer::create(tmp.path(), RecordingInfo::default()).unwrap();
    let node = w.new_node();
    let pieces: Vec<(u64, Vec<u8>)> = vec![
        (0, b"head".repeat(1000)),
        (50 * GIB + 3, b"middle".repeat(20_000)),
        (size - 5, b"tail!".to_vec()),
    ];
    let mut time = 1_000;
    let mut append = |w: &mut Writer, op| {
        time += 1;
        w.append(event(time, op)).unwrap();
    };
    append(
        &mut w,
        Op::Create {
            node,
            path: path("/sparse"),
            mode: 0o644,
        },
    );
    append(
        &mut w,
        Op::Write {
            node,
            offset: 0,
            data: pieces[0].1.clone(),
        },
    );
    append(
        &mut w,
        Op::Truncate {
            target: Target::Node(node),
            size,
        },
    );
    for (offset, data) in &pieces[1..] {
        append(
            &mut w,
            Op::Write {
                node,
                offset: *offset,
                data: data.clone(),
            },
        );
    }
    w.finish(time + 1).unwrap();

    let store = Store::open(tmp.path()).unwrap();
    let seq = store.span().last_seq;
    let mut reader = store.content_reader(node, seq).unwrap();
    assert_eq!(reader.len(), size);
    let mut found: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut holes = 0;
    let mut buf = vec![0u8; 64 << 10];
    while reader.position() < reader.len() {
        let hole = reader.hole_len();
        if hole > 0 {
            holes += hole;
            reader.skip(hole);
            continue;
        }
        let at = reader.position();
        let n = reader.read_into(&mut buf).unwrap();
        assert!(n > 0);
        match found.last_mut() {
            Some((start, data)) if *start + data.len() as u64 == at => {
                data.extend_from_slice(&buf[..n])
            }
            _ => found.push((at, buf[..n].to_vec())),
        }
    }
    assert_eq!(found, pieces);
    let data: u64 = pieces.iter().map(|(_, d)| d.len() as u64).sum();
    assert_eq!(holes + data, size);
}
