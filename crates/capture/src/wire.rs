//! The wire format of bpf/events.h, mirrored: the record structs as `repr(C)` types with the C
//! names, the constants, the map names, and the parsing of a record's bytes.
//!
//! Fields are read at the mirror's `offset_of!`, bounds-checked, rather than by casting bytes
//! to a struct, so a short or malformed record is an error value, never undefined behaviour.
//! The tests check every mirror against the built object's BTF (what the kernel programs really
//! write): a field moved, added or resized in events.h fails them until this file follows.

#![allow(non_camel_case_types)] // the C names, so a mirror is found by grepping events.h

use std::mem::offset_of;

/// `DK_WIRE_VERSION`: the format this decoder reads. The object carries its own
/// (`dk_wire_version`), checked before load.
pub(crate) const WIRE_VERSION: u32 = 3;

/// `DK_COMM_LEN`.
pub(crate) const COMM_LEN: usize = 16;
/// `DK_PATH_MAX`.
pub(crate) const PATH_MAX: usize = 4096;

/// `enum dk_kind`.
pub(crate) const DK_WRITE: u16 = 1;
pub(crate) const DK_INODE: u16 = 2;
pub(crate) const DK_NS_ENTER: u16 = 3;
pub(crate) const DK_NS_EXIT: u16 = 4;
pub(crate) const DK_FD_OP: u16 = 5;
pub(crate) const DK_PROC: u16 = 6;
pub(crate) const DK_STR: u16 = 7;

/// DK_INODE flags.
pub(crate) const DK_INODE_CREATED: u16 = 1;
pub(crate) const DK_INODE_TRUNCATED: u16 = 2;
pub(crate) const DK_INODE_UNLINKED: u16 = 4;
pub(crate) const DK_INODE_PATH_CUT: u16 = 8;
pub(crate) const DK_INODE_META: u16 = 16;
pub(crate) const DK_INODE_XATTR: u16 = 32;

/// `enum dk_ns_op`.
pub(crate) const DK_NS_RENAME: u32 = 1;
pub(crate) const DK_NS_UNLINK: u32 = 2;
pub(crate) const DK_NS_RMDIR: u32 = 3;
pub(crate) const DK_NS_MKDIR: u32 = 4;
pub(crate) const DK_NS_SYMLINK: u32 = 5;
pub(crate) const DK_NS_LINK: u32 = 6;
pub(crate) const DK_NS_CHMOD: u32 = 7;
pub(crate) const DK_NS_TRUNCATE: u32 = 8;
pub(crate) const DK_NS_CHOWN: u32 = 9;
pub(crate) const DK_NS_SETXATTR: u32 = 10;
pub(crate) const DK_NS_UTIMES: u32 = 11;
pub(crate) const DK_NS_REMOVEXATTR: u32 = 12;

/// DK_NS_ENTER flag of the metadata ops: the call does not follow a symlink at the path.
pub(crate) const DK_NS_NOFOLLOW: u32 = 1;

/// `enum dk_times_format`.
pub(crate) const DK_TIMES_TIMESPEC: u32 = 0;
pub(crate) const DK_TIMES_TIMEVAL: u32 = 1;
pub(crate) const DK_TIMES_UTIMBUF: u32 = 2;

/// `enum dk_fd_op_kind`.
pub(crate) const DK_FD_TRUNCATE: u32 = 1;
pub(crate) const DK_FD_CHMOD: u32 = 2;
pub(crate) const DK_FD_DIRTY: u32 = 3;
pub(crate) const DK_FD_CLOSE: u32 = 4;
pub(crate) const DK_FD_SYNC: u32 = 5;

/// `enum dk_proc_op`.
pub(crate) const DK_PROC_FORK: u32 = 1;
pub(crate) const DK_PROC_EXEC: u32 = 2;
pub(crate) const DK_PROC_EXIT: u32 = 3;

/// `enum dk_str_slot`: the four strings of a DK_NS_ENTER, and its raw value.
pub(crate) const STR_SLOTS: usize = 5;
pub(crate) const DK_SLOT_VALUE: usize = 4;

/// `enum dk_counter`: indexes into the `counters` map.
pub(crate) const DK_CNT_LOST: u32 = 0;
pub(crate) const DK_CNT_LOST_NS: u32 = 1;
pub(crate) const DK_CNT_CAPTURED: u32 = 2;

