//! What the size tests measure: bytes on disk, and the bytes of the index's own records.

use diffkeeper_store::{RecordingInfo, Writer};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A recording with nothing in it, at `under/empty`: what every store costs at least.
pub fn empty_recording(under: &Path) -> PathBuf {
    let empty = under.join("empty");
    Writer::create(&empty, RecordingInfo::default())
        .unwrap()
        .finish(1)
        .unwrap();
    empty
}

/// Bytes a directory takes on disk, as `du` counts them.
pub fn du(dir: &Path) -> u64 {
    let out = std::process::Command::new("du")
        .arg("-sB1")
        .arg(dir)
        .output()
        .expect("du runs");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .expect("du prints a size")
}

/// Key and value bytes of the index's records in state dir `dir`, before sled's own overhead.
pub fn index_record_bytes(dir: &Path) -> u64 {
    index_records(dir, |_| true).1
}

/// How many of the index's records have a key starting with `kind` (the record kinds of
/// `codec`'s table: `n` a node's content ops, `N` a group's).
#[allow(dead_code)] // not every test binary asks
pub fn index_records_of_kind(dir: &Path, kind: u8) -> u64 {
    index_records(dir, |key| key.first() == Some(&kind)).0
}

/// The count and the key and value bytes of the index records whose key `keep` accepts.
fn index_records(dir: &Path, keep: impl Fn(&[u8]) -> bool) -> (u64, u64) {
    // sled lets go of its file lock a moment after the writer that held it is dropped.
    let deadline = Instant::now() + Duration::from_secs(10);
    let db = loop {
        match sled::open(dir.join("db")) {
            Ok(db) => break db,
            Err(e) if Instant::now() < deadline => {
                eprintln!("waiting for sled's lock: {e}");
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("cannot open the index of {}: {e}", dir.display()),
        }
    };
    db.iter()
        .map(|kv| kv.unwrap())
        .filter(|(k, _)| keep(k))
        .fold((0, 0), |(n, bytes), (k, v)| {
            (n + 1, bytes + (k.len() + v.len()) as u64)
        })
}
