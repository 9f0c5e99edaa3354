//! Whole-file saves (atomic rename of a new file, or truncate-and-rewrite in place) are stored as
//! deltas against the previous version; every version must still rebuild byte-exactly, also
//! across a resumed writer, and the store must stay a small fraction of what was written.

use diffkeeper_store::{
    EntryKind, Event, NodeId, Op, RecPath, RecordingInfo, Seq, Store, Target, Writer, WriterOptions,
};
use proptest::prelude::*;

mod common;
use common::du;
use std::path::Path;

/// xorshift64*, as the benchmark's config writer uses.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// A ~4 KiB JSON config of random hex values that changes a few bytes per save.
struct Config {
    body: String,
    settings: u64,
    generation: u64,
    rng: Rng,
}

impl Config {
    fn new(seed: u64) -> Self {
        let mut rng = Rng(seed);
        let mut body = String::from("{\n");
        let mut settings = 0;
        while body.len() < 4000 {
            body.push_str(&format!(
                "  \"setting_{settings:03}\": \"{:016x}\",\n",
                rng.next()
            ));
            settings += 1;
        }
        body.push_str("  \"generation\": 0000000000\n}\n");
        Config {
            body,
            settings,
            generation: 0,
            rng,
        }
    }

    fn next_version(&mut self) -> Vec<u8> {
        let at = self.body.len() - 13;
        self.body
            .replace_range(at..at + 10, &format!("{:010}", self.generation));
        self.generation += 1;
        let k = self.rng.next() % self.settings;
        let line = format!("  \"setting_{k:03}\": \"");
        let at = self.body.find(&line).expect("every setting is there") + line.len();
        let value = format!("{:04x}", self.rng.next() & 0xffff);
        self.body.replace_range(at..at + 4, &value);
        self.body.clone().into_bytes()
    }
}

fn path(p: &str) -> RecPath {
    RecPath::normalize(p.as_bytes()).unwrap()
}

/// Appends events and remembers what a reader must rebuild after each.
struct Recording {
    w: Option<Writer>,
    time: u64,
    /// (seq, node, expected content) after each save.
    expected: Vec<(Seq, NodeId, Vec<u8>)>,
    written: u64,
}

impl Recording {
    fn new(dir: &Path, opts: WriterOptions) -> Self {
        Recording {
            w: Some(Writer::create_with(dir, RecordingInfo::default(), opts).unwrap()),
            time: 1_000,
            expected: Vec::new(),
            written: 0,
        }
    }

    fn w(&mut self) -> &mut Writer {
        self.w.as_mut().unwrap()
    }

    fn append(&mut self, op: Op) -> Seq {
        self.time += 1_000;
        let time = self.time;
        self.w()
            .append(Event {
                time,
                process: None,
                op,
            })
            .unwrap()
    }

    /// create tmp (a new node), write it whole, rename it over the target.
    fn atomic_save(&mut self, data: Vec<u8>) {
        let node = self.w().new_node();
        let (tmp, target) = (path("/etc/app.tmp"), path("/etc/app.json"));
        self.append(Op::Create {
            node,
            path: tmp.clone(),
            mode: 0o644,
        });
        self.append(Op::Write {
            node,
            offset: 0,
            data: data.clone(),
        });
        let seq = self.append(Op::Rename {
            from: tmp,
            to: target,
        });
        self.written += data.len() as u64;
        self.expected.push((seq, node, data));
    }

    /// open(O_TRUNC) and write the whole file again, in two writes.
    fn rewrite_in_place(&mut self, node: NodeId, data: Vec<u8>) {
        self.append(Op::Truncate {
            target: Target::Node(node),
            size: 0,
        });
        let half = data.len() / 2;
        self.append(Op::Write {
            node,
            offset: 0,
            data: data[..half].to_vec(),
        });
        let seq = self.append(Op::Write {
            node,
            offset: half as u64,
            data: data[half..].to_vec(),
        });
        self.written += data.len() as u64;
        self.expected.push((seq, node, data));
    }

    fn resume(&mut self, dir: &Path, opts: WriterOptions) {
        drop(self.w.take());
        self.w = Some(Writer::resume_with(dir, opts).unwrap());
    }

    fn finish(mut self) -> Vec<(Seq, NodeId, Vec<u8>)> {
        let time = self.time + 1;
        self.w.take().unwrap().finish(time).unwrap();
        self.expected
    }
}

