//! Exports real trees into real temporary directories and tar streams, then inspects the results
//! with ordinary file-system calls and the tar crate's reader.

use diffkeeper_export::{
    compile_globs, export_dir, export_tar, ContentError, ExportError, ExportOptions, ExportSummary,
};
use diffkeeper_store::model::{Entry, EntryKind, RecPath};
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

// ---------------------------------------------------------------------------------------------
// Building recorded trees

fn rp(raw: &[u8]) -> RecPath {
    RecPath::normalize(raw).expect("test paths are valid")
}

/// A recorded tree plus the bytes of its files: what the store would hand to an export.
#[derive(Default)]
struct Recording {
    entries: BTreeMap<RecPath, Entry>,
    contents: BTreeMap<RecPath, Vec<u8>>,
    next_node: u64,
}

impl Recording {
    fn entry(&mut self, path: &[u8], kind: EntryKind, mode: u32, mtime_ns: i128) -> &mut Entry {
        self.next_node += 1;
        let path = rp(path);
        self.entries.insert(
            path.clone(),
            Entry {
                node: self.next_node,
                kind,
                mode,
                mtime_ns,
                exact: true,
                owner: Default::default(),
                xattrs: Default::default(),
            },
        );
        self.entries.get_mut(&path).unwrap()
    }

    fn dir(&mut self, path: &[u8], mode: u32, mtime_ns: i128) {
        self.entry(path, EntryKind::Dir, mode, mtime_ns);
    }

    fn file(&mut self, path: &[u8], mode: u32, mtime_ns: i128, data: &[u8]) -> &mut Entry {
        self.contents.insert(rp(path), data.to_vec());
        let size = data.len() as u64;
        self.entry(path, EntryKind::File { size }, mode, mtime_ns)
    }

    fn symlink(&mut self, path: &[u8], target: &[u8], mtime_ns: i128) {
        let target = target.to_vec();
        self.entry(path, EntryKind::Symlink { target }, 0o777, mtime_ns);
    }

    /// A content source that also remembers what it was asked for, so tests can check that
    /// only files are fetched.
    fn source<'a>(
        &'a self,
        asked: &'a mut Vec<RecPath>,
    ) -> impl FnMut(&RecPath, &Entry) -> Result<Vec<u8>, ContentError> + 'a {
        move |path: &RecPath, _entry: &Entry| {
            asked.push(path.clone());
            self.contents
                .get(path)
                .cloned()
                .ok_or_else(|| format!("no content recorded for {path}").into())
        }
    }

    fn export_dir(&self, out: &Path, opts: &ExportOptions) -> Result<ExportSummary, ExportError> {
        let mut asked = Vec::new();
        let mut src = self.source(&mut asked);
        export_dir(&self.entries, &mut src, out, opts)
    }

    fn export_tar(&self, opts: &ExportOptions) -> (Vec<u8>, ExportSummary) {
        let mut asked = Vec::new();
        let mut src = self.source(&mut asked);
        let mut archive = Vec::new();
        let summary = export_tar(&self.entries, &mut src, &mut archive, opts).expect("tar export");
        (archive, summary)
    }
}

const T0: i128 = 1_700_000_000_123_456_789;

/// Every kind of entry the round trip must preserve.
fn varied_recording() -> Recording {
    let mut rec = Recording::default();
    let binary: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    rec.dir(b"/tmp", 0o755, T0);
    rec.dir(b"/tmp/w", 0o750, T0 + 1);
    rec.file(b"/tmp/w/binary.dat", 0o644, T0 + 2, &binary);
    rec.file(b"/tmp/w/empty", 0o644, T0 + 3, b"");
    rec.file(b"/tmp/w/secret", 0o600, T0 + 4, b"token\n");
    rec.file(b"/tmp/w/run.sh", 0o755, T0 + 5, b"#!/bin/sh\necho hi\n");
    rec.file(b"/tmp/w/old", 0o640, -1_500_000_000, b"before 1970");
    rec.dir(b"/tmp/w/ro", 0o555, T0 + 6);
    rec.file(
        b"/tmp/w/ro/inner.txt",
        0o444,
        T0 + 7,
        b"inside a read-only dir",
    );
    rec.dir(b"/tmp/w/ro/sub", 0o500, T0 + 8);
    rec.file(b"/tmp/w/ro/sub/deep", 0o400, T0 + 9, b"deep");
    rec.dir(b"/tmp/w/shared", 0o1777, T0 + 10);
    rec.file(b"/tmp/w/shared/note", 0o664, T0 + 11, b"sticky");
    rec.symlink(b"/tmp/w/abs", b"/etc/hostname", T0 + 12);
    rec.symlink(b"/tmp/w/rel", b"../w/binary.dat", T0 + 13);
    rec.symlink(b"/tmp/w/dangling", b"nowhere/at/all", T0 + 14);
    rec.dir(b"/tmp/w/a", 0o755, T0 + 15);
    rec.dir(b"/tmp/w/a/b", 0o711, T0 + 16);
    rec.dir(b"/tmp/w/a/b/c", 0o755, T0 + 17);
    rec.file(b"/tmp/w/a/b/c/leaf.txt", 0o644, T0 + 18, b"leaf");
    // Sorts between /tmp/w/a and /tmp/w/a/b: parents must still come before children.
    rec.file(b"/tmp/w/a-b", 0o644, T0 + 19, b"dash");
    rec.dir(b"/var", 0o755, T0 + 20);
    rec.dir(b"/var/log", 0o2775, T0 + 21);
    rec.file(b"/var/log/app.log", 0o644, T0 + 22, b"line 1\nline 2\n")
        .exact = false;
    rec
}