/// The object's maps, by the names its `SEC(".maps")` definitions give them: one list, so a
/// rename on either side fails the test that compares it with the object.
pub(crate) mod maps {
    pub(crate) const EVENTS: &str = "events";
    pub(crate) const RECORDED_CGROUPS: &str = "recorded_cgroups";
    pub(crate) const FILTER_LEVELS: &str = "filter_levels";
    pub(crate) const KNOWN_INODES: &str = "known_inodes";
    pub(crate) const DIRTY_FILES: &str = "dirty_files";
    pub(crate) const UNSENT_NAMES: &str = "unsent_names";
    pub(crate) const COUNTERS: &str = "counters";
    pub(crate) const CGROUP_LOSSES: &str = "cgroup_losses";
    pub(crate) const FILTER_KNOBS: &str = "filter_knobs";
    pub(crate) const SKIPPED_FILES: &str = "skipped_files";
    /// Every map of the object, the kernel-only ones too.
    #[cfg(test)]
    pub(crate) const ALL: [&str; 13] = [
        EVENTS,
        RECORDED_CGROUPS,
        FILTER_LEVELS,
        KNOWN_INODES,
        DIRTY_FILES,
        UNSENT_NAMES,
        COUNTERS,
        CGROUP_LOSSES,
        FILTER_KNOBS,
        SKIPPED_FILES,
        "mmap_writers",
        "scratch_map",
        "filter_cache",
    ];
}

/// `struct dk_hdr`: the start of every record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct dk_hdr {
    pub kind: u16,
    pub flags: u16,
    pub size: u32,
    pub ts: u64,
    pub pid: u32,
    pub tid: u32,
    pub cgroup: u64,
    pub comm: [u8; COMM_LEN],
    pub fsuid: u32,
    pub fsgid: u32,
}

/// `struct dk_write`, followed by `len` bytes of data.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(crate) struct dk_write {
    pub h: dk_hdr,
    pub dev: u64,
    pub ino: u64,
    pub offset: u64,
    pub len: u32,
    pub _pad: u32,
    pub data: [u8; 0],
}

/// `struct dk_inode`, followed by `path_len` bytes of path.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(crate) struct dk_inode {
    pub h: dk_hdr,
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_sec: i64,
    pub mtime_nsec: u32,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub _pad: u32,
    pub path_len: u32,
    pub path: [u8; 0],
}

/// `struct dk_ns`: a path-based syscall entered.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(crate) struct dk_ns {
    pub h: dk_hdr,
    pub op: u32,
    pub mode: u32,
    pub arg: u64,
    pub flags: u32,
    pub _pad: u32,
}

/// `struct dk_str`, followed by `len` bytes: one string of the pending dk_ns.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(crate) struct dk_str {
    pub h: dk_hdr,
    pub slot: u16,
    pub truncated: u16,
    pub len: u32,
    pub data: [u8; 0],
}

/// `struct dk_ret`: the result of the pending dk_ns.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(crate) struct dk_ret {
    pub h: dk_hdr,
    pub ret: i64,
}

/// `struct dk_fd_op`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(crate) struct dk_fd_op {
    pub h: dk_hdr,
    pub op: u32,
    pub _pad: u32,
    pub dev: u64,
    pub ino: u64,
    pub arg: u64,
}

/// `struct dk_proc`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(crate) struct dk_proc {
    pub h: dk_hdr,
    pub op: u32,
    pub _pad: u32,
    pub arg: u64,
}

/// `struct file_key` (bpf/diffkeeper.bpf.c): the key of the per-file maps.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct file_key {
    pub dev: u64,
    pub ino: u64,
}

// SAFETY: plain integers, no padding (checked against the object's BTF in the tests).
unsafe impl aya::Pod for file_key {}

/// `struct unsent_name` (bpf/diffkeeper.bpf.c): the value of `unsent_names`.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct unsent_name {
    pub len: u32,
    pub path: [u8; PATH_MAX],
}

// SAFETY: an integer and bytes, no padding (checked against the object's BTF in the tests).
unsafe impl aya::Pod for unsent_name {}

/// `struct unsent_key` (bpf/diffkeeper.bpf.c): the key of `unsent_names`, the file and the
/// recorded cgroup whose name it is.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct unsent_key {
    pub cgroup: u64,
    pub dev: u64,
    pub ino: u64,
}

// SAFETY: plain integers, no padding (checked against the object's BTF in the tests).
unsafe impl aya::Pod for unsent_key {}

/// `struct dirty_mark` (bpf/diffkeeper.bpf.c): the value of `dirty_files`.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct dirty_mark {
    pub reason: u32,
    pub _pad: u32,
    pub cgroup: u64,
}

