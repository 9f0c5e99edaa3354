/* SPDX-License-Identifier: GPL-2.0 */
/* The syscalls the kernel side hooks, in one list for both attach points:
 * - the raw syscall tracepoints (sys_enter/sys_exit) see every syscall, and their programs
 *   return at once for a syscall not listed here (case labels made from this list);
 * - the per-syscall tracepoints (syscalls/sys_enter_NAME) are attached only for the syscalls
 *   listed, so other syscalls never reach a program. crates/capture/build.rs reads this file
 *   to give the loader the names.
 *
 * PATH(nr, event): entered with path strings (hooked at enter and at exit).
 * ENTER(nr, event): hooked at enter only. EXIT(nr, event): at exit only.
 * nr names the syscall number (NR_nr); event is its tracepoint's name, which differs for a few
 * (sendfile is sys_exit_sendfile64). One entry per line: build.rs parses it. */
#define DK_SYSCALLS(PATH, ENTER, EXIT)                                                     \
	PATH(rename, rename)                                                               \
	PATH(renameat, renameat)                                                           \
	PATH(renameat2, renameat2)                                                         \
	PATH(unlink, unlink)                                                               \
	PATH(unlinkat, unlinkat)                                                           \
	PATH(rmdir, rmdir)                                                                 \
	PATH(mkdir, mkdir)                                                                 \
	PATH(mkdirat, mkdirat)                                                             \
	PATH(symlink, symlink)                                                             \
	PATH(symlinkat, symlinkat)                                                         \
	PATH(link, link)                                                                   \
	PATH(linkat, linkat)                                                               \
	PATH(chmod, chmod)                                                                 \
	PATH(fchmodat, fchmodat)                                                           \
	PATH(fchmodat2, fchmodat2)                                                         \
	PATH(truncate, truncate)                                                           \
	PATH(chown, chown)                                                                 \
	PATH(lchown, lchown)                                                               \
	PATH(fchownat, fchownat)                                                           \
	PATH(setxattr, setxattr)                                                           \
	PATH(lsetxattr, lsetxattr)                                                         \
	PATH(utime, utime)                                                                 \
	PATH(utimes, utimes)                                                               \
	PATH(utimensat, utimensat)                                                         \
	PATH(removexattr, removexattr)                                                     \
	PATH(lremovexattr, lremovexattr)                                                   \
	ENTER(close, close)                                                                \
	EXIT(write, write)                                                                 \
	EXIT(pwrite64, pwrite64)                                                           \
	EXIT(writev, writev)                                                               \
	EXIT(pwritev, pwritev)                                                             \
	EXIT(pwritev2, pwritev2)                                                           \
	EXIT(open, open)                                                                   \
	EXIT(openat, openat)                                                               \
	EXIT(openat2, openat2)                                                             \
	EXIT(creat, creat)                                                                 \
	EXIT(ftruncate, ftruncate)                                                         \
	EXIT(fchmod, fchmod)                                                               \
	EXIT(fallocate, fallocate)                                                         \
	EXIT(copy_file_range, copy_file_range)                                             \
	EXIT(sendfile, sendfile64)                                                         \
	EXIT(splice, splice)                                                               \
	EXIT(mmap, mmap)                                                                   \
	EXIT(munmap, munmap)                                                               \
	EXIT(msync, msync)                                                                 \
	EXIT(io_uring_setup, io_uring_setup)                                               \
	EXIT(fchown, fchown)                                                               \
	EXIT(fsetxattr, fsetxattr)                                                         \
	EXIT(fremovexattr, fremovexattr)
