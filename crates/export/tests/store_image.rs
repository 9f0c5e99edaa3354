//! Exports straight from a real store, alone and laid over a fake container image (two real
//! lower dirs with a whiteout device and an opaque directory), and compares every exported
//! directory and tar stream, byte for byte, with the view the container had at that moment.
//! Needs root: whiteouts are device nodes and `trusted.` xattrs are privileged.

use diffkeeper_export::{
    export_store_dir, export_store_tar, ExportError, ExportOptions, ImageLayers,
};
use diffkeeper_store::{Event, MarkerKind, Op, RecPath, RecordingInfo, Seq, Store, Writer};
use rustix::fs::{FileType, Mode, XattrFlags, CWD};
use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

// ---------------------------------------------------------------------------------------------
// The view: what a tree holds, read back from a directory or a tar stream

/// One entry as compared: kind, permission bits, bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Node {
    Dir { mode: u32 },
    File { mode: u32, data: Vec<u8> },
    Symlink { target: Vec<u8> },
}

/// Paths relative to the tree's root (`etc/hosts`), as tar names them.
type View = BTreeMap<String, Node>;

fn dir_view(root: &Path) -> View {
    fn visit(root: &Path, dir: &Path, out: &mut View) {
        let mut names: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        for name in names {
            let path = dir.join(&name);
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned();
            let meta = fs::symlink_metadata(&path).unwrap();
            let mode = meta.mode() & 0o7777;
            let node = if meta.file_type().is_symlink() {
                let target = fs::read_link(&path).unwrap();
                Node::Symlink {
                    target: target.as_os_str().as_bytes().to_vec(),
                }
            } else if meta.is_dir() {
                visit(root, &path, out);
                Node::Dir { mode }
            } else if meta.is_file() {
                Node::File {
                    mode,
                    data: fs::read(&path).unwrap(),
                }
            } else {
                panic!(
                    "{} is neither a file, a directory nor a symlink",
                    path.display()
                );
            };
            out.insert(rel, node);
        }
    }
    let mut out = View::new();
    visit(root, root, &mut out);
    out
}

fn tar_view(bytes: &[u8]) -> View {
    let mut out = View::new();
    let mut archive = tar::Archive::new(bytes);
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = String::from_utf8(entry.path_bytes().to_vec()).unwrap();
        let name = name.trim_end_matches('/').to_owned();
        let mode = entry.header().mode().unwrap() & 0o7777;
        let node = match entry.header().entry_type() {
            tar::EntryType::Directory => Node::Dir { mode },
            tar::EntryType::Symlink => Node::Symlink {
                target: entry.link_name_bytes().unwrap().to_vec(),
            },
            tar::EntryType::Regular => {
                let mut data = Vec::new();
                entry.read_to_end(&mut data).unwrap();
                Node::File { mode, data }
            }
            other => panic!("unexpected tar entry type {other:?} for {name}"),
        };
        assert!(
            out.insert(name.clone(), node).is_none(),
            "{name} twice in the tar"
        );
    }
    out
}

/// Compares path by path, so a failure names the first differing path instead of dumping
/// megabytes of file contents.
fn assert_same(what: &str, got: &View, want: &View) {
    let got_paths: Vec<&String> = got.keys().collect();
    let want_paths: Vec<&String> = want.keys().collect();
    assert_eq!(got_paths, want_paths, "{what}: the paths differ");
    for (path, want_node) in want {
        let got_node = &got[path];
        if got_node != want_node {
            let short = |n: &Node| match n {
                Node::File { mode, data } if data.len() > 64 => {
                    format!("File {{ mode: {mode:o}, {} bytes }}", data.len())
                }
                other => format!("{other:?}"),
            };
            panic!(
                "{what}: {path} differs: got {}, want {}",
                short(got_node),
                short(want_node)
            );
        }
    }
}

fn dir(mode: u32) -> Node {
    Node::Dir { mode }
}

fn file(mode: u32, data: &[u8]) -> Node {
    Node::File {
        mode,
        data: data.to_vec(),
    }
}

