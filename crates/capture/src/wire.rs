//! Parsing of the records the kernel programs put on the ring buffer (layout: bpf/events.h).
//!
//! Records are read by explicit offsets rather than by casting to `repr(C)` structs, so a short
//! or malformed record is an error value, never undefined behaviour.

/// Record kinds, as `enum dk_kind` in bpf/events.h.
pub(crate) const DK_WRITE: u16 = 1;
pub(crate) const DK_INODE: u16 = 2;
pub(crate) const DK_NS_ENTER: u16 = 3;
pub(crate) const DK_NS_EXIT: u16 = 4;
pub(crate) const DK_FD_OP: u16 = 5;
pub(crate) const DK_PROC: u16 = 6;
pub(crate) const DK_STR: u16 = 7;

pub(crate) const HDR_LEN: usize = 56;

/// `struct dk_hdr`.
#[derive(Debug, Clone)]
pub(crate) struct Header {
    pub kind: u16,
    pub flags: u16,
    pub ts: u64,
    pub pid: u32,
    pub tid: u32,
    pub cgroup: u64,
    pub comm: [u8; 16],
    pub fsuid: u32,
    pub fsgid: u32,
}

/// A record that does not match the wire format: a version skew between the object file and
/// this crate, or a kernel bug. Counted and skipped by the caller.
#[derive(Debug, thiserror::Error)]
#[error("malformed capture record (kind {kind}, {len} bytes): {what}")]
pub struct WireError {
    pub kind: u16,
    pub len: usize,
    pub what: &'static str,
}

pub(crate) struct Record<'a> {
    pub hdr: Header,
    bytes: &'a [u8],
}

impl<'a> Record<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<Self, WireError> {
        if bytes.len() < HDR_LEN {
            return Err(WireError {
                kind: 0,
                len: bytes.len(),
                what: "shorter than the header",
            });
        }
        let mut comm = [0u8; 16];
        comm.copy_from_slice(&bytes[32..48]);
        let hdr = Header {
            kind: u16_at(bytes, 0),
            flags: u16_at(bytes, 2),
            ts: u64_at(bytes, 8),
            pid: u32_at(bytes, 16),
            tid: u32_at(bytes, 20),
            cgroup: u64_at(bytes, 24),
            comm,
            fsuid: u32_at(bytes, 48),
            fsgid: u32_at(bytes, 52),
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

    pub fn u16(&self, off: usize) -> Result<u16, WireError> {
        self.need(off + 2, "field past the end")?;
        Ok(u16_at(self.bytes, off))
    }

    pub fn u32(&self, off: usize) -> Result<u32, WireError> {
        self.need(off + 4, "field past the end")?;
        Ok(u32_at(self.bytes, off))
    }

    pub fn u64(&self, off: usize) -> Result<u64, WireError> {
        self.need(off + 8, "field past the end")?;
        Ok(u64_at(self.bytes, off))
    }

    pub fn bytes(&self, off: usize, len: usize) -> Result<&'a [u8], WireError> {
        self.need(off + len, "payload past the end")?;
        Ok(&self.bytes[off..off + len])
    }
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_ne_bytes(b[off..off + 2].try_into().unwrap())
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes(b[off..off + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_ne_bytes(b[off..off + 8].try_into().unwrap())
}
