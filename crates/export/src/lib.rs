//! Materializes a recorded file tree at a moment into a directory or a tar stream, never writing outside the destination.
//!
//! Both outputs share one walk over the tree (`walk`): it selects entries, refuses paths that
//! could escape (a component like `..`, or anything below a recorded symlink or file), fetches
//! file contents and hands each entry to a `Destination`. The destinations only know how to
//! write one entry safely. [`export_store_dir`] and [`export_store_tar`] build the tree from a
//! recording's store, optionally laid over the container image's layers (see `image`).

mod dir;
mod image;
mod pattern;
mod store_export;
mod tar_stream;

use diffkeeper_store::model::{Entry, EntryKind, Owner, RecPath};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use tracing::{debug, info, warn};

pub use image::ImageLayers;
pub use pattern::compile_globs;
pub use store_export::{export_store_dir, export_store_tar};

/// Boxed error a [`ContentSource`] may return; kept as a trait object so the store can report
/// whatever went wrong (I/O, corruption, a missing chunk) without this crate knowing its types.
pub type ContentError = Box<dyn std::error::Error + Send + Sync>;

/// Supplies the bytes of a recorded regular file. Only called for `EntryKind::File` entries that
/// are actually exported; symlink targets come from the entry itself.
pub trait ContentSource {
    fn content(&mut self, path: &RecPath, entry: &Entry) -> Result<Vec<u8>, ContentError>;
}

impl<F> ContentSource for F
where
    F: FnMut(&RecPath, &Entry) -> Result<Vec<u8>, ContentError>,
{
    fn content(&mut self, path: &RecPath, entry: &Entry) -> Result<Vec<u8>, ContentError> {
        self(path, entry)
    }
}

/// What to export and how to report progress.
#[derive(Clone, Debug, Default)]
pub struct ExportOptions {
    /// Export only entries whose recorded path matches (plus the directories leading to them).
    /// `None` exports everything. Build it with [`compile_globs`].
    pub paths: Option<globset::GlobSet>,
    /// Draw a byte progress bar on stderr; ignored when stderr is not a terminal so logs and
    /// pipes stay clean.
    pub progress: bool,
    /// Leave the recorded owners out: a directory export is then owned by whoever runs it (it
    /// restores owners only when run as root anyway), a tar names 0:0.
    pub no_owner: bool,
}

/// Whether a directory export gives entries their recorded owners: only root can, and only
/// unless told not to.
pub(crate) fn restores_owners(opts: &ExportOptions) -> bool {
    !opts.no_owner && rustix::process::geteuid().is_root()
}

/// What an export produced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExportSummary {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// File content bytes written.
    pub bytes: u64,
    /// Exported entries whose content the recording does not know byte-exactly (`exact == false`);
    /// a person must be told these files may differ from the originals.
    pub inexact: Vec<RecPath>,
    /// Entries left out, with the reason (unsafe path, a name the destination refuses, ...).
    pub skipped: Vec<(RecPath, String)>,
    /// Files whose recorded bytes could not be read at that moment (a block of the store fails
    /// its checksum, a segment is missing), with the reason. Everything else was exported; a
    /// directory export leaves these files out, a tar holds zeros from the damage on.
    pub damaged: Vec<(RecPath, String)>,
}

/// "3 files, 1 directories, 0 symlinks, 12 B": what an export wrote, worded the same wherever
/// one is reported (the cli's export, the snapshot Pods, the kubectl plugin through the agent).
pub fn describe_counts(files: u64, dirs: u64, symlinks: u64, bytes: u64) -> String {
    format!(
        "{files} files, {dirs} directories, {symlinks} symlinks, {}",
        bytesize::ByteSize::b(bytes)
    )
}

