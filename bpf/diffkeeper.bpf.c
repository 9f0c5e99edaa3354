// SPDX-License-Identifier: GPL-2.0
/* DiffKeeper's kernel side: turns the file-changing syscalls of recorded cgroups into records on
 * one ring buffer (wire format in events.h).
 *
 * Why these attach points: on the target kernels fentry/fexit/LSM are refused and kprobes may be
 * absent, while syscall tracepoints always load (docs/benchmarks.md has why). One program per
 * direction dispatches on the syscall number, so adding a syscall is a line in syscalls.h, and
 * processes outside the filter cost one hash lookup per hooked syscall. The per-syscall
 * tracepoints are preferred: unhooked syscalls then skip the programs (see dk_tp_enter).
 *
 * Bytes are read at syscall exit from the caller's buffer, sized by the return value, so what is
 * recorded is what the kernel accepted. Anything that cannot be captured this way (writes above
 * the cap, shared mmaps, splice/copy_file_range, io_uring, records lost to a full ring) marks the
 * file dirty so user space reads it back ("resync"). */

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "events.h"
#include "syscalls.h"

char LICENSE[] SEC("license") = "GPL";

/* Set by the loader before load. */
const volatile __u64 max_write_capture = 1 << 20; /* bytes per syscall; above: resync instead */
const volatile __u64 wakeup_bytes = 256 << 10;   /* wake the reader only past this much data */
/* The wire format this object writes: the loader refuses an object of another version. */
const volatile __u32 dk_wire_version = DK_WIRE_VERSION;

#define AT_FDCWD -100
#define AT_REMOVEDIR 0x200
#define O_ACCMODE 3
#define O_CREAT 0100
#define O_TRUNC 01000
#define O_APPEND 02000
#define S_IFMT 00170000
#define S_IFREG 0100000
#define FMODE_CREATED (1 << 20)
#define MAP_SHARED 0x01
#define PROT_WRITE 0x2
#define RENAME_EXCHANGE (1 << 1)
#define AT_SYMLINK_NOFOLLOW 0x100
#define AT_EMPTY_PATH 0x1000
#define S_IFDIR 0040000
#define S_IFLNK 0120000

#define MAX_DEPTH 64     /* path components walked; deeper paths are marked cut */
#define MAX_WALK 80      /* components + mount crossings */
#define NAME_MASK 255
#define PATH_MASK (DK_PATH_MAX - 1)
#define MAX_IOV 1024

/* x86_64 syscall numbers (the only architecture built for now). */
enum {
	NR_write = 1, NR_open = 2, NR_close = 3, NR_mmap = 9, NR_munmap = 11, NR_pwrite64 = 18,
	NR_writev = 20, NR_msync = 26, NR_sendfile = 40, NR_truncate = 76, NR_ftruncate = 77,
	NR_rename = 82, NR_mkdir = 83, NR_rmdir = 84, NR_creat = 85, NR_link = 86, NR_unlink = 87,
	NR_symlink = 88, NR_chmod = 90, NR_fchmod = 91, NR_openat = 257, NR_mkdirat = 258,
	NR_unlinkat = 263, NR_renameat = 264, NR_linkat = 265, NR_symlinkat = 266,
	NR_fchmodat = 268, NR_splice = 275, NR_fallocate = 285, NR_pwritev = 296,
	NR_renameat2 = 316, NR_copy_file_range = 326, NR_pwritev2 = 328, NR_io_uring_setup = 425,
	NR_openat2 = 437, NR_fchmodat2 = 452,
	/* Metadata: owners, xattrs (ACLs imply modes), times. */
	NR_chown = 92, NR_fchown = 93, NR_lchown = 94, NR_utime = 132, NR_setxattr = 188,
	NR_lsetxattr = 189, NR_fsetxattr = 190, NR_removexattr = 197, NR_lremovexattr = 198,
	NR_fremovexattr = 199, NR_utimes = 235,
	NR_fchownat = 260, NR_utimensat = 280,
};

/* Case labels made from bpf/syscalls.h: the syscalls each direction hooks. Path-based syscalls
 * are entered with strings (sys_enter) and completed by a result record (sys_exit). */
#define SYSCALL_CASE(nr, event) case NR_##nr:
#define SYSCALL_NONE(nr, event)
#define ENTER_SYSCALLS DK_SYSCALLS(SYSCALL_CASE, SYSCALL_CASE, SYSCALL_NONE)
#define EXIT_SYSCALLS DK_SYSCALLS(SYSCALL_CASE, SYSCALL_NONE, SYSCALL_CASE)

struct file_key {
	__u64 dev;
	__u64 ino;
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 16 << 20); /* resized by the loader */
} events SEC(".maps");

/* What one recording asks of the kernel side (a Recording's spec, `record`'s flags). */
struct cgroup_settings {
	__u64 max_write_capture; /* bytes per syscall; above: read back instead */
	__u32 scoped;            /* limited to some paths: files outside are in skipped_files */
	__u32 _pad;
};

/* cgroup v2 ids being recorded. A process is recorded when its cgroup, or an ancestor at one of
 * the levels in filter_levels, is here: so a container's sub-cgroups are covered too. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, struct cgroup_settings);
} recorded_cgroups SEC(".maps");

/* Kept by user space across all recordings, so that a write asks for its recording's settings
 * only when one could apply: the smallest max_write_capture of any, and whether any is scoped.
 * generation changes whenever the set of recorded cgroups does: it invalidates filter_cache. */
struct filter_knobs {
	__u64 cap_floor;
	__u32 scoped;
	__u32 _pad;
	__u64 generation;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct filter_knobs);
} filter_knobs SEC(".maps");


/* Each CPU's last verdict of the filter: the cgroup it was for, the filter_knobs generation it
 * was made under, and the recorded cgroup that owns it (0: not recorded). Consecutive syscalls
 * on a CPU mostly come from one cgroup, so most take the verdict from here, with no hash lookup
 * and no ancestor walk. The programs run with preemption disabled, so no other program on this
 * CPU writes the entry while one reads it. */
struct filter_verdict {
	__u64 cgroup;
	__u64 generation;
	__u64 owner;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct filter_verdict);
} filter_cache SEC(".maps");

/* Bit L set: some recorded cgroup sits at hierarchy level L. Kept by user space. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} filter_levels SEC(".maps");

/* Inodes whose path user space already has: the dentry walk is paid once per inode. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct file_key);
	__type(value, __u8);
} known_inodes SEC(".maps");

/* A read-back mark, tagged with the recorded cgroup whose process made it: on a node with many
 * recordings, only that recording's recorder takes it. */
struct dirty_mark {
	__u32 reason; /* enum dk_dirty_reason */
	__u32 _pad;
	__u64 cgroup;
};

/* Files whose content must be read back by user space. User space deletes an entry once it has
 * resynced the file. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct file_key);
	__type(value, struct dirty_mark);
} dirty_files SEC(".maps");

/* Processes holding shared writable file mappings: their munmap/msync trigger a resync. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, __u32);
	__type(value, __u8);
} mmap_writers SEC(".maps");

/* Names of files whose DK_INODE record did not fit in the ring: without them a file nobody
 * writes again could never be named, so never healed. A map update needs no ring space. */
struct unsent_name {
	__u32 len;
	__u8 path[DK_PATH_MAX];
};
/* A dk_inode that cannot be sent is kept by copying from its path_len on (see send_inode). */
_Static_assert(__builtin_offsetof(struct dk_inode, path) ==
		       __builtin_offsetof(struct dk_inode, path_len) + sizeof(__u32),
	       "dk_inode's path must follow path_len, as unsent_name's follows len");

/* Keyed by the recorded cgroup too: the name is its recording's to heal, no other's (the same
 * inode seen by two recordings, e.g. a shared volume, is two entries). */
struct unsent_key {
	__u64 cgroup;
	__u64 dev;
	__u64 ino;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct unsent_key);
	__type(value, struct unsent_name);
} unsent_names SEC(".maps");

/* Files outside their recording's scope, keyed like unsent_names: their writes are not copied
 * into the ring. User space adds one when it first sees the file's name outside the scope and
 * removes it when the file moves in; an entry evicted only costs copies user space drops. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct unsent_key);
	__type(value, __u8);
} skipped_files SEC(".maps");

/* Records lost, per recorded cgroup: one recording's losses put a gap in its own history only.
 * User space adds an entry when it starts recording a cgroup and removes it after. */
