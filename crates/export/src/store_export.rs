//! Exporting a recording straight from its store: the recorded tree at a moment, alone or laid
//! over the container image it changed.
//!
//! With image layers, the tree the container saw at `seq` is built from three parts:
//! 1. the image's merged view (see `image`);
//! 2. minus every image path the container removed by `seq`: a path named by an Unlink, Rmdir,
//!    Rename (both its source, which moved away, and its target, which was replaced) or Exchange
//!    in events `1..=seq` is dropped from the image with everything below it. The store cannot
//!    say this itself: removing a path it never saw changes nothing in its tree. A path
//!    re-created later is in the recorded tree, and only there: a directory the container
//!    removed and made again does not get the image's old children back, as in overlayfs;
//! 3. plus the recorded tree at `seq`. A recorded entry always wins over the image's at the same
//!    path, and a recorded non-directory hides the image's entries below it. A recorded
//!    directory that was never removed merges with the image's, as an overlay upper dir does:
//!    that is how the recorder writes the directories it finds already copied up (`Mkdir`
//!    without their image children) and an opaque one (`Rmdir` then `Mkdir`, so step 2 hides
//!    the image's content below it).

use crate::dir::DirDestination;
use crate::image::ImageTree;
use crate::tar_stream::TarDestination;
use crate::{
    walk, ExportError, ExportOptions, ExportSummary, FileContent, FileData, FileFeed, ImageLayers,
    StreamOrigin,
};
use diffkeeper_store::model::{Entry, EntryKind, NodeId, RecPath, IMPLICIT_DIR_NODE_BIT};
use diffkeeper_store::{ContentReader, OpKind, Seq, Store};
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::Path;
use tracing::{debug, info};

/// Node id of entries that come from the image: the store never hands out 0 (its ids start at
/// 1), and image entries have no recorded node.
const IMAGE_NODE: NodeId = 0;

/// Streams the tree as it was right after event `seq` as a tar archive to `out`, like
/// [`export_tar`](crate::export_tar). Without `image` (or with no layers) it is the recorded
/// tree alone; with it, the whole file system the container saw (see the module docs). Image
/// file contents are read from the layers while the archive is written, one file at a time.
pub fn export_store_tar<W: std::io::Write>(
    store: &Store,
    seq: Seq,
    image: Option<&ImageLayers>,
    out: W,
    opts: &ExportOptions,
) -> Result<ExportSummary, ExportError> {
    let (entries, mut feed) = moment(store, seq, image)?;
    let summary = walk(
        &entries,
        &mut feed,
        TarDestination::new(out, !opts.no_owner),
        opts,
    )?;
    info!(
        seq,
        image_entries = feed.image_entries,
        files = summary.files,
        dirs = summary.dirs,
        symlinks = summary.symlinks,
        bytes = summary.bytes,
        skipped = summary.skipped.len(),
        inexact = summary.inexact.len(),
        "exported the tree at a moment as tar"
    );
    Ok(summary)
}

/// Writes the tree as it was right after event `seq` into `out`, like
/// [`export_dir`](crate::export_dir) (same path-safety guarantees: nothing is written outside
/// `out`). Without `image` (or with no layers) it is the recorded tree alone; with it, the whole
/// file system the container saw (see the module docs). Nothing is created when the recording
/// or the image cannot be read.
pub fn export_store_dir(
    store: &Store,
    seq: Seq,
    image: Option<&ImageLayers>,
    out: &Path,
    opts: &ExportOptions,
) -> Result<ExportSummary, ExportError> {
    let (entries, mut feed) = moment(store, seq, image)?;
    let summary = walk(
        &entries,
        &mut feed,
        DirDestination::create(out, crate::restores_owners(opts))?,
        opts,
    )?;
    info!(
        seq,
        out = %out.display(),
        image_entries = feed.image_entries,
        files = summary.files,
        dirs = summary.dirs,
        symlinks = summary.symlinks,
        bytes = summary.bytes,
        skipped = summary.skipped.len(),
        inexact = summary.inexact.len(),
        "exported the tree at a moment to directory"
    );
    Ok(summary)
}

/// File contents of one moment: recorded ones from the store, image ones from their layer.
struct MomentFeed<'s> {
    store: &'s Store,
    seq: Seq,
    image: Option<ImageTree>,
    /// Files taken from the image, with the layer that holds their bytes.
    image_files: HashMap<RecPath, usize>,
    image_entries: u64,
}

