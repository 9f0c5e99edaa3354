//! `diffkeeper mount`: browse the files at a moment with any tool, without exporting them.

use anyhow::{bail, Context};
use diffkeeper_mount::{RecordingFs, ViewOptions};
use diffkeeper_store::{format_wall, TimeExpr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    state: crate::StateDir,
    /// The moment: 2m14s (since start), -5s (before the end), an RFC3339 time, end, @seq:N.
    #[arg(long, default_value = "end", allow_hyphen_values = true)]
    time: String,
    /// Move with the recording: show its newest event, checked every second. Works on a
    /// recording a `diffkeeper record` is still writing (read through that recorder) and goes
    /// on once it has finished.
    #[arg(long, conflicts_with = "time")]
    follow: bool,
    /// Upper bound on file contents kept in memory, in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 256)]
    cache_mib: u64,
    /// An empty directory; recorded absolute paths appear below it (MOUNTPOINT/tmp/w/a.txt).
    mountpoint: PathBuf,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    check_mountpoint(&a.mountpoint)?;
    let time: TimeExpr = a.time.parse()?;
    let opts = ViewOptions {
        time,
        follow: a.follow,
        refresh: Duration::from_secs(1),
        cache_bytes: a.cache_mib.saturating_mul(1024 * 1024),
    };
    let fs = RecordingFs::new(&a.state.state_dir, &opts)
        .with_context(|| format!("opening recording {}", a.state.state_dir.display()))?;
    let seq = fs.seq();

    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone())
            .context("installing the Ctrl-C handler")?;
    }
    let mounted = diffkeeper_mount::mount(fs, &a.mountpoint, &opts).with_context(|| {
        "FUSE needs root (or fusermount3 from Debian's fuse3) and /dev/fuse".to_string()
    })?;
    eprintln!(
        "diffkeeper: the files at @seq:{seq}{} are at {} (read-only{}); Ctrl-C unmounts",
        label(&a.state, seq),
        a.mountpoint.display(),
        if a.follow {
            ", following the recording"
        } else {
            ""
        },
    );
    while !stop.load(Ordering::SeqCst) {
        if !mounted.is_alive() {
            eprintln!(
                "diffkeeper: {} was unmounted from outside",
                a.mountpoint.display()
            );
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    match mounted.unmount() {
        Ok(()) => {}
        // Something still has a file or its working directory in the view: detach the mount so
        // it is gone for everyone else now (those open files fail from here on) rather than
        // leaving a dead mount behind when this process exits.
        Err(e) if e.raw_os_error() == Some(nix::libc::EBUSY) => {
            nix::mount::umount2(&a.mountpoint, nix::mount::MntFlags::MNT_DETACH)
                .with_context(|| format!("detaching busy mount {}", a.mountpoint.display()))?;
            eprintln!(
                "diffkeeper: {} was busy (a process has a file or its working directory in \
                 it): detached it; reads through what it still holds fail from now on",
                a.mountpoint.display()
            );
        }
        Err(e) => return Err(e).with_context(|| format!("unmounting {}", a.mountpoint.display())),
    }
    if mounted_at(&a.mountpoint)? {
        bail!(
            "{} is still mounted after unmounting (something has files open in it?): close \
             them and run `umount -l {}`",
            a.mountpoint.display(),
            a.mountpoint.display()
        );
    }
    eprintln!("diffkeeper: unmounted {}", a.mountpoint.display());
    Ok(())
}

/// " (+1.234s, 2026-...)" for the banner, or nothing if the recording is busy right now.
fn label(state: &crate::StateDir, seq: u64) -> String {
    let Ok(store) = crate::open_store(state) else {
        return String::new();
    };
    let span = store.span();
    match store.resolve(&TimeExpr::AfterSeq(seq)) {
        Ok(p) if seq > 0 => format!(
            ", {} ({})",
            crate::offset_label(&span, p.mono_ns),
            format_wall(span.wall_of(p.mono_ns))
        ),
        _ => String::new(),
    }
}

/// Refuses anything but an empty directory, and names the fix for a mount a killed
/// `diffkeeper mount` left behind.
fn check_mountpoint(path: &Path) -> anyhow::Result<()> {
    let stale = || {
        anyhow::anyhow!(
            "{} is still mounted (a `diffkeeper mount` that was killed leaves its mount \
             behind): run `umount -l {}` and try again",
            path.display(),
            path.display()
        )
    };
    let entries = match std::fs::read_dir(path) {
        Ok(entries) => entries,
        // What a FUSE mount whose process died answers.
        Err(e) if e.raw_os_error() == Some(nix::libc::ENOTCONN) => return Err(stale()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "mountpoint {} does not exist: create an empty directory for it (mkdir -p {})",
            path.display(),
            path.display()
        ),
        Err(e) if e.raw_os_error() == Some(nix::libc::ENOTDIR) => bail!(
            "mountpoint {} is not a directory: give an empty directory",
            path.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("reading mountpoint {}", path.display())),
    };
    if mounted_at(path)? {
        return Err(stale());
    }
    if entries.count() > 0 {
        bail!(
            "mountpoint {} is not empty: the view would hide its files; give an empty directory \
             (mkdir a new one)",
            path.display()
        );
    }
    Ok(())
}

/// Whether something is mounted exactly at `path` (per /proc/self/mountinfo).
pub fn mounted_at(path: &Path) -> anyhow::Result<bool> {
    let Ok(path) = path.canonicalize() else {
        // A dead FUSE mount cannot even be resolved; callers have already told that apart.
        return Ok(false);
    };
    let mounts = diffkeeper_locate::mountinfo::read_mountinfo(None).context("reading mountinfo")?;
    Ok(mounts.iter().any(|m| m.mount_point == path))
}