/// Every saved version reads back exactly, through both `read_content` and the event log.
fn check(dir: &Path, expected: &[(Seq, NodeId, Vec<u8>)]) {
    let store = Store::open(dir).unwrap();
    // Newest first, so no version is helped by a reference cached while reading an older one.
    for (seq, node, content) in expected.iter().rev() {
        let got = store.read_content(*node, *seq).unwrap();
        assert!(got == *content, "version at @seq:{seq} differs");
    }
    let last = store.span().last_seq;
    let events = store.events(1, last).count();
    assert_eq!(events as Seq, last);
    for item in store.events(1, last) {
        item.unwrap();
    }
}

fn opts(depth: u32) -> WriterOptions {
    WriterOptions {
        max_delta_depth: depth,
        ..WriterOptions::default()
    }
}

#[test]
fn atomic_saves_rebuild_exactly_across_commits_and_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("rec");
    let mut rec = Recording::new(&dir, opts(5));
    let mut config = Config::new(42);
    for i in 0..120 {
        rec.atomic_save(config.next_version());
        if i % 17 == 0 {
            rec.w().commit().unwrap();
        }
        if i == 60 {
            rec.resume(&dir, opts(5));
        }
    }
    let expected = rec.finish();
    check(&dir, &expected);
}

#[test]
fn truncating_rewrites_rebuild_exactly_across_commits_and_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("rec");
    let mut rec = Recording::new(&dir, opts(4));
    let node = rec.w().new_node();
    rec.append(Op::Create {
        node,
        path: path("/etc/app.conf"),
        mode: 0o644,
    });
    let mut config = Config::new(7);
    for i in 0..100 {
        rec.rewrite_in_place(node, config.next_version());
        if i % 13 == 0 {
            rec.w().commit().unwrap();
        }
        if i == 50 {
            rec.resume(&dir, opts(4));
        }
    }
    let expected = rec.finish();
    check(&dir, &expected);
    // Reading in order (as `log` and successive exports do) also works from the cache.
    let store = Store::open(&dir).unwrap();
    for (seq, node, content) in &expected {
        assert!(store.read_content(*node, *seq).unwrap() == *content);
    }
}

/// What the store's records themselves take: index keys and values (before sled's own
/// overhead) and the segment files that hold the data.
fn record_bytes(dir: &Path) -> u64 {
    let index = common::index_record_bytes(dir);
    let segments: u64 = std::fs::read_dir(dir.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    index + segments
}

#[test]
fn atomic_saves_of_a_config_take_a_small_fraction_of_what_was_written() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = common::empty_recording(tmp.path());
    let sled_floor = du(&empty);

    let dir = tmp.path().join("rec");
    let mut rec = Recording::new(&dir, WriterOptions::default());
    let mut config = Config::new(42);
    for _ in 0..200 {
        rec.atomic_save(config.next_version());
    }
    let written = rec.written;
    let expected = rec.finish();
    check(&dir, &expected);
    let on_disk = du(&dir);
    let records = record_bytes(&dir);
    eprintln!(
        "200 atomic saves: {written} B written, {records} B of records, {on_disk} B on disk \
         (an empty recording: {sled_floor} B)"
    );
    assert!(
        records * 100 < written * 15,
        "records take {records} B of {written} B written"
    );
    // sled adds far more than the records: it allocates its log in 512 KiB segments (so any
    // non-empty store takes at least one) and rewrites leaves of 16 items as they fill (several
    // times the bytes of small records). Beyond one segment, the disk must stay within target.
    assert!(
        on_disk.saturating_sub(512 * 1024) * 100 < written * 15,
        "{on_disk} B on disk (an empty store: {sled_floor} B) of {written} B written"
    );
}

