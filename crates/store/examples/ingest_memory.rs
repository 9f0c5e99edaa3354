//! Where does a writer's memory go during a large recording? Writes 1 GiB as 10,000 files of
//! ~100 KiB (64 KiB writes, a commit per 32 MiB, as the recorder does) straight into a store,
//! printing peak RSS as it goes. Under `valgrind --tool=massif` it shows what holds the memory.
//!
//! cargo run --release -p diffkeeper-store --example ingest_memory [CACHE_MIB] [FILES]

use diffkeeper_store::{Event, Op, RecPath, RecordingInfo, Writer, WriterOptions};
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

fn main() {
    let mut args = std::env::args()
        .skip(1)
        .map(|a| a.parse::<u64>().expect("a number"));
    let cache_mib = args.next().unwrap_or(64);
    let files = args.next().unwrap_or(10_000);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let opts = WriterOptions {
        cache_bytes: cache_mib << 20,
        ..WriterOptions::default()
    };
    let mut w = Writer::create_with(dir.path(), RecordingInfo::default(), opts).unwrap();
    let per_file = (1u64 << 30) / files;
    let (mut time, mut seed, mut uncommitted) = (1_000u64, 7u64, 0u64);
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
            // Letters from xorshift: compresses about as well as text.
            let data: Vec<u8> = (0..n)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    b'a' + (seed % 26) as u8
                })
                .collect();
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
    println!(
        "{files} files / 1 GiB in {:.1?}, sled cache {cache_mib} MiB: peak RSS {}",
        started.elapsed(),
        peak_rss()
    );
}
