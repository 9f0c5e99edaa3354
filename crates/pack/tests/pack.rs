//! Packing a real recording and unpacking it elsewhere gives back the same recording; a pack
//! that was damaged, cut short or crafted is refused and leaves nothing behind.

use diffkeeper_pack::{pack, unpack, PackError, MANIFEST_NAME};
use diffkeeper_store::{Event, Op, Process, RecPath, RecordingInfo, Store, Writer};
use std::io::Read;
use std::path::Path;

fn p(s: &str) -> RecPath {
    RecPath::normalize(s.as_bytes()).unwrap()
}

fn ev(time: u64, op: Op) -> Event {
    Event {
        time,
        process: Some(Process {
            pid: 7,
            comm: "job".into(),
            cgroup: 1,
        }),
        op,
    }
}

/// A recording with a few files, one of them large enough to span several blocks.
fn record(dir: &Path) {
    let info = RecordingInfo {
        command: vec!["make".into(), "test".into()],
        started_mono_ns: 0,
        ..Default::default()
    };
    let mut w = Writer::create(dir, info).unwrap();
    let mut t = 0;
    for (i, name) in ["/w/a.txt", "/w/b.bin", "/w/sub/c.log"].iter().enumerate() {
        let node = w.new_node();
        t += 10;
        w.append(ev(
            t,
            Op::Create {
                node,
                path: p(name),
                mode: 0o644,
            },
        ))
        .unwrap();
        for chunk in 0..(1 + i * 40) as u64 {
            t += 10;
            let data: Vec<u8> = (0..8192u32)
                .map(|j| (j.wrapping_mul(2654435761) >> 11) as u8 ^ chunk as u8)
                .collect();
            w.append(ev(
                t,
                Op::Write {
                    node,
                    offset: chunk * 8192,
                    data,
                },
            ))
            .unwrap();
        }
        w.commit().unwrap();
    }
    w.finish(t + 10).unwrap();
}

/// Every file of the tree at the end, with its content.
fn files_at_end(dir: &Path) -> Vec<(RecPath, Vec<u8>)> {
    let store = Store::open(dir).unwrap();
    let span = store.span();
    let tree = store.tree_at(span.last_seq).unwrap();
    tree.entries
        .iter()
        .filter(|(_, e)| matches!(e.kind, diffkeeper_store::EntryKind::File { .. }))
        .map(|(path, e)| {
            (
                path.clone(),
                store.read_content(e.node, span.last_seq).unwrap(),
            )
        })
        .collect()
}

fn packed(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    pack(dir, &mut out).unwrap();
    out
}

#[test]
fn a_packed_recording_unpacks_to_the_same_recording() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("rec");
    record(&src);
    let bytes = packed(&src);
    let dest = tmp.path().join("elsewhere/rec");
    let (manifest, summary) = unpack(bytes.as_slice(), &dest).unwrap();
    assert_eq!(manifest.recording.command, ["make", "test"]);
    assert!(summary.files > 0 && summary.bytes > 0, "{summary:?}");
    assert!(
        !manifest.files.contains_key("LOCK"),
        "the lock is not part of a recording"
    );
    let original = files_at_end(&src);
    assert_eq!(original.len(), 3);
    assert_eq!(files_at_end(&dest), original);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "an unpacked recording is private");
    // Nothing but the destination was left beside it.
    let beside: Vec<_> = std::fs::read_dir(dest.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(beside, ["rec"]);
}

#[test]
fn a_live_recording_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("rec");
    let mut writer = Writer::create(&dir, RecordingInfo::default()).unwrap();
    let err = pack(&dir, Vec::new()).unwrap_err();
    assert!(
        matches!(
            err,
            PackError::Store(diffkeeper_store::StoreError::Locked { .. })
        ),
        "{err:?}"
    );
    // Served to readers, it opens, and pack still refuses it: its open segment is growing.
    let server = writer.serve_live().unwrap();
    let err = pack(&dir, Vec::new()).unwrap_err();
    assert!(matches!(err, PackError::Live { .. }), "{err:?}");
    assert!(
        err.to_string().contains("once that recorder has finished"),
        "{err}"
    );
    drop(server);
    writer.finish(1).unwrap();
    // A socket a killed recorder left is not part of the recording.
    drop(std::os::unix::net::UnixListener::bind(dir.join(diffkeeper_store::LIVE_SOCKET)).unwrap());
    pack(&dir, Vec::new()).unwrap();
}

