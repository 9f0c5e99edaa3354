//! Format 4 keeps data bytes in segment files: sled holds only the index, incompressible data
//! costs about its size, sealed segments never change, and a resumed writer refuses segments
//! that lost what the index refers to.

use diffkeeper_store::{Event, Op, RecPath, RecordingInfo, Store, Writer, WriterOptions};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn path(s: &str) -> RecPath {
    RecPath::normalize(s.as_bytes()).unwrap()
}

fn random_bytes(state: &mut u64, n: usize) -> Vec<u8> {
    (0..n)
        .map(|_| {
            *state ^= *state << 13;
            *state ^= *state >> 7;
            *state ^= *state << 17;
            (*state >> 24) as u8
        })
        .collect()
}

fn segment_files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    std::fs::read_dir(dir.join("segments"))
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

/// Key and value bytes of the sled index.
fn index_bytes(dir: &Path) -> u64 {
    let db = sled::open(dir.join("db")).unwrap();
    db.iter()
        .map(|kv| {
            let (k, v) = kv.unwrap();
            (k.len() + v.len()) as u64
        })
        .sum()
}

/// Writes `files` files of `per_file` random bytes in 64 KiB writes, committing every 4 files.
fn write_random(w: &mut Writer, files: usize, per_file: usize, seed: &mut u64, time: &mut u64) {
    for _ in 0..files {
        let node = w.new_node();
        let name = format!("/f{node}");
        *time += 1_000;
        w.append(Event {
            time: *time,
            process: None,
            op: Op::Create {
                node,
                path: path(&name),
                mode: 0o644,
            },
        })
        .unwrap();
        for offset in (0..per_file).step_by(64 << 10) {
            let n = (per_file - offset).min(64 << 10);
            *time += 1_000;
            let op = Op::Write {
                node,
                offset: offset as u64,
                data: random_bytes(seed, n),
            };
            w.append(Event {
                time: *time,
                process: None,
                op,
            })
            .unwrap();
        }
        if node.is_multiple_of(4) {
            w.commit().unwrap();
        }
    }
}

#[test]
fn data_lives_in_segments_and_costs_its_size_when_incompressible() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("rec");
    let opts = WriterOptions {
        segment_bytes: 1 << 20,
        ..WriterOptions::default()
    };
    let mut w = Writer::create_with(&dir, RecordingInfo::default(), opts.clone()).unwrap();
    let (mut seed, mut time) = (99u64, 1_000u64);
    write_random(&mut w, 24, 300 << 10, &mut seed, &mut time);
    let written = w.stats().payload_bytes;
    w.flush().unwrap();
    let sealed_before = segment_files(&dir);
    assert!(sealed_before.len() > 3, "1 MiB segments were sealed");
    write_random(&mut w, 8, 300 << 10, &mut seed, &mut time);
    w.finish(time + 1).unwrap();

    // Every segment but the newest at that point was sealed and must be byte-identical now.
    let after = segment_files(&dir);
    let newest = sealed_before.keys().next_back().unwrap().clone();
    for (p, bytes) in &sealed_before {
        if *p != newest {
            assert!(after[p] == *bytes, "sealed segment {} changed", p.display());
        }
    }
    let total = w_payload(&dir);
    assert!(total > written);
    let segments: u64 = after.values().map(|b| b.len() as u64).sum();
    let index = index_bytes(&dir);
    eprintln!("{total} B written: {segments} B of segments, {index} B of index records");
    assert!(
        segments * 100 <= total * 101,
        "{segments} B of segments for {total} B of random data"
    );
    assert!(
        index * 100 < total,
        "the index holds {index} B for {total} B written: data went into sled"
    );
}

/// Bytes of data the recording holds (from its events), to compare the store with.
fn w_payload(dir: &Path) -> u64 {
    let store = Store::open(dir).unwrap();
    let last = store.span().last_seq;
    store
        .events(1, last)
        .map(|e| match e.unwrap().1.op {
            Op::Write { data, .. } => data.len() as u64,
            _ => 0,
        })
        .sum()
}

#[test]
fn a_segment_shorter_than_the_index_says_is_refused_on_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("rec");
    let mut w = Writer::create(&dir, RecordingInfo::default()).unwrap();
    let (mut seed, mut time) = (5u64, 1_000u64);
    write_random(&mut w, 4, 100 << 10, &mut seed, &mut time);
    w.finish(time + 1).unwrap();
    let (seg, bytes) = segment_files(&dir).into_iter().next_back().unwrap();
    // Lose the last 1000 bytes, which the index refers to (a disk that lied about fsync).
    std::fs::write(&seg, &bytes[..bytes.len() - 1000]).unwrap();
    let err = Writer::resume(&dir).unwrap_err().to_string();
    assert!(
        err.contains("000001.seg") && err.contains("index refers"),
        "{err}"
    );
}
