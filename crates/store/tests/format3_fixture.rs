//! Stores written by older builds must keep reading byte-exactly. `fixtures/format3` is a small
//! recording written by the format-3 store (commit "Format-3 fixture store", before format 4
//! moved payloads into segment files), and `fixtures/format3.manifest` the sha256 of every
//! file and symlink target at chosen moments, computed from the workload itself (not read back).
//!
//! `write_fixture` (ignored) is the program that made it; it is kept to show what the fixture
//! holds: run with a format-3 build only, as
//! `DK_FIXTURE_OUT=DIR cargo test -p diffkeeper-store --test format3_fixture -- --ignored --exact write_fixture`.

use diffkeeper_store::{
    EntryKind, Event, Op, RecPath, RecordingInfo, Seq, Store, Target, Writer, WriterOptions,
};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const FIXTURE: &str = "format3";
const MONO0: u64 = 5_000_000_000;

fn path(s: &str) -> RecPath {
    RecPath::normalize(s.as_bytes()).unwrap()
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Text that compresses like a log and never repeats exactly.
fn lines(seed: u64, bytes: usize) -> Vec<u8> {
    let mut state = seed;
    let mut out = Vec::with_capacity(bytes + 64);
    while out.len() < bytes {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let n = state >> 33;
        out.extend_from_slice(
            format!("line {} id={} took {}us\n", out.len(), n, n % 977).as_bytes(),
        );
    }
    out.truncate(bytes);
    out
}

fn sha_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What the tree holds at a moment: path -> sha256 of the content (files) or target (symlinks).
type Moment = BTreeMap<String, String>;

/// Plays the workload into `w`, returning the expected content right after each commit.
struct Workload<'a> {
    w: &'a mut Writer,
    time: u64,
    files: BTreeMap<String, Vec<u8>>,
    links: BTreeMap<String, Vec<u8>>,
    moments: Vec<(Seq, Moment)>,
}

impl Workload<'_> {
    fn append(&mut self, op: Op) {
        self.time += 1_000;
        self.w
            .append(Event {
                time: self.time,
                process: None,
                op,
            })
            .unwrap();
    }

    fn write(&mut self, name: &str, offset: u64, data: Vec<u8>) {
        let node = self.w.node_at(&path(name)).unwrap();
        let content = self.files.get_mut(name).unwrap();
        let end = offset as usize + data.len();
        if content.len() < end {
            content.resize(end, 0);
        }
        content[offset as usize..end].copy_from_slice(&data);
        self.append(Op::Write { node, offset, data });
    }

    fn create(&mut self, name: &str) {
        let node = self.w.new_node();
        self.files.insert(name.into(), Vec::new());
        self.append(Op::Create {
            node,
            path: path(name),
            mode: 0o644,
        });
    }

    fn truncate(&mut self, name: &str, size: u64) {
        self.files.get_mut(name).unwrap().resize(size as usize, 0);
        self.append(Op::Truncate {
            target: Target::Path(path(name)),
            size,
        });
    }

    fn commit(&mut self) {
        self.w.commit().unwrap();
        let mut moment = Moment::new();
        for (name, content) in &self.files {
            moment.insert(name.clone(), sha_hex(content));
        }
        for (name, target) in &self.links {
            moment.insert(name.clone(), sha_hex(target));
        }
        self.moments.push((self.w.stats().committed_seq, moment));
    }

    fn run(&mut self) {
        let dir = self.w.new_node();
        self.append(Op::Mkdir {
            node: dir,
            path: path("/d"),
            mode: 0o755,
        });
        self.create("/d/a");
        for i in 0..4u64 {
            self.write("/d/a", i * 3000, lines(i, 3000));
        }
        self.create("/d/b");
        self.write("/d/b", 0, lines(10, 9000));
        self.commit();
        // Many small writes past the keyframe thresholds: /d/a gets keyframes (whole, then patches).
        for i in 0..60u64 {
            self.write("/d/a", (i * 701) % 14_000, lines(100 + i, 200));
            if i % 20 == 19 {
                self.commit();
            }
        }
        // A rewrite after truncate: stored as a delta against /d/b's previous version.
        self.truncate("/d/b", 0);
        let mut again = self.files_before_truncate_b();
        again[4000..4010].copy_from_slice(b"CHANGED!!\n");
        self.write("/d/b", 0, again);
        self.commit();
        let from = path("/d/a");
        let to = path("/d/c");
        let content = self.files.remove("/d/a").unwrap();
        self.files.insert("/d/c".into(), content);
        self.append(Op::Rename { from, to });
        self.commit();
        self.files.remove("/d/b");
        self.append(Op::Unlink { path: path("/d/b") });
        let link = self.w.new_node();
        self.links.insert("/d/l".into(), b"c".to_vec());
        self.append(Op::Symlink {
            node: link,
            path: path("/d/l"),
            target: b"c".to_vec(),
        });
        self.write("/d/c", 20_000, lines(999, 1500));
        self.commit();
        self.truncate("/d/c", 5000);
        self.commit();
    }

    /// /d/b's first version, which the rewrite after its truncate mostly repeats.
    fn files_before_truncate_b(&self) -> Vec<u8> {
        lines(10, 9000)
    }
}

fn options() -> WriterOptions {
    WriterOptions {
        keyframe_min_bytes: 2048,
        keyframe_size_factor: 1,
        keyframe_min_ops: 8,
        keyframe_bytes_per_op: 1 << 20,
        full_keyframe_every: 3,
        checkpoint_min_events: 40,
        ..WriterOptions::default()
    }
}

