//! Owners, modes and mtimes: from what the kernel reported to the store's Chown, Chmod and
//! SetTimes ops, each appended only when it changes what the store already has, so `log` shows
//! what changed and not every call that could have.

use crate::translate::Recorder;
use crate::RecordError;
use diffkeeper_capture::{FileKey, TimeSet};
use diffkeeper_store::{xattr_kept, EntryKind, NodeId, Op, Owner, Process, RecPath, Target};

const S_IFMT: u32 = 0o170000;
const S_IFREG: u32 = 0o100000;
const S_IFDIR: u32 = 0o040000;
const S_IFLNK: u32 = 0o120000;
const S_ISUID: u32 = 0o4000;
const S_ISGID: u32 = 0o2000;

/// The name of the xattr holding a file's access ACL, whose entries imply its permission bits.
pub(crate) const ACL_ACCESS: &[u8] = b"system.posix_acl_access";

/// Symlinks followed (chown, chmod, utimes by path) before giving up, as the kernel's limit.
const MAX_FOLLOW: usize = 40;

/// The permission bits an access ACL implies (`posix_acl_equiv_mode` / `posix_acl_update_mode`):
/// owner from USER_OBJ, group from MASK when there is one (else GROUP_OBJ), other from OTHER.
/// The value is the kernel's xattr format: a u32 version (2), then 8-byte entries of tag (u16),
/// permissions (u16) and id (u32), little-endian.
pub(crate) fn acl_mode(value: &[u8]) -> Option<u32> {
    const USER_OBJ: u16 = 0x01;
    const GROUP_OBJ: u16 = 0x04;
    const MASK: u16 = 0x10;
    const OTHER: u16 = 0x20;
    let (version, entries) = value.split_first_chunk::<4>()?;
    if u32::from_le_bytes(*version) != 2 || entries.len() % 8 != 0 {
        return None;
    }
    let (mut user, mut group, mut mask, mut other) = (None, None, None, None);
    for e in entries.chunks_exact(8) {
        let tag = u16::from_le_bytes([e[0], e[1]]);
        let perm = u32::from(u16::from_le_bytes([e[2], e[3]]) & 7);
        match tag {
            USER_OBJ => user = Some(perm),
            GROUP_OBJ => group = Some(perm),
            MASK => mask = Some(perm),
            OTHER => other = Some(perm),
            _ => {}
        }
    }
    Some(user? << 6 | mask.or(group)? << 3 | other?)
}

/// The metadata one event says an entry has; `None` leaves that part as the store has it.
#[derive(Default)]
pub(crate) struct MetaUpdate {
    pub mode: Option<u32>,
    pub owner: Option<Owner>,
    pub mtime_ns: Option<i128>,
}

impl Recorder {
    /// Appends the ops that bring the entry at `path` to `update`.
    pub(crate) fn update_meta(
        &mut self,
        path: &RecPath,
        update: MetaUpdate,
        time: u64,
        process: Option<&Process>,
    ) -> Result<(), RecordError> {
        let Some(entry) = self.writer.entry(path) else {
            return Ok(());
        };
        let (mode, owner, mtime) = (entry.mode, entry.owner, entry.mtime_ns);
        let target = || Target::Path(path.clone());
        if let Some(new) = update.owner.filter(|o| *o != owner) {
            let op = Op::Chown {
                target: target(),
                owner: new,
            };
            self.append(time, process.cloned(), op)?;
        }
        if let Some(new) = update.mode.map(|m| m & 0o7777).filter(|m| *m != mode) {
            let op = Op::Chmod {
                target: target(),
                mode: new,
            };
            self.append(time, process.cloned(), op)?;
        }
        if let Some(new) = update.mtime_ns.filter(|m| *m != mtime) {
            let op = Op::SetTimes {
                target: target(),
                mtime_ns: new,
            };
            self.append(time, process.cloned(), op)?;
        }
        Ok(())
    }