// ---------------------------------------------------------------------------------------------
// Inspecting results

#[derive(Debug, PartialEq, Eq)]
enum Found {
    File(Vec<u8>),
    Dir,
    Symlink(Vec<u8>),
}

#[derive(Debug, PartialEq, Eq)]
struct Observed {
    found: Found,
    /// Permission bits; `None` for symlinks, whose bits mean nothing on Linux.
    mode: Option<u32>,
    mtime_ns: i128,
}

/// Everything below `root`, keyed by the path relative to it, without following symlinks.
fn scan(root: &Path) -> BTreeMap<Vec<u8>, Observed> {
    let mut found = BTreeMap::new();
    scan_into(root, root, &mut found);
    found
}

fn scan_into(root: &Path, dir: &Path, found: &mut BTreeMap<Vec<u8>, Observed>) {
    for child in std::fs::read_dir(dir).unwrap() {
        let path = child.unwrap().path();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let rel = path
            .strip_prefix(root)
            .unwrap()
            .as_os_str()
            .as_bytes()
            .to_vec();
        let kind = meta.file_type();
        let mtime_ns = i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec());
        let mode = Some(meta.permissions().mode() & 0o7777);
        let observed = if kind.is_symlink() {
            let target = std::fs::read_link(&path).unwrap();
            Observed {
                found: Found::Symlink(target.as_os_str().as_bytes().to_vec()),
                mode: None,
                mtime_ns,
            }
        } else if kind.is_dir() {
            scan_into(root, &path, found);
            Observed {
                found: Found::Dir,
                mode,
                mtime_ns,
            }
        } else {
            Observed {
                found: Found::File(std::fs::read(&path).unwrap()),
                mode,
                mtime_ns,
            }
        };
        found.insert(rel, observed);
    }
}

/// What `scan` must see after exporting `rec` in full.
fn expected(rec: &Recording) -> BTreeMap<Vec<u8>, Observed> {
    rec.entries
        .iter()
        .map(|(path, entry)| {
            let (found, mode) = match &entry.kind {
                EntryKind::File { .. } => {
                    (Found::File(rec.contents[path].clone()), Some(entry.mode))
                }
                EntryKind::Dir => (Found::Dir, Some(entry.mode)),
                EntryKind::Symlink { target } => (Found::Symlink(target.clone()), None),
            };
            let observed = Observed {
                found,
                mode,
                mtime_ns: entry.mtime_ns,
            };
            (path.as_bytes()[1..].to_vec(), observed)
        })
        .collect()
}

fn os(bytes: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(bytes))
}

/// Gives the owner full access to every directory so the temporary directory can be removed
/// even when exported modes (0555, 0500) would stop an unprivileged test runner.
fn make_removable(root: &Path) {
    for (rel, observed) in scan(root) {
        if observed.found == Found::Dir {
            let path = root.join(os(&rel));
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).unwrap();
        }
    }
}