fn render_manifest(moments: &[(Seq, Moment)]) -> String {
    let mut out = String::new();
    for (seq, moment) in moments {
        out.push_str(&format!("@seq:{seq}\n"));
        for (name, sha) in moment {
            out.push_str(&format!("{name} {sha}\n"));
        }
    }
    out
}

fn parse_manifest(text: &str) -> Vec<(Seq, Moment)> {
    let mut out: Vec<(Seq, Moment)> = Vec::new();
    for line in text.lines() {
        if let Some(seq) = line.strip_prefix("@seq:") {
            out.push((seq.parse().unwrap(), Moment::new()));
        } else {
            let (name, sha) = line.split_once(' ').unwrap();
            out.last_mut().unwrap().1.insert(name.into(), sha.into());
        }
    }
    out
}

#[test]
#[ignore = "writes the fixture; only meaningful with a format-3 build"]
fn write_fixture() {
    let out = PathBuf::from(std::env::var("DK_FIXTURE_OUT").expect("DK_FIXTURE_OUT=DIR"));
    let dir = out.join(FIXTURE);
    let info = RecordingInfo {
        command: vec!["fixture".into()],
        started_wall_ns: 1_790_000_000_000_000_000,
        started_mono_ns: MONO0,
        hostname: "fixture".into(),
        labels: Default::default(),
    };
    let mut w = Writer::create_with(&dir, info, options()).unwrap();
    let mut load = Workload {
        w: &mut w,
        time: MONO0,
        files: BTreeMap::new(),
        links: BTreeMap::new(),
        moments: Vec::new(),
    };
    load.run();
    let moments = std::mem::take(&mut load.moments);
    let end = load.time + 1;
    w.finish(end).unwrap();
    std::fs::remove_file(dir.join("LOCK")).unwrap();
    std::fs::write(
        out.join(format!("{FIXTURE}.manifest")),
        render_manifest(&moments),
    )
    .unwrap();
}

/// A private copy: opening takes the dir's lock and may let the database tidy its files.
fn copy_fixture(to: &Path) -> PathBuf {
    let copy = to.join(FIXTURE);
    copy_tree(&fixtures().join(FIXTURE), &copy);
    copy
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn moments() -> Vec<(Seq, Moment)> {
    let text = std::fs::read_to_string(fixtures().join(format!("{FIXTURE}.manifest"))).unwrap();
    let moments = parse_manifest(&text);
    assert!(
        moments.len() >= 5,
        "the manifest lists {} moments",
        moments.len()
    );
    moments
}

fn check_moments(store: &Store, moments: &[(Seq, Moment)]) {
    for (seq, expected) in moments {
        let tree = store.tree_at(*seq).unwrap();
        let mut found = Moment::new();
        for (name, entry) in &tree.entries {
            let bytes = match &entry.kind {
                EntryKind::File { .. } => store.read_content(entry.node, *seq).unwrap(),
                EntryKind::Symlink { target } => target.clone(),
                EntryKind::Dir => continue,
            };
            found.insert(name.to_string(), sha_hex(&bytes));
        }
        assert_eq!(&found, expected, "the tree at @seq:{seq}");
    }
}

#[test]
fn format3_store_reads_every_moment() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_fixture(tmp.path());
    let moments = moments();
    let store = Store::open(&dir).unwrap();
    assert!(store.span().finished);
    assert_eq!(store.span().last_seq, moments.last().unwrap().0);
    check_moments(&store, &moments);
}

/// A format-3 store resumed by this build mixes both formats' records: the old moments still
/// read, and what the new writer adds reads too.
#[test]
fn format3_store_resumes_and_keeps_its_old_moments() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_fixture(tmp.path());
    let moments = moments();
    let last = moments.last().unwrap().0;
    let mut w = Writer::resume_with(&dir, options()).unwrap();
    assert_eq!(w.stats().committed_seq, last);
    let node = w.node_at(&path("/d/c")).unwrap();
    let mut expected = {
        let store = w.reader().unwrap();
        store.read_content(node, last).unwrap()
    };
    let mut time = MONO0 + 10_000_000;
    for i in 0..30u64 {
        let data = lines(500 + i, 700);
        let offset = i * 300;
        let end = offset as usize + data.len();
        if expected.len() < end {
            expected.resize(end, 0);
        }
        expected[offset as usize..end].copy_from_slice(&data);
        time += 1_000;
        w.append(Event {
            time,
            process: None,
            op: Op::Write { node, offset, data },
        })
        .unwrap();
        if i % 10 == 9 {
            w.commit().unwrap();
        }
    }
    // New small files: their records are grouped (format 6) beside the fixture's own.
    let mut new_files = Vec::new();
    for i in 0..3u64 {
        let file = w.new_node();
        let data = lines(900 + i, 50 + 40 * i as usize);
        for op in [
            Op::Create {
                node: file,
                path: path(&format!("/new/{i}")),
                mode: 0o644,
            },
            Op::Write {
                node: file,
                offset: 0,
                data: data.clone(),
            },
        ] {
            time += 1_000;
            w.append(Event {
                time,
                process: None,
                op,
            })
            .unwrap();
        }
        new_files.push((file, data));
    }
    w.commit().unwrap();
    // New keyframes, some of them patches on the fixture's format-3 keyframes.
    assert!(
        w.stats().keyframes > 0,
        "no keyframe was written after resume"
    );
    w.finish(time + 1).unwrap();
    assert!(
        dir.join("segments").is_dir(),
        "the new data went to segments"
    );
    let store = Store::open(&dir).unwrap();
    check_moments(&store, &moments);
    let end = store.span().last_seq;
    assert_eq!(store.read_content(node, end).unwrap(), expected);
    for (file, data) in new_files {
        assert_eq!(store.read_content(file, end).unwrap(), data);
    }
}
