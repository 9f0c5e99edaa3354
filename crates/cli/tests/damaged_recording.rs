//! A recording with one damaged block, as a person meets it: `verify` names the file and the
//! moments lost and exits 3, `export` writes every other file, says which one it left out and
//! exits 3, and `log` still reads the whole history. Needs root and BPF.

mod command;

use command::{diffkeeper, ok, record_sh};

#[test]
fn one_damaged_block_costs_one_file_not_the_recording() {
    let tmp = tempfile::tempdir().unwrap();
    let (work, state) = (tmp.path().join("w"), tmp.path().join("state"));
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    // Incompressible, so the segment stores it raw and the test can find and damage it.
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let noise: Vec<u8> = (0..200_000)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect();
    std::fs::write(src.join("noise"), &noise).unwrap();
    let script = format!(
        "echo kept > kept.txt && cat {} > lost.bin && echo also > also.txt",
        src.join("noise").display()
    );
    assert!(record_sh(&work, &state, &script).success());
    let st = format!("--state-dir={}", state.display());
    assert!(ok(&["verify", &st]).contains("every one intact"));

    let segment = state.join("segments/000001.seg");
    let mut bytes = std::fs::read(&segment).unwrap();
    let at = bytes
        .windows(64)
        .position(|w| w == &noise[5000..5064])
        .expect("the data is stored raw in the segment");
    bytes[at] ^= 0xff;
    std::fs::write(&segment, bytes).unwrap();

    let verify = diffkeeper(&["verify", &st]);
    let report = String::from_utf8_lossy(&verify.stdout);
    assert_eq!(verify.status.code(), Some(3), "{report}");
    assert!(
        report.contains("lost.bin") && report.contains("to the end") && report.contains("checksum"),
        "{report}"
    );
    assert!(!report.contains("kept.txt"), "{report}");

    let out = tmp.path().join("out");
    let export = diffkeeper(&["export", &st, &format!("--out={}", out.display())]);
    let err = String::from_utf8_lossy(&export.stderr);
    assert_eq!(export.status.code(), Some(3), "{err}");
    assert!(err.contains("lost.bin") && err.contains("damaged"), "{err}");
    let exported = out.join(work.strip_prefix("/").unwrap());
    assert_eq!(
        std::fs::read_to_string(exported.join("kept.txt")).unwrap(),
        "kept\n"
    );
    assert_eq!(
        std::fs::read_to_string(exported.join("also.txt")).unwrap(),
        "also\n"
    );
    assert!(!exported.join("lost.bin").exists());

    let log = ok(&["log", &st]);
    assert!(
        log.contains("lost.bin") && log.contains("also.txt"),
        "{log}"
    );
}