// SAFETY: plain integers, the padding named (checked against the object's BTF in the tests).
unsafe impl aya::Pod for dirty_mark {}

/// `struct loss_counts` (bpf/diffkeeper.bpf.c): the value of `cgroup_losses`.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct loss_counts {
    pub lost: u64,
    pub lost_ns: u64,
}

// SAFETY: plain integers, no padding (checked against the object's BTF in the tests).
unsafe impl aya::Pod for loss_counts {}

/// `struct cgroup_settings` (bpf/diffkeeper.bpf.c): the value of `recorded_cgroups`.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct cgroup_settings {
    pub max_write_capture: u64,
    pub scoped: u32,
    pub _pad: u32,
}

// SAFETY: plain integers, the padding named (checked against the object's BTF in the tests).
unsafe impl aya::Pod for cgroup_settings {}

/// `struct filter_knobs` (bpf/diffkeeper.bpf.c): the one value of `filter_knobs`.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct filter_knobs {
    pub cap_floor: u64,
    pub scoped: u32,
    pub _pad: u32,
    /// Bumped at every change of the recorded cgroups: the kernel's per-CPU verdicts expire.
    pub generation: u64,
}

// SAFETY: plain integers, the padding named (checked against the object's BTF in the tests).
unsafe impl aya::Pod for filter_knobs {}

/// A record that does not match the wire format: a version skew between the object file and
/// this crate, or a kernel bug. Counted and skipped by the caller.
#[derive(Debug, thiserror::Error)]
#[error("malformed capture record (kind {kind}, {len} bytes): {what}")]
pub struct WireError {
    /// The record's `dk_hdr.kind` (0 when even the header is short).
    pub kind: u16,
    /// The record's length in bytes.
    pub len: usize,
    /// What does not fit.
    pub what: &'static str,
}

/// A field type a record can hold: read from its native-endian bytes.
pub(crate) trait Scalar: Sized {
    fn from_bytes(b: &[u8]) -> Self;
}

macro_rules! scalar {
    ($($t:ty),*) => {$(
        impl Scalar for $t {
            fn from_bytes(b: &[u8]) -> Self {
                <$t>::from_ne_bytes(b.try_into().expect("sliced to the type's size"))
            }
        }
    )*};
}
scalar!(u16, u32, u64, i64);

/// Reads field `$field` of mirror `$ty` from record `$rec`, at the mirror's offset and with the
/// field's own type, so neither can disagree with the struct.
macro_rules! field {
    ($rec:expr, $ty:ident . $field:ident) => {
        $rec.read(std::mem::offset_of!($ty, $field), |s: &$ty| &s.$field)
    };
}
pub(crate) use field;

/// One record's bytes, its header decoded.
pub(crate) struct Record<'a> {
    pub hdr: dk_hdr,
    bytes: &'a [u8],
}

impl<'a> Record<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<Self, WireError> {
        if bytes.len() < size_of::<dk_hdr>() {
            return Err(WireError {
                kind: 0,
                len: bytes.len(),
                what: "shorter than the header",
            });
        }
        let at = |off: usize, len: usize| &bytes[off..off + len];
        let mut comm = [0u8; COMM_LEN];
        comm.copy_from_slice(at(offset_of!(dk_hdr, comm), COMM_LEN));
        let hdr = dk_hdr {
            kind: u16::from_bytes(at(offset_of!(dk_hdr, kind), 2)),
            flags: u16::from_bytes(at(offset_of!(dk_hdr, flags), 2)),
            size: u32::from_bytes(at(offset_of!(dk_hdr, size), 4)),
            ts: u64::from_bytes(at(offset_of!(dk_hdr, ts), 8)),
            pid: u32::from_bytes(at(offset_of!(dk_hdr, pid), 4)),
            tid: u32::from_bytes(at(offset_of!(dk_hdr, tid), 4)),
            cgroup: u64::from_bytes(at(offset_of!(dk_hdr, cgroup), 8)),
            comm,
            fsuid: u32::from_bytes(at(offset_of!(dk_hdr, fsuid), 4)),
            fsgid: u32::from_bytes(at(offset_of!(dk_hdr, fsgid), 4)),
        };
        Ok(Record { hdr, bytes })
    }

    fn need(&self, len: usize, what: &'static str) -> Result<(), WireError> {
        if self.bytes.len() < len {
            return Err(WireError {
                kind: self.hdr.kind,
                len: self.bytes.len(),
                what,
            });
        }
        Ok(())
    }

    /// The field at `off` whose type `_field` names (see [`field!`]).
    pub fn read<S, T: Scalar>(&self, off: usize, _field: fn(&S) -> &T) -> Result<T, WireError> {
        let len = size_of::<T>();
        self.need(off + len, "field past the end")?;
        Ok(T::from_bytes(&self.bytes[off..off + len]))
    }

    /// `len` bytes of payload at `off`.
    pub fn bytes(&self, off: usize, len: usize) -> Result<&'a [u8], WireError> {
        self.need(off + len, "payload past the end")?;
        Ok(&self.bytes[off..off + len])
    }
}