impl FileFeed for MomentFeed<'_> {
    fn open(&mut self, path: &RecPath, entry: &Entry) -> Result<FileContent<'_>, ExportError> {
        if let (Some(image), Some(&layer), EntryKind::File { size }) =
            (&self.image, self.image_files.get(path), &entry.kind)
        {
            return image.open_file(path, layer, *size);
        }
        // Streamed: the content is never built whole in memory, and its holes stay holes.
        let reader = match self.store.content_reader(entry.node, self.seq) {
            Ok(reader) => reader,
            Err(e) => return Ok(FileContent::Unreadable(e.to_string())),
        };
        Ok(FileContent::Stream {
            len: reader.len(),
            reader: Box::new(Recorded(reader)),
            origin: StreamOrigin::Store,
        })
    }
}

/// A recorded file's bytes, with the holes the store knows of.
struct Recorded<'s>(ContentReader<'s>);

impl Read for Recorded<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl FileData for Recorded<'_> {
    fn hole_len(&self) -> u64 {
        self.0.hole_len()
    }

    fn skip_hole(&mut self, n: u64) {
        self.0.skip(n.min(self.0.hole_len()));
    }

    fn data_ranges(&self) -> Option<Vec<(u64, u64)>> {
        Some(self.0.data_ranges())
    }
}

/// The entries to export at `seq` and where their contents come from.
fn moment<'s>(
    store: &'s Store,
    seq: Seq,
    image: Option<&ImageLayers>,
) -> Result<(BTreeMap<RecPath, Entry>, MomentFeed<'s>), ExportError> {
    // The image first: a garbage-collected layer fails before the replay, which can be long.
    let image = match image {
        Some(layers) if !layers.is_empty() => Some(layers.scan()?),
        _ => None,
    };
    let mut entries = store
        .tree_at(seq)
        .map_err(|source| ExportError::Store { seq, source })?
        .entries;
    let mut feed = MomentFeed {
        store,
        seq,
        image: None,
        image_files: HashMap::new(),
        image_entries: 0,
    };
    if let Some(mut image) = image {
        hide_removed(store, seq, &mut image)?;
        let (files, shown) = lay_over(&mut entries, &image);
        feed.image_files = files;
        feed.image_entries = shown;
        feed.image = Some(image);
    }
    Ok((entries, feed))
}

/// Drops from the image every path the container removed in events `1..=seq`: one pass over the
/// events' summaries (no data bytes are read).
fn hide_removed(store: &Store, seq: Seq, image: &mut ImageTree) -> Result<(), ExportError> {
    if seq == 0 {
        return Ok(());
    }
    let mut removals = 0u64;
    for summary in store.summaries(1, seq) {
        if image.entries.is_empty() {
            break; // nothing left to hide
        }
        let summary = summary.map_err(|source| ExportError::Store { seq, source })?;
        if matches!(
            summary.op.kind,
            OpKind::Unlink | OpKind::Rmdir | OpKind::Rename | OpKind::Exchange
        ) {
            removals += 1;
            for path in &summary.op.paths {
                image.hide(path);
            }
        }
    }
    debug!(seq, removals, "hid the image paths the container removed");
    Ok(())
}

/// Adds the image's entries to the recorded ones where the recording does not say otherwise.
/// Returns the image files (with their layers) and how many image entries were added.
fn lay_over(
    recorded: &mut BTreeMap<RecPath, Entry>,
    image: &ImageTree,
) -> (HashMap<RecPath, usize>, u64) {
    let mut files = HashMap::new();
    let mut shown = 0;
    for (path, from_image) in &image.entries {
        if let Some(entry) = recorded.get_mut(path) {
            // The store invents the parents of a path it was never told about (mode 0755, the
            // time of the event that needed them); the image knows the real ones.
            let implicit = entry.node & IMPLICIT_DIR_NODE_BIT != 0;
            if implicit && entry.kind == EntryKind::Dir && from_image.kind == EntryKind::Dir {
                entry.mode = from_image.mode;
                entry.mtime_ns = from_image.mtime_ns;
                entry.owner = from_image.owner;
            }
            continue;
        }
        // A recorded file or symlink where the image has a directory replaced it, contents and all.
        let replaced_above = path.ancestors_below_root().iter().any(|ancestor| {
            recorded
                .get(ancestor)
                .is_some_and(|e| e.kind != EntryKind::Dir)
        });
        if replaced_above {
            continue;
        }
        if let EntryKind::File { .. } = from_image.kind {
            files.insert(path.clone(), from_image.layer);
        }
        let entry = Entry {
            node: IMAGE_NODE,
            kind: from_image.kind.clone(),
            mode: from_image.mode,
            mtime_ns: from_image.mtime_ns,
            exact: true,
            owner: from_image.owner,
            xattrs: Default::default(),
        };
        recorded.insert(path.clone(), entry);
        shown += 1;
    }
    debug!(shown, "laid the recorded tree over the image");
    (files, shown)
}