fn skipped_paths(summary: &ExportSummary) -> BTreeSet<String> {
    summary
        .skipped
        .iter()
        .map(|(path, _)| path.to_string())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// (a) Round trip into a directory

#[test]
fn export_dir_reproduces_content_types_modes_targets_and_mtimes_exactly() {
    let rec = varied_recording();
    let tmp = tempfile::tempdir().unwrap();
    // A destination that does not exist yet, two levels deep, is created.
    let out = tmp.path().join("exports").join("moment");

    let mut asked = Vec::new();
    let summary = {
        let mut src = rec.source(&mut asked);
        export_dir(&rec.entries, &mut src, &out, &ExportOptions::default()).unwrap()
    };

    let observed = scan(&out);
    make_removable(&out);
    let want = expected(&rec);
    // Compare entry by entry first so a failure names the path that differs.
    for (path, want_entry) in &want {
        assert_eq!(
            observed.get(path),
            Some(want_entry),
            "exported {:?} differs from the recording",
            String::from_utf8_lossy(path)
        );
    }
    let extra: Vec<_> = observed.keys().filter(|p| !want.contains_key(*p)).collect();
    assert!(
        extra.is_empty(),
        "export created entries not in the recording: {extra:?}"
    );

    let files: BTreeSet<RecPath> = rec.contents.keys().cloned().collect();
    assert_eq!(
        asked.iter().cloned().collect::<BTreeSet<_>>(),
        files,
        "content must be fetched for every file and nothing else"
    );
    assert_eq!(
        asked.len(),
        files.len(),
        "each file's content is fetched once"
    );

    let total_bytes: u64 = rec.contents.values().map(|c| c.len() as u64).sum();
    assert_eq!(
        summary,
        ExportSummary {
            files: 11,
            dirs: 10,
            symlinks: 3,
            bytes: total_bytes,
            inexact: vec![rp(b"/var/log/app.log")],
            skipped: vec![],
            damaged: vec![],
        }
    );
}

#[test]
fn export_dir_fills_directories_whose_recorded_mode_forbids_writing() {
    // Separate from the round trip so a failure here points at the ordering of chmod, not at
    // content. (When the tests run as root, permission checks do not apply and this passes
    // regardless; the mtime check still catches a directory finished before its children.)
    let mut rec = Recording::default();
    rec.dir(b"/locked", 0o500, T0);
    rec.dir(b"/locked/none", 0o000, T0 + 1);
    rec.file(b"/locked/none/f", 0o400, T0 + 2, b"x");
    rec.file(b"/locked/g", 0o000, T0 + 3, b"y");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");

    let summary = rec.export_dir(&out, &ExportOptions::default()).unwrap();
    // Modes and times first: opening the directories up to read their files changes them.
    let locked = std::fs::symlink_metadata(out.join("locked")).unwrap();
    let none = std::fs::symlink_metadata(out.join("locked/none")).unwrap();
    assert_eq!(locked.permissions().mode() & 0o7777, 0o500);
    assert_eq!(none.permissions().mode() & 0o7777, 0o000);
    assert_eq!(locked.mtime_nsec(), (T0 % 1_000_000_000) as i64);
    assert_eq!(none.mtime_nsec(), ((T0 + 1) % 1_000_000_000) as i64);

    std::fs::set_permissions(out.join("locked"), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::set_permissions(
        out.join("locked/none"),
        std::fs::Permissions::from_mode(0o700),
    )
    .unwrap();
    assert_eq!(std::fs::read(out.join("locked/none/f")).unwrap(), b"x");
    assert_eq!(std::fs::read(out.join("locked/g")).unwrap(), b"y");
    assert_eq!((summary.files, summary.dirs), (2, 2));
    assert!(summary.skipped.is_empty());
}

#[test]
fn export_dir_creates_directories_the_tree_does_not_list() {
    let mut rec = Recording::default();
    // A tree that (against the store's promise) omits /opt and /opt/app.
    rec.file(b"/opt/app/config", 0o644, T0, b"k=v");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");

    let summary = rec.export_dir(&out, &ExportOptions::default()).unwrap();

    assert_eq!(std::fs::read(out.join("opt/app/config")).unwrap(), b"k=v");
    let app = std::fs::symlink_metadata(out.join("opt/app")).unwrap();
    assert_eq!(app.permissions().mode() & 0o7777, 0o755);
    assert_eq!((summary.files, summary.dirs), (1, 2));
}

// ---------------------------------------------------------------------------------------------
// (b) Hostile recordings

/// A recording crafted to make a naive exporter write outside its destination. `victim` and
/// `base` are real directories next to the destination.
fn hostile_recording(victim: &Path) -> Recording {
    let mut rec = Recording::default();
    rec.dir(b"/tmp", 0o755, T0);
    rec.dir(b"/tmp/w", 0o755, T0);
    // Absolute symlink to a directory outside the export, then a file "inside" it.
    rec.symlink(b"/tmp/w/link", victim.as_os_str().as_bytes(), T0);
    rec.file(b"/tmp/w/link/passwd", 0o644, T0, b"root::0:0::/:/bin/sh\n");
    // Relative symlink climbing from OUT/tmp/w to OUT's parent, then a directory and a file
    // below it that would land in the sentinel directory next to OUT.
    rec.symlink(b"/tmp/w/up", b"../../..", T0);
    rec.dir(b"/tmp/w/up/sentinel", 0o777, T0);
    rec.file(b"/tmp/w/up/sentinel/planted", 0o644, T0, b"planted");
    // A file and a directory at conflicting paths: a file with a child.
    rec.file(b"/tmp/w/plain", 0o644, T0, b"i am a file");
    rec.file(b"/tmp/w/plain/child", 0o644, T0, b"child of a file");
    // Awkward but legal names: exported as they are.
    rec.file(b"/tmp/w/new\nline", 0o644, T0, b"newline in the name");
    rec.file(b"/tmp/w/\xff\xfe-not-utf8", 0o644, T0, b"bytes");
    rec.file(b"/tmp/w/-rf", 0o644, T0, b"dash");
    // A name longer than any Linux file system allows, as a file and as a directory with a child.
    let long = [b'n'; 300];
    let long_file = [b"/tmp/w/".as_slice(), &long].concat();
    rec.file(&long_file, 0o644, T0, b"long");
    let long_dir = [b"/tmp/w/d".as_slice(), &long].concat();
    rec.entry(&long_dir, EntryKind::Dir, 0o755, T0);
    rec.file(
        &[long_dir.as_slice(), b"/inner"].concat(),
        0o644,
        T0,
        b"inner",
    );
    // A path with `..` that only a damaged or forged store could hold (RecPath::normalize would
    // have removed it): build it the way a store would load it, through deserialization.
    let forged: RecPath = serde_json::from_value(serde_json::json!(
        b"/tmp/w/../../../sentinel/forged".to_vec()
    ))
    .unwrap();
    assert_eq!(forged.as_bytes(), b"/tmp/w/../../../sentinel/forged");
    rec.contents.insert(forged.clone(), b"forged".to_vec());
    rec.entries.insert(
        forged,
        Entry {
            node: 999,
            kind: EntryKind::File { size: 6 },
            mode: 0o644,
            mtime_ns: T0,
            exact: true,
            owner: Default::default(),
            xattrs: Default::default(),
        },
    );
    rec
}

fn hostile_skips() -> BTreeSet<String> {
    let long = "n".repeat(300);
    [
        "/tmp/w/link/passwd".to_string(),
        "/tmp/w/up/sentinel".to_string(),
        "/tmp/w/up/sentinel/planted".to_string(),
        "/tmp/w/plain/child".to_string(),
        format!("/tmp/w/{long}"),
        format!("/tmp/w/d{long}"),
        format!("/tmp/w/d{long}/inner"),
        "/tmp/w/../../../sentinel/forged".to_string(),
    ]
    .into_iter()
    .collect()
}

/// `base/out` is the destination; `base/sentinel` and `base/victim` must stay untouched.
fn hostile_layout() -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf) {
    let base = tempfile::tempdir().unwrap();
    let sentinel = base.path().join("sentinel");
    let victim = base.path().join("victim");
    std::fs::create_dir(&sentinel).unwrap();
    std::fs::create_dir(&victim).unwrap();
    std::fs::write(sentinel.join("keep.txt"), b"original").unwrap();
    let out = base.path().join("out");
    (base, out, sentinel, victim)
}

fn assert_outside_untouched(base: &Path, sentinel: &Path, victim: &Path, out_name: &str) {
    let mut top: Vec<_> = std::fs::read_dir(base)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    top.sort();
    let mut want = vec!["sentinel".to_string(), "victim".to_string()];
    if !out_name.is_empty() {
        want.insert(0, out_name.to_string());
    }
    assert_eq!(top, want, "nothing may appear next to the destination");
    let sentinel_now = scan(sentinel);
    assert_eq!(
        sentinel_now.keys().collect::<Vec<_>>(),
        vec![&b"keep.txt".to_vec()],
        "the sentinel directory gained or lost entries"
    );
    assert_eq!(
        std::fs::read(sentinel.join("keep.txt")).unwrap(),
        b"original"
    );
    assert!(
        scan(victim).is_empty(),
        "a file was written through the absolute symlink into the victim directory"
    );
}

#[test]
fn export_dir_never_writes_outside_the_destination() {
    let (base, out, sentinel, victim) = hostile_layout();
    let rec = hostile_recording(&victim);

    let summary = rec.export_dir(&out, &ExportOptions::default()).unwrap();

    assert_outside_untouched(base.path(), &sentinel, &victim, "out");
    assert_eq!(skipped_paths(&summary), hostile_skips());
    for (path, reason) in &summary.skipped {
        assert!(!reason.is_empty(), "skip of {path} has no reason");
    }
    let reason_of = |p: &[u8]| {
        summary
            .skipped
            .iter()
            .find(|(path, _)| path.as_bytes() == p)
            .map(|(_, r)| r.clone())
            .unwrap()
    };
    assert!(reason_of(b"/tmp/w/link/passwd").contains("symlink"));
    assert!(reason_of(b"/tmp/w/../../../sentinel/forged").contains(".."));

    // The symlinks themselves are exported verbatim, as symlinks.
    let found = scan(&out);
    assert_eq!(
        found[b"tmp/w/link".as_slice()].found,
        Found::Symlink(victim.as_os_str().as_bytes().to_vec())
    );
    assert_eq!(
        found[b"tmp/w/up".as_slice()].found,
        Found::Symlink(b"../../..".to_vec())
    );
    assert_eq!(
        found[b"tmp/w/plain".as_slice()].found,
        Found::File(b"i am a file".to_vec())
    );
    // Legal names survive byte for byte.
    assert_eq!(
        found[b"tmp/w/new\nline".as_slice()].found,
        Found::File(b"newline in the name".to_vec())
    );
    assert_eq!(
        found[b"tmp/w/\xff\xfe-not-utf8".as_slice()].found,
        Found::File(b"bytes".to_vec())
    );
    let exported: BTreeSet<&[u8]> = found.keys().map(|k| k.as_slice()).collect();
    let want: BTreeSet<&[u8]> = [
        b"tmp".as_slice(),
        b"tmp/w",
        b"tmp/w/link",
        b"tmp/w/up",
        b"tmp/w/plain",
        b"tmp/w/new\nline",
        b"tmp/w/\xff\xfe-not-utf8",
        b"tmp/w/-rf",
    ]
    .into_iter()
    .collect();
    assert_eq!(exported, want);
    assert_eq!(summary.files, 4);
    assert_eq!(summary.symlinks, 2);
}

#[test]
fn export_dir_reaches_paths_longer_than_path_max() {
    // Forty 200-byte components: 8 KB, twice PATH_MAX, which only fd-relative creation reaches.
    let mut rec = Recording::default();
    let mut path = Vec::new();
    for i in 0..40u8 {
        path.push(b'/');
        path.extend(std::iter::repeat_n(b'a' + i % 26, 200));
        rec.dir(&path, 0o755, T0);
    }
    path.extend_from_slice(b"/bottom.txt");
    rec.file(&path, 0o644, T0, b"far down");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");

    let summary = rec.export_dir(&out, &ExportOptions::default()).unwrap();

    assert!(summary.skipped.is_empty(), "{:?}", summary.skipped);
    assert_eq!((summary.files, summary.dirs), (1, 40));
    // Read it back component by component; a single open of the full path would fail.
    let mut dir = std::fs::File::open(&out).unwrap();
    let components: Vec<&[u8]> = path[1..].split(|b| *b == b'/').collect();
    let (last, dirs) = components.split_last().unwrap();
    for component in dirs {
        let fd = rustix::fs::openat(
            &dir,
            *component,
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY,
            rustix::fs::Mode::empty(),
        )
        .unwrap();
        dir = std::fs::File::from(fd);
    }
    let fd = rustix::fs::openat(
        &dir,
        *last,
        rustix::fs::OFlags::RDONLY,
        rustix::fs::Mode::empty(),
    )
    .unwrap();
    let mut content = Vec::new();
    std::fs::File::from(fd).read_to_end(&mut content).unwrap();
    assert_eq!(content, b"far down");
}

#[test]
fn export_tar_leaves_out_the_same_hostile_entries_and_stays_relative() {
    let (base, _out, sentinel, victim) = hostile_layout();
    let rec = hostile_recording(&victim);

    let (archive, summary) = rec.export_tar(&ExportOptions::default());

    // Long names are legal in a tar (PAX), so only the escaping entries are left out here.
    let long = "n".repeat(300);
    let mut want_skips = hostile_skips();
    want_skips.remove(&format!("/tmp/w/{long}"));
    want_skips.remove(&format!("/tmp/w/d{long}"));
    want_skips.remove(&format!("/tmp/w/d{long}/inner"));
    assert_eq!(skipped_paths(&summary), want_skips);

    let mut reader = tar::Archive::new(archive.as_slice());
    let names: Vec<Vec<u8>> = reader
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path_bytes().into_owned())
        .collect();
    for name in &names {
        assert!(
            !name.starts_with(b"/"),
            "absolute path in archive: {name:?}"
        );
        assert!(
            !name.split(|b| *b == b'/').any(|c| c == b".."),
            "`..` in archive path {:?}",
            String::from_utf8_lossy(name)
        );
        assert!(
            !name.starts_with(b"tmp/w/link/") && !name.starts_with(b"tmp/w/up/"),
            "entry below a symlink in the archive: {:?}",
            String::from_utf8_lossy(name)
        );
    }
    assert!(names.contains(&format!("tmp/w/{long}").into_bytes()));
    assert!(names.contains(&b"tmp/w/new\nline".to_vec()));
    assert_outside_untouched(base.path(), &sentinel, &victim, "");
}

