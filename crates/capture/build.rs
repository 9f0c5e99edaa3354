//! Compiles bpf/diffkeeper.bpf.c with clang into OUT_DIR, against a vmlinux.h dumped from the
//! build machine's BTF (CO-RE relocates field offsets at load time, so the object runs on other
//! kernels with BTF too).

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let bpf_dir = manifest
        .join("../../bpf")
        .canonicalize()
        .expect("bpf/ next to crates/");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    println!("cargo:rerun-if-changed={}", bpf_dir.display());
    println!("cargo:rerun-if-env-changed=CLANG");
    println!("cargo:rerun-if-env-changed=DK_VMLINUX_H");

    let vmlinux = out.join("vmlinux.h");
    match env::var_os("DK_VMLINUX_H") {
        Some(given) => {
            std::fs::copy(&given, &vmlinux)
                .unwrap_or_else(|e| fail(&format!("cannot copy DK_VMLINUX_H={given:?}: {e}")));
        }
        None => dump_vmlinux(&vmlinux),
    }

    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".into());
    let obj = out.join("diffkeeper.bpf.o");
    let status = Command::new(&clang)
        .args(["-O2", "-g", "-target", "bpf", "-D__TARGET_ARCH_x86"])
        .args([
            "-Wall",
            "-Werror",
            "-Wno-gnu-variable-sized-type-not-at-end",
        ])
        .arg(format!("-I{}", out.display()))
        .arg(format!("-I{}", bpf_dir.display()))
        .arg("-c")
        .arg(bpf_dir.join("diffkeeper.bpf.c"))
        .arg("-o")
        .arg(&obj)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => fail(&format!(
            "clang failed ({s}) compiling bpf/diffkeeper.bpf.c"
        )),
        Err(e) => fail(&format!(
            "cannot run `{clang}` ({e}): the eBPF programs need clang and the libbpf headers. \
             Install them with `apt-get install clang llvm libbpf-dev bpftool` \
             (or run scripts/setup.sh), or point CLANG at a clang binary."
        )),
    }
}

fn dump_vmlinux(dest: &Path) {
    let btf = Path::new("/sys/kernel/btf/vmlinux");
    if !btf.exists() {
        fail(
            "no /sys/kernel/btf/vmlinux on the build machine: build on a kernel with \
             CONFIG_DEBUG_INFO_BTF=y, or set DK_VMLINUX_H to a vmlinux.h from one",
        );
    }
    let output = Command::new("bpftool")
        .args(["btf", "dump", "file"])
        .arg(btf)
        .args(["format", "c"])
        .output()
        .unwrap_or_else(|e| {
            fail(&format!(
                "cannot run bpftool ({e}) to produce vmlinux.h: install it with \
                 `apt-get install bpftool` (or run scripts/setup.sh), or set DK_VMLINUX_H"
            ))
        });
    if !output.status.success() {
        fail(&format!(
            "bpftool btf dump failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    std::fs::write(dest, output.stdout).expect("write vmlinux.h");
}

fn fail(msg: &str) -> ! {
    eprintln!("error: {msg}");
    std::process::exit(1);
}
