//! The overlay baseline on a real overlayfs: a container's changes made through the merged dir
//! before recording began are recorded from the upper dir, and the export of the recording laid
//! over the image's lower dirs reproduces the merged dir exactly (the export crate's own tests
//! cover the tar form). Needs root (mount, mknod, trusted xattrs).

use diffkeeper_export::{export_store_dir, ExportOptions, ImageLayers};
use diffkeeper_recorder::{monotonic_ns, wall_ns, Recorder};
use diffkeeper_store::{EntryKind, MarkerKind, OpKind, RecPath, RecordingInfo, Store, Writer};
use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

// ---------------------------------------------------------------------------------------------
// A real overlay mount

/// Unmounts on drop, so a failing test does not leave a mount behind.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let target = CString::new(self.0.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        let rc = unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        if rc != 0 {
            eprintln!(
                "could not unmount {}: {}",
                self.0.display(),
                std::io::Error::last_os_error()
            );
        }
    }
}

struct Overlay {
    /// Topmost first.
    lower: Vec<PathBuf>,
    upper: PathBuf,
    merged: PathBuf,
}

/// Mounts `lower` (topmost first) with a fresh upper dir; `redirect_dir=on` lets a directory of
/// the image be renamed in place, as container runtimes allow.
fn mount_overlay(base: &Path, lower: Vec<PathBuf>) -> (Overlay, Mounted) {
    let (upper, work, merged) = (base.join("upper"), base.join("work"), base.join("merged"));
    for dir in [&upper, &work, &merged] {
        fs::create_dir_all(dir).unwrap();
    }
    let lowerdir: Vec<String> = lower.iter().map(|p| p.display().to_string()).collect();
    let options = format!(
        "lowerdir={},upperdir={},workdir={},redirect_dir=on",
        lowerdir.join(":"),
        upper.display(),
        work.display()
    );
    let c = |s: &[u8]| CString::new(s).unwrap();
    let (source, target, fstype, data) = (
        c(b"overlay"),
        c(merged.as_os_str().as_bytes()),
        c(b"overlay"),
        c(options.as_bytes()),
    );
    // SAFETY: valid NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            data.as_ptr().cast(),
        )
    };
    assert_eq!(
        rc,
        0,
        "mount -t overlay {options} {}: {} (run the tests as root)",
        merged.display(),
        std::io::Error::last_os_error()
    );
    let guard = Mounted(merged.clone());
    let overlay = Overlay {
        lower,
        upper,
        merged,
    };
    (overlay, guard)
}

// ---------------------------------------------------------------------------------------------
// The image

fn put(root: &Path, rel: &str, mode: u32, data: &[u8]) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(&path, data).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
}

