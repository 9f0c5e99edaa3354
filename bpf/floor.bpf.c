// SPDX-License-Identifier: GPL-2.0
/* The benchmark's measuring stick, not part of the product: empty programs on the same two
 * attach points DiffKeeper uses. What a process outside the filter pays with these attached is
 * the kernel's own price for any program on the raw syscall tracepoints (the syscall slow path
 * plus two program dispatches); the rest of DiffKeeper's outside-the-filter cost is its own. */

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