impl std::fmt::Display for ExportSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&describe_counts(
            self.files,
            self.dirs,
            self.symlinks,
            self.bytes,
        ))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(
        "export destination {} is not empty (it already holds {example:?}); \
         export into a new or empty directory so recorded files never mix with existing ones",
        path.display()
    )]
    DestinationNotEmpty { path: PathBuf, example: String },

    #[error(
        "export destination {} exists but is not a directory; pass the path of a new or empty directory",
        path.display()
    )]
    DestinationNotDirectory { path: PathBuf },

    #[error(
        "cannot prepare export destination {}: {source}; check that its parent exists and is writable",
        path.display()
    )]
    Destination {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error(
        "invalid path pattern {pattern:?}: {source}; use shell-style globs such as /tmp/w/*.txt or /tmp/w/**"
    )]
    BadPattern {
        pattern: String,
        source: globset::Error,
    },

    #[error(
        "path pattern {pattern:?} is relative, but recorded paths are absolute; \
         start it with / (for example \"/{pattern}\") or with ** to match at any depth"
    )]
    RelativePattern { pattern: String },

    #[error("empty path pattern; give an absolute path or glob such as /tmp/w or /tmp/w/*.txt")]
    EmptyPattern,

    #[error(
        "cannot read the recorded content of {path}: {source}; the recording's store may be \
         damaged or unreadable, or leave this path out with a path pattern"
    )]
    Content { path: RecPath, source: ContentError },

    #[error(
        "cannot {action} {path} in the export destination: {source}; check the destination's free space and permissions"
    )]
    Write {
        action: &'static str,
        path: RecPath,
        source: std::io::Error,
    },

    #[error(
        "cannot write {path} to the tar stream: {source}; check that the output file or pipe is still writable"
    )]
    Tar {
        path: RecPath,
        source: std::io::Error,
    },

    #[error(
        "cannot finish the tar stream: {source}; check that the output file or pipe is still writable"
    )]
    TarFinish { source: std::io::Error },

    #[error("cannot read the recording at @seq:{seq}: {source}")]
    Store {
        seq: diffkeeper_store::Seq,
        source: diffkeeper_store::StoreError,
    },

    #[error(
        "image layer {} is gone (the container's image was probably garbage-collected, or this is \
         not the node that ran the container); export the recorded changes alone with \
         `--tree changes`",
        path.display()
    )]
    ImageLayerMissing { path: PathBuf },

    #[error(
        "cannot read image layer {}: {source}; check that it is readable here, or export the \
         recorded changes alone with `--tree changes`",
        path.display()
    )]
    ImageLayer {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error(
        "cannot read the image's {path} from layer {}: {source}; the image may have been \
         garbage-collected or changed during the export; export again, or export the recorded \
         changes alone with `--tree changes`",
        layer.display()
    )]
    ImageContent {
        path: RecPath,
        layer: PathBuf,
        source: std::io::Error,
    },
}

/// Writes the selected entries of a recorded tree into `out`, mirroring absolute paths below it
/// (`/tmp/w/a.txt` lands at `out/tmp/w/a.txt`).
///
/// `out` is created if missing and must be empty if it exists. Nothing is ever written outside
/// `out`: every path is opened relative to a directory descriptor without following symlinks,
/// and entries that would need to pass through a recorded symlink or file are listed in
/// [`ExportSummary::skipped`] instead.
pub fn export_dir(
    entries: &BTreeMap<RecPath, Entry>,
    src: &mut dyn ContentSource,
    out: &Path,
    opts: &ExportOptions,
) -> Result<ExportSummary, ExportError> {
    let destination = dir::DirDestination::create(out, restores_owners(opts))?;
    let summary = walk(entries, &mut SourceFeed(src), destination, opts)?;
    info!(
        out = %out.display(),
        files = summary.files,
        dirs = summary.dirs,
        symlinks = summary.symlinks,
        bytes = summary.bytes,
        skipped = summary.skipped.len(),
        inexact = summary.inexact.len(),
        "exported recorded tree to directory"
    );
    Ok(summary)
}

