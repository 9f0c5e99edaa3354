//! Read-backs of files larger than one chunk: the log gets them byte-exact, as a Resync of the
//! first chunk and Writes of the rest, and no op holds more than [`READ_BACK_CHUNK`] bytes (the
//! memory a heal of a 245 MB file needs is a few chunks, not the file). Baseline and the
//! end-of-run check read back the same way as healing does; neither needs the probe.

use diffkeeper_recorder::{monotonic_ns, wall_ns, Recorder, READ_BACK_CHUNK};
use diffkeeper_store::{EntryKind, OpKind, RecordingInfo, Store, Writer};
use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The files of the recording's last moment, by file name, with their bytes.
fn files_at_end(state: &Path) -> BTreeMap<String, Vec<u8>> {
    let store = Store::open(state).unwrap();
    let last = store.span().last_seq;
    let tree = store.tree_at(last).unwrap();
    let mut files = BTreeMap::new();
    for (path, entry) in &tree.entries {
        if let EntryKind::File { .. } = entry.kind {
            let name = path.to_string().rsplit('/').next().unwrap().to_string();
            files.insert(name, store.read_content(entry.node, last).unwrap());
        }
    }
    files
}

#[test]
fn files_larger_than_a_chunk_are_read_back_exactly_in_ops_of_at_most_a_chunk() {
    const C: usize = READ_BACK_CHUNK;
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    let state = tmp.path().join("state");
    fs::create_dir(&work).unwrap();
    // Around the chunk's edges: a file that ends exactly on one must not get an empty Write.
    let sizes = [0, 1, C - 1, C, C + 1, 3 * C + 12_345];
    for (i, len) in sizes.iter().enumerate() {
        fs::write(work.join(format!("f{i}")), pseudo_random(*len, i as u64)).unwrap();
    }
    let info = RecordingInfo {
        started_mono_ns: monotonic_ns(),
        started_wall_ns: wall_ns(),
        ..Default::default()
    };
    let writer = Writer::create(&state, info).unwrap();
    let mut recorder = Recorder::new(writer, "/".into(), vec![state.clone()], 0);
    recorder.baseline(&work, monotonic_ns()).unwrap();
    // Changed behind the recording's back, to other sizes: the end-of-run check reads them
    // back, over content the log already has.
    fs::write(work.join("f5"), pseudo_random(2 * C + 7, 50)).unwrap();
    fs::write(work.join("f4"), pseudo_random(C / 2, 40)).unwrap();
    fs::write(work.join("f1"), pseudo_random(C + C / 3, 10)).unwrap();
    recorder.reconcile(monotonic_ns()).unwrap();
    recorder.into_writer().finish(monotonic_ns()).unwrap();

    let got = files_at_end(&state);
    assert_eq!(got.len(), sizes.len());
    for (name, data) in &got {
        let disk = fs::read(work.join(name)).unwrap();
        assert!(
            *data == disk,
            "{name}: {} bytes in the log, {} on disk",
            data.len(),
            disk.len()
        );
    }
    let store = Store::open(&state).unwrap();
    let data_ops: Vec<(OpKind, u64)> = store
        .summaries(1, store.span().last_seq)
        .map(Result::unwrap)
        .filter(|s| matches!(s.op.kind, OpKind::Write | OpKind::Resync))
        .map(|s| (s.op.kind, s.op.bytes.unwrap_or(0)))
        .collect();
    let biggest = data_ops.iter().map(|(_, n)| *n).max().unwrap();
    assert!(
        biggest <= C as u64,
        "an op of {biggest} bytes: read-backs must hold at most a chunk ({C}) at once"
    );
    // One Resync per read-back (6 at baseline, 3 at the check), the rest of each as Writes:
    // f4 1 and f5 3 at baseline, f1 1 and f5 2 at the check. f3 ends on a chunk: no Write.
    let resyncs = data_ops
        .iter()
        .filter(|(k, _)| *k == OpKind::Resync)
        .count();
    let writes = data_ops
        .iter()
        .filter(|(k, n)| *k == OpKind::Write && *n > 0)
        .count();
    assert_eq!((resyncs, writes), (9, 7), "{data_ops:?}");
}
