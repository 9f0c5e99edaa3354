//! A container image's file tree: the overlay lower dirs merged by overlayfs's own rules, read
//! without ever following a symlink inside a layer.
//!
//! The rules, as overlayfs applies them to a stack of lower dirs (topmost first):
//! - the topmost layer that has a name decides what it is (its kind, mode and mtime win);
//! - a whiteout (a character device 0/0, or a file with the `overlay.whiteout` xattr in a
//!   directory whose `overlay.opaque` xattr is `x`) hides the name in every layer below;
//! - a directory merges with the same directory in the layers below, until one of them is
//!   opaque (`overlay.opaque` = `y`) or the name is not a directory there;
//! - a non-directory hides whatever the layers below have at that name.
//!
//! Redirects (`overlay.redirect`) and metacopy files never occur in image layers unpacked by a
//! container runtime (they only come from renames and chmods inside a running overlay), so they
//! are not interpreted here.

use crate::dir::open_below;
use crate::{ExportError, FileContent, StreamOrigin};
use diffkeeper_store::model::{EntryKind, Owner, RecPath};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;
use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use tracing::debug;

/// A container image's layers: overlay lower dirs, topmost first.
#[derive(Clone, Debug, Default)]
pub struct ImageLayers {
    lower_dirs: Vec<PathBuf>,
}

impl ImageLayers {
    /// `lower_dirs` in overlay `lowerdir=` order: the topmost layer first.
    pub fn new(lower_dirs: Vec<PathBuf>) -> ImageLayers {
        ImageLayers { lower_dirs }
    }

    pub fn is_empty(&self) -> bool {
        self.lower_dirs.is_empty()
    }

    pub fn lower_dirs(&self) -> &[PathBuf] {
        &self.lower_dirs
    }

    /// Reads the merged tree of all layers (names and metadata, no file contents).
    pub(crate) fn scan(&self) -> Result<ImageTree, ExportError> {
        let mut roots = Vec::with_capacity(self.lower_dirs.len());
        for dir in &self.lower_dirs {
            // The layer dir itself is the caller's choice and may be reached through symlinks;
            // nothing inside it is followed.
            match rustix::fs::open(
                dir,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            ) {
                Ok(fd) => roots.push(fd),
                Err(Errno::NOENT | Errno::NOTDIR) => {
                    return Err(ExportError::ImageLayerMissing { path: dir.clone() })
                }
                Err(errno) => {
                    return Err(ExportError::ImageLayer {
                        path: dir.clone(),
                        source: errno.into(),
                    })
                }
            }
        }
        let mut tree = ImageTree {
            layer_dirs: self.lower_dirs.clone(),
            roots,
            entries: BTreeMap::new(),
        };
        let mut root_layers = Vec::new();
        for (layer, root) in tree.roots.iter().enumerate() {
            root_layers.push(layer);
            if overlay_xattr(root.as_fd(), "opaque").as_deref() == Some(b"y") {
                break;
            }
        }
        // Depth-first with an explicit stack: only the directory being listed holds descriptors,
        // however deep the tree or however many layers it has.
        let mut pending = vec![(RecPath::root(), root_layers)];
        while let Some((dir, layers)) = pending.pop() {
            tree.list_dir(&dir, &layers, &mut pending)?;
        }
        debug!(
            layers = tree.roots.len(),
            entries = tree.entries.len(),
            "scanned the image layers"
        );
        Ok(tree)
    }
}

/// One entry of the merged image.
#[derive(Clone, Debug)]
pub(crate) struct ImageEntry {
    pub kind: EntryKind,
    pub mode: u32,
    pub mtime_ns: i128,
    pub owner: Owner,
    /// The layer it comes from (an index into the layers, topmost first).
    pub layer: usize,
}

/// The merged image: every visible file, directory and symlink by its path in the container.
pub(crate) struct ImageTree {
    layer_dirs: Vec<PathBuf>,
    roots: Vec<OwnedFd>,
    pub entries: BTreeMap<RecPath, ImageEntry>,
}