// ---------------------------------------------------------------------------------------------
// (c) Tar stream

#[derive(Debug)]
struct TarItem {
    path: Vec<u8>,
    kind: tar::EntryType,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime_ns: i128,
    link: Option<Vec<u8>>,
    data: Vec<u8>,
}

fn read_tar(archive: &[u8]) -> Vec<TarItem> {
    let mut reader = tar::Archive::new(archive);
    let mut items = Vec::new();
    for entry in reader.entries().unwrap() {
        let mut entry = entry.unwrap();
        let header = entry.header().clone();
        let mut mtime_ns = i128::from(header.mtime().unwrap()) * 1_000_000_000;
        if let Some(pax) = entry.pax_extensions().unwrap() {
            for ext in pax {
                let ext = ext.unwrap();
                if ext.key().unwrap() == "mtime" {
                    mtime_ns = parse_pax_time(ext.value().unwrap());
                }
            }
        }
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        items.push(TarItem {
            path: entry.path_bytes().into_owned(),
            kind: header.entry_type(),
            mode: header.mode().unwrap(),
            uid: header.uid().unwrap(),
            gid: header.gid().unwrap(),
            mtime_ns,
            link: entry.link_name_bytes().map(|l| l.into_owned()),
            data,
        });
    }
    items
}

