//! Append-only segment files: where format 4 keeps the bytes (payload data, keyframes), so
//! that sled only holds a small index of (segment, offset, length) references.
//!
//! `DIR/segments/NNNNNN.seg` starts with [`FILE_MAGIC`] and then holds blocks:
//!
//! | bytes | field                                                              |
//! |-------|--------------------------------------------------------------------|
//! | 4     | [`BLOCK_MAGIC`]                                                    |
//! | 1     | encoding: 0 raw, 1 zstd                                            |
//! | 8     | stored length (the bytes that follow), little-endian               |
//! | 8     | raw length (after decoding)                                        |
//! | 4     | crc32c of the 21 bytes above and the stored bytes                  |
//! | n     | stored bytes                                                       |
//!
//! Only the newest segment is ever appended to; once it reaches the seal size it is synced and
//! never changes again, so sealed segments can be copied off the node as plain files. A crash
//! can leave a torn tail on the open segment (a block half written, or garbled by a lost page):
//! reopening for writing finds the first block whose checksum fails and cuts the file there.
//! The index never points at such a block, because a writer syncs the segment before it
//! commits the index records that refer to it.

use crate::error::StoreError;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub(crate) const SEGMENT_DIR: &str = "segments";
/// Identifies a segment file and the version of its block layout.
const FILE_MAGIC: &[u8; 8] = b"DKSEG\x00\x00\x01";
const BLOCK_MAGIC: [u8; 4] = *b"DKB\x01";
pub(crate) const BLOCK_HEADER_LEN: usize = 25;
const RAW: u8 = 0;
const ZSTD: u8 = 1;
/// Compression is kept only when it saves at least 1/32 of the bytes: incompressible data is
/// stored as is, so it costs its size plus a header.
const MIN_SAVING_SHIFT: u32 = 5;
/// No block decodes to more than this; a damaged length must not make a reader allocate it.
const MAX_BLOCK_BYTES: u64 = 1 << 40;

/// Where a block lives: its header's offset in a segment, and its stored length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(crate) struct BlockAddr {
    pub segment: u32,
    pub offset: u64,
    pub stored_len: u64,
}

impl BlockAddr {
    fn end(&self) -> u64 {
        self.offset + BLOCK_HEADER_LEN as u64 + self.stored_len
    }
}

pub(crate) fn segment_file_name(id: u32) -> String {
    format!("{id:06}.seg")
}

fn segment_path(dir: &Path, id: u32) -> PathBuf {
    dir.join(segment_file_name(id))
}

/// Segment ids present in `dir`, ascending (an absent dir has none).
fn list_segments(dir: &Path) -> Result<Vec<u32>, StoreError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut ids = Vec::new();
    for entry in entries {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(id) = name
            .strip_suffix(".seg")
            .and_then(|n| n.parse::<u32>().ok())
        {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

fn encode_header(encoding: u8, stored_len: u64, raw_len: u64) -> [u8; BLOCK_HEADER_LEN - 4] {
    let mut h = [0u8; BLOCK_HEADER_LEN - 4];
    h[..4].copy_from_slice(&BLOCK_MAGIC);
    h[4] = encoding;
    h[5..13].copy_from_slice(&stored_len.to_le_bytes());
    h[13..21].copy_from_slice(&raw_len.to_le_bytes());
    h
}

struct Header {
    encoding: u8,
    stored_len: u64,
    raw_len: u64,
    crc: u32,
}

fn parse_header(h: &[u8; BLOCK_HEADER_LEN]) -> Option<Header> {
    if h[..4] != BLOCK_MAGIC || h[4] > ZSTD {
        return None;
    }
    let u64_at = |at: usize| u64::from_le_bytes(h[at..at + 8].try_into().expect("8 bytes"));
    let header = Header {
        encoding: h[4],
        stored_len: u64_at(5),
        raw_len: u64_at(13),
        crc: u32::from_le_bytes(h[21..25].try_into().expect("4 bytes")),
    };
    (header.raw_len <= MAX_BLOCK_BYTES && header.stored_len <= MAX_BLOCK_BYTES).then_some(header)
}

fn block_crc(h: &[u8; BLOCK_HEADER_LEN], stored: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&h[..BLOCK_HEADER_LEN - 4]), stored)
}