struct loss_counts {
	__u64 lost;    /* as DK_CNT_LOST */
	__u64 lost_ns; /* as DK_CNT_LOST_NS */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, struct loss_counts);
} cgroup_losses SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DK_CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

/* Room to build variable-length records; per CPU, since a program does not migrate. */
struct scratch {
	const unsigned char *names[MAX_DEPTH];
	__u32 lens[MAX_DEPTH];
	/* Only inode and str are built here; the other records are named so that the object's
	 * BTF describes every record type, for crates/capture's check of its decoder (no record is
	 * larger than dk_inode, so they cost nothing). */
	union {
		struct dk_inode inode;
		struct dk_str str;
		struct dk_write write;
		struct dk_ns ns;
		struct dk_ret ret;
		struct dk_fd_op fd_op;
		struct dk_proc proc;
	} rec;
	/* Sized past what the masks below let the verifier prove, not what is used. */
	__u8 room[DK_PATH_MAX * 2 + NAME_MASK + 1];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scratch);
} scratch_map SEC(".maps");

/* Masks a record size so the verifier sees it bounded. A plain `&` would be dropped by clang
 * when it can prove the value already fits, and the verifier cannot follow that proof. */
static __always_inline __u32 bound_size(__u32 v)
{
	asm volatile("%0 &= 8191" : "+r"(v));
	return v;
}

__noinline int count_loss(__u32 which, __u64 n);

static __always_inline void count(__u32 which, __u64 n)
{
	__u64 *c = bpf_map_lookup_elem(&counters, &which);
	if (c)
		*c += n;
	if (which == DK_CNT_LOST || which == DK_CNT_LOST_NS)
		count_loss(which, n);
}

/* Direct loads through the BTF-typed task pointer, not helper calls: the JIT turns each into one
 * guarded load, where a helper call (or a BPF_CORE_READ probe read) costs a call and a
 * fault-checked copy. This runs for every relevant syscall of every process on the machine. */
static __always_inline __u64 current_cgroup_id(void)
{
	struct task_struct *task = bpf_get_current_task_btf();
	return task->cgroups->dfl_cgrp->kn->id;
}

/* The recorded cgroup the current task's cgroup `id` is recorded under: its own, or the
 * ancestor that put it in the filter; 0 if none (no cgroup has id 0). */
static __always_inline __u64 filter_walk(__u64 id)
{
	if (bpf_map_lookup_elem(&recorded_cgroups, &id))
		return id;
	__u32 zero = 0;
	__u32 *levels = bpf_map_lookup_elem(&filter_levels, &zero);
	if (!levels || !*levels)
		return 0;
	__u32 mask = *levels;
	for (int l = 0; l < 16; l++) {
		if (!(mask & (1u << l)))
			continue;
		__u64 a = bpf_get_current_ancestor_cgroup_id(l);
		if (!a)
			break;
		if (bpf_map_lookup_elem(&recorded_cgroups, &a))
			return a;
	}
	return 0;
}

/* filter_walk, through this CPU's last verdict. The generation is read before the walk: a
 * change of the recorded set that lands during the walk leaves the verdict stored under the
 * old generation, so the next syscall walks again. A global function: verified once, not at
 * every call site, and its map keys stay off the callers' stack (which the write path fills). */
__noinline __u64 recorded_owner(void)
{
	__u64 id = current_cgroup_id();
	__u32 zero = 0;
	struct filter_knobs *knobs = bpf_map_lookup_elem(&filter_knobs, &zero);
	struct filter_verdict *v = bpf_map_lookup_elem(&filter_cache, &zero);
	if (!knobs || !v)
		return filter_walk(id);
	__u64 generation = knobs->generation;
	if (v->cgroup == id && v->generation == generation)
		return v->owner;
	__u64 owner = filter_walk(id);
	v->cgroup = id;
	v->generation = generation;
	v->owner = owner;
	return owner;
}

static __always_inline bool in_filter(void)
{
	return recorded_owner() != 0;
}

__noinline int count_loss(__u32 which, __u64 n)
{
	__u64 owner = recorded_owner();
	struct loss_counts *l = bpf_map_lookup_elem(&cgroup_losses, &owner);
	if (!l)
		return 0;
	if (which == DK_CNT_LOST_NS)
		__sync_fetch_and_add(&l->lost_ns, n);
	else
		__sync_fetch_and_add(&l->lost, n);
	return 0;
}

/* Marks a file for read-back on behalf of the current task's recording. */
__noinline int set_dirty(__u64 dev, __u64 ino, __u32 reason, __u64 flags)
{
	struct file_key key = {.dev = dev, .ino = ino};
	struct dirty_mark mark = {.reason = reason, .cgroup = recorded_owner()};
	bpf_map_update_elem(&dirty_files, &key, &mark, flags);
	return 0;
}

/* Wakes the reader only when this record makes the waiting data cross the threshold. Forcing a
 * wakeup for every record while the reader lags cost a self-IPI (a VM exit under
 * virtualisation) per write: measured at ~3x the cost of a 64 B write. The reader also polls on
 * a short timer, so nothing waits long below the threshold. */
static __always_inline __u64 wake_flags(__u64 size)
{
	__u64 avail = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);
	return avail >= wakeup_bytes && avail < wakeup_bytes + size ? BPF_RB_FORCE_WAKEUP
								     : BPF_RB_NO_WAKEUP;
}

static __always_inline void fill_hdr(struct dk_hdr *h, __u16 kind, __u32 size, __u64 ts)
{
	__u64 pt = bpf_get_current_pid_tgid();
	h->kind = kind;
	h->flags = 0;
	h->size = size;
	h->ts = ts;
	h->pid = pt >> 32;
	h->tid = (__u32)pt;
	struct task_struct *task = bpf_get_current_task_btf();
	h->cgroup = task->cgroups->dfl_cgrp->kn->id;
	__builtin_memcpy(h->comm, task->comm, sizeof(h->comm));
	const struct cred *cred = task->cred;
	h->fsuid = cred->fsuid.val;
	h->fsgid = cred->fsgid.val;
}

/* File descriptors are C ints: the upper half of the register is not sign-extended by callers,
 * so AT_FDCWD can arrive as 0xffffff9c. Always narrow before use. */
__noinline __u64 fd_file_ptr(int fd)
{
	if (fd < 0)
		return 0;
	struct task_struct *task = bpf_get_current_task_btf();
	struct files_struct *files = task->files;
	if (!files)
		return 0;
	struct fdtable *fdt = files->fdt;
	if (!fdt)
		return 0;
	if ((unsigned long)fd >= fdt->max_fds)
		return 0;
	/* A pointer to pointers is a plain number to the verifier: this one needs a probe read. */
	struct file **fds = fdt->fd;
	struct file *f = NULL;
	bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]);
	return (__u64)f;
}

/* Verified once as a global function, not once per call site: see walk_path. */
static __always_inline struct file *fd_file(int fd)
{
	return (struct file *)fd_file_ptr(fd);
}

/* What the fd-based paths need from one open file, its inode and its super block, read once.
 * A struct file taken from the fd table is a plain number to the verifier, and so is everything
 * reached from it: read field by field, that was 14 bpf_probe_read_kernel calls (each a call, an
 * address check and a fault-guarded copy) per recorded write, 12.5% of the writer's CPU. Now it
 * is direct loads when the fd sits in files_struct's embedded array (embedded_fd), else one
 * probe read per struct (read_file_span and its siblings). */
struct file_facts {
	__u64 dentry;
	__u64 mnt;
	struct file_key key;
	__s64 pos;
	__s64 size;
	__u64 magic;
	__u32 f_mode;
	__u32 f_flags;
	__u32 i_mode;
	__u32 i_uid;
	__u32 i_gid;
	__u32 _pad;
	__u64 inode;
};

/* Each struct is copied to the stack with ONE probe read over the span holding the fields
 * needed, and the fields are plain loads from that copy. Offsets are CO-RE relocated, so the
 * span and the offsets inside it are constants by load time: the verifier walks only the branch
 * taken, and a kernel whose layout makes a span too wide takes the per-field reads instead. */
#define SPAN_BYTES 128

#define FOFF(T, f) ((__u64)bpf_core_field_offset(T, f))
/* The copy starts at `first`'s offset rounded down to 8 and ends after `last`, both named by
 * the build machine's layout. Another kernel may order fields differently: each field is then
 * checked to lie inside the copy (a field before the start wraps around and fails) and to be
 * aligned for a direct load (the verifier refuses misaligned stack loads). Kept to a few
 * instructions per field: these run at every call, only the dead branch is removed. */
