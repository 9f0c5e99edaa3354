//! eBPF capture of file changes: loads the kernel programs of bpf/ and decodes their records.
//!
//! The kernel side (C, bpf/diffkeeper.bpf.c) watches the file-changing syscalls of the cgroups
//! put in its filter and streams what they changed, with the bytes written, over one ring
//! buffer. This crate turns those records into [`Event`]s; it knows nothing of stores.

#![warn(missing_docs)]

mod attach;
mod drain;
mod event;
mod probe;
mod wire;

pub use attach::{hooked_syscalls, syscall_events_dir, AttachPoint};
pub use drain::{Nudger, RingDrain};
pub use event::{Assembler, Change, DirtyReason, Event, FileKey, Origin, Owner, TimeSet};
pub use probe::{
    CaptureError, CgroupLosses, CgroupSettings, Counters, Probe, ProbeConfig, RingReader,
};
pub use wire::WireError;
