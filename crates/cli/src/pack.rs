//! `diffkeeper pack` / `unpack`: a recording as one checksummed file, to upload from a failed CI
//! job and rewind on another machine.

use anyhow::{bail, Context};
use bytesize::ByteSize;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct PackArgs {
    #[command(flatten)]
    state: crate::StateDir,
    /// The file to write (conventionally NAME.dkpack), or `-` for stdout.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Replace FILE if it exists (never through a symlink).
    #[arg(long)]
    force: bool,
}

#[derive(clap::Args)]
pub struct UnpackArgs {
    /// The pack to read, or `-` for stdin.
    #[arg(long = "in", value_name = "FILE")]
    input: PathBuf,
    /// Where the recording goes: a new or empty directory.
    #[arg(long = "state-dir", value_name = "DIR")]
    state_dir: PathBuf,
}

/// Refuses an output that would clobber what the person did not ask to replace, or that lies in
/// the recording being packed.
fn check_out(out: &Path, state_dir: &Path, force: bool) -> anyhow::Result<()> {
    if let Ok(meta) = std::fs::symlink_metadata(out) {
        if meta.file_type().is_symlink() {
            bail!(
                "{} is a symlink; give the file itself (a pack is never written through a link)",
                out.display()
            );
        }
        if meta.is_dir() {
            bail!(
                "{} is a directory; give a file name such as trace.dkpack",
                out.display()
            );
        }
        if !force {
            bail!("{} exists; pass --force to replace it", out.display());
        }
    }
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let (parent, state) = (
        parent
            .canonicalize()
            .with_context(|| format!("the directory of {}", out.display()))?,
        state_dir
            .canonicalize()
            .with_context(|| format!("opening recording {}", state_dir.display()))?,
    );
    if parent.starts_with(&state) {
        bail!(
            "{} is inside the recording {}; write the pack elsewhere",
            out.display(),
            state_dir.display()
        );
    }
    Ok(())
}

pub fn pack(a: PackArgs) -> anyhow::Result<()> {
    let dir = &a.state.state_dir;
    if a.out.as_os_str() == "-" {
        let mut stdout = std::io::stdout().lock();
        let s = diffkeeper_pack::pack(dir, &mut stdout)
            .with_context(|| format!("packing {}", dir.display()))?;
        stdout.flush()?;
        eprintln!(
            "diffkeeper: packed {} ({} files, {}) to stdout",
            dir.display(),
            s.files,
            ByteSize(s.bytes)
        );
        return Ok(());
    }
    check_out(&a.out, dir, a.force)?;
    // Written beside and renamed: a reader never sees half a pack under the final name.
    let parent = match a.out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".dkpack-")
        .tempfile_in(parent)
        .with_context(|| format!("creating a file beside {}", a.out.display()))?;
    let s = diffkeeper_pack::pack(dir, std::io::BufWriter::new(tmp.as_file_mut()))
        .with_context(|| format!("packing {}", dir.display()))?;
    tmp.as_file().sync_all()?;
    tmp.persist(&a.out)
        .with_context(|| format!("writing {}", a.out.display()))?;
    let packed = std::fs::metadata(&a.out)?.len();
    eprintln!(
        "diffkeeper: packed {} ({} files, {}) into {} ({})",
        dir.display(),
        s.files,
        ByteSize(s.bytes),
        a.out.display(),
        ByteSize(packed)
    );
    Ok(())
}

pub fn unpack(a: UnpackArgs) -> anyhow::Result<()> {
    let (manifest, summary) = if a.input.as_os_str() == "-" {
        diffkeeper_pack::unpack(std::io::stdin().lock(), &a.state_dir)
    } else {
        let file = std::fs::File::open(&a.input)
            .with_context(|| format!("opening {}", a.input.display()))?;
        diffkeeper_pack::unpack(std::io::BufReader::new(file), &a.state_dir)
    }
    .with_context(|| format!("unpacking {}", a.input.display()))?;
    eprintln!(
        "diffkeeper: unpacked the recording of `{}` ({} files, {}) into {}; try `diffkeeper log \
         --state-dir={}`",
        manifest.recording.command.join(" "),
        summary.files,
        ByteSize(summary.bytes),
        a.state_dir.display(),
        a.state_dir.display()
    );
    Ok(())
}
