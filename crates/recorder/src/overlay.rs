//! Recording a container that was already running on an overlayfs root: its upper dir says what
//! it had changed before recording began, and the image's lower dirs say what it had not.
//!
//! The recording holds the container's changes, not its image; the export lays them over the
//! image's layers again (diffkeeper-export's `export_store_*`). The two agree on this encoding:
//! - a whiteout in the upper dir is an `Unlink` (or `Rmdir`, when the image has a directory
//!   there) of a path the store may never have seen; the export hides the image's entry, and
//!   everything below it, at any path an `Unlink`, `Rmdir`, `Rename` or `Exchange` named;
//! - a directory the image also has is a `Mkdir` of just the directory: its image children stay
//!   in the image, its changed children are recorded from the upper dir. Such a directory is not
//!   "owned" (a rescan must not adopt its image children);
//! - an opaque or redirected directory (the container removed the image's directory and made a
//!   new one, or renamed one) is an `Rmdir` then the whole directory as the container sees it,
//!   so the export hides the image's old content below it;
//! - a directory the image does not have is recorded whole and owned, as `baseline` does.

use crate::fs_ids::FsIds;
use crate::root_dir::RootDir;
use crate::translate::Recorder;
use crate::RecordError;
use diffkeeper_capture::FileKey;
use diffkeeper_store::{EntryKind, MarkerKind, Op, Process, RecPath};
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use tracing::{debug, info};

impl Recorder {
    /// Records what the container had already changed when recording began: every entry of the
    /// overlay's upper dir, read through the container's merged view (the recorder's root), as
    /// exact entries; whiteouts as removals. Directories are recorded without walking their
    /// image-only children. Returns entries recorded.
    ///
    /// `lower_dirs` are the image's layers, topmost first (overlay's `lowerdir=` order): they
    /// tell a directory the container made (recorded whole) from one the image has (recorded
    /// alone). From here on the recorder treats its root as this overlay: renaming something
    /// whose content the recording does not fully hold records it again at its new name.
    pub fn baseline_overlay(
        &mut self,
        upper_dir: &Path,
        lower_dirs: &[PathBuf],
        time: u64,
    ) -> Result<u64, RecordError> {
        self.overlay = true;
        let image = ImageDirs { lower_dirs };
        // The container writes its upper dir: it is walked with no symlink followed either.
        let upper = UpperDir {
            dir: RootDir::open(upper_dir),
            path: upper_dir,
        };
        let n = self.record_upper_dir(&upper, &RecPath::root(), &image, time)?;
        info!(upper = %upper_dir.display(), entries = n, "overlay baseline recorded");
        self.append(
            time,
            None,
            Op::Marker {
                kind: MarkerKind::BaselineComplete,
                detail: format!(
                    "baseline of the container's changes before recording (overlay upper dir \
                     {}): {n} entries",
                    upper_dir.display()
                ),
            },
        )?;
        Ok(n)
    }

    /// Records the entries of `upper` (the upper dir's copy of container directory `dir`).
    fn record_upper_dir(
        &mut self,
        upper: &UpperDir,
        dir: &RecPath,
        image: &ImageDirs,
        time: u64,
    ) -> Result<u64, RecordError> {
        let mut names = match upper.dir.read_dir(FsIds::ROOT, dir) {
            Ok(names) => names,
            Err(cause) if dir.is_root() => {
                return Err(RecordError::Baseline {
                    path: upper.path.to_path_buf(),
                    cause,
                })
            }
            // Removed by the running container since its parent was listed: a later event
            // says what happened.
            Err(e) => {
                debug!(%dir, "upper dir vanished while recording the baseline: {e}");
                return Ok(0);
            }
        };
        names.sort();
        let mut n = 0;
        for name in names {
            let Ok(path) = dir.join(name.as_bytes()) else {
                continue;
            };
            let Ok(meta) = upper.dir.metadata(FsIds::ROOT, &path) else {
                continue;
            };
            if self.is_excluded(&path) {
                // Outside the scope, but an include may lie below it.
                if meta.is_dir() && self.leads_into_scope(&path) {
                    n += self.record_upper_dir(upper, &path, image, time)?;
                }
                continue;
            }
            if is_whiteout(&meta) {
                // Both remove the path; the kind is for a person reading the log.
                let op = if image.has_dir(&path) {
                    Op::Rmdir { path }
                } else {
                    Op::Unlink { path }
                };
                self.append(time, None, op)?;
                n += 1;
            } else if meta.is_dir() {
                let opaque = upper.dir.overlay_xattr(&path, "opaque").as_deref() == Some(b"y");
                let redirected = upper.dir.overlay_xattr(&path, "redirect").is_some();
                if opaque || redirected {
                    // What the image has at this path is hidden (opaque) or is not what the
                    // container sees here (redirected: it shows another image directory).
                    self.append(time, None, Op::Rmdir { path: path.clone() })?;
                    n += self.adopt_tree(&path, time, None)?;
                } else if !image.has_dir(&path) {
                    n += self.adopt_tree(&path, time, None)?;
                } else {
                    n += self.adopt_merged_dir(&path, time, None)?;
                    n += self.record_upper_dir(upper, &path, image, time)?;
                }
            } else {
                n += self.adopt_tree(&path, time, None)?;
            }
        }
        Ok(n)
    }

