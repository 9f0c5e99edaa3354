//! One damaged block must not cost the whole recording: `Store::verify` names the file and the
//! moments it breaks (up to the file's next rewrite), and an export of a broken moment writes
//! every other file, leaves the damaged one out (a tar keeps it zero-filled) and lists it.

use diffkeeper_export::{export_store_dir, export_store_tar, ExportOptions};
use diffkeeper_store::{Event, Op, RecPath, RecordingInfo, SegmentUse, Seq, Store, Target, Writer};
use std::path::Path;

fn random_bytes(state: &mut u64, n: usize) -> Vec<u8> {
    (0..n)
        .map(|_| {
            *state ^= *state << 13;
            *state ^= *state >> 7;
            *state ^= *state << 17;
            *state as u8
        })
        .collect()
}

fn path(s: &str) -> RecPath {
    RecPath::normalize(s.as_bytes()).unwrap()
}

/// The seqs that matter in the recording `damaged_store` writes.
struct Moments {
    /// /b written the first time (the data that gets damaged).
    b_written: Seq,
    /// /b truncated and written anew: from here its content no longer needs the damaged data.
    b_rewritten: Seq,
}

/// /a and /b written (incompressible, so stored raw and findable), then /b rewritten; the
/// segment bytes of /b's first data get one byte flipped.
fn damaged_store(dir: &Path) -> Moments {
    let mut seed = 0x9e37_79b9_7f4a_7c15;
    let a_data = random_bytes(&mut seed, 100_000);
    let b_data = random_bytes(&mut seed, 100_000);
    let b_new = random_bytes(&mut seed, 50_000);
    let mut w = Writer::create(dir, RecordingInfo::default()).unwrap();
    let (a, b) = (w.new_node(), w.new_node());
    let mut time = 1_000;
    let mut append = |w: &mut Writer, op| {
        time += 1_000_000;
        w.append(Event {
            time,
            process: None,
            op,
        })
        .unwrap()
    };
    for (node, name) in [(a, "/a"), (b, "/b")] {
        append(
            &mut w,
            Op::Create {
                node,
                path: path(name),
                mode: 0o644,
            },
        );
    }
    append(
        &mut w,
        Op::Write {
            node: a,
            offset: 0,
            data: a_data,
        },
    );
    let b_written = append(
        &mut w,
        Op::Write {
            node: b,
            offset: 0,
            data: b_data.clone(),
        },
    );
    w.commit().unwrap();
    let b_rewritten = append(
        &mut w,
        Op::Truncate {
            target: Target::Node(b),
            size: 0,
        },
    );
    append(
        &mut w,
        Op::Write {
            node: b,
            offset: 0,
            data: b_new,
        },
    );
    w.finish(time + 1).unwrap();

    let segment = dir.join("segments/000001.seg");
    let mut bytes = std::fs::read(&segment).unwrap();
    let at = bytes
        .windows(64)
        .position(|w| w == &b_data[1000..1064])
        .expect("/b's data is stored raw in the segment");
    bytes[at] ^= 0xff;
    std::fs::write(&segment, bytes).unwrap();
    Moments {
        b_written,
        b_rewritten,
    }
}

#[test]
fn verify_names_the_damaged_file_and_the_moments_it_breaks() {
    let tmp = tempfile::tempdir().unwrap();
    let m = damaged_store(tmp.path());
    let store = Store::open(tmp.path()).unwrap();
    let found = store.verify().unwrap();
    assert_eq!(found.damage.len(), 1, "{found:?}");
    let d = &found.damage[0];
    assert_eq!(d.what, SegmentUse::Data);
    assert_eq!(d.from, m.b_written);
    assert_eq!(d.until, Some(m.b_rewritten), "healed by the rewrite");
    assert!(d.reason.contains("checksum"), "{}", d.reason);
    let b = store.tree_at(d.from).unwrap().entries[&path("/b")].node;
    assert_eq!(d.node, b);
}

#[test]
fn an_export_of_a_damaged_moment_writes_everything_else() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let m = damaged_store(&state);
    let store = Store::open(&state).unwrap();
    let opts = ExportOptions::default();

    let out = tmp.path().join("out");
    let summary = export_store_dir(&store, m.b_written, None, &out, &opts).unwrap();
    assert_eq!(summary.files, 1);
    assert_eq!(summary.damaged.len(), 1);
    assert_eq!(summary.damaged[0].0, path("/b"));
    assert_eq!(std::fs::metadata(out.join("a")).unwrap().len(), 100_000);
    assert!(!out.join("b").exists(), "the unreadable file is left out");

    // A tar stays a valid archive: every entry readable, the damaged one zero-filled.
    let mut tar_bytes = Vec::new();
    let summary = export_store_tar(&store, m.b_written, None, &mut tar_bytes, &opts).unwrap();
    assert_eq!(summary.damaged.len(), 1);
    let mut archive = tar::Archive::new(tar_bytes.as_slice());
    let names: Vec<String> = archive
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    assert_eq!(names, ["a", "b"]);

    // After the rewrite nothing needs the damaged block: the export is whole.
    let out = tmp.path().join("later");
    let summary = export_store_dir(&store, m.b_rewritten + 1, None, &out, &opts).unwrap();
    assert!(summary.damaged.is_empty(), "{:?}", summary.damaged);
    assert_eq!(std::fs::metadata(out.join("b")).unwrap().len(), 50_000);
}
