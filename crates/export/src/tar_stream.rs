//! Writing a recorded tree as a tar stream.
//!
//! Names and symlink targets are written byte for byte: they go straight into the header when
//! they fit, and into a PAX extended header when they do not (or when the mtime has a sub-second
//! part, which classic headers cannot hold). Nothing is canonicalized along the way, because a
//! symlink target is data, not a path to clean up.

use crate::{split_ns, Destination, ExportError, FileData, Item, Written};
use std::io::{Read, Write};
use tar::{Builder, EntryType, Header};
use tracing::warn;

/// Size of the name and linkname fields of a classic tar header.
const HEADER_NAME_LEN: usize = 100;

pub(crate) struct TarDestination<W: Write> {
    builder: Builder<W>,
    /// Write the recorded owners into the headers (else 0:0).
    owners: bool,
}

impl<W: Write> TarDestination<W> {
    pub(crate) fn new(out: W, owners: bool) -> Self {
        TarDestination {
            builder: Builder::new(out),
            owners,
        }
    }

    fn append(
        &mut self,
        item: &Item,
        entry_type: EntryType,
        data: &mut dyn Read,
        len: u64,
        link_target: Option<&[u8]>,
        sparse_size: Option<u64>,
    ) -> Result<Written, ExportError> {
        let path = item.path.as_ref();
        let tar_err = |source| ExportError::Tar {
            path: path.clone(),
            source,
        };
        // Relative: the leading `/` goes, so extracting never targets the extractor's own root.
        let mut name = path.as_bytes()[1..].to_vec();
        if entry_type == EntryType::Directory {
            name.push(b'/');
        }

        let mut header = Header::new_ustar();
        header.set_entry_type(entry_type);
        header.set_mode(item.mode);
        let owner = item.owner.filter(|_| self.owners).unwrap_or_default();
        header.set_uid(owner.uid.into());
        header.set_gid(owner.gid.into());
        header.set_size(len);

        let mut pax: Vec<(&str, Vec<u8>)> = Vec::new();
        match sparse_size {
            None => set_name_field(&mut header.as_old_mut().name, &name, "path", &mut pax),
            Some(real_size) => {
                // PAX sparse 1.0, as GNU tar writes it: the header names a stand-in path, the
                // extended header the real name and size, and the data opens with the map.
                let stand_in = sparse_stand_in(&name);
                set_name_field(&mut header.as_old_mut().name, &stand_in, "path", &mut pax);
                pax.push(("GNU.sparse.major", b"1".to_vec()));
                pax.push(("GNU.sparse.minor", b"0".to_vec()));
                pax.push(("GNU.sparse.name", name.clone()));
                pax.push(("GNU.sparse.realsize", real_size.to_string().into_bytes()));
            }
        }
        if let Some(target) = link_target {
            set_name_field(
                &mut header.as_old_mut().linkname,
                target,
                "linkpath",
                &mut pax,
            );
        }
        let (secs, nanos) = item
            .mtime_ns
            .and_then(|ns| {
                let split = split_ns(ns);
                if split.is_none() {
                    warn!(%path, mtime_ns = ns, "recorded mtime is out of range; writing 0");
                }
                split
            })
            .unwrap_or((0, 0));
        // The classic field holds only non-negative whole seconds; PAX carries the exact value.
        header.set_mtime(secs.max(0) as u64);
        if nanos != 0 || secs < 0 {
            pax.push(("mtime", pax_time(secs, nanos).into_bytes()));
        }
        if pax
            .iter()
            .any(|(key, value)| *key != "mtime" && std::str::from_utf8(value).is_err())
        {
            // POSIX: PAX path values are UTF-8 unless declared binary; Linux names are bytes.
            pax.insert(0, ("hdrcharset", b"BINARY".to_vec()));
        }
        header.set_cksum();

        // GNU tar's and libarchive's way to carry xattrs (values are bytes).
        let xattrs: Vec<(String, &[u8])> = item
            .entry
            .into_iter()
            .flat_map(|e| &e.xattrs)
            .map(|(k, v)| {
                let key = format!("SCHILY.xattr.{}", String::from_utf8_lossy(k));
                (key, v.as_slice())
            })
            .collect();
        if !pax.is_empty() || !xattrs.is_empty() {
            let records = pax.iter().map(|(k, v)| (*k, v.as_slice()));
            let records = records.chain(xattrs.iter().map(|(k, v)| (k.as_str(), *v)));
            self.builder
                .append_pax_extensions(records)
                .map_err(tar_err)?;
        }
        self.builder.append(&header, data).map_err(tar_err)?;
        Ok(Written::Done)
    }
}

/// Holes worth a sparse entry: below this a file is stored whole, zeros included, which every
/// tar reader extracts.
const SPARSE_MIN_HOLES: u64 = 64 << 10;

/// `dir/GNUSparseFile.0/name` for `dir/name`: where a reader that ignores the sparse keys puts
/// the entry, as GNU tar names it.
fn sparse_stand_in(name: &[u8]) -> Vec<u8> {
    let cut = name.iter().rposition(|&b| b == b'/').map_or(0, |i| i + 1);
    [&name[..cut], b"GNUSparseFile.0/", &name[cut..]].concat()
}