/// The wire version the object file carries (`dk_wire_version` in its `.rodata`), or why it
/// cannot be read.
pub(crate) fn object_wire_version(object: &[u8]) -> Result<u32, String> {
    use object::{Object, ObjectSection, ObjectSymbol};
    let file = object::File::parse(object).map_err(|e| format!("not an ELF object: {e}"))?;
    let symbol = file
        .symbol_by_name("dk_wire_version")
        .ok_or("it has no dk_wire_version (an object built before versions were carried)")?;
    let section = symbol
        .section_index()
        .and_then(|i| file.section_by_index(i).ok())
        .ok_or("dk_wire_version is in no section")?;
    let data = section
        .data()
        .map_err(|e| format!("reading {}: {e}", section.name().unwrap_or("?")))?;
    let start = (symbol.address() - section.address()) as usize;
    let bytes = data
        .get(start..start + 4)
        .ok_or("dk_wire_version lies past its section's end")?;
    Ok(u32::from_bytes(bytes))
}

#[cfg(test)]
pub(crate) mod contract {
    //! The mirrors checked against the object's BTF, as `bpftool btf dump` reads it (bpftool
    //! builds the object's vmlinux.h, so it is there wherever this crate builds).

    use super::*;
    use std::collections::{BTreeMap, BTreeSet};

    /// A struct's layout: its size and, in order, each field's name, byte offset and size.
    #[derive(Debug, PartialEq, Eq)]
    pub(crate) struct Layout {
        pub size: usize,
        pub fields: Vec<(String, usize, usize)>,
    }

    fn field_size<S, T>(_: fn(&S) -> &T) -> usize {
        size_of::<T>()
    }

    macro_rules! layout {
        ($ty:ident { $($field:ident),* $(,)? }) => {
            (
                stringify!($ty),
                Layout {
                    size: size_of::<$ty>(),
                    fields: vec![$((
                        stringify!($field).to_string(),
                        offset_of!($ty, $field),
                        field_size(|s: &$ty| &s.$field),
                    )),*],
                },
            )
        };
    }