fn parse_pax_time(value: &str) -> i128 {
    let (negative, digits) = match value.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, value),
    };
    let (secs, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let frac = format!("{frac:0<9}");
    let magnitude = secs.parse::<i128>().unwrap() * 1_000_000_000 + frac.parse::<i128>().unwrap();
    if negative {
        -magnitude
    } else {
        magnitude
    }
}

#[test]
fn export_tar_writes_relative_entries_in_path_order_with_recorded_metadata() {
    let mut rec = varied_recording();
    // Names and targets past the 100-byte header fields, and a non-UTF-8 name.
    let long_dir = [b"/tmp/w/".as_slice(), &[b'L'; 120]].concat();
    rec.dir(&long_dir, 0o755, T0 + 30);
    rec.file(
        &[long_dir.as_slice(), b"/f"].concat(),
        0o644,
        T0 + 31,
        b"long",
    );
    let long_target = [b"../".repeat(20), b"x".repeat(100)].concat();
    rec.symlink(b"/tmp/w/longlink", &long_target, T0 + 32);
    rec.file(b"/tmp/w/\xc3(", 0o644, T0 + 33, b"not utf-8");

    let (archive, summary) = rec.export_tar(&ExportOptions::default());
    let items = read_tar(&archive);

    assert!(summary.skipped.is_empty());
    let want: Vec<Vec<u8>> = rec
        .entries
        .keys()
        .map(|p| p.as_bytes()[1..].to_vec())
        .collect();
    let got: Vec<Vec<u8>> = items
        .iter()
        .map(|i| {
            let mut p = i.path.clone();
            if p.ends_with(b"/") {
                p.pop();
            }
            p
        })
        .collect();
    assert_eq!(
        got, want,
        "archive entries must be the tree's paths, relative, in path order"
    );

    for item in &items {
        let name = item.path.strip_suffix(b"/").unwrap_or(&item.path);
        let entry = &rec.entries[&rp(&[b"/".as_slice(), name].concat())];
        let shown = String::from_utf8_lossy(name);
        assert_eq!((item.uid, item.gid), (0, 0), "{shown}: owner must be 0");
        assert_eq!(item.mtime_ns, entry.mtime_ns, "{shown}: mtime");
        match &entry.kind {
            EntryKind::Dir => {
                assert_eq!(item.kind, tar::EntryType::Directory, "{shown}");
                assert_eq!(item.mode, entry.mode, "{shown}: mode");
            }
            EntryKind::File { .. } => {
                assert_eq!(item.kind, tar::EntryType::Regular, "{shown}");
                assert_eq!(item.mode, entry.mode, "{shown}: mode");
                assert_eq!(
                    item.data,
                    rec.contents[&rp(&[b"/".as_slice(), name].concat())]
                );
            }
            EntryKind::Symlink { target } => {
                assert_eq!(item.kind, tar::EntryType::Symlink, "{shown}");
                assert_eq!(item.link.as_ref(), Some(target), "{shown}: target verbatim");
                assert!(item.data.is_empty());
            }
        }
    }
    assert_eq!(summary.symlinks, 4);
    assert_eq!(summary.inexact, vec![rp(b"/var/log/app.log")]);
}