/// What an upper layer already decided about a name while listing one directory.
enum Seen {
    /// A whiteout, file, symlink or special file: lower layers do not contribute this name.
    Masked,
    /// A directory, merged with the same directory in `layers`; `closed` once a layer stops the
    /// merge (opaque, or not a directory there).
    Dir { layers: Vec<usize>, closed: bool },
}

/// What one layer has at a name.
enum LayerKind {
    Whiteout,
    Dir {
        opaque: bool,
    },
    File {
        size: u64,
    },
    Symlink {
        target: Vec<u8>,
    },
    /// Devices, fifos, sockets: not file content, left out of the export.
    Special,
}

impl ImageTree {
    /// Drops `path` and everything below it: the container removed it. The root cannot be
    /// removed; an op naming it changes nothing, in the store as here.
    pub(crate) fn hide(&mut self, path: &RecPath) {
        if path.is_root() {
            return;
        }
        let below: Vec<RecPath> = self
            .entries
            .range(path.below_bounds())
            .map(|(p, _)| p.clone())
            .collect();
        for p in below {
            self.entries.remove(&p);
        }
        self.entries.remove(path);
    }

    /// Opens an image file for streaming into the export; `len` is its size when scanned.
    pub(crate) fn open_file(
        &self,
        path: &RecPath,
        layer: usize,
        len: u64,
    ) -> Result<FileContent<'static>, ExportError> {
        let content_err = |source: std::io::Error| ExportError::ImageContent {
            path: path.clone(),
            layer: self.layer_dirs[layer].clone(),
            source,
        };
        let fd = open_below(
            self.roots[layer].as_fd(),
            path,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        )
        .map_err(|errno| content_err(errno.into()))?;
        let stat = rustix::fs::fstat(&fd).map_err(|errno| content_err(errno.into()))?;
        let size = u64::try_from(stat.st_size).unwrap_or(0);
        if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile || size != len {
            return Err(content_err(std::io::Error::other(format!(
                "it is no longer the regular file of {len} bytes the export scanned"
            ))));
        }
        Ok(FileContent::Stream {
            reader: Box::new(std::fs::File::from(fd)),
            len,
            origin: StreamOrigin::Image(self.layer_dirs[layer].clone()),
        })
    }

    /// Lists `dir` in each of `layers` (topmost first), records the names it shows, and queues
    /// its subdirectories with the layers they merge.
    fn list_dir(
        &mut self,
        dir: &RecPath,
        layers: &[usize],
        pending: &mut Vec<(RecPath, Vec<usize>)>,
    ) -> Result<(), ExportError> {
        let ImageTree {
            layer_dirs,
            roots,
            entries,
        } = self;
        let mut seen: BTreeMap<Vec<u8>, Seen> = BTreeMap::new();
        for &layer in layers {
            let layer_err = |errno: Errno| ExportError::ImageLayer {
                path: layer_dirs[layer].join(std::ffi::OsStr::from_bytes(&dir.as_bytes()[1..])),
                source: errno.into(),
            };
            let opened;
            let fd = if dir.is_root() {
                roots[layer].as_fd()
            } else {
                opened = open_below(
                    roots[layer].as_fd(),
                    dir,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                )
                .map_err(layer_err)?;
                opened.as_fd()
            };
            // `x` marks a directory that holds xattr whiteouts (and is itself not opaque).
            let xwhiteouts = overlay_xattr(fd, "opaque").as_deref() == Some(b"x");
            let mut listing = Dir::read_from(fd).map_err(layer_err)?;
            while let Some(item) = listing.read() {
                let item = item.map_err(layer_err)?;
                let name = item.file_name().to_bytes();
                if name == b"." || name == b".." {
                    continue;
                }
                let decided = seen.get(name);
                if matches!(decided, Some(Seen::Masked | Seen::Dir { closed: true, .. })) {
                    continue;
                }
                let stat =
                    rustix::fs::statat(fd, name, AtFlags::SYMLINK_NOFOLLOW).map_err(layer_err)?;
                let kind = classify(fd, name, &stat, xwhiteouts).map_err(layer_err)?;
                if let Some(Seen::Dir { layers, closed }) = seen.get_mut(name) {
                    match kind {
                        LayerKind::Dir { opaque } => {
                            layers.push(layer);
                            *closed = opaque;
                        }
                        _ => *closed = true,
                    }
                    continue;
                }
                let Ok(path) = dir.join(name) else {
                    continue; // readdir never yields a name RecPath refuses; nothing to show
                };
                let mode = stat.st_mode & 0o7777;
                let mtime_ns =
                    i128::from(stat.st_mtime) * 1_000_000_000 + i128::from(stat.st_mtime_nsec);
                let (entry_kind, next) = match kind {
                    LayerKind::Whiteout => (None, Seen::Masked),
                    LayerKind::Special => {
                        debug!(%path, layer, "image entry is a device, fifo or socket; left out");
                        (None, Seen::Masked)
                    }
                    LayerKind::Dir { opaque } => (
                        Some(EntryKind::Dir),
                        Seen::Dir {
                            layers: vec![layer],
                            closed: opaque,
                        },
                    ),
                    LayerKind::File { size } => (Some(EntryKind::File { size }), Seen::Masked),
                    LayerKind::Symlink { target } => {
                        (Some(EntryKind::Symlink { target }), Seen::Masked)
                    }
                };
                if let Some(kind) = entry_kind {
                    let entry = ImageEntry {
                        kind,
                        mode,
                        mtime_ns,
                        owner: Owner {
                            uid: stat.st_uid,
                            gid: stat.st_gid,
                        },
                        layer,
                    };
                    entries.insert(path, entry);
                }
                seen.insert(name.to_vec(), next);
            }
        }
        for (name, decided) in seen {
            if let Seen::Dir { layers, .. } = decided {
                if let Ok(path) = dir.join(&name) {
                    pending.push((path, layers));
                }
            }
        }
        Ok(())
    }
}