/// Decodes a block's stored bytes, checking what its header promised.
fn decode_block(
    header: &Header,
    stored: Vec<u8>,
    what: impl Fn() -> String,
) -> Result<Vec<u8>, StoreError> {
    let raw = match header.encoding {
        RAW => stored,
        _ => zstd::bulk::decompress(&stored, header.raw_len as usize)
            .map_err(|e| StoreError::corrupt(format!("{} does not decompress: {e}", what())))?,
    };
    if raw.len() as u64 != header.raw_len {
        return Err(StoreError::corrupt(format!(
            "{} decodes to {} bytes, its header says {}",
            what(),
            raw.len(),
            header.raw_len
        )));
    }
    Ok(raw)
}

/// Where the open segment's valid blocks end: the first block that is incomplete or fails its
/// checksum starts the torn tail.
fn valid_end(file: &File) -> Result<u64, StoreError> {
    let len = file.metadata()?.len();
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut magic = [0u8; FILE_MAGIC.len()];
    if len < FILE_MAGIC.len() as u64 || reader.read_exact(&mut magic).is_err() {
        return Ok(0);
    }
    if &magic != FILE_MAGIC {
        return Ok(0);
    }
    let mut at = FILE_MAGIC.len() as u64;
    let mut stored = Vec::new();
    loop {
        let mut h = [0u8; BLOCK_HEADER_LEN];
        if len - at < BLOCK_HEADER_LEN as u64 || reader.read_exact(&mut h).is_err() {
            return Ok(at);
        }
        let Some(header) = parse_header(&h) else {
            return Ok(at);
        };
        if header.stored_len > len - at - BLOCK_HEADER_LEN as u64 {
            return Ok(at);
        }
        stored.resize(header.stored_len as usize, 0);
        if reader.read_exact(&mut stored).is_err() || block_crc(&h, &stored) != header.crc {
            return Ok(at);
        }
        at += BLOCK_HEADER_LEN as u64 + header.stored_len;
    }
}

/// The appending side: the open (newest) segment of a state dir.
pub(crate) struct SegmentLog {
    dir: PathBuf,
    seal_bytes: u64,
    id: u32,
    file: File,
    len: u64,
    /// Blocks were appended to `file` since it was last synced.
    unsynced: bool,
    /// Bytes in sealed segments, for size reports.
    sealed_bytes: u64,
    /// The zstd level of the blocks appended from now on.
    pub(crate) level: i32,
}

impl SegmentLog {
    /// Opens `state_dir`'s segments for appending, creating the first one if there is none,
    /// and cuts a torn tail off the open one. `seal_bytes` is the size at which a segment is
    /// sealed and the next one started.
    pub(crate) fn open(state_dir: &Path, seal_bytes: u64) -> Result<SegmentLog, StoreError> {
        let dir = state_dir.join(SEGMENT_DIR);
        std::fs::create_dir_all(&dir)?;
        let ids = list_segments(&dir)?;
        let mut sealed_bytes = 0;
        for id in ids.iter().rev().skip(1) {
            sealed_bytes += std::fs::metadata(segment_path(&dir, *id))?.len();
        }
        let Some(&id) = ids.last() else {
            return Self::start(dir, seal_bytes, 1, sealed_bytes);
        };
        let path = segment_path(&dir, id);
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        let end = valid_end(&file)?;
        if end == 0 {
            // Torn while it was being created: nothing can refer to it yet.
            drop(file);
            return Self::start(dir, seal_bytes, id, sealed_bytes);
        }
        let len = file.metadata()?.len();
        if end < len {
            tracing::warn!(
                segment = %path.display(),
                kept = end,
                cut = len - end,
                "cutting the torn tail of the open segment (a block written just before a crash)"
            );
            file.set_len(end)?;
            file.sync_all()?;
        }
        Ok(SegmentLog {
            dir,
            seal_bytes: seal_bytes.max(1),
            level: crate::codec::ZSTD_LEVEL,
            id,
            file,
            len: end,
            unsynced: false,
            sealed_bytes,
        })
    }