#define SPAN_LO(T, first) (FOFF(T, first) & ~7ull)
#define SPAN_LEN(T, last, ty, lo) (FOFF(T, last) + sizeof(ty) - (lo))
#define SPAN_HAS(T, f, ty, lo, len)                                                         \
	(FOFF(T, f) - (lo) + sizeof(ty) <= (len) && !(FOFF(T, f) & (sizeof(ty) - 1)))
#define SPAN_GET(buf, T, f, ty, lo) (*(ty *)((buf) + (FOFF(T, f) - (lo))))

static __always_inline __u64 read_file_span(struct file *f, struct file_facts *ff)
{
	__u8 buf[SPAN_BYTES] __attribute__((aligned(8)));
	__u64 lo = SPAN_LO(struct file, f_mode);
	__u64 len = SPAN_LEN(struct file, f_pos, __s64, lo);
	if (len <= SPAN_BYTES && SPAN_HAS(struct file, f_mode, __u32, lo, len) &&
	    SPAN_HAS(struct file, f_inode, void *, lo, len) &&
	    SPAN_HAS(struct file, f_flags, __u32, lo, len) &&
	    SPAN_HAS(struct file, f_path.dentry, void *, lo, len) &&
	    SPAN_HAS(struct file, f_path.mnt, void *, lo, len) &&
	    SPAN_HAS(struct file, f_pos, __s64, lo, len)) {
		if (bpf_probe_read_kernel(buf, len, (void *)f + lo))
			return 0;
		ff->f_mode = SPAN_GET(buf, struct file, f_mode, __u32, lo);
		ff->f_flags = SPAN_GET(buf, struct file, f_flags, __u32, lo);
		ff->pos = SPAN_GET(buf, struct file, f_pos, __s64, lo);
		ff->dentry = SPAN_GET(buf, struct file, f_path.dentry, __u64, lo);
		ff->mnt = SPAN_GET(buf, struct file, f_path.mnt, __u64, lo);
		return SPAN_GET(buf, struct file, f_inode, __u64, lo);
	}
	ff->f_mode = BPF_CORE_READ(f, f_mode);
	ff->f_flags = BPF_CORE_READ(f, f_flags);
	ff->pos = BPF_CORE_READ(f, f_pos);
	ff->dentry = (__u64)BPF_CORE_READ(f, f_path.dentry);
	ff->mnt = (__u64)BPF_CORE_READ(f, f_path.mnt);
	return (__u64)BPF_CORE_READ(f, f_inode);
}

static __always_inline __u64 read_inode_span(struct inode *i, struct file_facts *ff)
{
	__u8 buf[SPAN_BYTES] __attribute__((aligned(8)));
	__u64 lo = SPAN_LO(struct inode, i_mode);
	__u64 len = SPAN_LEN(struct inode, i_size, __s64, lo);
	if (len <= SPAN_BYTES && SPAN_HAS(struct inode, i_mode, __u16, lo, len) &&
	    SPAN_HAS(struct inode, i_uid.val, __u32, lo, len) &&
	    SPAN_HAS(struct inode, i_gid.val, __u32, lo, len) &&
	    SPAN_HAS(struct inode, i_sb, void *, lo, len) &&
	    SPAN_HAS(struct inode, i_ino, __u64, lo, len) &&
	    SPAN_HAS(struct inode, i_size, __s64, lo, len)) {
		if (bpf_probe_read_kernel(buf, len, (void *)i + lo))
			return 0;
		ff->i_mode = SPAN_GET(buf, struct inode, i_mode, __u16, lo);
		ff->i_uid = SPAN_GET(buf, struct inode, i_uid.val, __u32, lo);
		ff->i_gid = SPAN_GET(buf, struct inode, i_gid.val, __u32, lo);
		ff->key.ino = SPAN_GET(buf, struct inode, i_ino, __u64, lo);
		ff->size = SPAN_GET(buf, struct inode, i_size, __s64, lo);
		return SPAN_GET(buf, struct inode, i_sb, __u64, lo);
	}
	ff->i_mode = BPF_CORE_READ(i, i_mode);
	ff->i_uid = BPF_CORE_READ(i, i_uid.val);
	ff->i_gid = BPF_CORE_READ(i, i_gid.val);
	ff->key.ino = BPF_CORE_READ(i, i_ino);
	ff->size = BPF_CORE_READ(i, i_size);
	return (__u64)BPF_CORE_READ(i, i_sb);
}

static __always_inline void read_sb_span(struct super_block *sb, struct file_facts *ff)
{
	__u8 buf[SPAN_BYTES] __attribute__((aligned(8)));
	__u64 lo = SPAN_LO(struct super_block, s_dev);
	__u64 len = SPAN_LEN(struct super_block, s_magic, __u64, lo);
	if (len <= SPAN_BYTES && SPAN_HAS(struct super_block, s_dev, __u32, lo, len) &&
	    SPAN_HAS(struct super_block, s_magic, __u64, lo, len)) {
		if (bpf_probe_read_kernel(buf, len, (void *)sb + lo))
			return;
		ff->key.dev = SPAN_GET(buf, struct super_block, s_dev, __u32, lo);
		ff->magic = SPAN_GET(buf, struct super_block, s_magic, __u64, lo);
		return;
	}
	ff->key.dev = BPF_CORE_READ(sb, s_dev);
	ff->magic = BPF_CORE_READ(sb, s_magic);
}

#define FD_SLOT(n) case n: return files->fd_array[n];
#define FD_SLOTS8(n)                                                                        \
	FD_SLOT(n) FD_SLOT(n + 1) FD_SLOT(n + 2) FD_SLOT(n + 3) FD_SLOT(n + 4) FD_SLOT(n + 5)  \
	FD_SLOT(n + 6) FD_SLOT(n + 7)
#define EMBEDDED_FDS 64

/* The fd table proper (`fdt->fd`) is a pointer to pointers, so what it holds is a plain number
 * to the verifier and everything behind it needs probe reads. Until a process's table grows
 * past 64 fds (or when it inherited a grown one), though, the table IS files_struct's embedded
 * fd_array, whose elements are BTF-typed: through them each field is one guarded load, no
 * helper call. A typed load needs a constant offset, hence one case per slot (clang may merge
 * them into one load at a per-case offset; the verifier follows each case, a few hundred
 * instructions in all). */
static __always_inline struct file *embedded_fd(struct files_struct *files, __u32 fd)
{
	switch (fd) {
	FD_SLOTS8(0) FD_SLOTS8(8) FD_SLOTS8(16) FD_SLOTS8(24)
	FD_SLOTS8(32) FD_SLOTS8(40) FD_SLOTS8(48) FD_SLOTS8(56)
	}
	return NULL;
}

/* Fills `ff` for the file open at `fd`; false when there is none (or it has no inode).
 * A global function: verified once, not once per caller. */
__noinline int file_facts(long fd, struct file_facts *ff)
{
	if (!ff)
		return false;
	__builtin_memset(ff, 0, sizeof(*ff));
	struct task_struct *task = bpf_get_current_task_btf();
	struct files_struct *files = task->files;
	/* Narrowed (see fd_file_ptr); a negative fd becomes too large for the embedded array. The
	 * pointer comparison and the pointers stored into ff need CAP_PERFMON, as tracing does. */
	__u32 slot = (int)fd;
	if (files && slot < EMBEDDED_FDS &&
	    slot < bpf_core_field_size(struct files_struct, fd_array) / sizeof(void *) &&
	    files->fdt == &files->fdtab) {
		struct file *f = embedded_fd(files, slot);
		if (!f)
			return false;
		struct inode *inode = f->f_inode;
		if (!inode)
			return false;
		ff->f_mode = f->f_mode;
		ff->f_flags = f->f_flags;
		ff->pos = f->f_pos;
		ff->dentry = (__u64)f->f_path.dentry;
		ff->mnt = (__u64)f->f_path.mnt;
		ff->i_mode = inode->i_mode;
		ff->i_uid = inode->i_uid.val;
		ff->i_gid = inode->i_gid.val;
		ff->inode = (__u64)inode;
		ff->key.ino = inode->i_ino;
		ff->size = inode->i_size;
		struct super_block *sb = inode->i_sb;
		ff->key.dev = sb->s_dev;
		ff->magic = sb->s_magic;
		return true;
	}
	__u64 file = fd_file_ptr(fd);
	if (!file)
		return false;
	__u64 inode = read_file_span((void *)file, ff);
	if (!inode)
		return false;
	ff->inode = inode;
	__u64 sb = read_inode_span((void *)inode, ff);
	if (!sb)
		return false;
	read_sb_span((void *)sb, ff);
	return true;
}