fn whiteout(root: &Path, rel: &str) {
    let path = CString::new(root.join(rel).as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    let rc = unsafe { libc::mknod(path.as_ptr(), libc::S_IFCHR, libc::makedev(0, 0)) };
    assert_eq!(rc, 0, "mknod whiteout: {}", std::io::Error::last_os_error());
}

fn pseudo_random(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_add(seed).wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

/// Two layers, topmost first; the top one whites out a file of the bottom one.
fn build_image(base: &Path) -> Vec<PathBuf> {
    let (top, bottom) = (base.join("layer-top"), base.join("layer-bottom"));
    put(&bottom, "etc/hosts", 0o644, b"127.0.0.1 bottom\n");
    put(&bottom, "etc/old.conf", 0o644, b"old\n");
    put(&bottom, "etc/passwd", 0o644, b"root:x:0:0\n");
    put(&bottom, "usr/bin/tool", 0o755, &pseudo_random(200_000, 1));
    put(&bottom, "usr/lib/libx.so", 0o644, b"libx");
    put(&bottom, "usr/share/doc/readme", 0o644, b"readme");
    put(&bottom, "var/cache/pkg/a", 0o644, b"a");
    put(&bottom, "var/log/boot.log", 0o640, b"booted");
    put(&bottom, "opt/app/a.txt", 0o644, b"a");
    put(&bottom, "opt/app/b.txt", 0o644, b"b");
    put(&bottom, "srv/www/index.html", 0o644, b"<html>");
    put(&bottom, "srv/www/img/logo.png", 0o600, b"\x89PNG");
    std::os::unix::fs::symlink("usr/lib", bottom.join("lib")).unwrap();
    put(&top, "etc/hosts", 0o644, b"127.0.0.1 top\n");
    put(&top, "etc/motd", 0o644, b"hello\n");
    whiteout(&top, "etc/passwd");
    vec![top, bottom]
}

/// What a container does before the agent attaches, through its merged root.
fn change_through(merged: &Path) {
    let m = |rel: &str| merged.join(rel);
    fs::write(m("new.txt"), b"new").unwrap();
    fs::set_permissions(m("new.txt"), fs::Permissions::from_mode(0o640)).unwrap();
    let mut hosts = fs::read(m("etc/hosts")).unwrap();
    hosts.extend_from_slice(b"10.0.0.7 db\n");
    fs::write(m("etc/hosts"), hosts).unwrap();
    fs::remove_file(m("etc/old.conf")).unwrap();
    fs::create_dir_all(m("data/sub")).unwrap();
    fs::write(m("data/x.txt"), pseudo_random(70_000, 2)).unwrap();
    fs::write(m("data/sub/y.txt"), b"y").unwrap();
    fs::hard_link(m("data/x.txt"), m("data/x-link")).unwrap();
    fs::remove_dir_all(m("var/cache")).unwrap();
    fs::remove_dir_all(m("opt/app")).unwrap();
    fs::create_dir(m("opt/app")).unwrap();
    fs::write(m("opt/app/new"), b"fresh").unwrap();
    fs::rename(m("srv/www"), m("srv/site")).unwrap();
    fs::set_permissions(m("usr/bin/tool"), fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::symlink("etc/hosts", m("link")).unwrap();
    fs::write(m("usr/share/doc/new.md"), b"# new").unwrap();
}

// ---------------------------------------------------------------------------------------------
// Comparing trees

#[derive(Clone, Debug, PartialEq, Eq)]
enum Node {
    Dir { mode: u32 },
    File { mode: u32, data: Vec<u8> },
    Symlink { target: Vec<u8> },
}

/// Every entry below `root` by relative path (`etc/hosts`).
fn dir_view(root: &Path) -> BTreeMap<String, Node> {
    fn visit(root: &Path, dir: &Path, out: &mut BTreeMap<String, Node>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned();
            let meta = fs::symlink_metadata(&path).unwrap();
            let mode = meta.mode() & 0o7777;
            let node = if meta.file_type().is_symlink() {
                let target = fs::read_link(&path)
                    .unwrap()
                    .as_os_str()
                    .as_bytes()
                    .to_vec();
                Node::Symlink { target }
            } else if meta.is_dir() {
                visit(root, &path, out);
                Node::Dir { mode }
            } else if meta.is_file() {
                let data = fs::read(&path).unwrap();
                Node::File { mode, data }
            } else {
                panic!("{} is a special file", path.display());
            };
            out.insert(rel, node);
        }
    }
    let mut out = BTreeMap::new();
    visit(root, root, &mut out);
    out
}

fn assert_same(what: &str, got: &BTreeMap<String, Node>, want: &BTreeMap<String, Node>) {
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "{what}: the paths differ"
    );
    for (path, node) in want {
        assert!(got[path] == *node, "{what}: {path} differs");
    }
}

// ---------------------------------------------------------------------------------------------

#[test]
fn baseline_of_the_upper_dir_over_the_image_reproduces_the_merged_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let lower = build_image(tmp.path());
    let (overlay, mounted) = mount_overlay(tmp.path(), lower);
    change_through(&overlay.merged);

    let state = tmp.path().join("state");
    let info = RecordingInfo {
        started_mono_ns: monotonic_ns(),
        started_wall_ns: wall_ns(),
        ..Default::default()
    };
    let writer = Writer::create(&state, info).unwrap();
    // No probe here: no cgroup to take kernel state for.
    let mut recorder = Recorder::new(writer, overlay.merged.clone(), Vec::new(), 0);
    let time = monotonic_ns();
    let recorded = recorder
        .baseline_overlay(&overlay.upper, &overlay.lower, time)
        .unwrap();
    // Checking every recorded entry against the container's view finds nothing to fix.
    recorder.reconcile(time).unwrap();
    assert_eq!(
        recorder.stats().reconciled,
        0,
        "the baseline disagrees with the disk"
    );
    recorder.into_writer().finish(monotonic_ns()).unwrap();

    let store = Store::open(&state).unwrap();
    let last = store.span().last_seq;
    let tree = store.tree_at(last).unwrap();

    // Exactly what the container changed or made: copied-up directories alone, changed files,
    // new ones, and what it made or moved whole.
    let want_paths = [
        "/data",
        "/data/sub",
        "/data/sub/y.txt",
        "/data/x-link",
        "/data/x.txt",
        "/etc",
        "/etc/hosts",
        "/link",
        "/new.txt",
        "/opt",
        "/opt/app",
        "/opt/app/new",
        "/srv",
        "/srv/site",
        "/srv/site/img",
        "/srv/site/img/logo.png",
        "/srv/site/index.html",
        "/usr",
        "/usr/bin",
        "/usr/bin/tool",
        "/usr/share",
        "/usr/share/doc",
        "/usr/share/doc/new.md",
        "/var",
    ];
    let got_paths: Vec<String> = tree.entries.keys().map(|p| p.to_string()).collect();
    assert_eq!(got_paths, want_paths);
    assert_eq!(
        recorded,
        want_paths.len() as u64 + 3,
        "entries plus 3 whiteouts"
    );
    for (path, entry) in &tree.entries {
        assert!(entry.exact, "{path} is not exact");
        let host = overlay.merged.join(&path.to_string()[1..]);
        let meta = fs::symlink_metadata(&host).unwrap();
        assert_eq!(entry.mode, meta.mode() & 0o7777, "mode of {path}");
        match &entry.kind {
            EntryKind::File { size } => {
                let data = store.read_content(entry.node, last).unwrap();
                assert_eq!(data, fs::read(&host).unwrap(), "bytes of {path}");
                assert_eq!(*size, data.len() as u64);
            }
            EntryKind::Symlink { target } => {
                assert_eq!(target, fs::read_link(&host).unwrap().as_os_str().as_bytes());
            }
            EntryKind::Dir => assert!(meta.is_dir(), "{path}"),
        }
    }
    let x = &tree.entries[&RecPath::normalize(b"/data/x.txt").unwrap()];
    let x_link = &tree.entries[&RecPath::normalize(b"/data/x-link").unwrap()];
    assert_eq!(x.node, x_link.node, "a hard link stays one node");

    // The removals the upper dir's whiteouts and opaque directory stand for, and the marker.
    let ops: Vec<(OpKind, String)> = store
        .summaries(1, last)
        .map(|s| s.unwrap())
        .map(|s| {
            let path =
                s.op.paths
                    .first()
                    .map(|p| p.to_string())
                    .unwrap_or_default();
            (s.op.kind, path)
        })
        .collect();
    for (kind, path) in [
        (OpKind::Unlink, "/etc/old.conf"),
        (OpKind::Rmdir, "/var/cache"),
        (OpKind::Rmdir, "/srv/www"),
        (OpKind::Rmdir, "/opt/app"),
        (OpKind::Rmdir, "/srv/site"),
    ] {
        assert!(
            ops.contains(&(kind, path.to_owned())),
            "no {kind} of {path} in {ops:?}"
        );
    }
    let rmdir_app = ops
        .iter()
        .position(|op| *op == (OpKind::Rmdir, "/opt/app".into()));
    let mkdir_app = ops
        .iter()
        .position(|op| *op == (OpKind::Mkdir, "/opt/app".into()));
    assert!(
        rmdir_app < mkdir_app,
        "the opaque dir is removed, then made"
    );
    let last_summary = store.summaries(last, last).next().unwrap().unwrap();
    assert_eq!(last_summary.op.marker, Some(MarkerKind::BaselineComplete));

    // The export laid over the image is the container's view, byte for byte.
    let layers = ImageLayers::new(overlay.lower.clone());
    let opts = ExportOptions::default();
    let out = tmp.path().join("export");
    let summary = export_store_dir(&store, last, Some(&layers), &out, &opts).unwrap();
    assert!(summary.skipped.is_empty(), "{:?}", summary.skipped);
    let merged = dir_view(&overlay.merged);
    assert!(merged.contains_key("etc/motd") && !merged.contains_key("etc/passwd"));
    assert_same("directory export", &dir_view(&out), &merged);

    drop(mounted);
}
