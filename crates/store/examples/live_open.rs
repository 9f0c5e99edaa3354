//! What reading a live recording costs a reader: `Store::open` through the recorder (its index
//! streamed over live.sock and loaded into a private db) beside `Store::open` of the same
//! recording once finished (its index files copied), in one run. Also the cheap question a
//! following mount asks every second (`Store::live_committed`).
//!
//! cargo run --release -p diffkeeper-store --example live_open [FILES]

use diffkeeper_store::{Event, Op, RecPath, RecordingInfo, Store, Writer};
use std::time::{Duration, Instant};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn timed(reps: usize, mut f: impl FnMut()) -> Duration {
    median(
        (0..reps)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed()
            })
            .collect(),
    )
}

fn main() {
    let files: u64 = std::env::args()
        .nth(1)
        .map_or(10_000, |a| a.parse().expect("FILES is a number"));
    let tmp = tempfile::tempdir().expect("a temp dir");
    let dir = tmp.path();
    let mut writer = Writer::create(dir, RecordingInfo::default()).expect("create");
    let mut time = 1_000;
    for i in 0..files {
        let node = writer.new_node();
        let path = RecPath::normalize(format!("/w/d{}/f{i}.txt", i % 100).as_bytes()).unwrap();
        for op in [
            Op::Create {
                node,
                path,
                mode: 0o644,
            },
            Op::Write {
                node,
                offset: 0,
                data: format!("line {i}\n").repeat(40).into_bytes(),
            },
        ] {
            time += 1_000;
            writer
                .append(Event {
                    time,
                    process: None,
                    op,
                })
                .expect("append");
        }
    }
    writer.flush().expect("flush");
    let events = writer.stats().events;
    let server = writer.serve_live().expect("serve");
    let reps = 7;
    let live = timed(reps, || {
        let store = Store::open(dir).expect("open live");
        assert!(store.live_recorder().is_some());
    });
    let asked = timed(reps, || {
        Store::live_committed(dir).expect("ask").expect("served");
    });
    drop(server);
    writer.finish(time + 1).expect("finish");
    let finished = timed(reps, || {
        let store = Store::open(dir).expect("open finished");
        assert!(store.live_recorder().is_none());
    });
    println!("{files} files, {events} events, median of {reps}:");
    println!("  Store::open of the live recording (through live.sock): {live:?}");
    println!("  Store::open of the same recording finished:            {finished:?}");
    println!(
        "  live / finished: {:.2}x",
        live.as_secs_f64() / finished.as_secs_f64()
    );
    println!("  Store::live_committed (a following mount's check):     {asked:?}");
}