/* Regular files on real file systems only: pseudo file systems (proc, sysfs, cgroup, tracefs,
 * bpffs, debugfs, securityfs) are interfaces, not state a person wants rewound. */
static __always_inline bool recordable(const struct file_facts *ff)
{
	if ((ff->i_mode & S_IFMT) != S_IFREG)
		return false;
	switch (ff->magic) {
	case 0x9fa0:     /* proc */
	case 0x62656572: /* sysfs */
	case 0x63677270: /* cgroup2 */
	case 0x27e0eb:   /* cgroup */
	case 0x74726163: /* tracefs */
	case 0x64626720: /* debugfs */
	case 0xcafe4a11: /* bpffs */
	case 0x73636673: /* securityfs */
		return false;
	}
	return true;
}

static __always_inline struct scratch *get_scratch(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&scratch_map, &zero);
}

/* Where walk_path writes: the path of a DK_INODE or the data of a DK_STR being built. */
enum walk_dest { WALK_TO_INODE, WALK_TO_STR };

struct walk_ctx {
	struct dentry *d;
	struct vfsmount *vm;
	struct mount *m;
	struct dentry *root_d;
	struct vfsmount *root_m;
	__u32 n;
	__u32 off;
	__u32 dest;
	__u16 cut;
};

/* One step up: either a name (collected) or a mount crossing. */
static long walk_up(__u64 i, void *c)
{
	struct walk_ctx *w = c;
	struct scratch *s = get_scratch();
	if (!s)
		return 1;
	/* Locals, not w->...: BPF_CORE_READ on a member of our own struct would emit a CO-RE
	 * relocation against a type the kernel does not have. */
	struct dentry *d = w->d;
	struct vfsmount *vm = w->vm;
	struct mount *m = w->m;
	if (d == w->root_d && vm == w->root_m)
		return 1;
	struct dentry *mnt_root = BPF_CORE_READ(vm, mnt_root);
	struct dentry *parent = BPF_CORE_READ(d, d_parent);
	if (d == mnt_root || d == parent) {
		struct mount *mp = BPF_CORE_READ(m, mnt_parent);
		if (mp == m)
			return 1; /* the global root: the task's root is outside our reach */
		w->d = BPF_CORE_READ(m, mnt_mountpoint);
		w->m = mp;
		w->vm = (void *)mp + bpf_core_field_offset(struct mount, mnt);
		return 0;
	}
	if (w->n >= MAX_DEPTH) {
		w->cut = 1;
		return 1;
	}
	s->names[w->n & (MAX_DEPTH - 1)] = BPF_CORE_READ(d, d_name.name);
	s->lens[w->n & (MAX_DEPTH - 1)] = BPF_CORE_READ(d, d_name.len);
	w->n++;
	w->d = parent;
	return 0;
}

static long walk_copy(__u64 k, void *c)
{
	struct walk_ctx *w = c;
	struct scratch *s = get_scratch();
	if (!s || k >= w->n)
		return 1;
	__u8 *out = w->dest == WALK_TO_INODE ? s->rec.inode.path : s->rec.str.data;
	__u32 idx = (w->n - 1 - k) & (MAX_DEPTH - 1);
	__u32 len = s->lens[idx] & NAME_MASK;
	if (w->off + 1 + len > DK_PATH_MAX) {
		w->cut = 1;
		return 1;
	}
	out[w->off & PATH_MASK] = '/';
	w->off++;
	bpf_probe_read_kernel(&out[w->off & PATH_MASK], len, s->names[idx]);
	w->off += len;
	return 0;
}

#define WALK_CUT (1u << 31)

/* Writes the path of (dentry, vfsmnt) relative to the task's root (so a container's files are
 * named as the container sees them) into the record being built. Returns the length, with
 * WALK_CUT set when the path was too deep or too long.
 * Global functions (here and below) are verified once, not once per caller: that keeps the
 * whole object well inside the verifier's budget. They take kernel pointers as integers. */
__noinline int walk_path(__u64 dentry, __u64 vfsmnt, __u32 dest)
{
	struct dentry *d = (void *)dentry;
	struct vfsmount *vm = (void *)vfsmnt;
	struct task_struct *task = bpf_get_current_task_btf();
	struct walk_ctx w = {
		.d = d,
		.vm = vm,
		.m = (void *)vm - bpf_core_field_offset(struct mount, mnt),
		.root_d = task->fs->root.dentry,
		.root_m = task->fs->root.mnt,
		.dest = dest,
	};
	bpf_loop(MAX_WALK, walk_up, &w, 0);
	bpf_loop(MAX_DEPTH, walk_copy, &w, 0);
	__u32 cut = w.cut ? WALK_CUT : 0;
	if (w.off == 0) {
		struct scratch *s = get_scratch();
		if (!s)
			return 0;
		__u8 *out = dest == WALK_TO_INODE ? s->rec.inode.path : s->rec.str.data;
		out[0] = '/';
		w.off = 1;
	}
	return (w.off > PATH_MASK ? PATH_MASK : w.off) | cut;
}

/* Sends the file's path unless user space already has it (or `flags` says this open created or
 * truncated it, which user space must always see). Returns false if the record was lost. */
__noinline int send_inode(struct file_facts *ff, __u32 flags, __u64 ts)
{
	if (!ff)
		return false;
	struct file_key key = ff->key;
	if (!flags && bpf_map_lookup_elem(&known_inodes, &key))
		return true;
	struct dentry *d = (void *)ff->dentry;
	__u32 walked = walk_path(ff->dentry, ff->mnt, WALK_TO_INODE);
	__u32 len = walked & ~WALK_CUT;
	count(DK_CNT_PATH_WALKS, 1);
	if (walked & WALK_CUT)
		flags |= DK_INODE_PATH_CUT;
	struct scratch *s = get_scratch();
	if (!s)
		return false;
	if (!BPF_CORE_READ(d, d_hash.pprev))
		flags |= DK_INODE_UNLINKED;

	struct dk_inode *r = &s->rec.inode;
	if (len > DK_PATH_MAX)
		len = DK_PATH_MAX;
	__u32 size = bound_size(sizeof(*r) + len);
	fill_hdr(&r->h, DK_INODE, size, ts);
	r->h.flags = flags;
	r->dev = key.dev;
	r->ino = key.ino;
	r->size = ff->size;
	r->mode = ff->i_mode;
	r->uid = ff->i_uid;
	r->gid = ff->i_gid;
	/* Once per inode (or per metadata change), so a probe read costs nothing that matters. */
	struct inode *inode = (void *)ff->inode;
	r->mtime_sec = BPF_CORE_READ(inode, i_mtime_sec);
	r->mtime_nsec = BPF_CORE_READ(inode, i_mtime_nsec);
	r->_pad = 0;
	r->path_len = size - sizeof(*r);
	if (bpf_ringbuf_output(&events, r, size, wake_flags(size))) {
		count(DK_CNT_LOST, 1);
		/* path_len is followed by the path: the layout of struct unsent_name. */
		struct unsent_key uk = {.cgroup = recorded_owner(), .dev = key.dev, .ino = key.ino};
		bpf_map_update_elem(&unsent_names, &uk, &r->path_len, BPF_ANY);
		return false;
	}
	__u8 one = 1;
	bpf_map_update_elem(&known_inodes, &key, &one, BPF_ANY);
	if (!flags) {
		/* A file that existed before the recording and outside the baseline (baseline files
		 * are pre-seeded in known_inodes): its earlier bytes are unknown, so have it read back
		 * at close. Marked here, not by user space, which would learn of it after the close. */
		set_dirty(key.dev, key.ino, DK_DIRTY_ADOPTED, BPF_NOEXIST);
	}
	return true;
}

__noinline int send_fd_op_at(__u32 op, __u64 dev, __u64 ino, __u64 arg, __u64 ts)
{
	struct file_key key = {.dev = dev, .ino = ino};
	struct dk_fd_op *r = bpf_ringbuf_reserve(&events, sizeof(*r), 0);
	if (!r) {
		count(DK_CNT_LOST, 1);
		if (key.ino)
			set_dirty(key.dev, key.ino, DK_DIRTY_LOST, BPF_ANY);
		return 0;
	}
	fill_hdr(&r->h, DK_FD_OP, sizeof(*r), ts);
	r->op = op;
	r->_pad = 0;
	r->dev = key.dev;
	r->ino = key.ino;
	r->arg = arg;
	bpf_ringbuf_submit(r, wake_flags(sizeof(*r)));
	return 0;
}

