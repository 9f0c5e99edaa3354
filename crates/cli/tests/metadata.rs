//! Metadata differential test on the real kernel, with real programs nobody here wrote: GNU
//! sed, cp, install, chown, chgrp, touch, tar, setfacl, rsync, git and pip change files, part of the
//! run as an unprivileged user, and at quiescent checkpoints the workload writes a manifest of
//! `lstat` results (the ground truth). The export at each checkpoint's moment must have the
//! same entries with the same type, bytes, symlink target, permission bits, owner and kept
//! extended attributes (user.*, security.capability, ACLs).
//!
//! mtimes are compared where they are well defined:
//! - an mtime from before the recording began can only be there because something set it
//!   explicitly (touch -d, tar, cp -p, rsync -a, utime) or it came with the baseline: it must be
//!   equal to the nanosecond, for files, symlinks and directories alike;
//! - an mtime the kernel set itself during the run (a write, a creation, a name added to or
//!   removed from a directory) is the moment of the last recorded change: it must be within a
//!   second of it, for files, symlinks and directories alike.
//!
//! Needs root and a BTF kernel, as CI has; without them the test fails (it does not skip).

mod command;

use serde_json::Value;
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const DK: &str = env!("CARGO_BIN_EXE_diffkeeper");
/// The unprivileged user and groups part of the workload runs as.
const USER: u32 = 1000;
const GROUP: u32 = 1000;

/// Prints a JSON manifest of everything below argv[1]: relative path -> [kind, mode, uid, gid,
/// mtime_ns, bytes or link target as hex, the kept xattrs (user.*, security.capability, ACLs)
/// as hex].
const MANIFEST: &str = r#"
import json, os, stat, sys
root = sys.argv[1]
out = {}
for dirpath, dirs, files in os.walk(root):
    for name in dirs + files:
        p = os.path.join(dirpath, name)
        st = os.lstat(p)
        if stat.S_ISLNK(st.st_mode):
            kind, data = "l", os.readlink(p).encode().hex()
        elif stat.S_ISDIR(st.st_mode):
            kind, data = "d", ""
        else:
            with open(p, "rb") as f:
                kind, data = "f", f.read().hex()
        kept = {}
        if kind != "l":
            for x in os.listxattr(p):
                if x.startswith("user.") or x in ("security.capability",
                        "system.posix_acl_access", "system.posix_acl_default"):
                    kept[x] = os.getxattr(p, x).hex()
        out[os.path.relpath(p, root)] = [kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                                         st.st_mtime_ns, data, kept]
json.dump(out, sys.stdout, sort_keys=True)
"#;

/// The workload: $1 = the work dir (recorded and compared), $2 = sources outside it, $3 = marks,
/// $4 = where manifests go, $5 = the manifest script. Checkpoint N creates marks/cpN (its
/// create event is the moment) and then writes truth/N.json; nothing is open for writing then.
const WORKLOAD: &str = r#"
set -eu
work=$1 src=$2 marks=$3 truth=$4 manifest=$5
n=0
checkpoint() {
    : > "$marks/cp$n"
    python3 "$manifest" "$work" > "$truth/$n.json"
    n=$((n + 1))
}
as_user() { setpriv --reuid=1000 --regid=1000 --clear-groups -- "$@"; }
cd "$work"
checkpoint                                             # 0: the baseline alone

# Modes set through ACL xattrs (cp -p, sed -i), owners set by install, chown and chgrp, times
# set by touch and cp -p.
sed -i 's/baseline/edited by sed/' owned.txt           # a new inode: keeps owner and mode
cp -p "$src/plain.txt" cp-p.txt
cp -a "$src/tree" tree-a
install -m 0750 -o 1000 -g 1000 "$src/plain.txt" installed
: > chowned; chown 1000:1000 chowned
: > chgrped; chgrp 1000 chgrped
touch -d '2001-02-03 04:05:06.123456789' touched
ln -s owned.txt link-root; chown -h 1000:1000 link-root
mkdir grows
checkpoint                                             # 1

# A name added well after the directory was made moves its mtime by more than the tolerance.
sleep 1.5; : > grows/added

# GNU tar fixes directory modes with open(O_PATH) + chmod("/proc/self/fd/N"); setfacl writes
# system.posix_acl_access by path.
mkdir untar; tar -x -p -f "$src/archive.tar" -C untar
: > acl-min; setfacl -m u::rwx,g::r-x,o::- acl-min
: > acl-ext; chmod 0600 acl-ext; setfacl -m u:1000:rw acl-ext
rsync -a "$src/tree/" rsynced/
checkpoint                                             # 2

