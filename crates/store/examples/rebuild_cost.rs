//! What does rebuilding a heavily rewritten file cost? Records 100k small writes (random
//! offsets in a 1 MiB file, then appends), then measures tree_at + read_content in the middle
//! and at the end: wall time, bytes read from the store, and store size against bytes written.
//!
//! cargo run --release -p diffkeeper-store --example rebuild_cost

use diffkeeper_store::{Event, Op, RecPath, RecordingInfo, Seq, Store, Target, Writer};
use std::path::Path;
use std::time::Instant;

const WRITES: u64 = 100_000;
const WRITE_LEN: usize = 64;
const FILE_SIZE: u64 = 1 << 20;
/// The recorder flushes about once a second; at a few thousand events a second that is this.
const FLUSH_EVERY: u64 = 2_000;

struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

enum Pattern {
    RandomOffsets,
    Appends,
}

fn main() {
    for (name, pattern) in [
        ("random 64 B writes in a 1 MiB file", Pattern::RandomOffsets),
        ("64 B appends", Pattern::Appends),
    ] {
        let tmp = tempfile::tempdir().expect("temp dir");
        run(name, pattern, tmp.path());
    }
}

fn run(name: &str, pattern: Pattern, dir: &Path) {
    println!("== {name}: {WRITES} writes ==");
    let mut rng = Random(0x9e37_79b9_7f4a_7c15);
    let info = RecordingInfo {
        command: vec!["rebuild_cost".into()],
        ..Default::default()
    };
    let mut w = Writer::create(dir, info).expect("create");
    let node = w.new_node();
    let path = RecPath::normalize(b"/data/file").expect("path");
    let mut time = 0;
    let mut event = |op| {
        time += 1_000;
        Event {
            time,
            process: None,
            op,
        }
    };
    let started = Instant::now();
    w.append(event(Op::Create {
        node,
        path,
        mode: 0o644,
    }))
    .expect("append");
    if let Pattern::RandomOffsets = pattern {
        let op = Op::Truncate {
            target: Target::Node(node),
            size: FILE_SIZE,
        };
        w.append(event(op)).expect("append");
    }
    // The expected content at the middle and at the end, to check the rebuilds.
    let mut content = vec![
        0u8;
        if let Pattern::RandomOffsets = pattern {
            FILE_SIZE as usize
        } else {
            0
        }
    ];
    let (mut mid_seq, mut mid_content) = (0, Vec::new());
    let mut last: Seq = 0;
    for i in 0..WRITES {
        let offset = match pattern {
            Pattern::RandomOffsets => rng.next() % (FILE_SIZE - WRITE_LEN as u64),
            Pattern::Appends => i * WRITE_LEN as u64,
        };
        let data = rng.bytes(WRITE_LEN);
        let end = offset as usize + WRITE_LEN;
        if content.len() < end {
            content.resize(end, 0);
        }
        content[offset as usize..end].copy_from_slice(&data);
        last = w
            .append(event(Op::Write { node, offset, data }))
            .expect("append");
        if (i + 1).is_multiple_of(FLUSH_EVERY) {
            w.flush().expect("flush");
        }
        if i == WRITES / 2 {
            (mid_seq, mid_content) = (last, content.clone());
        }
    }
    w.flush().expect("flush");
    let stats = w.stats();
    w.finish(time).expect("finish");
    let write_secs = started.elapsed().as_secs_f64();
    let written = stats.payload_bytes;
    let on_disk = dir_size(dir);
    println!(
        "recorded in {write_secs:.2} s ({:.0} events/s); {} keyframes, {} checkpoints",
        last as f64 / write_secs,
        stats.keyframes,
        stats.checkpoints
    );
    println!(
        "bytes written {} ({}), store on disk {} ({:.2}x)",
        written,
        mib(written),
        mib(on_disk),
        on_disk as f64 / written as f64
    );

    let store = Store::open(dir).expect("open");
    for (label, seq, expected) in [("middle", mid_seq, &mid_content), ("end", last, &content)] {
        let before = store.read_stats();
        let t = Instant::now();
        let tree = store.tree_at(seq).expect("tree_at");
        let entry = tree
            .entries
            .values()
            .find(|e| e.node == node)
            .expect("file in tree");
        let bytes = store.read_content(entry.node, seq).expect("read_content");
        let elapsed = t.elapsed();
        let after = store.read_stats();
        assert!(bytes == *expected, "rebuilt content differs at @seq:{seq}");
        println!(
            "rebuild at {label:6} (@seq:{seq}): {:7.1} ms, read {} in {} records for a {} file ({:.2}x its size)",
            elapsed.as_secs_f64() * 1e3,
            mib(after.bytes_read - before.bytes_read),
            after.records_read - before.records_read,
            mib(bytes.len() as u64),
            (after.bytes_read - before.bytes_read) as f64 / bytes.len() as f64,
        );
    }
    println!();
}

fn mib(bytes: u64) -> String {
    format!("{:.2} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Bytes the state dir takes on disk (allocated blocks, so sparse files count as they are).
fn dir_size(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let meta = entry.metadata().expect("metadata");
        total += if meta.is_dir() {
            dir_size(&entry.path())
        } else {
            meta.blocks() * 512
        };
    }
    total
}
