//! What each open history costs in memory: the node agent keeps one `Writer` per recorded
//! container. Opens N writers with the agent's options, appends a little to each (as idle
//! containers do), and prints the process's RSS before and after; then rests them all (as the
//! agent rests idle histories) and prints it again.
//!
//! cargo run --release -p diffkeeper-store --example open_writers [N] [CACHE_MIB] [MMAP_KIB]
//!
//! MMAP_KIB: glibc's mmap threshold to set first, as the agent does (0, the default here:
//! glibc's own, which adapts upward and then serves sled's large zeroed blocks from reused heap).

use diffkeeper_store::{Event, Op, RecPath, RecordingInfo, Writer, WriterOptions};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map_or(56, |a| a.parse().unwrap());
    let cache_mib: u64 = args.next().map_or(16, |a| a.parse().unwrap());
    let threshold_kib: i32 = args.next().map_or(0, |a| a.parse().unwrap());
    if threshold_kib > 0 {
        // What the agent sets (see its main): large blocks are mapped for each allocation and
        // unmapped when freed, so zeroed ones cost nothing until touched.
        // SAFETY: called before any other thread exists.
        unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, threshold_kib << 10) };
    }
    let tmp = tempfile::tempdir().unwrap();
    let before = rss_kib();
    let mut writers = Vec::new();
    for i in 0..n {
        let opts = WriterOptions {
            cache_bytes: cache_mib << 20,
            ..WriterOptions::default()
        };
        let dir = tmp.path().join(format!("h{i}"));
        let mut w = Writer::create_with(&dir, RecordingInfo::default(), opts).unwrap();
        let node = w.new_node();
        let path = RecPath::normalize(b"/data/now").unwrap();
        w.append(Event {
            time: 1,
            process: None,
            op: Op::Create {
                node,
                path,
                mode: 0o644,
            },
        })
        .unwrap();
        for t in 0..20u64 {
            let data = format!("Thu Dec  3 18:{t:02}:00 UTC 2026\n").into_bytes();
            let op = Op::Write {
                node,
                offset: 0,
                data,
            };
            w.append(Event {
                time: 2 + t,
                process: None,
                op,
            })
            .unwrap();
            w.flush().unwrap();
        }
        writers.push(w);
    }
    let after = rss_kib();
    println!(
        "{n} open writers (sled cache {cache_mib} MiB each, mmap threshold {}): RSS {:.1} MiB -> {:.1} MiB, {:.2} MiB per writer",
        if threshold_kib > 0 {
            format!("{threshold_kib} KiB")
        } else {
            "glibc's".to_string()
        },
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        (after - before) as f64 / 1024.0 / n as f64
    );
    for w in &mut writers {
        assert!(w.rest().unwrap());
    }
    let rested = rss_kib();
    println!(
        "the same {n} writers resting: RSS {:.1} MiB, {:.2} MiB per writer",
        rested as f64 / 1024.0,
        rested.saturating_sub(before) as f64 / 1024.0 / n as f64
    );
}
