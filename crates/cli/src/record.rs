//! `diffkeeper record`: run a command under the recorder.

use anyhow::Context;
use bytesize::ByteSize;
use diffkeeper_capture::{AttachPoint, ProbeConfig};
use diffkeeper_recorder::{record_local, LocalOptions, PathScope};
use diffkeeper_store::Scope;
use std::ffi::OsString;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    state: crate::StateDir,
    /// Also snapshot this directory at start, so in-place edits of its files replay exactly
    /// (the working directory always is, unless --no-cwd-baseline). Repeatable.
    #[arg(long, value_name = "PATH")]
    baseline: Vec<PathBuf>,
    /// Do not snapshot the working directory at start.
    #[arg(long)]
    no_cwd_baseline: bool,
    /// Refuse to snapshot a working directory holding more than this (it is then almost
    /// surely not the project: a home directory, / or /tmp).
    #[arg(long, value_name = "BYTES", value_parser = parse_size,
          default_value_t = diffkeeper_recorder::DEFAULT_CWD_BASELINE_LIMIT)]
    cwd_baseline_limit: u64,
    /// Largest write copied in the kernel; larger ones are read back from the file instead.
    #[arg(long, value_name = "BYTES", default_value = "1MiB", value_parser = parse_size)]
    max_write_capture: u64,
    /// Record only paths matching this glob, or lying below a directory it matches
    /// (`/work/out/**`, `/var/log`; `*` stays within one component, `**` crosses them).
    /// Repeatable; without it every path is recorded.
    #[arg(long, value_name = "GLOB")]
    include: Vec<String>,
    /// Never record paths matching this glob, or lying below a directory it matches
    /// (`/tmp`, `**/*.o`), even if included. Repeatable. The kernel stops copying the writes
    /// of such files.
    #[arg(long, value_name = "GLOB")]
    exclude: Vec<String>,
    /// Kernel ring buffer size (a power of two). When it fills, records are lost and the
    /// affected files are read back from disk instead.
    #[arg(long, value_name = "BYTES", default_value = "64MiB", value_parser = parse_size)]
    ring_size: u64,
    /// Where the syscall programs attach: `raw` (the raw syscall tracepoints, which every
    /// syscall of the machine passes) or `syscalls` (a tracepoint per hooked syscall: the
    /// machine's other syscalls run no program, but the kernel takes about 3 s to detach them
    /// at the end; needs tracefs, mounted if missing). `auto`: `syscalls` where it works.
    #[arg(long, value_name = "POINT", default_value = "raw")]
    attach_point: AttachChoice,
    /// The command to record, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<OsString>,
}

/// `--attach-point`: one of [`AttachPoint`]'s names, or `auto` (None).
#[derive(Clone)]
struct AttachChoice(Option<AttachPoint>);

impl std::str::FromStr for AttachChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(AttachChoice(None)),
            s => s.parse().map(|p| AttachChoice(Some(p))),
        }
    }
}

fn parse_size(s: &str) -> Result<u64, String> {
    s.parse::<ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| format!("{e}: expected a size like 4096, 64KiB or 1MiB"))
}

pub fn run(a: Args) -> anyhow::Result<i32> {
    if !a.ring_size.is_power_of_two() || a.ring_size < 4096 || a.ring_size > 1 << 31 {
        anyhow::bail!(
            "--ring-size {} is not a power of two between 4KiB and 2GiB; try 64MiB",
            a.ring_size
        );
    }
    let scope = PathScope::new(Scope {
        include: a.include,
        exclude: a.exclude,
    })
    .context("--include/--exclude")?;
    let opts = LocalOptions {
        state_dir: a.state.state_dir.clone(),
        command: a.command,
        baselines: a.baseline,
        no_cwd_baseline: a.no_cwd_baseline,
        cwd_baseline_limit: a.cwd_baseline_limit,
        probe: ProbeConfig {
            ring_bytes: a.ring_size as u32,
            max_write_capture: a.max_write_capture,
            attach: a.attach_point.0,
            ..ProbeConfig::default()
        },
        scope,
    };
    let out = match record_local(&opts) {
        Ok(out) => out,
        Err(e) => match e.shell_status() {
            Some(status) => {
                eprintln!("diffkeeper: {e}");
                return Ok(status);
            }
            None => {
                return Err(anyhow::Error::new(e)
                    .context(format!("recording into {}", a.state.state_dir.display())))
            }
        },
    };
    eprintln!(
        "diffkeeper: recorded {:.1}s: {} events, {} captured, {} files, {} drops healed \
         ({} records lost), store {} at {} (command exited with {})",
        out.elapsed.as_secs_f64(),
        out.events,
        ByteSize::b(out.counters.captured_bytes),
        out.files,
        out.stats.drops_healed + out.stats.rescans,
        out.counters.lost,
        ByteSize::b(out.store_bytes),
        a.state.state_dir.display(),
        out.exit_code,
    );
    if let Some(stopped) = &out.stopped {
        // The command's exit code still decides this command's: a recorder must not change
        // a job's outcome. What failed is said plainly instead.
        eprintln!(
            "diffkeeper: error: recording stopped {:.1}s in: {}. The command went on unrecorded \
             and exited with {}; what was recorded before the stop is readable (`diffkeeper log \
             --state-dir={}`). Free space on the state dir's file system or choose another \
             --state-dir, and record again",
            stopped.after.as_secs_f64(),
            stopped.reason,
            out.exit_code,
            a.state.state_dir.display()
        );
    }
    if out.stats.cut_paths > 0 {
        eprintln!(
            "diffkeeper: warning: {} path change(s) were too deep (over 64 levels) or too long \
             (over 4096 bytes) to capture as they happened; the names they changed were taken \
             from disk at the end, so moments before it may lack them (GAP lines in `diffkeeper \
             log` say when)",
            out.stats.cut_paths
        );
    }
    Ok(out.exit_code)
}
