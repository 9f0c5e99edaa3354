#!/usr/bin/env bash
# Which eBPF attach points this kernel lets DiffKeeper use, and why the others are refused.
#
#   sudo bash scripts/probe-attach-points.sh
#
# For each attach point DiffKeeper could hook (the syscall tracepoints it uses today; fentry,
# fexit, fmod_ret and BPF LSM, which would make processes outside the filter pay only for the
# functions hooked), it builds a one-instruction program, loads it with bpftool (log level 1),
# and prints the errno of BPF_PROG_LOAD and the first line of the verifier's log. A refusal with
# an empty log happened before the verifier ran (capability, LSM or kernel policy), not in it.
# It also reports lockdown, the active LSMs, and whether ftrace's own function hooks work:
# fentry/fexit/LSM programs are called through the same ftrace direct-call trampolines.
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "probe-attach-points: run as root" >&2; exit 1; }
for tool in clang bpftool strace; do
    command -v "$tool" >/dev/null || { echo "probe-attach-points: $tool is missing: run 'bash scripts/setup.sh'" >&2; exit 1; }
done
work=$(mktemp -d)
trap 'rm -rf "$work"; rm -f /sys/fs/bpf/dk_probe_attach' EXIT
grep -qs " /sys/fs/bpf bpf " /proc/mounts || mount -t bpf bpf /sys/fs/bpf
grep -qs " /sys/kernel/security securityfs " /proc/mounts || mount -t securityfs securityfs /sys/kernel/security || true
grep -qs " /sys/kernel/tracing tracefs " /proc/mounts || mount -t tracefs tracefs /sys/kernel/tracing || true

echo "kernel:        $(uname -r)"
echo "lockdown:      $(cat /sys/kernel/security/lockdown 2>/dev/null || echo unknown)"
echo "active LSMs:   $(cat /sys/kernel/security/lsm 2>/dev/null || echo unknown)"
echo "config:        $( (zcat /proc/config.gz 2>/dev/null || true) | grep -E '^CONFIG_(DYNAMIC_FTRACE_WITH_DIRECT_CALLS|BPF_LSM|KPROBES)=' | tr '\n' ' ')"
echo "capabilities:  CapEff $(awk '/^CapEff/ {print $2}' /proc/self/status)"
ftrace_hook() {
    if (: <"/sys/kernel/tracing/available_filter_functions") 2>/dev/null; then
        echo "readable"
    else
        echo "refused: $( (: <"/sys/kernel/tracing/available_filter_functions") 2>&1 | sed 's/.*: //')"
    fi
}
echo "ftrace function hooks (available_filter_functions): $(ftrace_hook)"
bpftool btf dump file /sys/kernel/btf/vmlinux format c >"$work/vmlinux.h"
printf '\n%-36s %-8s %s\n' "attach point" "load" "verifier log (first line)"
for section in tp_btf/sys_enter raw_tp/sys_enter tp_btf/sched_switch iter/task \
    fentry/vfs_write fexit/vfs_write fentry.s/vfs_write fmod_ret/security_file_permission \
    lsm/file_permission lsm.s/file_permission lsm_cgroup/file_permission; do
    cat >"$work/p.bpf.c" <<C
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
char LICENSE[] SEC("license") = "GPL";
SEC("$section") int dk_probe(void *ctx) { return 0; }
C
    clang -O2 -g -target bpf -I"$work" -c "$work/p.bpf.c" -o "$work/p.o"
    trace=$(strace -e trace=bpf -e signal=none bpftool -d prog load "$work/p.o" /sys/fs/bpf/dk_probe_attach 2>&1 || true)
    rm -f /sys/fs/bpf/dk_probe_attach
    result=$(grep 'prog_name="dk_probe"' <<<"$trace" | tail -1 | sed -n 's/.*) = //p')
    case "$result" in
    -1*) result=$(sed 's/^-1 \([A-Z]*\).*/\1/' <<<"$result") ;;
    "") result="?" ;;
    *) result=ok ;;
    esac
    log=$(sed -n '/BEGIN PROG LOAD LOG/{n;p;q}' <<<"$trace")
    printf '%-36s %-8s %s\n' "$section" "$result" "${log:-(empty)}"
done