#[test]
fn export_tar_streams_to_a_file() {
    let rec = varied_recording();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("moment.tar");
    let file = std::fs::File::create(&path).unwrap();
    let mut asked = Vec::new();
    let mut src = rec.source(&mut asked);
    let summary = export_tar(&rec.entries, &mut src, file, &ExportOptions::default()).unwrap();

    let items = read_tar(&std::fs::read(&path).unwrap());
    assert_eq!(items.len(), rec.entries.len());
    assert_eq!(
        summary.files + summary.dirs + summary.symlinks,
        rec.entries.len() as u64
    );
}

// ---------------------------------------------------------------------------------------------
// (d) Selecting paths

fn glob_recording() -> Recording {
    let mut rec = Recording::default();
    rec.dir(b"/tmp", 0o755, T0);
    rec.dir(b"/tmp/w", 0o700, T0 + 1);
    rec.file(b"/tmp/w/a.txt", 0o644, T0, b"a");
    rec.file(b"/tmp/w/b.bin", 0o644, T0, b"b");
    rec.dir(b"/tmp/w/sub", 0o755, T0);
    rec.file(b"/tmp/w/sub/c.txt", 0o644, T0, b"c");
    rec.dir(b"/tmp/w/sub/deeper", 0o755, T0);
    rec.file(b"/tmp/w/sub/deeper/d.log", 0o644, T0, b"d");
    rec.dir(b"/tmp/w/subway", 0o755, T0);
    rec.file(b"/tmp/w/subway/e.txt", 0o644, T0, b"e");
    rec.dir(b"/var", 0o755, T0);
    rec.file(b"/var/f.log", 0o644, T0, b"f");
    rec
}

