#!/usr/bin/env bash
# Installs what building and testing DiffKeeper needs on a fresh Debian/Ubuntu machine (as root):
# clang + libbpf headers + bpftool for the eBPF programs, and the tools the tests drive
# (sqlite3, python3, strace, chromium, setfacl, rsync). Safe to run again: installs only what is missing.
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
  echo "setup: run as root (e.g. sudo bash scripts/setup.sh): it installs packages and the" >&2
  echo "       recorder loads eBPF programs" >&2
  exit 1
fi

need=()
command -v clang >/dev/null || need+=(clang llvm)
[ -f /usr/include/bpf/bpf_helpers.h ] || need+=(libbpf-dev)
command -v bpftool >/dev/null || need+=(bpftool)
command -v sqlite3 >/dev/null || need+=(sqlite3)
command -v strace >/dev/null || need+=(strace)
command -v python3 >/dev/null || need+=(python3)
# The metadata differential test drives real tools that set modes through ACLs and copy trees.
command -v setfacl >/dev/null || need+=(acl)
command -v rsync >/dev/null || need+=(rsync)
# Headless Chromium: the report test renders `diffkeeper report`'s page in a real browser.
command -v chromium >/dev/null || need+=(chromium)
# protoc: the gRPC and CRI clients generate their code from .proto files at build time.
command -v protoc >/dev/null || need+=(protobuf-compiler)
if [ "${#need[@]}" -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
  echo "setup: cargo is missing: install a Rust toolchain (https://rustup.rs), version 1.95 or later" >&2
  exit 1
fi

# The programs attach to BTF tracepoints, which need kernel BTF (no tracefs needed).
if [ ! -e /sys/kernel/btf/vmlinux ]; then
  echo "setup: this kernel has no BTF (/sys/kernel/btf/vmlinux): DiffKeeper needs a kernel built" >&2
  echo "       with CONFIG_DEBUG_INFO_BTF=y" >&2
  exit 1
fi
if ! grep -q cgroup2 /proc/self/mountinfo; then
  echo "setup: no cgroup v2 hierarchy is mounted; mount one (mount -t cgroup2 none /sys/fs/cgroup/unified)" >&2
  exit 1
fi
echo "setup: ready"