fn symlink(target: &str) -> Node {
    Node::Symlink {
        target: target.as_bytes().to_vec(),
    }
}

/// Removes `path` and everything below it.
fn remove(view: &mut View, path: &str) {
    let below = format!("{path}/");
    view.retain(|p, _| p != path && !p.starts_with(&below));
}

/// Moves `from` and everything below it to `to`.
fn rename(view: &mut View, from: &str, to: &str) {
    let below = format!("{from}/");
    let moved: Vec<(String, Node)> = view
        .iter()
        .filter(|(p, _)| *p == from || p.starts_with(&below))
        .map(|(p, n)| (format!("{to}{}", &p[from.len()..]), n.clone()))
        .collect();
    remove(view, from);
    view.extend(moved);
}

// ---------------------------------------------------------------------------------------------
// The fake image: two lower layers, as a container runtime unpacks them

struct Layer(PathBuf);

impl Layer {
    /// The host path of `rel`, with its missing parents made (mode 0755 whatever the umask).
    fn at(&self, rel: &str) -> PathBuf {
        let path = self.0.join(rel);
        let mut parent = self.0.clone();
        fs::create_dir_all(&parent).unwrap();
        for component in Path::new(rel).parent().unwrap().components() {
            parent.push(component);
            if !parent.exists() {
                fs::create_dir(&parent).unwrap();
                fs::set_permissions(&parent, fs::Permissions::from_mode(0o755)).unwrap();
            }
        }
        path
    }
    fn dir(&self, rel: &str, mode: u32) -> &Self {
        let path = self.at(rel);
        if !path.exists() {
            fs::create_dir(&path).unwrap();
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        self
    }
    fn file(&self, rel: &str, mode: u32, data: &[u8]) -> &Self {
        let path = self.at(rel);
        fs::write(&path, data).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        self
    }
    fn symlink(&self, rel: &str, target: &str) -> &Self {
        let path = self.at(rel);
        std::os::unix::fs::symlink(target, &path).unwrap();
        self
    }
    /// Overlay's mark of a name removed in this layer: a character device 0/0.
    fn whiteout(&self, rel: &str) -> &Self {
        let path = self.at(rel);
        let dev = rustix::fs::makedev(0, 0);
        rustix::fs::mknodat(CWD, &path, FileType::CharacterDevice, Mode::empty(), dev)
            .expect("mknod of a whiteout (run the tests as root)");
        self
    }
    fn fifo(&self, rel: &str) -> &Self {
        let path = self.at(rel);
        rustix::fs::mknodat(CWD, &path, FileType::Fifo, Mode::from_raw_mode(0o644), 0).unwrap();
        self
    }
    /// Overlay's mark of a directory that hides the layers below it.
    fn opaque(&self, rel: &str) -> &Self {
        rustix::fs::setxattr(
            self.0.join(rel),
            "trusted.overlay.opaque",
            b"y",
            XattrFlags::empty(),
        )
        .expect("setting a trusted. xattr (run the tests as root)");
        self
    }
}

/// Large enough that streaming it (not holding it) matters, and not all one byte.
fn big_binary() -> Vec<u8> {
    (0..3 * 1024 * 1024 + 17u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect()
}

/// Two layers, topmost first in the returned list.
fn build_image(base: &Path) -> Vec<PathBuf> {
    let top = Layer(base.join("layer-top"));
    let bottom = Layer(base.join("layer-bottom"));
    bottom
        .dir("etc", 0o750)
        .file("etc/hosts", 0o644, b"127.0.0.1 bottom\n")
        .file("etc/old.conf", 0o644, b"old\n")
        .file("etc/keep.conf", 0o644, b"keep\n")
        .file("usr/bin/tool", 0o755, &big_binary())
        .file("usr/lib/libx.so", 0o644, b"libx")
        .symlink("lib", "usr/lib")
        .symlink("escape", "/etc")
        .file("opt/app/a.txt", 0o644, b"a")
        .file("opt/app/b.txt", 0o644, b"b")
        .file("var/cache/dir/f", 0o644, b"cached")
        .file("srv/www/index.html", 0o644, b"<html>")
        .file("srv/www/img/logo.png", 0o600, b"\x89PNG")
        .dir("srv/www", 0o750)
        .dir("data", 0o775)
        .fifo("run/fifo");
    top.dir("etc", 0o755)
        .whiteout("etc/old.conf")
        .file("etc/hosts", 0o600, b"127.0.0.1 top\n")
        .file("opt/app/c.txt", 0o644, b"c")
        .opaque("opt/app")
        .file("usr/bin/tool2", 0o755, b"tool2")
        .file("home/user/.profile", 0o644, b"profile");
    vec![top.0, bottom.0]
}

/// What the container sees of the image before changing anything.
fn image_view() -> View {
    let mut v = View::new();
    for (path, node) in [
        ("data", dir(0o775)),
        ("escape", symlink("/etc")),
        ("etc", dir(0o755)),
        ("etc/hosts", file(0o600, b"127.0.0.1 top\n")),
        ("etc/keep.conf", file(0o644, b"keep\n")),
        ("home", dir(0o755)),
        ("home/user", dir(0o755)),
        ("home/user/.profile", file(0o644, b"profile")),
        ("lib", symlink("usr/lib")),
        ("opt", dir(0o755)),
        ("opt/app", dir(0o755)),
        ("opt/app/c.txt", file(0o644, b"c")),
        ("run", dir(0o755)),
        ("srv", dir(0o755)),
        ("srv/www", dir(0o750)),
        ("srv/www/img", dir(0o755)),
        ("srv/www/img/logo.png", file(0o600, b"\x89PNG")),
        ("srv/www/index.html", file(0o644, b"<html>")),
        ("usr", dir(0o755)),
        ("usr/bin", dir(0o755)),
        ("usr/bin/tool", file(0o755, &big_binary())),
        ("usr/bin/tool2", file(0o755, b"tool2")),
        ("usr/lib", dir(0o755)),
        ("usr/lib/libx.so", file(0o644, b"libx")),
        ("var", dir(0o755)),
        ("var/cache", dir(0o755)),
        ("var/cache/dir", dir(0o755)),
        ("var/cache/dir/f", file(0o644, b"cached")),
    ] {
        v.insert(path.to_owned(), node);
    }
    v
}

// ---------------------------------------------------------------------------------------------
// The recording: what the recorder writes for a container on that image

fn rp(s: &str) -> RecPath {
    RecPath::normalize(s.as_bytes()).unwrap()
}

struct Recording {
    writer: Writer,
    time: u64,
}

impl Recording {
    fn op(&mut self, op: Op) -> Seq {
        self.time += 1_000;
        let event = Event {
            time: self.time,
            process: None,
            op,
        };
        self.writer.append(event).unwrap()
    }
    fn mkdir(&mut self, path: &str, mode: u32) -> Seq {
        let node = self.writer.new_node();
        self.op(Op::Mkdir {
            node,
            path: rp(path),
            mode,
        })
    }
    fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> Seq {
        let node = self.writer.new_node();
        self.op(Op::Create {
            node,
            path: rp(path),
            mode,
        });
        self.op(Op::Write {
            node,
            offset: 0,
            data: data.to_vec(),
        })
    }
    fn unlink(&mut self, path: &str) -> Seq {
        self.op(Op::Unlink { path: rp(path) })
    }
    fn rmdir(&mut self, path: &str) -> Seq {
        self.op(Op::Rmdir { path: rp(path) })
    }
}

/// Moments of the recording and the view the container had at each.
struct Moments {
    checks: Vec<(&'static str, Seq, View)>,
}

fn record(state: &Path) -> Moments {
    let info = RecordingInfo {
        started_mono_ns: 0,
        started_wall_ns: 1_700_000_000_000_000_000,
        ..Default::default()
    };
    let mut r = Recording {
        writer: Writer::create(state, info).unwrap(),
        time: 0,
    };
    let mut view = image_view();
    let mut checks = vec![("the image alone, before any event", 0, view.clone())];

    // The baseline the agent takes at attach: a copied-up directory alone (its image children
    // stay in the image), a changed image file, and a whiteout of an image file.
    r.mkdir("/etc", 0o755);
    r.file("/etc/hosts", 0o644, b"127.0.0.1 changed\n");
    view.insert("etc/hosts".into(), file(0o644, b"127.0.0.1 changed\n"));
    r.unlink("/etc/keep.conf");
    remove(&mut view, "etc/keep.conf");
    let seq = r.op(Op::Marker {
        kind: MarkerKind::BaselineComplete,
        detail: "baseline".into(),
    });
    checks.push(("after the baseline", seq, view.clone()));

    // A new file in an image directory the store never saw (so it has it as an implicit
    // parent), and a removed image directory.
    r.file("/data/new.txt", 0o640, b"new file\n");
    view.insert("data/new.txt".into(), file(0o640, b"new file\n"));
    let seq = r.rmdir("/var/cache/dir");
    remove(&mut view, "var/cache/dir");
    checks.push((
        "after a new file and a removed image dir",
        seq,
        view.clone(),
    ));

    // A renamed image directory: the store cannot move what it never saw; the recorder records
    // the directory again at its new name.
    r.op(Op::Rename {
        from: rp("/srv/www"),
        to: rp("/srv/site"),
    });
    r.mkdir("/srv/site", 0o750);
    r.file("/srv/site/index.html", 0o644, b"<html>");
    r.mkdir("/srv/site/img", 0o755);
    let seq = r.file("/srv/site/img/logo.png", 0o600, b"\x89PNG");
    rename(&mut view, "srv/www", "srv/site");
    checks.push(("after renaming an image dir", seq, view.clone()));

    // The removed image directory made again holds only what is new in it, and a directory the
    // recorder found opaque (Rmdir, then the directory whole) hides the image's content below.
    r.mkdir("/var/cache/dir", 0o700);
    r.file("/var/cache/dir/g", 0o644, b"g");
    view.insert("var/cache/dir".into(), dir(0o700));
    view.insert("var/cache/dir/g".into(), file(0o644, b"g"));
    r.rmdir("/opt/app");
    r.mkdir("/opt/app", 0o711);
    r.file("/opt/app/new", 0o644, b"fresh");
    remove(&mut view, "opt/app");
    view.insert("opt/app".into(), dir(0o711));
    view.insert("opt/app/new".into(), file(0o644, b"fresh"));
    // An image file replaced by a recorded symlink, and an image symlink by a recorded file.
    r.unlink("/usr/bin/tool2");
    r.op(Op::Symlink {
        node: 10_000,
        path: rp("/usr/bin/tool2"),
        target: b"tool".to_vec(),
    });
    view.insert("usr/bin/tool2".into(), symlink("tool"));
    r.unlink("/lib");
    let seq = r.file("/lib", 0o600, b"not a link any more");
    view.insert("lib".into(), file(0o600, b"not a link any more"));
    checks.push(("after re-creating removed paths", seq, view.clone()));

    let end = r.time + 1;
    r.writer.finish(end).unwrap();
    Moments { checks }
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn exports_the_image_under_the_recording_at_every_moment() {
    let tmp = tempfile::tempdir().unwrap();
    let layers = ImageLayers::new(build_image(tmp.path()));
    let moments = record(&tmp.path().join("state"));
    let store = Store::open(&tmp.path().join("state")).unwrap();
    let opts = ExportOptions::default();

    for (i, (what, seq, want)) in moments.checks.iter().enumerate() {
        let out = tmp.path().join(format!("out-{i}"));
        let summary = export_store_dir(&store, *seq, Some(&layers), &out, &opts).unwrap();
        assert!(summary.skipped.is_empty(), "{what}: {:?}", summary.skipped);
        assert!(summary.inexact.is_empty(), "{what}: {:?}", summary.inexact);
        assert_same(&format!("dir @seq:{seq} ({what})"), &dir_view(&out), want);

        let mut tar = Vec::new();
        let tar_summary = export_store_tar(&store, *seq, Some(&layers), &mut tar, &opts).unwrap();
        assert_eq!(tar_summary, summary, "{what}: tar and dir exports differ");
        assert_same(&format!("tar @seq:{seq} ({what})"), &tar_view(&tar), want);

        let files = want
            .values()
            .filter(|n| matches!(n, Node::File { .. }))
            .count();
        assert_eq!(summary.files, files as u64, "{what}");
    }
}

#[test]
fn without_the_image_exports_the_recorded_tree_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let moments = record(&tmp.path().join("state"));
    let store = Store::open(&tmp.path().join("state")).unwrap();
    let (_, seq, _) = moments.checks.last().unwrap();
    let tree = store.tree_at(*seq).unwrap();
    let opts = ExportOptions::default();

    let out = tmp.path().join("out");
    export_store_dir(&store, *seq, None, &out, &opts).unwrap();
    let exported = dir_view(&out);
    let recorded: Vec<String> = tree
        .entries
        .keys()
        .map(|p| p.to_string()[1..].to_owned())
        .collect();
    assert_eq!(exported.keys().cloned().collect::<Vec<_>>(), recorded);
    assert_eq!(exported["srv/site/index.html"], file(0o644, b"<html>"));
    assert!(
        !exported.contains_key("usr/bin/tool"),
        "an image file leaked in"
    );

    // No layers at all is the same as no image.
    let mut with_none = Vec::new();
    let mut with_empty = Vec::new();
    export_store_tar(&store, *seq, None, &mut with_none, &opts).unwrap();
    let empty = ImageLayers::new(Vec::new());
    assert!(empty.is_empty());
    export_store_tar(&store, *seq, Some(&empty), &mut with_empty, &opts).unwrap();
    assert_eq!(with_none, with_empty);
}

#[test]
fn a_missing_lower_dir_is_an_error_that_names_it() {
    let tmp = tempfile::tempdir().unwrap();
    let mut lower = build_image(tmp.path());
    let gone = tmp.path().join("garbage-collected");
    lower.insert(1, gone.clone());
    let layers = ImageLayers::new(lower);
    let moments = record(&tmp.path().join("state"));
    let store = Store::open(&tmp.path().join("state")).unwrap();
    let (_, seq, _) = moments.checks.last().unwrap();

    let out = tmp.path().join("out");
    let err =
        export_store_dir(&store, *seq, Some(&layers), &out, &ExportOptions::default()).unwrap_err();
    match &err {
        ExportError::ImageLayerMissing { path } => assert_eq!(path, &gone),
        other => panic!("expected ImageLayerMissing, got {other:?}"),
    }
    let message = err.to_string();
    assert!(message.contains(gone.to_str().unwrap()), "{message}");
    assert!(message.contains("--tree changes"), "{message}");
    assert!(!out.exists(), "nothing is created when the image is gone");

    let mut tar = Vec::new();
    let err = export_store_tar(
        &store,
        *seq,
        Some(&layers),
        &mut tar,
        &ExportOptions::default(),
    )
    .unwrap_err();
    assert!(
        matches!(err, ExportError::ImageLayerMissing { .. }),
        "{err:?}"
    );
    assert!(tar.is_empty(), "no partial archive when the image is gone");
}

#[test]
fn a_moment_beyond_the_recording_is_a_store_error() {
    let tmp = tempfile::tempdir().unwrap();
    let layers = ImageLayers::new(build_image(tmp.path()));
    record(&tmp.path().join("state"));
    let store = Store::open(&tmp.path().join("state")).unwrap();
    let beyond = store.span().last_seq + 5;
    let err = export_store_tar(
        &store,
        beyond,
        Some(&layers),
        Vec::new(),
        &ExportOptions::default(),
    )
    .unwrap_err();
    assert!(
        matches!(err, ExportError::Store { seq, .. } if seq == beyond),
        "{err:?}"
    );
    assert!(err.to_string().contains(&format!("@seq:{beyond}")), "{err}");
}
