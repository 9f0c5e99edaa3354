//! Files written through shared mappings, on the real kernel: no write syscall shows those
//! bytes, so the recorder reads the file back. It stops reading it at every exit once no
//! process can write through a mapping any more, and not before: a child forked from the
//! mapper inherits the mapping and may write after its parent is gone.

mod command;

use std::fs;
use std::path::Path;

/// The file's bytes at the end of the recording, as `export` rebuilds them.
fn exported(state: &Path, tmp: &Path, file: &Path) -> Vec<u8> {
    let out = tmp.join("out");
    command::ok(&[
        "export",
        &format!("--state-dir={}", state.display()),
        &format!("--out={}", out.display()),
    ]);
    fs::read(out.join(file.strip_prefix("/").unwrap())).unwrap()
}

/// How many times the log shows `file` read back.
fn read_backs(state: &Path, file: &Path) -> usize {
    let log = command::ok(&["log", &format!("--state-dir={}", state.display())]);
    let name = format!("{} ", file.display());
    log.lines()
        .filter(|l| l.contains(" resync ") && l.contains(&name))
        .count()
}

#[test]
fn a_child_that_inherited_the_mapping_writes_after_its_parent_exited() {
    let tmp = tempfile::tempdir().unwrap();
    let (work, state) = (tmp.path().join("work"), tmp.path().join("state"));
    let marks = tmp.path().join("marks");
    fs::create_dir(&work).unwrap();
    fs::create_dir(&marks).unwrap();
    let file = work.join("mapped.bin");
    // The parent maps the file and writes, forks, and exits at once; the child writes through
    // the inherited mapping once its parent is gone, and exits. A second later (the child long
    // gone) marks/cp0 is made: the file must hold the child's bytes at that moment, not only at
    // the recording's end (whose final check against the disk would mend it anyway).
    let script = format!(
        r#"
import mmap, os, time
fd = os.open("{f}", os.O_RDWR | os.O_CREAT, 0o644)
os.ftruncate(fd, 4096)
m = mmap.mmap(fd, 4096, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
os.close(fd)
m[0:6] = b"parent"
if os.fork() == 0:
    time.sleep(0.3)
    m[0:6] = b"child!"
    os._exit(0)
os._exit(0)
"#,
        f = file.display()
    );
    fs::write(tmp.path().join("mapper.py"), script).unwrap();
    let status = command::record_sh(
        &work,
        &state,
        &format!(
            "python3 {}; sleep 1.5; : > {}/cp0",
            tmp.path().join("mapper.py").display(),
            marks.display()
        ),
    );
    assert!(status.success());
    assert_eq!(&fs::read(&file).unwrap()[..6], b"child!");
    let seqs = command::checkpoint_seqs(&state, &marks);
    assert_eq!(seqs.len(), 1, "the checkpoint is in the log");
    let out = tmp.path().join("at-cp0");
    command::ok(&[
        "export",
        &format!("--state-dir={}", state.display()),
        &format!("--out={}", out.display()),
        &format!("--time=@seq:{}", seqs[0]),
    ]);
    let at_cp0 = fs::read(out.join(file.strip_prefix("/").unwrap())).unwrap();
    assert_eq!(
        &at_cp0[..6],
        b"child!",
        "the child's write through the inherited mapping is read back at the child's exit"
    );
    assert_eq!(&exported(&state, tmp.path(), &file)[..6], b"child!");
}

#[test]
fn a_mapped_file_is_not_read_back_again_at_every_exit_once_unmapped() {
    let tmp = tempfile::tempdir().unwrap();
    let (work, state) = (tmp.path().join("work"), tmp.path().join("state"));
    fs::create_dir(&work).unwrap();
    let file = work.join("mapped.bin");
    let mapper = format!(
        r#"
import mmap, os
fd = os.open("{f}", os.O_RDWR | os.O_CREAT, 0o644)
os.ftruncate(fd, 1 << 20)
m = mmap.mmap(fd, 1 << 20, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
os.close(fd)
m[0:5] = b"hello"
"#,
        f = file.display()
    );
    // The mapper exits, then ten other processes do; before, each exit read the file back.
    let script = format!(
        "python3 -c '{mapper}'; for i in 1 2 3 4 5 6 7 8 9 10; do /bin/true; done; \
         python3 -c 'print(1)' > /dev/null"
    );
    let status = command::record_sh(&work, &state, &script);
    assert!(status.success());
    let n = read_backs(&state, &file);
    assert!(
        (1..=3).contains(&n),
        "read back {n} times: at the mapper's close and exit, not at the later exits"
    );
    assert_eq!(&exported(&state, tmp.path(), &file)[..5], b"hello");
}