    /// Reads back the kept xattrs of the entry at `path` and appends a SetXattrs if they are
    /// not what the store has. The kernel sends no xattr values through a descriptor, and the
    /// read-back is as the recorded process (an xattr it could not read stays unrecorded).
    pub(crate) fn refresh_xattrs(
        &mut self,
        path: &RecPath,
        time: u64,
        process: Option<&Process>,
    ) -> Result<(), RecordError> {
        let Some(entry) = self.writer.entry(path) else {
            return Ok(());
        };
        let node = entry.node;
        let who = self.reader_for(process, Some(node));
        let Ok(xattrs) = self.root_dir.xattrs(who, path) else {
            return Ok(());
        };
        if self.writer.entry(path).is_some_and(|e| e.xattrs != xattrs) {
            let target = Target::Path(path.clone());
            self.append(time, process.cloned(), Op::SetXattrs { target, xattrs })?;
        }
        Ok(())
    }

    /// Where a path-based call lands: `path` itself, or with `follow` what its symlinks lead
    /// to, as far as the store knows them.
    pub(crate) fn followed(&self, path: RecPath, follow: bool) -> Option<RecPath> {
        let mut path = path;
        for _ in 0..MAX_FOLLOW {
            let entry = self.writer.entry(&path)?;
            let EntryKind::Symlink { target } = &entry.kind else {
                return Some(path);
            };
            if !follow {
                return Some(path);
            }
            path = match target.first() {
                Some(b'/') => RecPath::root().join(target).ok()?,
                _ => path.parent()?.join(target).ok()?,
            };
        }
        None
    }

    /// chown, lchown, fchownat by path. Like the kernel, a change of owner of a regular file
    /// clears its set-user-ID bit, and set-group-ID when group execute is set.
    pub(crate) fn chown_path(
        &mut self,
        path: RecPath,
        uid: Option<u32>,
        gid: Option<u32>,
        follow: bool,
        time: u64,
        process: Option<&Process>,
    ) -> Result<(), RecordError> {
        let Some(path) = self.followed(path, follow) else {
            return Ok(());
        };
        let Some(entry) = self.writer.entry(&path) else {
            return Ok(());
        };
        let owner = Owner {
            uid: uid.unwrap_or(entry.owner.uid),
            gid: gid.unwrap_or(entry.owner.gid),
        };
        let mut mode = entry.mode;
        if matches!(entry.kind, EntryKind::File { .. }) && (uid.is_some() || gid.is_some()) {
            mode &= !S_ISUID;
            if mode & 0o010 != 0 {
                mode &= !S_ISGID;
            }
        }
        let update = MetaUpdate {
            mode: Some(mode),
            owner: Some(owner),
            mtime_ns: None,
        };
        self.update_meta(&path, update, time, process)
    }

    /// setxattr, lsetxattr by path: an access ACL sets the permission bits it implies, keeping
    /// the set-ID and sticky bits.
    pub(crate) fn setxattr_path(
        &mut self,
        path: RecPath,
        name: &[u8],
        value: &[u8],
        follow: bool,
        time: u64,
        process: Option<&Process>,
    ) -> Result<(), RecordError> {
        let Some(path) = self.followed(path, follow) else {
            return Ok(());
        };
        if xattr_kept(name) {
            self.refresh_xattrs(&path, time, process)?;
        }
        if name != ACL_ACCESS {
            return Ok(());
        }
        let Some(bits) = acl_mode(value) else {
            return Ok(());
        };
        let Some(entry) = self.writer.entry(&path) else {
            return Ok(());
        };
        let update = MetaUpdate {
            mode: Some(entry.mode & 0o7000 | bits),
            ..Default::default()
        };
        self.update_meta(&path, update, time, process)
    }