static __always_inline void send_fd_op(__u32 op, struct file_key key, __u64 arg, __u64 ts)
{
	send_fd_op_at(op, key.dev, key.ino, arg, ts);
}

__noinline int mark_dirty(struct file_facts *ff, __u32 reason, __u64 ts)
{
	if (!ff)
		return 0;
	struct file_key key = ff->key;
	send_inode(ff, 0, ts);
	set_dirty(key.dev, key.ino, reason, BPF_ANY);
	send_fd_op(DK_FD_DIRTY, key, reason, ts);
	return 0;
}

/* State of one syscall's payload walk: a plain write is a one-element vector. */
struct payload {
	struct file_key key;
	__u64 ts;
	__u64 offset;       /* file offset of the next byte */
	__u64 remaining;    /* bytes of the return value not yet sent */
	const struct iovec *iov;
	__u64 iov_idx;
	__u64 iov_cnt;
	const __u8 *base;   /* current buffer */
	__u64 base_left;    /* bytes left in it */
	bool failed;
};

/* See bound_size: keeps the `len <= N` the verifier needs after clang folded it away. */
#define CLAMP(v, N) asm volatile("if %0 <= " #N " goto +1; %0 = " #N : "+r"(v))

#define SEND_CLASS(N)                                                                      \
	if (len <= N) {                                                                    \
		__u64 n = len;                                                             \
		CLAMP(n, N);                                                               \
		struct dk_write *w = bpf_ringbuf_reserve(&events, sizeof(*w) + N, 0);     \
		if (!w)                                                                    \
			return -1;                                                         \
		if (bpf_probe_read_user(w->data, n, src)) {                                \
			bpf_ringbuf_discard(w, BPF_RB_NO_WAKEUP);                          \
			return -2;                                                         \
		}                                                                          \
		fill_hdr(&w->h, DK_WRITE, sizeof(*w) + N, p->ts);                          \
		w->h.flags = last ? DK_WRITE_LAST : 0;                                     \
		w->dev = p->key.dev;                                                       \
		w->ino = p->key.ino;                                                       \
		w->offset = p->offset;                                                     \
		w->len = len;                                                              \
		w->_pad = 0;                                                               \
		bpf_ringbuf_submit(w, wake_flags(sizeof(*w) + N));                                       \
		return 0;                                                                  \
	}

/* Size classes keep small writes small in the ring without a copy through scratch memory. */
__noinline int send_chunk(struct payload *p, __u64 src_ptr, __u32 len, __u32 last)
{
	const __u8 *src = (const void *)src_ptr;
	if (!p)
		return -1;
	SEND_CLASS(64)
	SEND_CLASS(256)
	SEND_CLASS(1024)
	if (len > DK_CHUNK)
		len = DK_CHUNK;
	SEND_CLASS(DK_CHUNK)
	return -1;
}

/* A global function, so the verifier checks it once with unknown contents. As the bpf_loop
 * callback body itself it was re-verified until the loop state converged: ~1.2 M of the 1.6 M
 * instructions processed at load, most of the recorder's start-up. */
__noinline int payload_step_at(struct payload *p)
{
	if (!p)
		return 1;
	if (!p->remaining)
		return 1;
	if (!p->base_left) {
		if (!p->iov || p->iov_idx >= p->iov_cnt || p->iov_idx >= MAX_IOV)
			return 1;
		struct iovec v = {};
		if (bpf_probe_read_user(&v, sizeof(v), &p->iov[p->iov_idx])) {
			p->failed = true;
			return 1;
		}
		p->iov_idx++;
		p->base = v.iov_base;
		p->base_left = v.iov_len;
		return 0;
	}
	__u64 n = p->base_left;
	if (n > p->remaining)
		n = p->remaining;
	if (n > DK_CHUNK)
		n = DK_CHUNK;
	bool last = n == p->remaining;
	if (send_chunk(p, (__u64)p->base, n, last)) {
		p->failed = true;
		return 1;
	}
	count(DK_CNT_CAPTURED, n);
	p->base += n;
	p->base_left -= n;
	p->remaining -= n;
	p->offset += n;
	return 0;
}

static long payload_step(__u64 i, void *ctx)
{
	return payload_step_at(ctx) ? 1 : 0;
}

enum { WANT_BYTES, WANT_READ_BACK, WANT_NOTHING };

/* What the current task's recording wants of a write of `len` bytes to `key`: nothing if the
 * file lies outside its scope, a read-back if it is larger than its max_write_capture. Out of
 * line, and only called when filter_knobs says some recording could want less than the bytes. */
__noinline int recording_wants(struct file_key *key, __u64 len)
{
	if (!key)
		return WANT_BYTES;
	__u64 owner = recorded_owner();
	struct cgroup_settings *cs = bpf_map_lookup_elem(&recorded_cgroups, &owner);
	if (!cs)
		return WANT_BYTES;
	if (cs->scoped) {
		struct unsent_key k = {.cgroup = owner, .dev = key->dev, .ino = key->ino};
		if (bpf_map_lookup_elem(&skipped_files, &k))
			return WANT_NOTHING;
	}
	return len > cs->max_write_capture ? WANT_READ_BACK : WANT_BYTES;
}

/* Common tail of write, pwrite64, writev, pwritev, pwritev2. `pos` is the explicit offset, or
 * -1 for "the file position". */
__noinline int on_write(long fd, __u64 buf, __u64 iov_cnt, __s64 pos, long ret)
{
	bool vector = iov_cnt != 0;
	if (ret <= 0)
		return 0;
	struct file_facts ff;
	if (!file_facts(fd, &ff) || !recordable(&ff))
		return 0;
	__u64 ts = bpf_ktime_get_ns();

	struct payload p = {};
	p.key = ff.key;
	p.ts = ts;
	p.remaining = ret;
	/* The position after the write, minus what was written, is where it went: this is right
	 * for O_APPEND too, where the kernel moved the position to the end first. pwrite on an
	 * O_APPEND file appends as well (a Linux quirk), so the size tells there. */
	if (ff.f_flags & O_APPEND)
		p.offset = ff.size - ret;
	else if (pos >= 0)
		p.offset = pos;
	else
		p.offset = ff.pos - ret;

	if (!send_inode(&ff, 0, ts)) {
		set_dirty(p.key.dev, p.key.ino, DK_DIRTY_LOST, BPF_ANY);
		return 0;
	}
	__u32 zero = 0;
	struct filter_knobs *knobs = bpf_map_lookup_elem(&filter_knobs, &zero);
	if (knobs && (knobs->scoped || (__u64)ret > knobs->cap_floor)) {
		switch (recording_wants(&ff.key, ret)) {
		case WANT_NOTHING:
			return 0;
		case WANT_READ_BACK:
			mark_dirty(&ff, DK_DIRTY_CAP, ts);
			return 0;
		}
	}
	if ((__u64)ret > max_write_capture) {
		mark_dirty(&ff, DK_DIRTY_CAP, ts);
		return 0;
	}
	if (vector) {
		p.iov = (const void *)buf;
		p.iov_cnt = iov_cnt;
	} else {
		p.base = (const void *)buf;
		p.base_left = ret;
	}
	if (!vector && ret <= DK_CHUNK) {
		if (send_chunk(&p, (__u64)p.base, ret, true))
			p.failed = true;
		else
			count(DK_CNT_CAPTURED, ret);
	} else {
		bpf_loop((ret / DK_CHUNK) + 2 * MAX_IOV + 2, payload_step, &p, 0);
	}
	if (p.failed) {
		count(DK_CNT_LOST, 1);
		set_dirty(p.key.dev, p.key.ino, DK_DIRTY_LOST, BPF_ANY);
		send_fd_op(DK_FD_DIRTY, p.key, DK_DIRTY_LOST, ts);
	}
	return 0;
}

__noinline int on_open(long ret, __u64 flags)
{
	if (ret < 0 || !(flags & (O_CREAT | O_TRUNC)))
		return 0;
	struct file_facts ff;
	if (!file_facts(ret, &ff) || !recordable(&ff))
		return 0;
	__u16 f = 0;
	if (ff.f_mode & FMODE_CREATED)
		f = DK_INODE_CREATED;
	else if ((flags & O_TRUNC) && (flags & O_ACCMODE))
		f = DK_INODE_TRUNCATED;
	if (!f)
		return 0;
	if (!send_inode(&ff, f, bpf_ktime_get_ns()))
		count(DK_CNT_LOST_NS, 1);
	return 0;
}