/// Streams the selected entries of a recorded tree as a tar archive to `out` (a file, stdout,
/// a pipe). Paths are relative (`tmp/w/a.txt`), owners are 0, modes, mtimes and symlink targets
/// are as recorded. The same entries are refused as by [`export_dir`], so extracting the archive
/// cannot be steered outside its directory by a recorded symlink.
pub fn export_tar<W: std::io::Write>(
    entries: &BTreeMap<RecPath, Entry>,
    src: &mut dyn ContentSource,
    out: W,
    opts: &ExportOptions,
) -> Result<ExportSummary, ExportError> {
    let destination = tar_stream::TarDestination::new(out, !opts.no_owner);
    let summary = walk(entries, &mut SourceFeed(src), destination, opts)?;
    info!(
        files = summary.files,
        dirs = summary.dirs,
        symlinks = summary.symlinks,
        bytes = summary.bytes,
        skipped = summary.skipped.len(),
        inexact = summary.inexact.len(),
        "exported recorded tree as tar"
    );
    Ok(summary)
}

/// The bytes of one file as the walk receives them.
pub(crate) enum FileContent<'s> {
    Whole(Vec<u8>),
    /// Copied while writing, so a large file never sits in memory whole. The stream must
    /// deliver exactly `len` bytes (the size the tree was planned with: it is in the tar header
    /// before the first byte is read).
    /// The recording cannot give these bytes (the reason): the file is reported damaged and the
    /// export goes on with the rest.
    Unreadable(String),
    Stream {
        reader: Box<dyn FileData + 's>,
        len: u64,
        /// Where the bytes come from, for error messages.
        origin: StreamOrigin,
    },
}

/// Where a streamed file's bytes come from, so a failed read blames the right thing.
pub(crate) enum StreamOrigin {
    /// The recording itself (its segments).
    Store,
    /// An image layer directory.
    Image(PathBuf),
}

/// A file's bytes read in order. A source that knows where its holes are (a recorded sparse
/// file) says so, and a destination that can leave holes (a directory) skips them instead of
/// writing zeros: a 100 GiB sparse file exports as a sparse file, not 100 GiB of zeros.
pub(crate) trait FileData: Read {
    /// How many bytes from the current position on are a hole (0: data, or holes unknown).
    fn hole_len(&self) -> u64 {
        0
    }
    /// Moves past `n` bytes of a hole (at most [`Self::hole_len`]).
    fn skip_hole(&mut self, _n: u64) {}
    /// Where the data is, as `(offset, length)` in order, when the source knows its holes.
    fn data_ranges(&self) -> Option<Vec<(u64, u64)>> {
        None
    }
}

impl FileData for &[u8] {}
impl FileData for std::fs::File {}

/// Where the walk gets file contents: a caller's [`ContentSource`], or a store and image layers.
pub(crate) trait FileFeed {
    fn open(&mut self, path: &RecPath, entry: &Entry) -> Result<FileContent<'_>, ExportError>;
}

/// A caller's [`ContentSource`] as a feed of whole contents.
struct SourceFeed<'a>(&'a mut dyn ContentSource);

impl FileFeed for SourceFeed<'_> {
    fn open(&mut self, path: &RecPath, entry: &Entry) -> Result<FileContent<'_>, ExportError> {
        self.0
            .content(path, entry)
            .map(FileContent::Whole)
            .map_err(|source| ExportError::Content {
                path: path.clone(),
                source,
            })
    }
}

/// Hands out exactly `remaining` bytes of a stream and keeps the stream's own failure aside, so
/// the walk can blame the source (an image file that vanished or shrank, a damaged segment)
/// rather than the destination the bytes were being written to.
struct ExactLen<'s> {
    inner: Box<dyn FileData + 's>,
    remaining: u64,
    source_error: Option<std::io::Error>,
    /// After a failed read, hand out zeros for the rest instead of failing: a tar entry whose
    /// header is written must get all its bytes, or the archive is broken for every entry after.
    zeros_after_error: bool,
}

impl FileData for ExactLen<'_> {
    fn hole_len(&self) -> u64 {
        if self.source_error.is_some() {
            return 0;
        }
        self.inner.hole_len().min(self.remaining)
    }

    fn skip_hole(&mut self, n: u64) {
        let n = n.min(self.hole_len());
        self.inner.skip_hole(n);
        self.remaining -= n;
    }

    fn data_ranges(&self) -> Option<Vec<(u64, u64)>> {
        self.inner.data_ranges()
    }
}

