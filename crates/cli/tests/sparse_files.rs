//! A workload makes a file far larger than this machine's memory, almost all hole (`truncate
//! -s 100G`, then a little data): `export` (directory and tar), `diff` and `log` must work on it
//! without building it in memory, and the export must keep it sparse. Needs root and BPF.

mod command;

use command::{ok, record_sh};
use std::os::unix::fs::{FileExt, MetadataExt};

const SIZE: u64 = 100 << 30;

#[test]
fn a_100_gib_sparse_file_exports_and_diffs_without_being_built_in_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let (work, state) = (tmp.path().join("w"), tmp.path().join("state"));
    let status = record_sh(
        &work,
        &state,
        "truncate -s 100G big && printf 'in the middle' | dd of=big bs=1 seek=53687091200 \
         conv=notrunc status=none && echo small > small.txt && echo changed >> small.txt",
    );
    assert!(status.success());
    let st = format!("--state-dir={}", state.display());

    // Directory export: the size, the data where it was, and holes that stay holes.
    let out = tmp.path().join("out");
    ok(&["export", &st, &format!("--out={}", out.display())]);
    let big = std::fs::File::open(out.join(work.strip_prefix("/").unwrap()).join("big")).unwrap();
    let meta = big.metadata().unwrap();
    assert_eq!(meta.len(), SIZE);
    assert!(meta.blocks() * 512 < 16 << 20, "the export is not sparse");
    let mut middle = [0u8; 13];
    big.read_exact_at(&mut middle, 50 << 30).unwrap();
    assert_eq!(&middle, b"in the middle");

    // Tar export: a sparse entry, a small archive, which GNU tar extracts whole.
    let archive = tmp.path().join("out.tar");
    ok(&[
        "export",
        &st,
        "--format=tar",
        &format!("--out={}", archive.display()),
    ]);
    let tar_len = std::fs::metadata(&archive).unwrap().len();
    assert!(tar_len < 1 << 20, "the tar takes {tar_len} bytes");
    let untarred = tmp.path().join("untarred");
    std::fs::create_dir_all(&untarred).unwrap();
    let tar = std::process::Command::new("tar")
        .arg("-xf")
        .arg(&archive)
        .arg("-C")
        .arg(&untarred)
        .status()
        .unwrap();
    assert!(tar.success());
    let big =
        std::fs::File::open(untarred.join(work.strip_prefix("/").unwrap()).join("big")).unwrap();
    assert_eq!(big.metadata().unwrap().len(), SIZE);
    big.read_exact_at(&mut middle, 50 << 30).unwrap();
    assert_eq!(&middle, b"in the middle");

    // diff names the big file without a line diff, and still diffs the small one.
    let diff = ok(&["diff", &st]);
    assert!(
        diff.contains("big") && diff.contains("file 107374182400 B"),
        "{diff}"
    );
    assert!(diff.contains("not compared line by line"), "{diff}");
    assert!(diff.contains("+changed"), "{diff}");
    let log = ok(&["log", &st]);
    assert!(log.contains("big"), "{log}");
}
