//! Compiles bpf/floor.bpf.c (empty programs on the syscall tracepoints) for the outside-the-filter
//! benchmark. It includes no headers, so it needs only clang.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let src = manifest.join("../../bpf/floor.bpf.c");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("floor.bpf.o");
    println!("cargo:rerun-if-changed={}", src.display());
    println!("cargo:rerun-if-env-changed=CLANG");
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".into());
    let status = Command::new(&clang)
        .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror", "-c"])
        .arg(&src)
        .arg("-o")
        .arg(&out)
        .status()
        .unwrap_or_else(|e| panic!("cannot run `{clang}` ({e}): install clang (scripts/setup.sh)"));
    assert!(
        status.success(),
        "clang failed ({status}) on bpf/floor.bpf.c"
    );
}