impl Read for ExactLen<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        if self.source_error.is_some() && self.zeros_after_error {
            buf[..want].fill(0);
            self.remaining -= want as u64;
            return Ok(want);
        }
        match self.inner.read(&mut buf[..want]) {
            Ok(0) => {
                let short = std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!(
                        "the file ended {} bytes early (it changed since the export scanned it)",
                        self.remaining
                    ),
                );
                self.source_error = Some(short);
                if self.zeros_after_error {
                    return self.read(buf);
                }
                Err(std::io::Error::other("the source file ended early"))
            }
            Ok(n) => {
                self.remaining -= n as u64;
                Ok(n)
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Err(e),
            Err(e) => {
                let kind = e.kind();
                self.source_error = Some(e);
                if self.zeros_after_error {
                    return self.read(buf);
                }
                Err(std::io::Error::new(kind, "reading the source file failed"))
            }
        }
    }
}

/// One thing to write: a recorded entry, or a directory the tree does not list but that is
/// needed to hold a selected entry.
pub(crate) struct Item<'a> {
    pub path: Cow<'a, RecPath>,
    pub kind: ItemKind<'a>,
    /// Permission bits, already masked to 07777.
    pub mode: u32,
    /// `None` for synthesized directories: there is no recorded time to restore.
    pub mtime_ns: Option<i128>,
    /// `None` for synthesized directories, as for `mtime_ns`.
    pub owner: Option<Owner>,
    pub entry: Option<&'a Entry>,
}

pub(crate) enum ItemKind<'a> {
    Dir,
    File,
    Symlink(&'a [u8]),
}

/// Result of writing one item.
pub(crate) enum Written {
    Done,
    /// The destination refused this particular entry (a name too long for the file system, a
    /// name clash on a case-insensitive file system, ...); the export goes on without it.
    Refused(String),
    /// The recording could not give the file's bytes (the reason); the export goes on without it.
    Damaged(String),
}

/// Where a walk writes. Items arrive in path order, so a directory always comes before anything
/// below it.
pub(crate) trait Destination {
    fn dir(&mut self, item: &Item) -> Result<Written, ExportError>;
    /// `data` yields exactly `len` bytes, or fails.
    fn file(
        &mut self,
        item: &Item,
        data: &mut dyn FileData,
        len: u64,
    ) -> Result<Written, ExportError>;
    fn symlink(&mut self, item: &Item, target: &[u8]) -> Result<Written, ExportError>;
    /// Takes back a file whose bytes turned out to be unreadable while it was written, where the
    /// destination can (a directory removes it; a tar entry, already written, stays zero-filled).
    fn discard(&mut self, item: &Item) -> Result<(), ExportError>;
    /// Called once after the last item (directory metadata, archive trailer).
    fn finish(self) -> Result<(), ExportError>;
}

/// Mode for directories the tree does not list but a selected entry needs: the store's own
/// default for implicitly created parents.
const SYNTHESIZED_DIR_MODE: u32 = 0o755;

fn walk<D: Destination>(
    entries: &BTreeMap<RecPath, Entry>,
    src: &mut dyn FileFeed,
    mut dest: D,
    opts: &ExportOptions,
) -> Result<ExportSummary, ExportError> {
    let items = plan(entries, opts.paths.as_ref());
    let total_bytes = items
        .iter()
        .filter_map(|item| match item.entry.map(|e| &e.kind) {
            Some(EntryKind::File { size }) => Some(*size),
            _ => None,
        })
        .sum();
    let bar = progress_bar(opts.progress, total_bytes);

    let mut summary = ExportSummary::default();
    // Paths that were not written; everything below them is left out too, because a directory
    // that does not exist in the export cannot safely receive children.
    let mut not_written: BTreeSet<RecPath> = BTreeSet::new();

    for item in &items {
        if let Some(reason) = refusal(&item.path, entries, &not_written) {
            warn!(path = %item.path, %reason, "entry left out of export");
            not_written.insert(item.path.clone().into_owned());
            summary
                .skipped
                .push((item.path.clone().into_owned(), reason));
            continue;
        }
        let written = match item.kind {
            ItemKind::Dir => dest.dir(item)?,
            ItemKind::Symlink(target) => dest.symlink(item, target)?,
            ItemKind::File => {
                let entry = item
                    .entry
                    .expect("file items always come from a recorded entry");
                let (written, len) = write_file(&mut dest, item, entry, src)?;
                if let Written::Done = written {
                    summary.bytes += len;
                }
                bar.inc(len);
                written
            }
        };
        match written {
            Written::Done => {
                match item.kind {
                    ItemKind::Dir => summary.dirs += 1,
                    ItemKind::File => summary.files += 1,
                    ItemKind::Symlink(_) => summary.symlinks += 1,
                }
                if item.entry.is_some_and(|e| !e.exact) {
                    summary.inexact.push(item.path.clone().into_owned());
                }
            }
            Written::Damaged(reason) => {
                // The caller reports these (the cli as errors): a warning here would say it twice.
                info!(path = %item.path, %reason, "recorded bytes unreadable; file left out");
                summary
                    .damaged
                    .push((item.path.clone().into_owned(), reason));
            }
            Written::Refused(reason) => {
                warn!(path = %item.path, %reason, "entry left out of export");
                not_written.insert(item.path.clone().into_owned());
                summary
                    .skipped
                    .push((item.path.clone().into_owned(), reason));
            }
        }
    }
    dest.finish()?;
    bar.finish_and_clear();
    Ok(summary)
}