    /// Creates segment `id` (replacing a torn one), durably, with its dir entry.
    fn start(
        dir: PathBuf,
        seal_bytes: u64,
        id: u32,
        sealed_bytes: u64,
    ) -> Result<SegmentLog, StoreError> {
        let file = create_segment(&dir, id)?;
        Ok(SegmentLog {
            dir,
            seal_bytes: seal_bytes.max(1),
            level: crate::codec::ZSTD_LEVEL,
            id,
            file,
            len: FILE_MAGIC.len() as u64,
            unsynced: false,
            sealed_bytes,
        })
    }

    /// Appends `raw` as one block (zstd-compressed if `compress` and that pays off). The block
    /// is durable only after [`Self::sync`].
    pub(crate) fn append(&mut self, raw: &[u8], compress: bool) -> Result<BlockAddr, StoreError> {
        let packed = compress
            .then(|| zstd::bulk::compress(raw, self.level).ok())
            .flatten()
            .filter(|p| p.len() < raw.len() - (raw.len() >> MIN_SAVING_SHIFT));
        let (encoding, stored): (u8, &[u8]) = match &packed {
            Some(p) => (ZSTD, p),
            None => (RAW, raw),
        };
        let head = encode_header(encoding, stored.len() as u64, raw.len() as u64);
        let mut h = [0u8; BLOCK_HEADER_LEN];
        h[..BLOCK_HEADER_LEN - 4].copy_from_slice(&head);
        let crc = block_crc(&h, stored);
        h[BLOCK_HEADER_LEN - 4..].copy_from_slice(&crc.to_le_bytes());
        let addr = BlockAddr {
            segment: self.id,
            offset: self.len,
            stored_len: stored.len() as u64,
        };
        // One write per block: a crash tears at most the block being written.
        let mut buf = Vec::with_capacity(BLOCK_HEADER_LEN + stored.len());
        buf.extend_from_slice(&h);
        buf.extend_from_slice(stored);
        if let Err(e) = self.file.write_all_at(&buf, self.len) {
            // Whatever part of the block reached the file is a torn tail; the next append
            // overwrites it, and a reopen would cut it.
            let _ = self.file.set_len(self.len);
            return Err(e.into());
        }
        self.len = addr.end();
        self.unsynced = true;
        if self.len >= self.seal_bytes {
            self.seal()?;
        }
        Ok(addr)
    }

    /// Makes every block appended so far durable.
    pub(crate) fn sync(&mut self) -> Result<(), StoreError> {
        if self.unsynced {
            self.file.sync_data()?;
            self.unsynced = false;
        }
        Ok(())
    }

    /// Syncs the open segment, which then never changes again, and starts the next one.
    pub(crate) fn seal(&mut self) -> Result<(), StoreError> {
        self.sync()?;
        let next = self
            .id
            .checked_add(1)
            .ok_or_else(|| StoreError::corrupt("segment ids are exhausted"))?;
        let file = create_segment(&self.dir, next)?;
        self.sealed_bytes += self.len;
        self.file = file;
        self.id = next;
        self.len = FILE_MAGIC.len() as u64;
        Ok(())
    }

    /// The end of the appended blocks: (open segment, its length).
    pub(crate) fn end(&self) -> (u32, u64) {
        (self.id, self.len)
    }

    /// Bytes in all segment files.
    pub(crate) fn size_on_disk(&self) -> u64 {
        self.sealed_bytes + self.len
    }
}

fn create_segment(dir: &Path, id: u32) -> Result<File, StoreError> {
    let path = segment_path(dir, id);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)?;
    file.write_all(FILE_MAGIC)?;
    file.sync_all()?;
    // The new name must be durable before any index record can point into it.
    File::open(dir)?.sync_all()?;
    Ok(file)
}