    /// Records the directory at `path` alone, as the container sees it, leaving whatever is in
    /// it to the image and to later events; it is not owned.
    fn adopt_merged_dir(
        &mut self,
        path: &RecPath,
        time: u64,
        process: Option<&Process>,
    ) -> Result<u64, RecordError> {
        let who = self.reader_for(process, None);
        let Ok(meta) = self.root_dir.metadata(who, path) else {
            return Ok(0); // gone already: a later event says what happened
        };
        if !meta.is_dir() {
            return self.adopt_tree(path, time, process);
        }
        let node = self.writer.new_node();
        let key = FileKey {
            dev: meta.dev(),
            ino: meta.ino(),
        };
        self.nodes.insert(key, node);
        let op = Op::Mkdir {
            node,
            path: path.clone(),
            mode: meta.mode() & 0o7777,
        };
        self.append(time, process.cloned(), op)?;
        Ok(1)
    }

    /// Records an entry the recording does not have yet but the container changed in place
    /// (e.g. a chmod): a file or symlink whole, a directory alone.
    pub(crate) fn adopt_image_entry(
        &mut self,
        path: &RecPath,
        time: u64,
        process: Option<&Process>,
    ) -> Result<u64, RecordError> {
        match self.root_dir.metadata(self.reader_for(process, None), path) {
            Ok(meta) if meta.is_dir() => self.adopt_merged_dir(path, time, process),
            Ok(_) => self.adopt_tree(path, time, process),
            Err(_) => Ok(0),
        }
    }

    /// Whether the recording holds everything at and below `path`: a file or symlink it has, or
    /// a directory it owns.
    pub(crate) fn fully_recorded(&self, path: &RecPath) -> bool {
        match self.writer.entry(path).map(|e| &e.kind) {
            None => false,
            Some(EntryKind::Dir) => self.owned_dirs.contains(path),
            Some(_) => true,
        }
    }

    /// After a move on the overlay: records from disk what the recording lacks at and below
    /// `path` (the image entries a moved directory took along), and owns its directories.
    pub(crate) fn complete(
        &mut self,
        path: &RecPath,
        time: u64,
        process: Option<&Process>,
    ) -> Result<u64, RecordError> {
        if self.is_excluded(path) {
            return Ok(0);
        }
        match self.writer.entry(path).map(|e| e.kind.clone()) {
            None => self.adopt_tree(path, time, process),
            Some(EntryKind::Dir) if !self.owned_dirs.contains(path) => {
                self.owned_dirs.insert(path.clone());
                let who = self.reader_for(process, None);
                let Ok(mut names) = self.root_dir.read_dir(who, path) else {
                    return Ok(0); // moved on again: a later event says where
                };
                names.sort();
                let mut n = 0;
                for name in names {
                    if let Ok(child) = path.join(name.as_bytes()) {
                        n += self.complete(&child, time, process)?;
                    }
                }
                Ok(n)
            }
            Some(_) => Ok(0),
        }
    }

    /// Replaces whatever the recording has at `path` with what is on disk there now (after a
    /// move the store could not follow, because it never saw the source).
    pub(crate) fn retake(
        &mut self,
        path: &RecPath,
        time: u64,
        process: Option<&Process>,
    ) -> Result<u64, RecordError> {
        self.remove_entry(path, time, process)?;
        self.adopt_tree(path, time, process)
    }