/// Fetches one file's content and writes it; returns what the destination said and the length.
fn write_file<D: Destination>(
    dest: &mut D,
    item: &Item,
    entry: &Entry,
    src: &mut dyn FileFeed,
) -> Result<(Written, u64), ExportError> {
    let warn_len = |content_len: u64| {
        if let EntryKind::File { size } = entry.kind {
            if size != content_len {
                warn!(
                    path = %item.path,
                    recorded_size = size,
                    content_len,
                    "content length differs from the recorded size; exporting the content as given"
                );
            }
        }
    };
    match src.open(&item.path, entry)? {
        FileContent::Unreadable(reason) => Ok((Written::Damaged(reason), 0)),
        FileContent::Whole(data) => {
            let len = data.len() as u64;
            warn_len(len);
            Ok((dest.file(item, &mut data.as_slice(), len)?, len))
        }
        FileContent::Stream {
            reader,
            len,
            origin,
        } => {
            if matches!(origin, StreamOrigin::Store) {
                warn_len(len);
            }
            let from_store = matches!(origin, StreamOrigin::Store);
            let mut stream = ExactLen {
                inner: reader,
                remaining: len,
                source_error: None,
                zeros_after_error: from_store,
            };
            let written = dest.file(item, &mut stream, len);
            match (stream.source_error.take(), origin) {
                (None, _) => Ok((written?, len)),
                (Some(source), StreamOrigin::Image(layer)) => Err(ExportError::ImageContent {
                    path: item.path.clone().into_owned(),
                    layer,
                    source,
                }),
                (Some(source), StreamOrigin::Store) => {
                    written?;
                    dest.discard(item)?;
                    Ok((Written::Damaged(source.to_string()), 0))
                }
            }
        }
    }
}

/// Turns the tree into the ordered list of items to write: the selected entries plus every
/// directory leading to them.
fn plan<'a>(
    entries: &'a BTreeMap<RecPath, Entry>,
    filter: Option<&globset::GlobSet>,
) -> Vec<Item<'a>> {
    let selected: Vec<&RecPath> = entries
        .keys()
        .filter(|path| !path.is_root())
        .filter(|path| filter.is_none_or(|globs| globs.is_match(as_std_path(path))))
        .collect();

    // Path order puts a parent before its children (a prefix sorts first), which is the order
    // both destinations need.
    let mut paths: BTreeSet<Cow<'a, RecPath>> = BTreeSet::new();
    for path in selected {
        // A path with `..` or similar has no meaningful ancestors (`/a/..` is not a directory to
        // create); it goes in alone and `refusal` reports it.
        if unsafe_component(path).is_some() {
            paths.insert(Cow::Borrowed(path));
            continue;
        }
        let mut ancestor = path.parent();
        while let Some(dir) = ancestor.filter(|d| !d.is_root()) {
            ancestor = dir.parent();
            match entries.get_key_value(&dir) {
                Some((recorded, _)) => paths.insert(Cow::Borrowed(recorded)),
                None => paths.insert(Cow::Owned(dir)),
            };
        }
        paths.insert(Cow::Borrowed(path));
    }

    paths
        .into_iter()
        .map(|path| match entries.get(path.as_ref()) {
            Some(entry) => Item {
                kind: match &entry.kind {
                    EntryKind::Dir => ItemKind::Dir,
                    EntryKind::File { .. } => ItemKind::File,
                    EntryKind::Symlink { target } => ItemKind::Symlink(target),
                },
                path,
                mode: entry.mode & 0o7777,
                mtime_ns: Some(entry.mtime_ns),
                owner: Some(entry.owner),
                entry: Some(entry),
            },
            None => {
                debug!(path = %path, "synthesizing a directory the tree does not list");
                Item {
                    path,
                    kind: ItemKind::Dir,
                    mode: SYNTHESIZED_DIR_MODE,
                    mtime_ns: None,
                    owner: None,
                    entry: None,
                }
            }
        })
        .collect()
}