    /// utimensat, utimes, utime by path. Only the mtime is kept.
    pub(crate) fn set_times_path(
        &mut self,
        path: RecPath,
        mtime: TimeSet,
        follow: bool,
        time: u64,
        process: Option<&Process>,
    ) -> Result<(), RecordError> {
        let Some(path) = self.followed(path, follow) else {
            return Ok(());
        };
        let mtime_ns = match mtime {
            TimeSet::Omit => return Ok(()),
            TimeSet::Now => self.writer.wall_ns(time),
            TimeSet::At(ns) => ns,
        };
        let update = MetaUpdate {
            mtime_ns: Some(mtime_ns),
            ..Default::default()
        };
        self.update_meta(&path, update, time, process)
    }

    /// The inode's own metadata after a change through a descriptor. A file the recording has
    /// not met yet is adopted first (and read back at close, as any pre-existing file).
    #[allow(clippy::too_many_arguments)] // the fields of one kernel record
    pub(crate) fn meta_of_inode(
        &mut self,
        file: FileKey,
        path: Option<RecPath>,
        mode: u32,
        owner: Owner,
        mtime_ns: i128,
        xattrs: bool,
        time: u64,
        process: Option<Process>,
    ) -> Result<(), RecordError> {
        let named = |r: &Recorder, node: NodeId| r.writer.path_of(node);
        let at = match self.nodes.get(&file).copied().and_then(|n| named(self, n)) {
            Some(p) => Some(p),
            None => match path {
                Some(path) if self.same_kind(&path, mode) => {
                    if let Some(node) = self.writer.node_at(&path) {
                        self.nodes.insert(file, node);
                    }
                    Some(path)
                }
                Some(path) if mode & S_IFMT == S_IFREG && self.writer.entry(&path).is_none() => {
                    self.adopt_inode(file, path.clone(), mode, 0, false, time, process.clone())?;
                    Some(path)
                }
                _ => None,
            },
        };
        let Some(at) = at else {
            return Ok(());
        };
        let update = MetaUpdate {
            mode: Some(mode),
            owner: Some(owner),
            mtime_ns: Some(mtime_ns),
        };
        self.update_meta(&at, update, time, process.as_ref())?;
        if xattrs {
            self.refresh_xattrs(&at, time, process.as_ref())?;
        }
        Ok(())
    }

    fn same_kind(&self, path: &RecPath, mode: u32) -> bool {
        let Some(entry) = self.writer.entry(path) else {
            return false;
        };
        matches!(
            (&entry.kind, mode & S_IFMT),
            (EntryKind::File { .. }, S_IFREG)
                | (EntryKind::Dir, S_IFDIR)
                | (EntryKind::Symlink { .. }, S_IFLNK)
        )
    }

    /// The owner a directory or symlink made by a process with these ids gets: its fsuid, and
    /// its fsgid unless the parent directory is set-group-ID (then the parent's group).
    pub(crate) fn owner_of_new(&self, path: &RecPath, uid: u32, gid: u32) -> Owner {
        let parent = path.parent().and_then(|p| self.writer.entry(&p).cloned());
        match parent {
            Some(p) if p.kind == EntryKind::Dir && p.mode & S_ISGID != 0 => Owner {
                uid,
                gid: p.owner.gid,
            },
            _ => Owner { uid, gid },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(entries: &[(u16, u16)]) -> Vec<u8> {
        let mut v = 2u32.to_le_bytes().to_vec();
        for (tag, perm) in entries {
            v.extend_from_slice(&tag.to_le_bytes());
            v.extend_from_slice(&perm.to_le_bytes());
            v.extend_from_slice(&u32::MAX.to_le_bytes());
        }
        v
    }

    #[test]
    fn a_minimal_acl_is_its_mode_and_a_mask_stands_for_the_group() {
        assert_eq!(acl_mode(&acl(&[(1, 6), (4, 4), (0x20, 0)])), Some(0o640));
        // Named user entries need a mask, which is what the group bits show.
        let extended = acl(&[(1, 6), (2, 6), (4, 0), (0x10, 6), (0x20, 0)]);
        assert_eq!(acl_mode(&extended), Some(0o660));
        assert_eq!(acl_mode(&acl(&[(1, 6)])), None, "incomplete");
        assert_eq!(acl_mode(b"\x01\0\0\0"), None, "unknown version");
    }
}