    /// Removes what the recording has at `path` (a directory with its subtree).
    pub(crate) fn remove_entry(
        &mut self,
        path: &RecPath,
        time: u64,
        process: Option<&Process>,
    ) -> Result<(), RecordError> {
        let removal = match self.writer.entry(path).map(|e| &e.kind) {
            Some(EntryKind::Dir) => Op::Rmdir { path: path.clone() },
            Some(_) => Op::Unlink { path: path.clone() },
            None => return Ok(()),
        };
        self.owned_dirs.retain(|d| !d.starts_with(path));
        self.append(time, process.cloned(), removal)
    }
}

/// The overlay's upper dir, whose tree mirrors the container's paths.
struct UpperDir<'a> {
    dir: RootDir,
    path: &'a Path,
}

/// The image's lower dirs, asked one question: does the image show a directory at a path?
struct ImageDirs<'a> {
    /// Topmost first.
    lower_dirs: &'a [PathBuf],
}

impl ImageDirs<'_> {
    /// Looks `path` up the way overlayfs does, one component at a time: the topmost layer with
    /// the name decides, a whiteout or non-directory hides the layers below, and an opaque
    /// directory stops the merge. Only real directories are descended, so no symlink inside a
    /// layer is ever followed.
    fn has_dir(&self, path: &RecPath) -> bool {
        let mut merging: Vec<&Path> = self.lower_dirs.iter().map(PathBuf::as_path).collect();
        let mut rel = PathBuf::new();
        for component in path.components() {
            rel.push(OsStr::from_bytes(component));
            let mut next = Vec::new();
            for layer in merging {
                let host = layer.join(&rel);
                let Ok(meta) = fs::symlink_metadata(&host) else {
                    continue; // not in this layer: the layers below may still have it
                };
                if !meta.is_dir() {
                    break; // a whiteout, file or symlink hides the layers below
                }
                next.push(layer);
                if overlay_xattr(&host, "opaque").as_deref() == Some(b"y") {
                    break;
                }
            }
            if next.is_empty() {
                return false;
            }
            merging = next;
        }
        true
    }
}

/// Overlay's mark of a removed name: a character device with device number 0/0.
fn is_whiteout(meta: &fs::Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

/// The value of overlay xattr `name` on `path` itself (never a symlink's target), in the
/// `trusted.` namespace (root-mounted overlays) or the `user.` one (rootless, `userxattr`).
fn overlay_xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    diffkeeper_locate::overlay_xattr(name, |attr, value| rustix::fs::lgetxattr(path, attr, value))
}

impl RootDir {
    /// `overlay_xattr` of the directory `path` names below this root.
    fn overlay_xattr(&self, path: &RecPath, name: &str) -> Option<Vec<u8>> {
        // The upper dir, read as the baseline is: by the recorder.
        let dir = self.open_dir(FsIds::ROOT, path).ok()?;
        diffkeeper_locate::overlay_xattr(name, |attr, value| {
            rustix::fs::fgetxattr(&dir, attr, value)
        })
    }
}

#[cfg(test)]
mod tests {
    //! Which directories the overlay baseline owns, and renames recorded after it, on a real
    //! overlayfs. Needs root (mount).

    use super::*;
    use diffkeeper_export::{export_store_dir, ExportOptions};
    use diffkeeper_store::{RecordingInfo, Store, Writer};
    use std::collections::BTreeMap;
    use std::ffi::CString;

    /// Unmounts on drop, so a failing test does not leave a mount behind.
    struct Mounted(PathBuf);

    impl Drop for Mounted {
        fn drop(&mut self) {
            let target = CString::new(self.0.as_os_str().as_bytes()).unwrap();
            // SAFETY: a valid NUL-terminated path.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
    }

    fn mount(lower: &Path, upper: &Path, work: &Path, merged: &Path) -> Mounted {
        let options = format!(
            "lowerdir={},upperdir={},workdir={},redirect_dir=on",
            lower.display(),
            upper.display(),
            work.display()
        );
        let c = |s: &[u8]| CString::new(s).unwrap();
        let (overlay, target, data) = (
            c(b"overlay"),
            c(merged.as_os_str().as_bytes()),
            c(options.as_bytes()),
        );
        // SAFETY: valid NUL-terminated strings that outlive the call.
        let rc = unsafe {
            libc::mount(
                overlay.as_ptr(),
                target.as_ptr(),
                overlay.as_ptr(),
                0,
                data.as_ptr().cast(),
            )
        };
        assert_eq!(rc, 0, "mount: {}", std::io::Error::last_os_error());
        Mounted(merged.to_path_buf())
    }