/// What `name` in the layer directory `dir` is, by overlay's rules.
fn classify(
    dir: BorrowedFd<'_>,
    name: &[u8],
    stat: &Stat,
    xwhiteouts: bool,
) -> Result<LayerKind, Errno> {
    Ok(match FileType::from_raw_mode(stat.st_mode) {
        FileType::CharacterDevice if stat.st_rdev == 0 => LayerKind::Whiteout,
        FileType::Directory => {
            let child = rustix::fs::openat(
                dir,
                name,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            LayerKind::Dir {
                opaque: overlay_xattr(child.as_fd(), "opaque").as_deref() == Some(b"y"),
            }
        }
        FileType::RegularFile => {
            let size = u64::try_from(stat.st_size).unwrap_or(0);
            if xwhiteouts && size == 0 && is_xwhiteout(dir, name)? {
                LayerKind::Whiteout
            } else {
                LayerKind::File { size }
            }
        }
        FileType::Symlink => LayerKind::Symlink {
            target: rustix::fs::readlinkat(dir, name, Vec::new())?.into_bytes(),
        },
        _ => LayerKind::Special,
    })
}

/// A zero-size file carrying the `overlay.whiteout` xattr (overlayfs since Linux 6.7).
fn is_xwhiteout(dir: BorrowedFd<'_>, name: &[u8]) -> Result<bool, Errno> {
    let file = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    Ok(overlay_xattr(file.as_fd(), "whiteout").is_some())
}

/// The value of overlay xattr `name` on `fd` (see `diffkeeper_locate::overlay_xattr`).
fn overlay_xattr(fd: BorrowedFd<'_>, name: &str) -> Option<Vec<u8>> {
    diffkeeper_locate::overlay_xattr(name, |attr, value| rustix::fs::fgetxattr(fd, attr, value))
}
