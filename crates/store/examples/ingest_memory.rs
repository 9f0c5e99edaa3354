//! Where does a writer's memory go during a large recording, and what does the store cost on
//! disk? Writes 1 GiB (by default) as FILES files (64 KiB writes, a commit per 32 MiB, as the
//! recorder does) straight into a store, printing peak RSS as it goes and the store's size
//! against the bytes written at the end. Under `valgrind --tool=massif` it shows what holds
//! the memory; under `/usr/bin/time -v` it gives the peak RSS to compare.
//!
//! cargo run --release -p diffkeeper-store --example ingest_memory [CACHE_MIB] [FILES] [DATA] [MIB]
//!
//! DATA is `letters` (xorshift letters: compresses about as well as text, the default),
//! `random` (incompressible) or `text` (the files under /usr/share/doc, cycled).

use diffkeeper_store::{
    EntryKind, Event, Op, RecPath, RecordingInfo, Store, Writer, WriterOptions,
};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Instant;

fn peak_rss() -> String {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmHWM"))
        .unwrap_or("VmHWM: ?")
        .split_whitespace()
        .skip(1)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Bytes the dir takes on disk (allocated blocks, as `du` counts them).
fn disk_usage(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).expect("a readable dir") {
        let entry = entry.expect("a dir entry");
        let meta = entry.metadata().expect("metadata");
        total += if meta.is_dir() {
            disk_usage(&entry.path())
        } else {
            meta.blocks() * 512
        };
    }
    total
}

/// The bytes to record, produced in pieces.
enum Source {
    Letters(u64),
    Random(u64),
    Text { corpus: Vec<u8>, at: usize },
}

impl Source {
    /// `text` reads at most `limit` bytes of files (all in memory, so keep it small next to
    /// what is measured).
    fn new(kind: &str, limit: usize) -> Source {
        match kind {
            "letters" => Source::Letters(7),
            "random" => Source::Random(7),
            "text" => {
                let mut corpus = Vec::new();
                collect_files(Path::new("/usr/share/doc"), &mut corpus, limit);
                assert!(!corpus.is_empty(), "no files under /usr/share/doc");
                Source::Text { corpus, at: 0 }
            }
            other => panic!("DATA is letters, random or text, not {other:?}"),
        }
    }

    fn next(&mut self, n: usize) -> Vec<u8> {
        let xorshift = |seed: &mut u64| {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            *seed
        };
        match self {
            Source::Letters(seed) => (0..n).map(|_| b'a' + (xorshift(seed) % 26) as u8).collect(),
            Source::Random(seed) => (0..n).map(|_| (xorshift(seed) >> 24) as u8).collect(),
            Source::Text { corpus, at } => {
                let mut out = Vec::with_capacity(n);
                while out.len() < n {
                    let take = (n - out.len()).min(corpus.len() - *at);
                    out.extend_from_slice(&corpus[*at..*at + take]);
                    *at = (*at + take) % corpus.len();
                }
                out
            }
        }
    }
}

fn collect_files(dir: &Path, out: &mut Vec<u8>, limit: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut paths: Vec<_> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
    paths.sort();
    for p in paths {
        if out.len() >= limit {
            return;
        }
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.is_dir() {
            collect_files(&p, out, limit);
        } else if meta.is_file() {
            if let Ok(bytes) = std::fs::read(&p) {
                out.extend_from_slice(&bytes);
            }
        }
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut number = |default: u64| {
        args.next()
            .map_or(default, |a| a.parse::<u64>().expect("a number"))
    };
    let cache_mib = number(64);
    let files = number(10_000);
    let kind = std::env::args().nth(3).unwrap_or_else(|| "letters".into());
    let total_mib = std::env::args()
        .nth(4)
        .map_or(1024, |a| a.parse::<u64>().expect("a number of MiB"));
    let mut source = Source::new(&kind, (total_mib.min(64) << 20) as usize);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let opts = WriterOptions {
        cache_bytes: cache_mib << 20,
        ..WriterOptions::default()
    };
    let mut w = Writer::create_with(dir.path(), RecordingInfo::default(), opts).unwrap();
    let per_file = (total_mib << 20) / files;
    let (mut time, mut uncommitted, mut written) = (1_000u64, 0u64, 0u64);
    let started = Instant::now();
    for f in 0..files {
        let node = w.new_node();
        let path = RecPath::normalize(format!("/d{}/f{f}", f % 100).as_bytes()).unwrap();
        time += 1_000;
        let op = Op::Create {
            node,
            path,
            mode: 0o644,
        };
        w.append(Event {
            time,
            process: None,
            op,
        })
        .unwrap();
        let mut offset = 0;
        while offset < per_file {
            let n = (per_file - offset).min(64 << 10) as usize;
            let data = source.next(n);
            time += 1_000;
            let op = Op::Write { node, offset, data };
            w.append(Event {
                time,
                process: None,
                op,
            })
            .unwrap();
            offset += n as u64;
            uncommitted += n as u64;
            written += n as u64;
        }
        if uncommitted >= 32 << 20 {
            w.commit().unwrap();
            uncommitted = 0;
        }
        if f % (files / 5).max(1) == 0 {
            println!(
                "{f:>6} files, {:>8.1?}, peak RSS {}",
                started.elapsed(),
                peak_rss()
            );
        }
    }
    w.finish(time + 1).unwrap();
    let store = disk_usage(dir.path());
    let index = disk_usage(&dir.path().join("db"));
    println!(
        "{files} files / {total_mib} MiB of {kind} in {:.1?}, sled cache {cache_mib} MiB: peak RSS {}",
        started.elapsed(),
        peak_rss()
    );
    println!(
        "store {store} B on disk ({index} B of them the sled index) for {written} B written: \
         {:.3}x",
        store as f64 / written as f64
    );
    // What reading it all back costs, as an export of the end does (without the writes).
    let started = Instant::now();
    let store = Store::open(dir.path()).unwrap();
    let tree = store.tree_at(store.span().last_seq).unwrap();
    let mut read = 0;
    for entry in tree.entries.values() {
        if let EntryKind::File { .. } = entry.kind {
            read += store.read_content(entry.node, tree.seq).unwrap().len() as u64;
        }
    }
    assert_eq!(read, written, "every byte written reads back");
    println!(
        "read back {} entries, {read} B, in {:.1?} ({} records read)",
        tree.entries.len(),
        started.elapsed(),
        store.read_stats().records_read
    );
}
