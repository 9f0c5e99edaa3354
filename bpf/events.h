/* Wire format between the kernel programs and user space (crates/capture/src/wire.rs mirrors it;
 * its tests check that mirror against the built object's BTF, so a change here fails them until
 * wire.rs follows). Every record starts with struct dk_hdr; `size` is the whole record's length.
 * Little-endian, naturally aligned, no pointers. Bump DK_WIRE_VERSION on any change: the object
 * carries it (dk_wire_version) and the loader refuses an object of another version. */
#ifndef DK_EVENTS_H
#define DK_EVENTS_H

#define DK_WIRE_VERSION 3

#define DK_COMM_LEN 16
/* Bytes of write payload per record: large writes are split into records of at most this. */
#define DK_CHUNK 4096
/* Longest path or name carried in a record (PATH_MAX). */
#define DK_PATH_MAX 4096

enum dk_kind {
	DK_WRITE = 1,     /* struct dk_write + data: bytes written at an offset */
	DK_INODE = 2,     /* struct dk_inode + path: first sight / creation / O_TRUNC of a file */
	DK_NS_ENTER = 3,  /* struct dk_ns + 4 strings: a path-based syscall was entered */
	DK_NS_EXIT = 4,   /* struct dk_ret: its result */
	DK_FD_OP = 5,     /* struct dk_fd_op: ftruncate, fchmod, and "resync this file" marks */
	DK_PROC = 6,      /* struct dk_proc: fork, exec, exit */
	DK_STR = 7,       /* struct dk_str: one string of the preceding DK_NS_ENTER of this thread */
};

/* DK_INODE flags */
#define DK_INODE_CREATED 1   /* FMODE_CREATED: this open created the file */
#define DK_INODE_TRUNCATED 2 /* opened with O_TRUNC */
#define DK_INODE_UNLINKED 4  /* the dentry is already unlinked: the path is stale */
#define DK_INODE_PATH_CUT 8  /* the path was longer than DK_PATH_MAX or the walk limit */
/* Sent because the file's metadata changed (fchown, fsetxattr, futimens, chmod or chown through
 * an fd): mode, owner and mtime are the inode's after the call. Any file type, not only regular. */
#define DK_INODE_META 16
/* With DK_INODE_META: the change was to its extended attributes (user space reads them back). */
#define DK_INODE_XATTR 32

/* DK_WRITE flags */
#define DK_WRITE_LAST 1 /* last chunk of this syscall's data */

/* DK_NS_ENTER ops */
enum dk_ns_op {
	DK_NS_RENAME = 1, /* a=from, b=to, flags=renameat2 flags */
	DK_NS_UNLINK = 2, /* a */
	DK_NS_RMDIR = 3,  /* a */
	DK_NS_MKDIR = 4,  /* a, mode (umask applied) */
	DK_NS_SYMLINK = 5,/* a=link path, b name = target (verbatim, no base) */
	DK_NS_LINK = 6,   /* a=existing, b=new */
	DK_NS_CHMOD = 7,  /* a, mode */
	DK_NS_TRUNCATE = 8, /* a, arg=length */
	DK_NS_CHOWN = 9,    /* a, arg = uid << 32 | gid as passed (-1: unchanged), flags: 1 = nofollow */
	DK_NS_SETXATTR = 10, /* a, b name = xattr name (verbatim), value slot = value, flags as CHOWN */
	DK_NS_UTIMES = 11,  /* a, value slot = the times argument (none: both now), mode = enum
			     * dk_times_format, flags as CHOWN */
	DK_NS_REMOVEXATTR = 12, /* a, b name = xattr name, flags as CHOWN */

};

/* DK_FD_OP ops */
enum dk_fd_op_kind {
	DK_FD_TRUNCATE = 1, /* arg = new size */
	DK_FD_CHMOD = 2,    /* arg = new mode */
	DK_FD_DIRTY = 3,    /* content changed in ways not captured; arg = enum dk_dirty_reason */
	DK_FD_CLOSE = 4,    /* a file marked dirty was closed: resync it now */
	DK_FD_SYNC = 5,     /* msync/munmap by a process with shared writable mappings (dev/ino 0) */
};

enum dk_dirty_reason {
	DK_DIRTY_CAP = 1,      /* write larger than the per-write capture cap */
	DK_DIRTY_LOST = 2,     /* ring buffer full: a record was dropped */
	DK_DIRTY_MMAP = 3,     /* shared writable mapping */
	DK_DIRTY_SPLICE = 4,   /* fallocate, copy_file_range, sendfile, splice */
	DK_DIRTY_IO_URING = 5, /* process set up io_uring: its writes are invisible to syscalls */
	DK_DIRTY_FAULT = 6,    /* user buffer could not be read */
	DK_DIRTY_ADOPTED = 7,  /* pre-existing file first seen mid-recording: bytes before unknown */
};