__noinline int on_fd_dirty(long fd, __u32 reason)
{
	struct file_facts ff;
	if (file_facts(fd, &ff) && recordable(&ff))
		mark_dirty(&ff, reason, bpf_ktime_get_ns());
	return 0;
}

/* ---- path-based syscalls: entered with strings, completed by the exit record ---- */

__noinline int send_str(__u32 slot, __u32 len, __u32 cut, __u64 ts)
{
	struct scratch *s = get_scratch();
	if (!s)
		return false;
	struct dk_str *r = &s->rec.str;
	if (len > DK_PATH_MAX)
		len = DK_PATH_MAX;
	__u32 size = sizeof(*r) + len;
	fill_hdr(&r->h, DK_STR, size, ts);
	r->slot = slot;
	r->truncated = cut;
	r->len = len;
	if (bpf_ringbuf_output(&events, r, bound_size(size), 0))
		return false;
	return true;
}

/* One path-based syscall's arguments: BPF calls take at most five arguments, so they travel
 * together. Path b is optional; for symlink it is the raw target, which has no base. */
struct ns_req {
	__u64 ts;
	__u64 arg;
	__u32 op;
	__u32 mode;
	__u32 flags;
	bool b_raw;
	long dfd[2];
	const char *path[2];
	const void *value; /* DK_SLOT_VALUE: raw bytes, or none */
	__u64 value_len;
};

/* Sends the raw value of a DK_NS_ENTER (an xattr value, a times argument), cut at DK_VALUE_MAX. */
__noinline int send_value(__u64 uptr, __u64 len, __u64 ts)
{
	struct scratch *s = get_scratch();
	if (!s)
		return false;
	__u32 cut = len > DK_VALUE_MAX;
	__u32 n = cut ? DK_VALUE_MAX : len;
	CLAMP(n, 256);
	if (n && bpf_probe_read_user(s->rec.str.data, n, (const void *)uptr))
		return false;
	return send_str(DK_SLOT_VALUE, n, cut, ts);
}

/* Sends the base directory (when the path is relative) and the name of path argument `which`. */
__noinline int send_path_arg(struct ns_req *q, int which)
{
	struct scratch *s = get_scratch();
	if (!s || !q)
		return false;
	which &= 1;
	__u16 slot = which ? DK_SLOT_BASE_B : DK_SLOT_BASE_A;
	const char *upath = q->path[which];
	bool raw = which && q->b_raw;
	long n = bpf_probe_read_user_str(s->rec.str.data, DK_PATH_MAX, upath);
	if (n <= 0)
		return false;
	__u16 name_cut = n == DK_PATH_MAX;
	if (!raw && s->rec.str.data[0] != '/') {
		/* The base goes first. Moving the name past a walked base would need a
		 * variable-offset copy the verifier dislikes, so send the base, then re-read. */
		struct dentry *d;
		struct vfsmount *vm;
		long dfd = q->dfd[which];
		if (dfd == AT_FDCWD) {
			struct task_struct *task = bpf_get_current_task_btf();
			/* Probe reads: a global function's arguments must be plain numbers. */
			d = BPF_CORE_READ(task, fs, pwd.dentry);
			vm = BPF_CORE_READ(task, fs, pwd.mnt);
		} else {
			struct file *f = fd_file(dfd);
			if (!f)
				return false;
			d = BPF_CORE_READ(f, f_path.dentry);
			vm = BPF_CORE_READ(f, f_path.mnt);
		}
		__u32 walked = walk_path((__u64)d, (__u64)vm, WALK_TO_STR);
		if (!send_str(slot, walked & ~WALK_CUT, (walked & WALK_CUT) != 0, q->ts))
			return false;
		n = bpf_probe_read_user_str(s->rec.str.data, DK_PATH_MAX, upath);
		if (n <= 0)
			return false;
	}
	return send_str(slot + 1, n - 1, name_cut, q->ts);
}

__noinline int send_ns(struct ns_req *q)
{
	if (!q)
		return 0;
	q->ts = bpf_ktime_get_ns();
	struct dk_ns *r = bpf_ringbuf_reserve(&events, sizeof(*r), 0);
	if (!r) {
		count(DK_CNT_LOST, 1);
		count(DK_CNT_LOST_NS, 1);
		return 0;
	}
	fill_hdr(&r->h, DK_NS_ENTER, sizeof(*r), q->ts);
	r->op = q->op;
	r->mode = q->mode;
	r->arg = q->arg;
	r->flags = q->flags;
	r->_pad = 0;
	bpf_ringbuf_submit(r, 0);

	bool ok = send_path_arg(q, 0);
	if (ok && q->path[1])
		ok = send_path_arg(q, 1);
	if (ok && q->value)
		ok = send_value((__u64)q->value, q->value_len, q->ts);
	if (!ok) {
		count(DK_CNT_LOST, 1);
		count(DK_CNT_LOST_NS, 1);
	}
	return 0;
}

#define NS(OP, MODE, ARG, FLAGS, DFD_A, A, DFD_B, B, B_RAW)                                    \
	do {                                                                                   \
		struct ns_req q = {.arg = (ARG), .op = (OP), .mode = (MODE), .flags = (FLAGS),  \
				   .b_raw = (B_RAW), .dfd = {(int)(DFD_A), (int)(DFD_B)},                  \
				   .path = {(A), (B)}};                                         \
		send_ns(&q);                                                                   \
	} while (0)

/* A metadata syscall by path: path a, optionally a raw name b (an xattr's), and a value. */
#define NS_META(OP, MODE, ARG, NOFOLLOW, DFD, A, B, VALUE, VALUE_LEN)                         \
	do {                                                                                   \
		struct ns_req q = {.arg = (ARG), .op = (OP), .mode = (MODE),                    \
				   .flags = (NOFOLLOW) ? DK_NS_NOFOLLOW : 0, .b_raw = true,     \
				   .dfd = {(int)(DFD), 0}, .path = {(A), (B)},                  \
				   .value = (VALUE), .value_len = (VALUE_LEN)};                 \
		send_ns(&q);                                                                   \
	} while (0)

/* The fd a path names when it is one of the process's own /proc fd links (/proc/self/fd/N,
 * /proc/thread-self/fd/N, /proc/<its pid or tid>/fd/N), else -1. GNU tar and glibc's
 * fchmodat(AT_SYMLINK_NOFOLLOW) change O_PATH descriptors this way; the name itself means
 * nothing to user space. Another process's /proc/PID/fd is not followed. */
#define PROC_FD_BYTES 40
static __always_inline long proc_fd_of(const char *upath)
{
	char b[PROC_FD_BYTES] = {}; /* zeroed: the verifier follows reads past the string too */
	long n = bpf_probe_read_user_str(b, sizeof(b), upath);
	if (n < 11 || b[0] != '/' || b[1] != 'p' || b[2] != 'r' || b[3] != 'o' || b[4] != 'c' ||
	    b[5] != '/')
		return -1;
	int start;
	if (b[6] == 's' && b[7] == 'e' && b[8] == 'l' && b[9] == 'f' && b[10] == '/') {
		start = 11;
	} else if (b[6] == 't' && b[7] == 'h' && b[8] == 'r' && b[9] == 'e' && b[10] == 'a' &&
		   b[11] == 'd' && b[12] == '-' && b[13] == 's' && b[14] == 'e' && b[15] == 'l' &&
		   b[16] == 'f' && b[17] == '/') {
		start = 18;
	} else {
		__u64 pt = bpf_get_current_pid_tgid(), pid = 0;
		int j;
		for (j = 6; j < 17; j++) {
			char c = b[j];
			if (c == '/')
				break;
			if (c < '0' || c > '9')
				return -1;
			pid = pid * 10 + (c - '0');
		}
		if (j == 6 || j == 17 || (pid != pt >> 32 && pid != (__u32)pt))
			return -1;
		start = j + 1;
	}
	/* "fd/" then the fd's digits up to the NUL. */
	__u32 state = 0;
	__u64 fd = 0;
	bool digits = false;
#pragma unroll
	for (int j = 8; j < PROC_FD_BYTES; j++) {
		if (j < start)
			continue;
		char c = b[j];
		if (state == 0) {
			if (c != 'f')
				return -1;
			state = 1;
		} else if (state == 1) {
			if (c != 'd')
				return -1;
			state = 2;
		} else if (state == 2) {
			if (c != '/')
				return -1;
			state = 3;
		} else {
			if (c == 0)
				return digits && fd < (1 << 20) ? (long)fd : -1;
			if (c < '0' || c > '9')
				return -1;
			fd = fd * 10 + (c - '0');
			digits = true;
		}
	}
	return -1;
}