    /// Relative path -> (is a dir, mode, bytes or symlink target).
    fn view(root: &Path) -> BTreeMap<String, (bool, u32, Vec<u8>)> {
        let mut out = BTreeMap::new();
        let mut pending = vec![root.to_path_buf()];
        while let Some(dir) = pending.pop() {
            for entry in fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                let meta = fs::symlink_metadata(&path).unwrap();
                let content = if meta.is_dir() {
                    pending.push(path.clone());
                    Vec::new()
                } else if meta.file_type().is_symlink() {
                    fs::read_link(&path)
                        .unwrap()
                        .as_os_str()
                        .as_bytes()
                        .to_vec()
                } else {
                    fs::read(&path).unwrap()
                };
                let rel = path.strip_prefix(root).unwrap().display().to_string();
                let mode = if meta.file_type().is_symlink() {
                    0
                } else {
                    meta.mode() & 0o7777
                };
                out.insert(rel, (meta.is_dir(), mode, content));
            }
        }
        out
    }

    fn rp(s: &str) -> RecPath {
        RecPath::normalize(s.as_bytes()).unwrap()
    }

    #[test]
    fn owns_only_what_the_container_made_and_records_moved_image_entries() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = |name: &str| {
            let path = tmp.path().join(name);
            fs::create_dir_all(&path).unwrap();
            path
        };
        let (lower, upper, work, merged) = (dir("lower"), dir("upper"), dir("work"), dir("m"));
        for (rel, data) in [
            ("etc/hosts", &b"hosts"[..]),
            ("etc/motd", b"motd"),
            ("srv/www/index.html", b"<html>"),
            ("srv/www/img/logo.png", b"png"),
            ("usr/lib/libx.so", b"libx"),
            ("opt/app/a", b"a"),
        ] {
            fs::create_dir_all(lower.join(rel).parent().unwrap()).unwrap();
            fs::write(lower.join(rel), data).unwrap();
        }
        let mounted = mount(&lower, &upper, &work, &merged);
        fs::write(merged.join("etc/hosts"), b"changed").unwrap();
        fs::create_dir(merged.join("data")).unwrap();
        fs::write(merged.join("data/f"), b"f").unwrap();
        fs::remove_dir_all(merged.join("opt/app")).unwrap();
        fs::create_dir(merged.join("opt/app")).unwrap();

        let state = tmp.path().join("state");
        let writer = Writer::create(&state, RecordingInfo::default()).unwrap();
        // No probe here: no cgroup to take kernel state for.
        let mut rec = Recorder::new(writer, merged.clone(), Vec::new(), 0);
        rec.baseline_overlay(&upper, std::slice::from_ref(&lower), 1)
            .unwrap();
        // A rescan adopts every name in an owned directory: /etc holds the image's names too.
        assert!(
            !rec.owned_dirs.contains(&rp("/etc")),
            "{:?}",
            rec.owned_dirs
        );
        assert!(!rec.owned_dirs.contains(&rp("/opt")));
        assert!(rec.owned_dirs.contains(&rp("/data")));
        assert!(
            rec.owned_dirs.contains(&rp("/opt/app")),
            "opaque: all its names are recorded"
        );

        // Moves the store cannot follow alone: an image directory it never saw, a copied-up
        // directory it holds only part of, an image file it never saw.
        for (from, to) in [
            ("/srv/www", "/srv/site"),
            ("/etc", "/etc2"),
            ("/usr/lib/libx.so", "/usr/lib/liby.so"),
        ] {
            fs::rename(merged.join(&from[1..]), merged.join(&to[1..])).unwrap();
            rec.record_rename(rp(from), rp(to), false, 2, None).unwrap();
        }
        assert!(rec.owned_dirs.contains(&rp("/srv/site")));
        assert!(rec.owned_dirs.contains(&rp("/etc2")));
        assert!(
            rec.fully_recorded(&rp("/etc2/motd")),
            "the image's name came along"
        );
        rec.into_writer().finish(3).unwrap();

        let store = Store::open(&state).unwrap();
        let out = tmp.path().join("out");
        let layers = diffkeeper_export::ImageLayers::new(vec![lower.clone()]);
        let last = store.span().last_seq;
        export_store_dir(&store, last, Some(&layers), &out, &ExportOptions::default()).unwrap();
        assert_eq!(view(&out), view(&merged));
        drop(mounted);
    }
}