git init -q repo
git -C repo -c user.name=t -c user.email=t@t commit -q --allow-empty -m root
git -C repo checkout -q -b feature
printf '#!/bin/sh\necho hi\n' > repo/run.sh; chmod 0755 repo/run.sh
echo one > repo/data.txt
git -C repo add -A
git -C repo -c user.name=t -c user.email=t@t commit -q -m feature
git -C repo checkout -q master
git -C repo checkout -q feature -- run.sh
# pip unpacks a wheel (offline, a local one) and sets its scripts' modes as the archive says.
python3 -m pip install -q --no-index --no-deps --disable-pip-version-check \
    --target site "$src/dkdemo-1.0-py3-none-any.whl"
checkpoint                                             # 3

# An unprivileged user: what it creates is owned by it.
mkdir userdir; chown 1000:1000 userdir
as_user sh -c '
    cd userdir
    echo mine > mine.txt
    mkdir sub; chmod 0711 sub
    ln -s mine.txt mine-link
    cp -p mine.txt mine-copy
    touch -d "1999-12-31 23:59:59" old.txt
    sed -i "s/mine/still mine/" mine.txt
    install -m 0604 mine.txt sub/installed
'
checkpoint                                             # 4

# The syscalls directly: lchown, fchown, chmod through /proc/self/fd and /proc/PID/fd of an
# O_PATH descriptor, fchmodat2 and fchownat on one (AT_EMPTY_PATH), chown by path, utime by
# path and by descriptor.
python3 - <<'EOF'
import os
os.symlink("owned.txt", "py-link")
os.chown("py-link", 1000, 1000, follow_symlinks=False)
fd = os.open("py-fchown", os.O_WRONLY | os.O_CREAT, 0o644)
os.write(fd, b"owned through a descriptor\n")
os.fchown(fd, 1000, 1000)
os.utime(fd, ns=(1_000_000_000, 1_234_567_890_123_456_789))
os.close(fd)
os.mkdir("py-dir", 0o755)
fd = os.open("py-dir", os.O_PATH)
os.chmod("/proc/self/fd/%d" % fd, 0o750)
os.close(fd)
with open("py-pid", "w") as f:
    f.write("chmod through /proc/PID/fd\n")
fd = os.open("py-pid", os.O_PATH)
os.chmod("/proc/%d/fd/%d" % (os.getpid(), fd), 0o640)
os.close(fd)
os.utime("owned.txt", ns=(2_000_000_000, 1_500_000_000_000_000_007))
import ctypes                                  # fchmodat2 and fchownat with AT_EMPTY_PATH
libc = ctypes.CDLL(None, use_errno=True)
AT_EMPTY_PATH, NR_fchownat, NR_fchmodat2 = 0x1000, 260, 452
os.mkdir("empty-path", 0o755)
fd = os.open("empty-path", os.O_PATH)
assert libc.syscall(NR_fchmodat2, fd, b"", 0o705, AT_EMPTY_PATH) == 0, ctypes.get_errno()
assert libc.syscall(NR_fchownat, fd, b"", 1000, 1000, AT_EMPTY_PATH) == 0, ctypes.get_errno()
os.close(fd)
os.chown("chgrped", -1, 1000)
os.chown("chowned", 0, 0)
os.setxattr("owned.txt", "user.note", b"by path")                  # setxattr
os.setxattr("owned.txt", "user.gone", b"soon")
os.removexattr("owned.txt", "user.gone")                           # removexattr
fd = os.open("py-fchown", os.O_RDONLY)
os.setxattr(fd, "user.binary", bytes(range(256)) * 2)              # fsetxattr, 512 bytes
os.close(fd)
EOF
checkpoint                                             # 5
"#;

struct Layout {
    work: PathBuf,
    src: PathBuf,
    marks: PathBuf,
    truth: PathBuf,
    state: PathBuf,
    script: PathBuf,
    manifest: PathBuf,
}

fn sh(cmd: &str) {
    let st = Command::new("sh").arg("-ec").arg(cmd).status().unwrap();
    assert!(st.success(), "setup failed: {cmd}");
}

