// SPDX-License-Identifier: GPL-2.0
/* The benchmark's measuring stick, not part of the product: empty programs on the attach points
 * DiffKeeper can use. What a process outside the filter pays with these attached is the
 * kernel's own price for any program there (the syscall slow path plus the dispatches); the
 * rest of DiffKeeper's outside-the-filter cost is its own.
 *
 * - floor_sys_enter/floor_sys_exit: BTF-typed raw tracepoints on every syscall.
 * - floor_tp_enter/floor_tp_exit: the per-syscall tracepoints (syscalls/sys_enter_NAME), the
 *   loader attaches each to the listed syscalls only. */

#define SEC(name) __attribute__((section(name), used))

char LICENSE[] SEC("license") = "GPL";

SEC("tp_btf/sys_enter")
int floor_sys_enter(void *ctx)
{
	return 0;
}

SEC("tp_btf/sys_exit")
int floor_sys_exit(void *ctx)
{
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_close")
int floor_tp_enter(void *ctx)
{
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_write")
int floor_tp_exit(void *ctx)
{
	return 0;
}