#[test]
fn deltas_are_used_and_a_standalone_version_comes_every_depth_plus_one() {
    let tmp = tempfile::tempdir().unwrap();
    let mut sizes = Vec::new();
    for depth in [0, 3] {
        let dir = tmp.path().join(format!("rec{depth}"));
        let mut rec = Recording::new(&dir, opts(depth));
        let mut config = Config::new(3);
        for _ in 0..40 {
            rec.atomic_save(config.next_version());
            // Saves come seconds apart, each in a commit of its own. (Versions saved within
            // one commit share a compressed segment block, which finds what they repeat
            // without any delta.)
            rec.w().commit().unwrap();
        }
        let expected = rec.finish();
        check(&dir, &expected);
        sizes.push(record_bytes(&dir));
    }
    // Depth 3: one version in four is standalone, the others a few dozen bytes, so at most 4x
    // smaller: 3.0x measured; without deltas it would be about 1x.
    assert!(
        sizes[1] * 5 < sizes[0] * 2,
        "deltas saved too little: {sizes:?}"
    );
}

#[derive(Clone, Debug)]
enum Save {
    Atomic(Vec<(usize, u8)>),
    InPlace(Vec<(usize, u8)>),
    Unlink,
    Commit,
    Resume,
}

fn save() -> impl Strategy<Value = Save> {
    let edits = prop::collection::vec((0usize..600, any::<u8>()), 0..6);
    prop_oneof![
        4 => edits.clone().prop_map(Save::Atomic),
        3 => edits.prop_map(Save::InPlace),
        1 => Just(Save::Unlink),
        2 => Just(Save::Commit),
        1 => Just(Save::Resume),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Mixed atomic saves, in-place rewrites, deletions (the next create then refers to a dead
    /// node), commits and resumes, with tiny limits so chain cuts and evictions happen.
    #[test]
    fn every_saved_version_rebuilds(
        saves in prop::collection::vec(save(), 1..60),
        depth in 0u32..4,
        memory in prop_oneof![Just(0usize), Just(1500), Just(1 << 20)],
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("rec");
        let o = WriterOptions {
            max_delta_depth: depth,
            delta_memory_bytes: memory,
            delta_file_bytes: 700,
            block_events: 7,
            ..WriterOptions::default()
        };
        let mut rec = Recording::new(&dir, o.clone());
        let mut content: Vec<u8> = (0..500u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut in_place: Option<NodeId> = None;
        for s in saves {
            match s {
                Save::Atomic(edits) | Save::InPlace(edits) if edits.is_empty() => {
                    content.truncate(content.len() / 2);
                    rec.atomic_save(content.clone());
                }
                Save::Atomic(edits) => {
                    for (at, b) in edits {
                        let at = at % (content.len() + 1);
                        content.insert(at, b);
                    }
                    rec.atomic_save(content.clone());
                }
                Save::InPlace(edits) => {
                    for (at, b) in edits {
                        if let Some(c) = content.get_mut(at % 600) {
                            *c = b;
                        } else {
                            content.push(b);
                        }
                    }
                    let node = match in_place {
                        Some(node) => node,
                        None => {
                            let node = rec.w().new_node();
                            rec.append(Op::Create { node, path: path("/var/state"), mode: 0o600 });
                            in_place = Some(node);
                            node
                        }
                    };
                    rec.rewrite_in_place(node, content.clone());
                }
                Save::Unlink => {
                    rec.append(Op::Unlink { path: path("/etc/app.json") });
                }
                Save::Commit => rec.w().commit().unwrap(),
                Save::Resume => rec.resume(&dir, o.clone()),
            }
        }
        let expected = rec.finish();
        check(&dir, &expected);
    }
}

/// A sparse file is legal: truncating a small saved file to a terabyte, or writing far past its
/// end, must not make the writer build that content in memory to compare later saves with.
#[test]
fn sparse_growth_of_a_saved_file_costs_no_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("rec");
    let mut rec = Recording::new(&dir, opts(4));
    let node = rec.w().new_node();
    rec.append(Op::Create {
        node,
        path: path("/var/disk.img"),
        mode: 0o644,
    });
    rec.rewrite_in_place(node, b"a small header".to_vec());
    let grown = rec.append(Op::Truncate {
        target: Target::Node(node),
        size: 1 << 40,
    });
    let far = rec.append(Op::Write {
        node,
        offset: u64::MAX - 3,
        data: b"end".to_vec(),
    });
    rec.finish();
    let store = Store::open(&dir).unwrap();
    let size_at = |seq| match store.tree_at(seq).unwrap().entries[&path("/var/disk.img")].kind {
        EntryKind::File { size } => size,
        ref other => panic!("not a file: {other:?}"),
    };
    assert_eq!(size_at(grown), 1 << 40);
    assert_eq!(size_at(far), u64::MAX);
}