/// The pack, decompressed, with `edit` applied to the tar bytes, compressed again.
fn retarred(pack: &[u8], edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut tar = Vec::new();
    zstd::Decoder::new(pack)
        .unwrap()
        .read_to_end(&mut tar)
        .unwrap();
    edit(&mut tar);
    zstd::encode_all(tar.as_slice(), 3).unwrap()
}

fn assert_nothing_left(dest: &Path) {
    assert!(!dest.exists(), "{} was created", dest.display());
    let parent = dest.parent().unwrap();
    if parent.exists() {
        let left: Vec<_> = std::fs::read_dir(parent).unwrap().collect();
        assert!(left.is_empty(), "left behind: {left:?}");
    }
}

#[test]
fn a_flipped_byte_in_a_file_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("rec");
    record(&src);
    let bytes = packed(&src);
    // Flip one byte inside the largest file's data (tar headers and the manifest untouched).
    let damaged = retarred(&bytes, |tar| {
        let mut archive = tar::Archive::new(tar.as_slice());
        let (offset, size) = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| e.path().unwrap() != Path::new(MANIFEST_NAME))
            .map(|e| (e.raw_file_position(), e.size()))
            .max_by_key(|(_, size)| *size)
            .unwrap();
        tar[(offset + size / 2) as usize] ^= 0x40;
    });
    let dest = tmp.path().join("out/rec");
    let err = unpack(damaged.as_slice(), &dest).unwrap_err();
    assert!(matches!(err, PackError::Checksum { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("recording") || msg.contains("db"), "{msg}");
    assert!(msg.contains("fetch or copy it again"), "{msg}");
    assert_nothing_left(&dest);
}

#[test]
fn a_pack_cut_short_is_refused_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("rec");
    record(&src);
    let bytes = packed(&src);
    for cut in [bytes.len() / 3, bytes.len() - 10] {
        let dest = tmp.path().join(format!("out{cut}/rec"));
        let err = unpack(&bytes[..cut], &dest).unwrap_err();
        assert!(
            matches!(err, PackError::Truncated | PackError::NotAPack(_)),
            "cut at {cut}: {err:?}"
        );
        assert_nothing_left(&dest);
    }
    // The whole tar with its manifest dropped: it decodes, but it is not whole.
    let headless = retarred(&bytes, |tar| {
        let mut archive = tar::Archive::new(tar.as_slice());
        let manifest_header = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap())
            .find(|e| e.path().unwrap() == Path::new(MANIFEST_NAME))
            .unwrap()
            .raw_header_position();
        tar.truncate(manifest_header as usize);
        tar.extend_from_slice(&[0; 1024]);
    });
    let dest = tmp.path().join("headless/rec");
    let err = unpack(headless.as_slice(), &dest).unwrap_err();
    assert!(matches!(err, PackError::Truncated), "{err:?}");
    assert_nothing_left(&dest);
}

#[test]
fn entries_that_would_land_outside_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    for name in ["recording/../../evil", "/etc/evil", "other/evil"] {
        let mut tar = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(4);
        // set_path refuses `..`; write the raw name as a hostile tool would.
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        header.set_cksum();
        tar.append(&header, &b"evil"[..]).unwrap();
        let bytes = zstd::encode_all(tar.into_inner().unwrap().as_slice(), 3).unwrap();
        let dest = tmp.path().join("in/rec");
        let err = unpack(bytes.as_slice(), &dest).unwrap_err();
        assert!(matches!(err, PackError::ForeignEntry(_)), "{name}: {err:?}");
        assert_nothing_left(&dest);
    }
    assert!(!tmp.path().join("evil").exists());
}

#[test]
fn unpacking_never_overwrites() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("rec");
    record(&src);
    let bytes = packed(&src);
    let taken = tmp.path().join("taken");
    std::fs::create_dir(&taken).unwrap();
    std::fs::write(taken.join("notes.txt"), "mine").unwrap();
    let err = unpack(bytes.as_slice(), &taken).unwrap_err();
    assert!(matches!(err, PackError::DestinationInUse { .. }), "{err:?}");
    assert_eq!(std::fs::read(taken.join("notes.txt")).unwrap(), b"mine");
    // An empty directory is fine.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    unpack(bytes.as_slice(), &empty).unwrap();
    assert_eq!(files_at_end(&empty), files_at_end(&src));
}

#[test]
fn not_a_pack() {
    let tmp = tempfile::tempdir().unwrap();
    let err = unpack(&b"just some text, not zstd"[..], &tmp.path().join("rec")).unwrap_err();
    assert!(matches!(err, PackError::NotAPack(_)), "{err:?}");
    assert!(err.to_string().contains("diffkeeper pack"), "{err}");
}