/// Why `path` must not be written, if it must not. The destinations rely on this: they may then
/// assume every component is a plain name and every parent is a directory they created.
fn refusal(
    path: &RecPath,
    entries: &BTreeMap<RecPath, Entry>,
    not_written: &BTreeSet<RecPath>,
) -> Option<String> {
    if let Some(reason) = unsafe_component(path) {
        return Some(reason.into());
    }
    let mut ancestor = path.parent();
    while let Some(dir) = ancestor.filter(|d| !d.is_root()) {
        if not_written.contains(&dir) {
            return Some(format!("its parent {dir} was not exported"));
        }
        match entries.get(&dir).map(|e| &e.kind) {
            Some(EntryKind::Symlink { target }) => {
                return Some(format!(
                    "its parent {dir} is a recorded symlink (to {:?}); writing through it could \
                     land outside the export, so the symlink is exported and this entry is not",
                    String::from_utf8_lossy(target)
                ))
            }
            Some(EntryKind::File { .. }) => {
                return Some(format!(
                    "its parent {dir} is a recorded file, not a directory (conflicting entries in the recording)"
                ))
            }
            Some(EntryKind::Dir) | None => {}
        }
        ancestor = dir.parent();
    }
    None
}

/// Why `path` cannot be placed safely below the destination by its components alone.
/// `RecPath::normalize` guarantees clean components, but a RecPath can also be deserialized from
/// a damaged or forged store, so the export checks again rather than trusting it.
fn unsafe_component(path: &RecPath) -> Option<&'static str> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Some("recorded path is not absolute; refusing to guess where it belongs");
    }
    for component in bytes[1..].split(|b| *b == b'/') {
        match component {
            b"" => return Some("recorded path has an empty component"),
            b"." | b".." => return Some(
                "recorded path contains a `.` or `..` component that could climb out of the export",
            ),
            c if c.contains(&0) => return Some("recorded path contains a NUL byte"),
            _ => {}
        }
    }
    None
}

fn progress_bar(wanted: bool, total_bytes: u64) -> ProgressBar {
    if !wanted || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total_bytes), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "exporting {wide_bar} {bytes}/{total_bytes} ({bytes_per_sec}, {eta} left)",
    ) {
        bar.set_style(style);
    }
    bar
}

/// A recorded path as a `Path` for glob matching: Linux paths are bytes, and so is `OsStr`.
pub(crate) fn as_std_path(path: &RecPath) -> &Path {
    use std::os::unix::ffi::OsStrExt;
    Path::new(std::ffi::OsStr::from_bytes(path.as_bytes()))
}

/// Splits nanoseconds since the epoch into whole seconds and a non-negative nanosecond part, as
/// both timespec and tar want; `None` when the seconds do not fit an `i64`.
pub(crate) fn split_ns(ns: i128) -> Option<(i64, u32)> {
    let secs = i64::try_from(ns.div_euclid(1_000_000_000)).ok()?;
    let nanos = ns.rem_euclid(1_000_000_000) as u32;
    Some((secs, nanos))
}
