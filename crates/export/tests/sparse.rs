//! A recorded file is streamed from the store into the export, never built whole in memory:
//! a 100 GiB sparse file (more than this machine's RAM) exports as a sparse file with its data
//! at the right offsets, and a tar export holds it as a PAX sparse entry (as GNU tar writes one)
//! that GNU tar extracts exact and sparse.

use diffkeeper_export::{export_store_dir, export_store_tar, ExportOptions};
use diffkeeper_store::{Event, Op, RecPath, RecordingInfo, Store, Target, Writer};
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

const GIB: u64 = 1 << 30;

fn event(time: u64, op: Op) -> Event {
    Event {
        time,
        process: None,
        op,
    }
}

/// A store holding `/sparse`: `size` bytes, data only at `pieces`.
fn sparse_store(dir: &Path, size: u64, pieces: &[(u64, Vec<u8>)]) {
    let mut w = Writer::create(dir, RecordingInfo::default()).unwrap();
    let node = w.new_node();
    let mut ops = vec![
        Op::Create {
            node,
            path: RecPath::normalize(b"/sparse").unwrap(),
            mode: 0o644,
        },
        Op::Truncate {
            target: Target::Node(node),
            size,
        },
    ];
    ops.extend(pieces.iter().map(|(offset, data)| Op::Write {
        node,
        offset: *offset,
        data: data.clone(),
    }));
    let mut time = 1_000;
    for op in ops {
        time += 1;
        w.append(event(time, op)).unwrap();
    }
    w.finish(time + 1).unwrap();
}

/// 124 KiB of data in a 100 GiB file: at its start, past its middle and at its end.
fn hundred_gib_pieces() -> Vec<(u64, Vec<u8>)> {
    vec![
        (0, b"head".repeat(1000)),
        (50 * GIB + 3, b"middle".repeat(20_000)),
        (100 * GIB - 5, b"tail!".to_vec()),
    ]
}

fn hundred_gib_store(state: &Path, pieces: &[(u64, Vec<u8>)]) -> Store {
    sparse_store(state, 100 * GIB, pieces);
    Store::open(state).unwrap()
}

#[test]
fn a_100_gib_sparse_file_exports_sparse_and_exact() {
    let size = 100 * GIB;
    let pieces = hundred_gib_pieces();
    let tmp = tempfile::tempdir().unwrap();
    let store = hundred_gib_store(&tmp.path().join("state"), &pieces);
    let out = tmp.path().join("out");
    let summary = export_store_dir(
        &store,
        store.span().last_seq,
        None,
        &out,
        &ExportOptions::default(),
    )
    .unwrap();
    assert_eq!(summary.files, 1);

    let file = std::fs::File::open(out.join("sparse")).unwrap();
    let meta = file.metadata().unwrap();
    assert_eq!(meta.len(), size);
    // Only the data's blocks are allocated (a few hundred KiB), not 100 GiB of zeros.
    assert!(
        meta.blocks() * 512 < 16 << 20,
        "the export allocated {} bytes for a file holding 124 KiB of data",
        meta.blocks() * 512
    );
    for (offset, data) in &pieces {
        let mut got = vec![0u8; data.len()];
        file.read_exact_at(&mut got, *offset).unwrap();
        assert!(&got == data, "the data at offset {offset} differs");
    }
    // The holes read as zeros, right up to the data around them.
    let mut around = [1u8; 6];
    file.read_exact_at(&mut around, 50 * GIB).unwrap();
    assert_eq!(&around, b"\0\0\0mid");
}

/// `tar -xf` of `archive` into `into` with GNU tar, the reader most users have.
fn gnu_untar(archive: &Path, into: &Path) {
    std::fs::create_dir_all(into).unwrap();
    let out = std::process::Command::new("tar")
        .arg("-xf")
        .arg(archive)
        .arg("-C")
        .arg(into)
        .output()
        .expect("GNU tar is installed");
    assert!(
        out.status.success(),
        "tar -xf: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_tar_export_of_a_100_gib_sparse_file_is_small_and_extracts_exact() {
    let size = 100 * GIB;
    let pieces = hundred_gib_pieces();
    let tmp = tempfile::tempdir().unwrap();
    let store = hundred_gib_store(&tmp.path().join("state"), &pieces);
    let archive = tmp.path().join("out.tar");
    let summary = export_store_tar(
        &store,
        store.span().last_seq,
        None,
        std::fs::File::create(&archive).unwrap(),
        &ExportOptions::default(),
    )
    .unwrap();
    assert_eq!(summary.files, 1);
    let tar_len = std::fs::metadata(&archive).unwrap().len();
    assert!(
        tar_len < 1 << 20,
        "a tar of 124 KiB of data in a 100 GiB sparse file takes {tar_len} bytes"
    );
    let out = tmp.path().join("x");
    gnu_untar(&archive, &out);
    let file = std::fs::File::open(out.join("sparse")).unwrap();
    let meta = file.metadata().unwrap();
    assert_eq!(meta.len(), size);
    assert!(
        meta.blocks() * 512 < 16 << 20,
        "GNU tar extracted it sparse"
    );
    for (offset, data) in &pieces {
        let mut got = vec![0u8; data.len()];
        file.read_exact_at(&mut got, *offset).unwrap();
        assert!(&got == data, "the data at offset {offset} differs");
    }
}

#[test]
fn a_tar_export_of_a_sparse_file_ending_in_a_hole_reads_back_with_its_zeros() {
    // Both readers: GNU tar (sparse-aware) and, for a file with small holes stored whole, the
    // tar crate.
    let size = 8 << 20;
    let pieces = vec![(1 << 20, b"one".to_vec()), (3 << 20, b"two".to_vec())];
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    sparse_store(&state, size, &pieces);
    let store = Store::open(&state).unwrap();
    let archive = tmp.path().join("out.tar");
    export_store_tar(
        &store,
        store.span().last_seq,
        None,
        std::fs::File::create(&archive).unwrap(),
        &ExportOptions::default(),
    )
    .unwrap();
    let mut want = vec![0u8; size as usize];
    for (offset, bytes) in &pieces {
        want[*offset as usize..*offset as usize + bytes.len()].copy_from_slice(bytes);
    }
    let out = tmp.path().join("x");
    gnu_untar(&archive, &out);
    let got = std::fs::read(out.join("sparse")).unwrap();
    assert!(
        got == want,
        "GNU tar's extraction differs from the recorded file"
    );

    // Holes below the sparse threshold: a plain entry, zeros stored.
    let small = tmp.path().join("small-state");
    sparse_store(&small, 4096, &[(100, b"x".to_vec())]);
    let store = Store::open(&small).unwrap();
    let mut tar_bytes = Vec::new();
    export_store_tar(
        &store,
        store.span().last_seq,
        None,
        &mut tar_bytes,
        &ExportOptions::default(),
    )
    .unwrap();
    let mut archive = tar::Archive::new(tar_bytes.as_slice());
    let mut entry = archive
        .entries()
        .unwrap()
        .map(Result::unwrap)
        .find(|e| e.path().unwrap().as_os_str() == "sparse")
        .expect("the tar holds sparse");
    let mut data = Vec::new();
    entry.read_to_end(&mut data).unwrap();
    let mut want = vec![0u8; 4096];
    want[100] = b'x';
    assert!(data == want, "the plain entry's bytes differ");
}