enum dk_proc_op {
	DK_PROC_FORK = 1, /* pid = child tgid, arg = parent tgid */
	DK_PROC_EXEC = 2,
	DK_PROC_EXIT = 3, /* arg = exit code; sent for thread-group leaders only */
};

struct dk_hdr {
	__u16 kind;
	__u16 flags;
	__u32 size;
	__u64 ts;      /* bpf_ktime_get_ns: CLOCK_MONOTONIC */
	__u32 pid;     /* tgid */
	__u32 tid;
	__u64 cgroup;  /* cgroup v2 id of the task */
	char comm[DK_COMM_LEN];
	__u32 fsuid;   /* the task's file system ids (global, init user namespace): user space */
	__u32 fsgid;   /* reads files back with them, never with its own */
};

struct dk_write {
	struct dk_hdr h;
	__u64 dev;
	__u64 ino;
	__u64 offset;
	__u32 len;
	__u32 _pad;
	__u8 data[];
};

enum dk_times_format {
	DK_TIMES_TIMESPEC = 0, /* utimensat: struct timespec[2] (atime, mtime) */
	DK_TIMES_TIMEVAL = 1,  /* utimes: struct timeval[2] */
	DK_TIMES_UTIMBUF = 2,  /* utime: struct utimbuf (two longs, seconds) */
};

/* DK_NS_ENTER flags of DK_NS_CHOWN, DK_NS_SETXATTR, DK_NS_REMOVEXATTR and DK_NS_UTIMES */
#define DK_NS_NOFOLLOW 1

struct dk_inode {
	struct dk_hdr h;
	__u64 dev;
	__u64 ino;
	__u64 size;
	__s64 mtime_sec;
	__u32 mtime_nsec;
	__u32 mode;     /* i_mode: type and permission bits */
	__u32 uid;      /* i_uid, i_gid: the owner, as the host (init user namespace) sees it */
	__u32 gid;
	__u32 _pad;
	/* bytes of path that follow, no NUL. Last before the path: when the record cannot be sent,
	 * (path_len, path) is copied as is into unsent_names as a struct unsent_name. */
	__u32 path_len;
	__u8 path[];
};

/* A path-based syscall is sent as DK_NS_ENTER, then its strings as DK_STR records from the same
 * thread, then DK_NS_EXIT with the result. Paths are (base, name) pairs: base is the resolved
 * directory a relative name is relative to (the dirfd's or the cwd's path); no base record is
 * sent for an absolute name. User space joins them. */
struct dk_ns {
	struct dk_hdr h;
	__u32 op;
	__u32 mode;
	__u64 arg;
	__u32 flags;
	__u32 _pad;
};

enum dk_str_slot {
	DK_SLOT_BASE_A = 0,
	DK_SLOT_NAME_A = 1,
	DK_SLOT_BASE_B = 2,
	DK_SLOT_NAME_B = 3,
	DK_SLOT_VALUE = 4, /* raw bytes: an xattr value or a times argument */
};

/* Longest xattr value or times argument carried (an ACL of 31 entries). */
#define DK_VALUE_MAX 256

struct dk_str {
	struct dk_hdr h;
	__u16 slot;
	__u16 truncated; /* the string was longer than DK_PATH_MAX or deeper than the walk limit */
	__u32 len;       /* bytes that follow, no NUL */
	__u8 data[];
};

struct dk_ret {
	struct dk_hdr h;
	__s64 ret;
};

struct dk_fd_op {
	struct dk_hdr h;
	__u32 op;
	__u32 _pad;
	__u64 dev;
	__u64 ino;
	__u64 arg;
};

struct dk_proc {
	struct dk_hdr h;
	__u32 op;
	__u32 _pad;
	__u64 arg;
};

/* Per-CPU counters, index into the `counters` map. */
enum dk_counter {
	DK_CNT_LOST = 0,        /* records that did not fit in the ring buffer */
	DK_CNT_LOST_NS = 1,     /* of those, namespace records (rename/unlink/...): needs a rescan */
	DK_CNT_CAPTURED = 2,    /* payload bytes captured */
	DK_CNT_PATH_WALKS = 3,  /* dentry walks done (one per inode, cached) */
	DK_CNT_MAX = 4,
};

#endif