fn exported_with(patterns: &[&str]) -> BTreeSet<String> {
    let rec = glob_recording();
    let patterns: Vec<String> = patterns.iter().map(|p| p.to_string()).collect();
    let opts = ExportOptions {
        paths: compile_globs(&patterns).unwrap(),
        progress: false,
        no_owner: false,
    };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let summary = rec.export_dir(&out, &opts).unwrap();
    let found: BTreeSet<String> = scan(&out)
        .into_keys()
        .map(|k| String::from_utf8(k).unwrap())
        .collect();
    // The tar export must select exactly the same entries.
    let (archive, tar_summary) = rec.export_tar(&opts);
    let in_tar: BTreeSet<String> = read_tar(&archive)
        .into_iter()
        .map(|i| {
            String::from_utf8(i.path)
                .unwrap()
                .trim_end_matches('/')
                .to_string()
        })
        .collect();
    assert_eq!(
        in_tar, found,
        "tar and directory exports selected different entries"
    );
    assert_eq!(summary, tar_summary);
    found
}

fn set(paths: &[&str]) -> BTreeSet<String> {
    paths.iter().map(|p| p.to_string()).collect()
}

#[test]
fn star_stays_within_one_directory_and_brings_its_parents() {
    assert_eq!(
        exported_with(&["/tmp/w/*.txt"]),
        set(&["tmp", "tmp/w", "tmp/w/a.txt"])
    );
}

#[test]
fn parents_brought_along_keep_their_recorded_mode() {
    let rec = glob_recording();
    let opts = ExportOptions {
        paths: compile_globs(&["/tmp/w/a.txt".to_string()]).unwrap(),
        progress: false,
        no_owner: false,
    };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    rec.export_dir(&out, &opts).unwrap();
    let w = std::fs::symlink_metadata(out.join("tmp/w")).unwrap();
    assert_eq!(w.permissions().mode() & 0o7777, 0o700);
    assert_eq!(
        i128::from(w.mtime()) * 1_000_000_000 + i128::from(w.mtime_nsec()),
        T0 + 1
    );
}

