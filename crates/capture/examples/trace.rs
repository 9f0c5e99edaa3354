//! Prints the decoded capture events of a shell command, for eyeballing the kernel side:
//! `cargo run -p diffkeeper-capture --example trace -- 'echo hi > /tmp/x'` (as root).

use diffkeeper_capture::{Probe, ProbeConfig};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::time::Duration;

fn main() {
    let script = std::env::args()
        .nth(1)
        .expect("usage: trace 'shell command'");
    let cg = format!("/sys/fs/cgroup/unified/dk-trace-{}", std::process::id());
    std::fs::create_dir(&cg).expect("create cgroup");
    let id = std::fs::metadata(&cg).unwrap().ino();
    let mut probe = Probe::load(&ProbeConfig::default()).expect("load");
    probe.record_cgroup(id, 1).unwrap();
    let procs = format!("{cg}/cgroup.procs");
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c").arg(&script);
    unsafe {
        cmd.pre_exec(move || {
            std::fs::OpenOptions::new()
                .write(true)
                .open(&procs)?
                .write_all(b"0")
        });
    }
    let mut reader = probe.take_reader().expect("a fresh probe has its reader");
    let mut child = cmd.spawn().expect("spawn");
    loop {
        reader.wait(Duration::from_millis(20), None).unwrap();
        reader.drain(|ev| println!("{ev:?}"));
        if child.try_wait().unwrap().is_some() {
            std::thread::sleep(Duration::from_millis(50));
            reader.drain(|ev| println!("{ev:?}"));
            break;
        }
    }
    println!("{:?}", probe.counters().unwrap());
    std::fs::remove_dir(&cg).unwrap();
}