/// The map that opens a PAX 1.0 sparse entry's data: the count of ranges, then each range's
/// offset and length, in decimal lines, padded to a block. A file that ends in a hole gets a
/// last empty range at its end, as GNU tar writes it.
fn sparse_map(ranges: &[(u64, u64)], size: u64) -> Vec<u8> {
    let mut ranges = ranges.to_vec();
    if ranges.last().is_none_or(|(s, l)| s + l < size) {
        ranges.push((size, 0));
    }
    let mut map = format!("{}\n", ranges.len());
    for (offset, len) in &ranges {
        map.push_str(&format!("{offset}\n{len}\n"));
    }
    let mut map = map.into_bytes();
    map.resize(map.len().div_ceil(512) * 512, 0);
    map
}

/// A sparse entry's data: the map, then each data range padded to a block (GNU tar reads a
/// range block by block and drops the rest of its last block), with the holes left out.
struct SparseBody<'a> {
    map: &'a [u8],
    data: &'a mut dyn FileData,
    ranges: std::slice::Iter<'a, (u64, u64)>,
    /// Bytes of the current range still to copy.
    left: u64,
    /// Zeros still to write after the current range.
    pad: u64,
}

/// `len` rounded up to whole tar blocks.
fn in_blocks(len: u64) -> u64 {
    len.div_ceil(512) * 512
}

impl Read for SparseBody<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if !self.map.is_empty() {
            return self.map.read(buf);
        }
        if self.left == 0 && self.pad > 0 {
            let n = self.pad.min(buf.len() as u64) as usize;
            buf[..n].fill(0);
            self.pad -= n as u64;
            return Ok(n);
        }
        if self.left == 0 {
            let Some(&(_, len)) = self.ranges.find(|(_, len)| *len > 0) else {
                return Ok(0);
            };
            self.left = len;
            self.pad = in_blocks(len) - len;
        }
        loop {
            let hole = self.data.hole_len();
            if hole == 0 {
                break;
            }
            self.data.skip_hole(hole);
        }
        let want = self.left.min(buf.len() as u64) as usize;
        let n = self.data.read(&mut buf[..want])?;
        self.left -= n as u64;
        Ok(n)
    }
}

/// Copies `value` verbatim into a header name field if it fits, otherwise records it as a PAX
/// `key` and leaves a truncated copy in the field for readers that ignore PAX.
fn set_name_field(
    field: &mut [u8; HEADER_NAME_LEN],
    value: &[u8],
    key: &'static str,
    pax: &mut Vec<(&'static str, Vec<u8>)>,
) {
    let fitting = value.len().min(HEADER_NAME_LEN);
    field.fill(0);
    field[..fitting].copy_from_slice(&value[..fitting]);
    if value.len() > HEADER_NAME_LEN {
        pax.push((key, value.to_vec()));
    }
}

/// PAX time: decimal seconds with an optional fraction, e.g. `-1.500000000`.
fn pax_time(secs: i64, nanos: u32) -> String {
    // `split_ns` floors, so a negative time with a fraction is `secs + nanos/1e9` with secs
    // rounded down; PAX wants the sign on the whole magnitude.
    let total = i128::from(secs) * 1_000_000_000 + i128::from(nanos);
    let sign = if total < 0 { "-" } else { "" };
    let magnitude = total.unsigned_abs();
    format!(
        "{sign}{}.{:09}",
        magnitude / 1_000_000_000,
        magnitude % 1_000_000_000
    )
}

impl<W: Write> Destination for TarDestination<W> {
    fn dir(&mut self, item: &Item) -> Result<Written, ExportError> {
        self.append(
            item,
            EntryType::Directory,
            &mut std::io::empty(),
            0,
            None,
            None,
        )
    }

    fn file(
        &mut self,
        item: &Item,
        data: &mut dyn FileData,
        len: u64,
    ) -> Result<Written, ExportError> {
        if let Some(ranges) = data.data_ranges() {
            let stored: u64 = ranges.iter().map(|(_, l)| l).sum();
            if len - stored.min(len) >= SPARSE_MIN_HOLES {
                let map = sparse_map(&ranges, len);
                let body_len =
                    map.len() as u64 + ranges.iter().map(|(_, l)| in_blocks(*l)).sum::<u64>();
                let mut body = SparseBody {
                    map: map.as_slice(),
                    data,
                    ranges: ranges.iter(),
                    left: 0,
                    pad: 0,
                };
                return self.append(
                    item,
                    EntryType::Regular,
                    &mut body,
                    body_len,
                    None,
                    Some(len),
                );
            }
        }
        self.append(item, EntryType::Regular, data, len, None, None)
    }

    fn symlink(&mut self, item: &Item, target: &[u8]) -> Result<Written, ExportError> {
        let mut nothing = std::io::empty();
        self.append(
            item,
            EntryType::Symlink,
            &mut nothing,
            0,
            Some(target),
            None,
        )
    }

    fn discard(&mut self, _item: &Item) -> Result<(), ExportError> {
        // The entry is out already, its bytes zero-filled from the damage on; the summary lists it.
        Ok(())
    }

    fn finish(self) -> Result<(), ExportError> {
        let finish_err = |source| ExportError::TarFinish { source };
        let mut out = self.builder.into_inner().map_err(finish_err)?;
        out.flush().map_err(finish_err)
    }
}