/* Sends the metadata of the file open at `fd` as the call left it: the kernel already applied
 * what an ACL implies for the mode, what chown clears, what the times became. */
__noinline int meta_of_fd(long fd, __u32 flags)
{
	struct file_facts ff;
	if (!file_facts(fd, &ff))
		return 0;
	__u32 type = ff.i_mode & S_IFMT;
	if (type != S_IFREG && type != S_IFDIR && type != S_IFLNK)
		return 0;
	struct file_facts probe = ff;
	probe.i_mode = S_IFREG; /* recordable() for its file system check alone */
	if (!recordable(&probe))
		return 0;
	if (!send_inode(&ff, DK_INODE_META | (flags & DK_INODE_XATTR), bpf_ktime_get_ns()))
		count(DK_CNT_LOST_NS, 1);
	return 0;
}

/* A path-based metadata call that succeeded: if its path names an open file, that file's
 * metadata follows (user space cannot resolve such a path itself). */
static __always_inline void meta_through_fd(long dfd, const char *upath, bool empty_ok,
					    __u32 flags)
{
	char first = 1;
	if (empty_ok && !upath) {
		meta_of_fd(dfd, flags);
		return;
	}
	if (empty_ok && !bpf_probe_read_user(&first, 1, upath) && first == 0) {
		meta_of_fd(dfd, flags);
		return;
	}
	long fd = proc_fd_of(upath);
	if (fd >= 0)
		meta_of_fd(fd, flags);
}

static __always_inline __u32 umask_mode(__u32 mode)
{
	struct task_struct *task = bpf_get_current_task_btf();
	__u32 um = task->fs->umask;
	return mode & 07777 & ~um;
}

/* The registers of the current syscall, for the per-syscall tracepoints, whose context lacks
 * them. Fetched only once the filter matched: processes outside it do not pay for the two
 * helper calls. */
