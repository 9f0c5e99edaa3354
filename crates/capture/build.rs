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

    hooked_syscalls(&bpf_dir.join("syscalls.h"), &out.join("syscalls.rs"));

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

/// The tracepoint names bpf/syscalls.h lists for each direction, for the loader to attach the
/// per-syscall tracepoints to: the C side's dispatch and the attachments come from one list.
fn hooked_syscalls(header: &Path, dest: &Path) {
    let text = std::fs::read_to_string(header)
        .unwrap_or_else(|e| fail(&format!("cannot read {}: {e}", header.display())));
    let (mut enter, mut exit) = (Vec::new(), Vec::new());
    for line in text.lines() {
        let line = line.trim().trim_end_matches('\\').trim();
        let Some((kind, rest)) = line.split_once('(') else {
            continue;
        };
        if !matches!(kind, "PATH" | "ENTER" | "EXIT") {
            continue;
        }
        let args = rest
            .strip_suffix(')')
            .unwrap_or_else(|| fail(&format!("{}: cannot parse `{line}`", header.display())));
        let Some((_, event)) = args.split_once(',') else {
            fail(&format!("{}: `{line}` needs (nr, event)", header.display()))
        };
        let event = event.trim().to_string();
        if kind != "EXIT" {
            enter.push(event.clone());
        }
        if kind != "ENTER" {
            exit.push(event);
        }
    }
    if enter.is_empty() || exit.is_empty() {
        fail(&format!("{} lists no syscalls", header.display()));
    }
    let list = |names: &[String]| {
        names
            .iter()
            .map(|n| format!("{n:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let code = format!(
        "/// Tracepoints `syscalls/sys_enter_NAME` the enter program hooks (bpf/syscalls.h).\n\
         pub const ENTER: &[&str] = &[{}];\n\
         /// Tracepoints `syscalls/sys_exit_NAME` the exit program hooks (bpf/syscalls.h).\n\
         pub const EXIT: &[&str] = &[{}];\n",
        list(&enter),
        list(&exit)
    );
    std::fs::write(dest, code).expect("write syscalls.rs");
}

fn fail(msg: &str) -> ! {
    eprintln!("error: {msg}");
    std::process::exit(1);
}