/// The reading side: blocks by address, from any number of threads. Opens nothing until a
/// block is read, and never writes.
pub(crate) struct SegmentFiles {
    dir: PathBuf,
    open: Mutex<HashMap<u32, Arc<File>>>,
}

/// Files kept open at once; a reader mostly walks a few neighbouring segments.
const OPEN_FILES: usize = 64;

impl SegmentFiles {
    pub(crate) fn new(state_dir: &Path) -> SegmentFiles {
        SegmentFiles {
            dir: state_dir.join(SEGMENT_DIR),
            open: Mutex::new(HashMap::new()),
        }
    }

    fn file(&self, id: u32) -> Result<Arc<File>, StoreError> {
        let mut open = self.open.lock().expect("segment files lock");
        if let Some(f) = open.get(&id) {
            return Ok(f.clone());
        }
        let path = segment_path(&self.dir, id);
        let file = File::open(&path).map_err(|e| {
            StoreError::corrupt(format!(
                "segment file {} cannot be read: {e}",
                path.display()
            ))
        })?;
        if open.len() >= OPEN_FILES {
            open.clear();
        }
        let file = Arc::new(file);
        open.insert(id, file.clone());
        Ok(file)
    }

    /// The decoded bytes of the block at `addr`, checked against its checksum.
    pub(crate) fn read(&self, addr: BlockAddr) -> Result<Vec<u8>, StoreError> {
        let what = || {
            format!(
                "block at offset {} of segment {}",
                addr.offset,
                segment_file_name(addr.segment)
            )
        };
        let file = self.file(addr.segment)?;
        let mut h = [0u8; BLOCK_HEADER_LEN];
        file.read_exact_at(&mut h, addr.offset)
            .map_err(|e| StoreError::corrupt(format!("{} cannot be read: {e}", what())))?;
        let header = parse_header(&h)
            .filter(|h| h.stored_len == addr.stored_len)
            .ok_or_else(|| StoreError::corrupt(format!("{} has a bad header", what())))?;
        let mut stored = vec![0u8; header.stored_len as usize];
        file.read_exact_at(&mut stored, addr.offset + BLOCK_HEADER_LEN as u64)
            .map_err(|e| StoreError::corrupt(format!("{} cannot be read: {e}", what())))?;
        if block_crc(&h, &stored) != header.crc {
            return Err(StoreError::corrupt(format!(
                "{} fails its checksum",
                what()
            )));
        }
        decode_block(&header, stored, what)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Step {
        Append {
            data: Vec<u8>,
            compress: bool,
        },
        Sync,
        Seal,
        /// A crash: the log is dropped and the bytes after `keep` of what was not yet synced
        /// are lost (`garble: false`) or damaged (`garble: true`), then the log is reopened.
        Crash {
            keep: u16,
            garble: bool,
        },
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            6 => (
                prop_oneof![
                    proptest::collection::vec(any::<u8>(), 0..300),
                    (1usize..2000, any::<u8>()).prop_map(|(n, b)| vec![b; n]),
                ],
                any::<bool>()
            )
                .prop_map(|(data, compress)| Step::Append { data, compress }),
            2 => Just(Step::Sync),
            1 => Just(Step::Seal),
            2 => (any::<u16>(), any::<bool>()).prop_map(|(keep, garble)| Step::Crash { keep, garble }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Every block the model says is durable reads back identically; blocks at or after a
        /// torn tail are gone after reopen and new blocks go where the valid part ends.
        #[test]
        fn segments_match_the_model(steps in proptest::collection::vec(step(), 1..60)) {
            let tmp = tempfile::tempdir().unwrap();
            let seal_bytes = 2048;
            let mut log = SegmentLog::open(tmp.path(), seal_bytes).unwrap();
            // The model: blocks that survive whatever comes, and blocks appended since the last
            // sync of the open segment (which a crash may take).
            let mut durable: Vec<(BlockAddr, Vec<u8>)> = Vec::new();
            let mut unsynced: Vec<(BlockAddr, Vec<u8>)> = Vec::new();
            let mut lost: Vec<BlockAddr> = Vec::new();
            for step in steps {
                match step {
                    Step::Append { data, compress } => {
                        let before = log.end().0;
                        let addr = log.append(&data, compress).unwrap();
                        unsynced.push((addr, data));
                        if log.end().0 != before {
                            // Sealed by size: synced as a whole.
                            durable.append(&mut unsynced);
                        }
                    }
                    Step::Sync => {
                        log.sync().unwrap();
                        durable.append(&mut unsynced);
                    }
                    Step::Seal => {
                        log.seal().unwrap();
                        durable.append(&mut unsynced);
                    }
                    Step::Crash { keep, garble } => {
                        let (id, len) = log.end();
                        drop(log);
                        let synced_end = unsynced.first().map_or(len, |(a, _)| a.offset);
                        let tail = len - synced_end;
                        if tail > 0 {
                            let path = segment_path(&tmp.path().join(SEGMENT_DIR), id);
                            let cut = synced_end + u64::from(keep) % tail;
                            let file = OpenOptions::new().read(true).write(true).open(&path).unwrap();
                            if garble {
                                // Any changed byte fails the block's crc32c (or its magic).
                                let mut b = [0u8];
                                file.read_exact_at(&mut b, cut).unwrap();
                                file.write_all_at(&[b[0] ^ (keep as u8 | 1)], cut).unwrap();
                            } else {
                                file.set_len(cut).unwrap();
                            }
                            // Blocks wholly before the damage survive; the rest are gone.
                            for (addr, data) in std::mem::take(&mut unsynced) {
                                if addr.end() <= cut {
                                    durable.push((addr, data));
                                } else {
                                    lost.push(addr);
                                }
                            }
                        } else {
                            durable.append(&mut unsynced);
                        }
                        log = SegmentLog::open(tmp.path(), seal_bytes).unwrap();
                        let reader = SegmentFiles::new(tmp.path());
                        for addr in lost.drain(..) {
                            prop_assert!(reader.read(addr).is_err(), "block {:?} past the torn tail read back", addr);
                        }
                        let (open, end) = log.end();
                        let expected = durable
                            .iter()
                            .filter(|(a, _)| a.segment == open)
                            .map(|(a, _)| a.end())
                            .max()
                            .unwrap_or(FILE_MAGIC.len() as u64);
                        prop_assert_eq!(end, expected, "the reopened log ends after its last valid block");
                    }
                }
                let reader = SegmentFiles::new(tmp.path());
                for (addr, data) in &durable {
                    prop_assert_eq!(&reader.read(*addr).unwrap(), data);
                }
            }
        }
    }

    #[test]
    fn incompressible_blocks_cost_their_size_and_a_header() {
        let tmp = tempfile::tempdir().unwrap();
        let mut log = SegmentLog::open(tmp.path(), 64 << 20).unwrap();
        let mut state = 88172645463325252u64;
        let data: Vec<u8> = (0..100_000)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        let addr = log.append(&data, true).unwrap();
        assert_eq!(addr.stored_len, data.len() as u64);
        log.sync().unwrap();
        assert_eq!(SegmentFiles::new(tmp.path()).read(addr).unwrap(), data);
    }

    #[test]
    fn a_damaged_sealed_block_is_reported_by_segment_and_offset() {
        let tmp = tempfile::tempdir().unwrap();
        let mut log = SegmentLog::open(tmp.path(), 64 << 20).unwrap();
        let addr = log.append(&[7u8; 5000], true).unwrap();
        log.seal().unwrap();
        let path = segment_path(&tmp.path().join(SEGMENT_DIR), addr.segment);
        let file = OpenOptions::new().write(true).open(path).unwrap();
        file.write_all_at(&[0xff], addr.end() - 1).unwrap();
        let err = SegmentFiles::new(tmp.path()).read(addr).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("000001.seg") && text.contains("checksum"),
            "{text}"
        );
    }
}