static __always_inline struct pt_regs *current_regs(void)
{
	return (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
}

/* What a syscall listed for enter does, from either attach point (dk_sys_enter, dk_tp_enter);
 * regs NULL: fetch them (per-syscall tracepoints). */
static __always_inline int on_sys_enter(struct pt_regs *regs, long id)
{
	switch (id) {
	ENTER_SYSCALLS
		break;
	default:
		return 0;
	}
	if (!in_filter())
		return 0;
	if (!regs)
		regs = current_regs();

	long di = regs->di, si = regs->si, dx = regs->dx, r10 = regs->r10, r8 = regs->r8;
	const char *s0 = (const char *)di, *s1 = (const char *)si, *s2 = (const char *)dx;
	const char *s3 = (const char *)r10;

	switch (id) {
	case NR_rename:
		NS(DK_NS_RENAME, 0, 0, 0, AT_FDCWD, s0, AT_FDCWD, s1, false);
		break;
	case NR_renameat:
		NS(DK_NS_RENAME, 0, 0, 0, di, s1, dx, s3, false);
		break;
	case NR_renameat2:
		NS(DK_NS_RENAME, 0, 0, r8, di, s1, dx, s3, false);
		break;
	case NR_unlink:
		NS(DK_NS_UNLINK, 0, 0, 0, AT_FDCWD, s0, 0, NULL, false);
		break;
	case NR_unlinkat:
		NS(dx & AT_REMOVEDIR ? DK_NS_RMDIR : DK_NS_UNLINK, 0, 0, 0, di, s1, 0, NULL,
			false);
		break;
	case NR_rmdir:
		NS(DK_NS_RMDIR, 0, 0, 0, AT_FDCWD, s0, 0, NULL, false);
		break;
	case NR_mkdir:
		NS(DK_NS_MKDIR, umask_mode(si), 0, 0, AT_FDCWD, s0, 0, NULL, false);
		break;
	case NR_mkdirat:
		NS(DK_NS_MKDIR, umask_mode(dx), 0, 0, di, s1, 0, NULL, false);
		break;
	case NR_symlink:
		NS(DK_NS_SYMLINK, 0777, 0, 0, AT_FDCWD, s1, 0, s0, true);
		break;
	case NR_symlinkat:
		NS(DK_NS_SYMLINK, 0777, 0, 0, si, s2, 0, s0, true);
		break;
	case NR_link:
		NS(DK_NS_LINK, 0, 0, 0, AT_FDCWD, s0, AT_FDCWD, s1, false);
		break;
	case NR_linkat:
		NS(DK_NS_LINK, 0, 0, r8, di, s1, dx, s3, false);
		break;
	case NR_chmod:
		NS(DK_NS_CHMOD, si & 07777, 0, 0, AT_FDCWD, s0, 0, NULL, false);
		break;
	case NR_fchmodat:
	case NR_fchmodat2:
		NS(DK_NS_CHMOD, dx & 07777, 0, 0, di, s1, 0, NULL, false);
		break;
	case NR_truncate:
		NS(DK_NS_TRUNCATE, 0, si, 0, AT_FDCWD, s0, 0, NULL, false);
		break;
	case NR_chown:
	case NR_lchown:
		NS_META(DK_NS_CHOWN, 0, ((__u64)(__u32)si << 32) | (__u32)dx, id == NR_lchown,
			AT_FDCWD, s0, NULL, NULL, 0);
		break;
	case NR_fchownat:
		NS_META(DK_NS_CHOWN, 0, ((__u64)(__u32)dx << 32) | (__u32)r10,
			r8 & AT_SYMLINK_NOFOLLOW, di, s1, NULL, NULL, 0);
		break;
	case NR_setxattr:
	case NR_lsetxattr:
		NS_META(DK_NS_SETXATTR, 0, 0, id == NR_lsetxattr, AT_FDCWD, s0, s1, (void *)dx,
			r10);
		break;
	case NR_removexattr:
	case NR_lremovexattr:
		NS_META(DK_NS_REMOVEXATTR, 0, 0, id == NR_lremovexattr, AT_FDCWD, s0, s1, NULL, 0);
		break;
	case NR_utime:
		NS_META(DK_NS_UTIMES, DK_TIMES_UTIMBUF, 0, false, AT_FDCWD, s0, NULL, s1,
			s1 ? 16 : 0);
		break;
	case NR_utimes:
		NS_META(DK_NS_UTIMES, DK_TIMES_TIMEVAL, 0, false, AT_FDCWD, s0, NULL, s1,
			s1 ? 32 : 0);
		break;
	case NR_utimensat:
		/* A NULL path is futimens: the fd's own file, sent at exit. */
		if (s1)
			NS_META(DK_NS_UTIMES, DK_TIMES_TIMESPEC, 0, r10 & AT_SYMLINK_NOFOLLOW, di,
				s1, NULL, s2, s2 ? 32 : 0);
		break;
	case NR_close: {
		/* Only files already marked dirty matter at close: resync them while they are
		 * quiescent. The file is still installed at entry. */
		struct file_facts ff;
		if (!file_facts(di, &ff))
			break;
		if (bpf_map_lookup_elem(&dirty_files, &ff.key)) {
			__u64 ts = bpf_ktime_get_ns();
			/* If its name was lost with a full ring, this is the last chance to send it. */
			send_inode(&ff, 0, ts);
			send_fd_op(DK_FD_CLOSE, ff.key, 0, ts);
		}
		break;
	}
	}
	return 0;
}

/* What a syscall listed for exit does, from either attach point (dk_sys_exit, dk_tp_exit);
 * regs NULL: fetch them (per-syscall tracepoints). */
static __always_inline int on_sys_exit(struct pt_regs *regs, long id, long ret)
{
	switch (id) {
	EXIT_SYSCALLS
		break;
	default:
		return 0;
	}
	if (!in_filter())
		return 0;
	if (!regs)
		regs = current_regs();

	/* On x86_64 the argument registers in pt_regs are intact at exit (the handler reads them,
	 * only ax is replaced by the result), which spares an enter->exit map round trip on the
	 * hot write path. */
	long di = regs->di, si = regs->si, dx = regs->dx, r10 = regs->r10, r8 = regs->r8;

	switch (id) {
	case NR_write: case NR_pwrite64: case NR_writev: case NR_pwritev: case NR_pwritev2: {
		bool vec = id == NR_writev || id == NR_pwritev || id == NR_pwritev2;
		__s64 pos = id == NR_write || id == NR_writev ? -1 : r10;
		/* A zero-length vector writes nothing: ret <= 0 returns before it matters. */
		on_write(di, si, vec ? (dx ? dx : 1) : 0, pos, ret);
		return 0;
	}
	case NR_open:
		on_open(ret, si);
		return 0;
	case NR_openat:
		on_open(ret, dx);
		return 0;
	case NR_creat:
		on_open(ret, O_CREAT | O_TRUNC | 1);
		return 0;
	case NR_openat2: {
		__u64 flags = 0;
		bpf_probe_read_user(&flags, sizeof(flags), (const void *)dx);
		on_open(ret, flags);
		return 0;
	}
	case NR_ftruncate:
	case NR_fchmod: {
		if (ret != 0)
			return 0;
		/* Any type of file (rsync fixes directory modes this way), with owner and mtime. */
		if (id == NR_fchmod) {
			meta_of_fd(di, 0);
			return 0;
		}
		struct file_facts ff;
		if (!file_facts(di, &ff) || !recordable(&ff))
			return 0;
		__u64 ts = bpf_ktime_get_ns();
		send_inode(&ff, 0, ts);
		if (id == NR_ftruncate)
			send_fd_op(DK_FD_TRUNCATE, ff.key, si, ts);
		else
			send_fd_op(DK_FD_CHMOD, ff.key, ff.i_mode, ts);
		return 0;
	}
	case NR_fallocate:
		if (ret == 0)
			on_fd_dirty(di, DK_DIRTY_SPLICE);
		return 0;
	case NR_copy_file_range:
	case NR_splice:
		if (ret > 0)
			on_fd_dirty(dx, DK_DIRTY_SPLICE);
		return 0;
	case NR_sendfile:
		if (ret > 0)
			on_fd_dirty(di, DK_DIRTY_SPLICE);
		return 0;
	case NR_mmap:
		if (ret < 0 && ret > -4096)
			return 0;
		if ((r10 & MAP_SHARED) && (dx & PROT_WRITE)) {
			struct file_facts ff;
			if (file_facts(r8, &ff) && recordable(&ff)) {
				__u32 tgid = bpf_get_current_pid_tgid() >> 32;
				__u8 one = 1;
				bpf_map_update_elem(&mmap_writers, &tgid, &one, BPF_ANY);
				mark_dirty(&ff, DK_DIRTY_MMAP, bpf_ktime_get_ns());
			}
		}
		return 0;
	case NR_munmap:
	case NR_msync: {
		__u32 tgid = bpf_get_current_pid_tgid() >> 32;
		if (ret == 0 && bpf_map_lookup_elem(&mmap_writers, &tgid)) {
			struct file_key none = {};
			send_fd_op(DK_FD_SYNC, none, 0, bpf_ktime_get_ns());
		}
		return 0;
	}
	case NR_io_uring_setup:
		if (ret >= 0) {
			struct file_key none = {};
			send_fd_op(DK_FD_DIRTY, none, DK_DIRTY_IO_URING, bpf_ktime_get_ns());
		}
		return 0;
	case NR_fchown:
		if (ret == 0)
			meta_of_fd(di, 0);
		return 0;
	case NR_fsetxattr:
	case NR_fremovexattr:
		if (ret == 0)
			meta_of_fd(di, DK_INODE_XATTR);
		return 0;
	case NR_utimensat:
		if (ret == 0 && !si) {
			meta_of_fd(di, 0); /* futimens: no enter record was sent */
			return 0;
		}
		break;
	}

	/* Metadata changed through a path that names an open file. */
	if (ret == 0) {
		switch (id) {
		case NR_chmod: case NR_chown: case NR_lchown: case NR_utime: case NR_utimes:
			meta_through_fd(AT_FDCWD, (const char *)di, false, 0);
			break;
		case NR_setxattr: case NR_lsetxattr: case NR_removexattr: case NR_lremovexattr:
			meta_through_fd(AT_FDCWD, (const char *)di, false, DK_INODE_XATTR);
			break;
		case NR_fchmodat:
			meta_through_fd(di, (const char *)si, false, 0);
			break;
		case NR_fchmodat2: case NR_utimensat:
			meta_through_fd(di, (const char *)si, r10 & AT_EMPTY_PATH, 0);
			break;
		case NR_fchownat:
			meta_through_fd(di, (const char *)si, r8 & AT_EMPTY_PATH, 0);
			break;
		}
	}

	/* A path-based syscall: its enter record and strings are in the ring; send the result. */
	struct dk_ret *r = bpf_ringbuf_reserve(&events, sizeof(*r), 0);
	if (!r) {
		count(DK_CNT_LOST, 1);
		count(DK_CNT_LOST_NS, 1);
		return 0;
	}
	fill_hdr(&r->h, DK_NS_EXIT, sizeof(*r), bpf_ktime_get_ns());
	r->ret = ret;
	bpf_ringbuf_submit(r, wake_flags(sizeof(*r)));
	return 0;
}

/* The attach points. The loader picks one pair (crates/capture/src/attach.rs):
 *
 * - Per-syscall tracepoints (syscalls/sys_enter_NAME, attached once per listed syscall): a
 *   syscall not listed never reaches a program, so the processes of the node pay for
 *   DiffKeeper only on the ~50 syscalls it hooks. Needs tracefs. Their context holds the
 *   syscall number and result but not the registers, which the task's pt_regs gives (at exit
 *   the argument registers are intact on x86_64).
 * - Raw syscall tracepoints (tp_btf sys_enter/sys_exit): every syscall of every process runs
 *   the program, which returns after a switch for the unlisted ones. The fallback where
 *   tracefs is missing. */

/* The per-syscall tracepoints' context (events/syscalls/sys_enter_NAME/format in tracefs). */
struct dk_syscall_enter_ctx {
	__u64 common;
	__s32 nr;
	__u32 _pad;
	__u64 args[6];
};

struct dk_syscall_exit_ctx {
	__u64 common;
	__s32 nr;
	__u32 _pad;
	__s64 ret;
};

SEC("tracepoint/syscalls/sys_enter_close")
int dk_tp_enter(struct dk_syscall_enter_ctx *ctx)
{
	return on_sys_enter(NULL, ctx->nr);
}

SEC("tracepoint/syscalls/sys_exit_write")
int dk_tp_exit(struct dk_syscall_exit_ctx *ctx)
{
	return on_sys_exit(NULL, ctx->nr, ctx->ret);
}

SEC("tp_btf/sys_enter")
int BPF_PROG(dk_sys_enter, struct pt_regs *regs, long id)
{
	return on_sys_enter(regs, id);
}

SEC("tp_btf/sys_exit")
int BPF_PROG(dk_sys_exit, struct pt_regs *regs, long ret)
{
	/* A direct load from the BTF-typed argument, not a probe read: this runs for every
	 * syscall of every process on the machine, recorded or not. */
	return on_sys_exit(regs, regs->orig_ax, ret);
}

static __always_inline void send_proc(__u32 op, __u32 pid, __u64 arg)
{
	struct dk_proc *r = bpf_ringbuf_reserve(&events, sizeof(*r), 0);
	if (!r) {
		count(DK_CNT_LOST, 1);
		return;
	}
	fill_hdr(&r->h, DK_PROC, sizeof(*r), bpf_ktime_get_ns());
	r->h.pid = pid;
	r->op = op;
	r->_pad = 0;
	r->arg = arg;
	bpf_ringbuf_submit(r, wake_flags(sizeof(*r)));
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(dk_fork, struct task_struct *parent, struct task_struct *child)
{
	if (child->pid != child->tgid || !in_filter())
		return 0;
	send_proc(DK_PROC_FORK, child->tgid, parent->tgid);
	return 0;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(dk_exec, struct task_struct *p)
{
	if (!in_filter())
		return 0;
	send_proc(DK_PROC_EXEC, p->tgid, 0);
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(dk_exit, struct task_struct *p)
{
	if (p->pid != p->tgid || !in_filter())
		return 0;
	__u32 tgid = p->tgid;
	bpf_map_delete_elem(&mmap_writers, &tgid);
	send_proc(DK_PROC_EXIT, tgid, p->exit_code);
	return 0;
}