    /// Every mirror's layout, by its C name.
    pub(crate) fn mirrors() -> BTreeMap<&'static str, Layout> {
        BTreeMap::from([
            layout!(dk_hdr {
                kind,
                flags,
                size,
                ts,
                pid,
                tid,
                cgroup,
                comm,
                fsuid,
                fsgid
            }),
            layout!(dk_write {
                h,
                dev,
                ino,
                offset,
                len,
                _pad,
                data
            }),
            layout!(dk_inode {
                h,
                dev,
                ino,
                size,
                mtime_sec,
                mtime_nsec,
                mode,
                uid,
                gid,
                _pad,
                path_len,
                path
            }),
            layout!(dk_ns {
                h,
                op,
                mode,
                arg,
                flags,
                _pad
            }),
            layout!(dk_str {
                h,
                slot,
                truncated,
                len,
                data
            }),
            layout!(dk_ret { h, ret }),
            layout!(dk_fd_op {
                h,
                op,
                _pad,
                dev,
                ino,
                arg
            }),
            layout!(dk_proc { h, op, _pad, arg }),
            layout!(file_key { dev, ino }),
            layout!(unsent_name { len, path }),
            layout!(unsent_key { cgroup, dev, ino }),
            layout!(dirty_mark {
                reason,
                _pad,
                cgroup
            }),
            layout!(loss_counts { lost, lost_ns }),
            layout!(cgroup_settings {
                max_write_capture,
                scoped,
                _pad
            }),
            layout!(filter_knobs {
                cap_floor,
                scoped,
                _pad,
                generation
            }),
        ])
    }

    /// The built object's BTF, as bpftool's JSON.
    pub(crate) struct ObjectBtf {
        types: BTreeMap<u64, serde_json::Value>,
    }

    impl ObjectBtf {
        pub(crate) fn of(object: &std::path::Path) -> ObjectBtf {
            let out = std::process::Command::new("bpftool")
                .args(["--json", "btf", "dump", "file"])
                .arg(object)
                .output()
                .expect("running bpftool (it builds this crate's vmlinux.h, so it is installed)");
            assert!(out.status.success(), "bpftool: {out:?}");
            let dump: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let types = dump["types"]
                .as_array()
                .expect("bpftool's JSON has types")
                .iter()
                .map(|t| (t["id"].as_u64().unwrap(), t.clone()))
                .collect();
            ObjectBtf { types }
        }

        fn named(&self, kind: &str, name: &str) -> Option<&serde_json::Value> {
            self.types
                .values()
                .find(|t| t["kind"] == kind && t["name"] == name)
        }

        fn size_of(&self, id: u64) -> usize {
            let t = &self.types[&id];
            match t["kind"].as_str().unwrap() {
                "TYPEDEF" | "CONST" | "VOLATILE" => self.size_of(t["type_id"].as_u64().unwrap()),
                "ARRAY" => {
                    t["nr_elems"].as_u64().unwrap() as usize
                        * self.size_of(t["type_id"].as_u64().unwrap())
                }
                _ => t["size"].as_u64().expect("a sized type") as usize,
            }
        }

        /// The layout of struct `name` in the object, if it has one.
        pub(crate) fn layout(&self, name: &str) -> Option<Layout> {
            let t = self.named("STRUCT", name)?;
            let fields = t["members"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| {
                    let bits = m["bits_offset"].as_u64().unwrap();
                    assert_eq!(bits % 8, 0, "{name}.{}: a bit field", m["name"]);
                    (
                        m["name"].as_str().unwrap().to_string(),
                        (bits / 8) as usize,
                        self.size_of(m["type_id"].as_u64().unwrap()),
                    )
                })
                .collect();
            Some(Layout {
                size: t["size"].as_u64().unwrap() as usize,
                fields,
            })
        }

        /// The names of the object's maps.
        pub(crate) fn maps(&self) -> BTreeSet<String> {
            let sec = self.named("DATASEC", ".maps").expect("the object has maps");
            sec["vars"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| {
                    let var = &self.types[&v["type_id"].as_u64().unwrap()];
                    var["name"].as_str().unwrap().to_string()
                })
                .collect()
        }
    }

    /// The object this crate embeds.
    pub(crate) fn built_object() -> std::path::PathBuf {
        std::path::Path::new(env!("OUT_DIR")).join("diffkeeper.bpf.o")
    }
}

#[cfg(test)]
mod tests {
    use super::contract::*;
    use super::*;

    #[test]
    fn every_mirror_has_the_layout_the_kernel_programs_write() {
        let btf = ObjectBtf::of(&built_object());
        let mut wrong = Vec::new();
        for (name, mirror) in mirrors() {
            match btf.layout(name) {
                None => wrong.push(format!("struct {name} is not in the object's BTF")),
                Some(object) if object != mirror => wrong.push(format!(
                    "struct {name}:\n  bpf/ has   {object:?}\n  wire.rs has {mirror:?}"
                )),
                Some(_) => {}
            }
        }
        assert!(
            wrong.is_empty(),
            "crates/capture/src/wire.rs no longer mirrors bpf/events.h; change the mirror (and \
             bump DK_WIRE_VERSION on both sides):\n{}",
            wrong.join("\n")
        );
    }

    #[test]
    fn the_map_list_is_the_objects() {
        let btf = ObjectBtf::of(&built_object());
        let ours: std::collections::BTreeSet<String> =
            maps::ALL.iter().map(|m| m.to_string()).collect();
        assert_eq!(btf.maps(), ours, "maps in the object vs wire::maps::ALL");
    }

    #[test]
    fn the_object_writes_the_wire_version_this_decoder_reads() {
        let object = std::fs::read(built_object()).unwrap();
        assert_eq!(object_wire_version(&object), Ok(WIRE_VERSION));
        assert!(object_wire_version(b"not an object").is_err());
    }

    #[test]
    fn a_short_record_is_an_error_not_a_panic() {
        let e = Record::parse(&[0u8; 10]).err().unwrap();
        assert_eq!((e.kind, e.len), (0, 10));
        let mut hdr = [0u8; size_of::<dk_hdr>()];
        hdr[..2].copy_from_slice(&DK_WRITE.to_ne_bytes());
        let rec = Record::parse(&hdr).unwrap();
        let e = field!(rec, dk_write.len).unwrap_err();
        assert_eq!((e.kind, e.what), (DK_WRITE, "field past the end"));
    }
}