fn layout(tmp: &Path) -> Layout {
    let l = Layout {
        work: tmp.join("work"),
        src: tmp.join("src"),
        marks: tmp.join("marks"),
        truth: tmp.join("truth"),
        state: tmp.join("state"),
        script: tmp.join("workload.sh"),
        manifest: tmp.join("manifest.py"),
    };
    for d in [&l.work, &l.src, &l.marks, &l.truth] {
        fs::create_dir_all(d).unwrap();
    }
    // The unprivileged user must reach the work dir.
    fs::set_permissions(tmp, fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(&l.script, WORKLOAD).unwrap();
    fs::write(&l.manifest, MANIFEST).unwrap();
    // The baseline: a file owned by the user with an old mtime and an unusual mode.
    sh(&format!(
        "cd {work}
         echo 'baseline text' > owned.txt
         chown {USER}:{GROUP} owned.txt; chmod 0640 owned.txt
         touch -d '2010-01-01 00:00:00.5' owned.txt
         cd {src}
         echo plain > plain.txt; chmod 0604 plain.txt; chown {USER}:{GROUP} plain.txt
         touch -d '2011-05-05 05:05:05' plain.txt
         mkdir -p tree/a/b
         echo deep > tree/a/b/deep.txt; chmod 0751 tree/a
         ln -s a/b/deep.txt tree/link
         python3 -c 'import os; os.setxattr(\"tree/a/b/deep.txt\", \"user.origin\", b\"src\")'
         chown -R {USER}:{GROUP} tree; chown -h 0:0 tree/link
         touch -h -d '2012-06-06 06:06:06' tree/link
         touch -d '2012-06-06 06:06:06' tree/a/b/deep.txt tree/a/b tree/a tree
         mkdir -p t/top/inner; echo in > t/top/inner/f; chmod 0700 t/top/inner; chmod 0750 t/top
         chown -R {USER}:{GROUP} t/top
         touch -d '2013-07-07 07:07:07' t/top/inner/f t/top/inner t/top
         tar -c -f archive.tar -C t top
         python3 -c {wheel}",
        work = l.work.display(),
        src = l.src.display(),
        wheel = shell_quoted(WHEEL),
    ));
    l
}

/// Writes dkdemo-1.0-py3-none-any.whl in the current dir: a wheel made by hand (no network
/// here to fetch one), with an executable file whose mode pip must restore.
const WHEEL: &str = r##"
import base64, hashlib, zipfile
files = {
    "dkdemo/__init__.py": (b"VALUE = 1\n", 0o644),
    "dkdemo/tool.sh": (b"#!/bin/sh\necho tool\n", 0o755),
    "dkdemo-1.0.dist-info/METADATA": (b"Metadata-Version: 2.1\nName: dkdemo\nVersion: 1.0\n", 0o644),
    "dkdemo-1.0.dist-info/WHEEL": (b"Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\nTag: py3-none-any\n", 0o644),
}
record = ""
for name, (data, _) in files.items():
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    record += "%s,sha256=%s,%d\n" % (name, digest, len(data))
record += "dkdemo-1.0.dist-info/RECORD,,\n"
files["dkdemo-1.0.dist-info/RECORD"] = (record.encode(), 0o644)
with zipfile.ZipFile("dkdemo-1.0-py3-none-any.whl", "w") as whl:
    for name, (data, mode) in files.items():
        info = zipfile.ZipInfo(name, (2020, 1, 1, 0, 0, 0))
        info.external_attr = (0o100000 | mode) << 16
        whl.writestr(info, data)
"##;

/// `s` as one single-quoted shell word.
fn shell_quoted(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The moment of checkpoint N: the seq of the create event of marks/cpN.
fn checkpoint_seqs(l: &Layout) -> Vec<u64> {
    command::checkpoint_seqs(&l.state, &l.marks)
}

fn manifest(l: &Layout, dir: &Path) -> BTreeMap<String, Value> {
    let out = Command::new("python3")
        .arg(&l.manifest)
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// What differs between a ground-truth entry and an exported one, under the rules above.
fn differences(want: &Value, got: &Value, started_ns: i128) -> Vec<String> {
    const NAMES: [&str; 7] = ["kind", "mode", "uid", "gid", "mtime", "bytes", "xattrs"];
    let mut out = Vec::new();
    for (i, name) in NAMES.iter().enumerate() {
        if i == 4 {
            continue;
        }
        if want[i] != got[i] {
            let (w, g) = if i == 1 {
                (
                    format!("{:o}", want[i].as_u64().unwrap()),
                    format!("{:o}", got[i].as_u64().unwrap()),
                )
            } else {
                (short(&want[i]), short(&got[i]))
            };
            out.push(format!("{name}: want {w}, got {g}"));
        }
    }
    let mtime = |v: &Value| i128::from(v[4].as_i64().unwrap());
    let (w, g) = (mtime(want), mtime(got));
    let explicit = w < started_ns;
    let ok = if explicit {
        w == g
    } else {
        (w - g).abs() <= 1_000_000_000
    };
    if !ok {
        out.push(format!(
            "mtime: want {w}, got {g} ({})",
            if explicit {
                "set explicitly"
            } else {
                "a write's"
            }
        ));
    }
    out
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 60 {
        format!("{}..", &s[..60])
    } else {
        s
    }
}

#[test]
fn real_tools_metadata_is_exact_at_every_checkpoint() {
    metadata_is_exact_at_every_checkpoint("raw");
}

// The metadata syscalls at the other attach point (see differential.rs).
#[test]
fn real_tools_metadata_is_exact_at_every_checkpoint_with_syscall_tracepoints() {
    metadata_is_exact_at_every_checkpoint("syscalls");
}

fn metadata_is_exact_at_every_checkpoint(attach_point: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let l = layout(tmp.path());
    let started_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i128;
    let out = command::record_command(
        &l.state,
        &l.work,
        &[&format!("--attach-point={attach_point}")],
        &[
            "sh".as_ref(),
            l.script.as_os_str(),
            l.work.as_os_str(),
            l.src.as_os_str(),
            l.marks.as_os_str(),
            l.truth.as_os_str(),
            l.manifest.as_os_str(),
        ],
    );
    assert!(
        out.status.success(),
        "the workload failed: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );

    let seqs = checkpoint_seqs(&l);
    assert_eq!(seqs.len(), 6, "all six checkpoints are in the log");
    let mut problems = Vec::new();
    for (n, seq) in seqs.iter().enumerate() {
        let exported = tmp.path().join(format!("export-{n}"));
        let st = Command::new(DK)
            .arg("export")
            .arg(format!("--state-dir={}", l.state.display()))
            .arg(format!("--out={}", exported.display()))
            .arg(format!("--time=@seq:{seq}"))
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "export at checkpoint {n}: {}",
            String::from_utf8_lossy(&st.stderr)
        );
        let want: BTreeMap<String, Value> =
            serde_json::from_slice(&fs::read(l.truth.join(format!("{n}.json"))).unwrap()).unwrap();
        let got = manifest(&l, &exported.join(l.work.strip_prefix("/").unwrap()));
        for (path, w) in &want {
            match got.get(path) {
                None => problems.push(format!("checkpoint {n}: missing {path}")),
                Some(g) => {
                    for d in differences(w, g, started_ns) {
                        problems.push(format!("checkpoint {n}: {path}: {d}"));
                    }
                }
            }
        }
        for path in got.keys().filter(|p| !want.contains_key(*p)) {
            problems.push(format!("checkpoint {n}: extra {path}"));
        }
    }
    // The comparison is not vacuous: the ground truth holds what the tools set.
    let end: BTreeMap<String, Value> =
        serde_json::from_slice(&fs::read(l.truth.join("5.json")).unwrap()).unwrap();
    for (path, xattr) in [
        ("tree-a/a/b/deep.txt", "user.origin"),
        ("acl-ext", "system.posix_acl_access"),
        ("owned.txt", "user.note"),
        ("py-fchown", "user.binary"),
    ] {
        assert!(
            end[path][6].get(xattr).is_some(),
            "{path} has {xattr} in the ground truth: {:?}",
            end[path]
        );
    }
    assert_eq!(
        end["untar/top"][1], 0o750,
        "tar's chmod through /proc/self/fd"
    );
    assert_eq!(
        end["site/dkdemo/tool.sh"][1], 0o755,
        "pip gave the wheel's script its mode"
    );
    assert!(
        problems.is_empty(),
        "{} differences from the ground truth:\n  {}",
        problems.len(),
        problems.join("\n  ")
    );

    // A person sees the owners: in log as operations, in diff as changes.
    let state = format!("--state-dir={}", l.state.display());
    let log = run(Command::new(DK).args(["log", &state]));
    let chowned = format!("{}/chowned", l.work.display());
    assert!(
        log.lines().any(|line| line.contains(" chown ")
            && line.contains(&format!("{chowned} "))
            && line.contains("owner 1000:1000")),
        "log shows chown(1) as a chown: {log}"
    );
    let (from, to) = (
        format!("--from=@seq:{}", seqs[4]),
        format!("--to=@seq:{}", seqs[5]),
    );
    let diff = run(Command::new(DK).args(["diff", &state, &from, &to]));
    assert!(
        diff.lines().any(|line| line.contains(&chowned)
            && line.contains("owner 1000:1000 => file 0 B mode 0644 owner 0:0")),
        "diff shows the owner change: {diff}"
    );

    // A tar carries the owners in its headers, unless told not to.
    for (flag, want) in [(None, "1000/1000"), (Some("--no-owner"), "0/0")] {
        let tar = tmp.path().join(format!("end-{}.tar", flag.is_some()));
        let mut export = Command::new(DK);
        export.args(["export", &state, "--format=tar"]);
        export.arg(format!("--out={}", tar.display())).args(flag);
        run(&mut export);
        let listing = run(Command::new("tar")
            .arg("-tvf")
            .arg(&tar)
            .arg("--numeric-owner"));
        let installed = listing
            .lines()
            .find(|line| line.ends_with("/work/installed"))
            .unwrap_or_else(|| panic!("no installed in the tar: {listing}"));
        assert!(installed.contains(want), "{flag:?}: {installed}");
        let raw = fs::read(&tar).unwrap();
        assert!(
            raw.windows(22).any(|w| w == b"SCHILY.xattr.user.note"),
            "the tar carries xattrs as PAX records"
        );
    }
}

/// Runs a command that must succeed; returns its stdout.
fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