#[test]
fn literal_directory_pattern_selects_everything_below_it_and_nothing_beside_it() {
    assert_eq!(
        exported_with(&["/tmp/w/sub"]),
        set(&[
            "tmp",
            "tmp/w",
            "tmp/w/sub",
            "tmp/w/sub/c.txt",
            "tmp/w/sub/deeper",
            "tmp/w/sub/deeper/d.log",
        ])
    );
    // A trailing slash means the same directory.
    assert_eq!(
        exported_with(&["/tmp/w/sub/"]),
        exported_with(&["/tmp/w/sub"])
    );
}

#[test]
fn double_star_crosses_directories_and_patterns_combine() {
    assert_eq!(
        exported_with(&["**/*.log", "/tmp/w/b.bin"]),
        set(&[
            "tmp",
            "tmp/w",
            "tmp/w/b.bin",
            "tmp/w/sub",
            "tmp/w/sub/deeper",
            "tmp/w/sub/deeper/d.log",
            "var",
            "var/f.log",
        ])
    );
}

#[test]
fn no_patterns_means_no_filter() {
    assert!(compile_globs(&[]).unwrap().is_none());
    assert_eq!(exported_with(&[]).len(), glob_recording().entries.len());
}

#[test]
fn bad_patterns_are_refused_naming_the_pattern() {
    let err = compile_globs(&["/tmp/ok".to_string(), "/tmp/[oops".to_string()]).unwrap_err();
    assert!(matches!(err, ExportError::BadPattern { .. }), "{err:?}");
    assert!(err.to_string().contains("/tmp/[oops"), "{err}");

    let err = compile_globs(&["tmp/w/*.txt".to_string()]).unwrap_err();
    assert!(
        matches!(err, ExportError::RelativePattern { .. }),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains("tmp/w/*.txt") && message.contains("start it with /"),
        "{message}"
    );

    let err = compile_globs(&[String::new()]).unwrap_err();
    assert!(matches!(err, ExportError::EmptyPattern), "{err:?}");
}

// ---------------------------------------------------------------------------------------------
// (e) Refusing destinations that are not empty

#[test]
fn non_empty_destination_is_refused_and_left_alone() {
    let rec = varied_recording();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("existing.txt"), b"mine").unwrap();

    let err = rec.export_dir(&out, &ExportOptions::default()).unwrap_err();

    assert!(
        matches!(err, ExportError::DestinationNotEmpty { .. }),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(message.contains("not empty"), "{message}");
    assert!(message.contains("existing.txt"), "{message}");
    assert!(message.contains("new or empty directory"), "{message}");
    assert_eq!(
        scan(&out).keys().collect::<Vec<_>>(),
        vec![&b"existing.txt".to_vec()]
    );
    assert_eq!(std::fs::read(out.join("existing.txt")).unwrap(), b"mine");
}

#[test]
fn empty_existing_destination_is_accepted() {
    let rec = glob_recording();
    let tmp = tempfile::tempdir().unwrap();
    let summary = rec
        .export_dir(tmp.path(), &ExportOptions::default())
        .unwrap();
    assert_eq!(summary.files, 6);
}

#[test]
fn destination_that_is_a_file_is_refused() {
    let rec = glob_recording();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("file");
    std::fs::write(&out, b"x").unwrap();
    let err = rec.export_dir(&out, &ExportOptions::default()).unwrap_err();
    assert!(
        matches!(err, ExportError::DestinationNotDirectory { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("not a directory"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Content failures

#[test]
fn unreadable_content_stops_the_export_naming_the_path() {
    let rec = glob_recording();
    let tmp = tempfile::tempdir().unwrap();
    let mut src = |path: &RecPath, _: &Entry| -> Result<Vec<u8>, ContentError> {
        if path.as_bytes() == b"/tmp/w/b.bin" {
            Err("chunk 7 is missing".into())
        } else {
            Ok(b"x".to_vec())
        }
    };
    let err = export_dir(
        &rec.entries,
        &mut src,
        &tmp.path().join("out"),
        &ExportOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(err, ExportError::Content { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains("/tmp/w/b.bin") && message.contains("chunk 7 is missing"),
        "{message}"
    );
}
