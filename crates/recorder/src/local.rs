//! A local recording: run one command in a cgroup of its own and record until it and every
//! descendant has exited.

use crate::cgroup::RecordingCgroup;
use crate::launch::Launch;
use crate::scope::PathScope;
use crate::translate::{Recorder, RecorderStats};
use crate::{monotonic_ns, wall_ns, RecordError};
use diffkeeper_capture::{CgroupSettings, Counters, Probe, ProbeConfig, RingDrain};
use diffkeeper_store::{Event, LiveServer, MarkerKind, Op, RecordingInfo, Writer};
use std::ffi::OsString;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct LocalOptions {
    pub state_dir: PathBuf,
    pub command: Vec<OsString>,
    /// Directories snapshotted at start (the working directory is one unless `no_cwd_baseline`).
    pub baselines: Vec<PathBuf>,
    pub no_cwd_baseline: bool,
    /// The working directory is refused as a baseline when it holds more than this many bytes
    /// of files (see [`DEFAULT_CWD_BASELINE_LIMIT`]); explicit `baselines` are never limited.
    pub cwd_baseline_limit: u64,
    pub probe: ProbeConfig,
    /// The paths to record (`--include`, `--exclude`); everything by default.
    pub scope: PathScope,
}

/// A working directory this large is almost never the project being tested: it is a home
/// directory, `/` or `/tmp`, and snapshotting it first would take minutes and gigabytes
/// before the command even starts.
pub const DEFAULT_CWD_BASELINE_LIMIT: u64 = 2 << 30;

/// Whether the files below `dir` (symlinks not followed, `skip` not entered) add up to more
/// than `limit` bytes: the bytes counted when the limit was passed, or None. Stops counting
/// there, so a huge directory costs no more than a small one.
fn tree_exceeds(dir: &Path, limit: u64, skip: &Path) -> Option<u64> {
    let mut seen = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if d == skip {
            continue;
        }
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() {
                seen += meta.len();
                if seen > limit {
                    return Some(seen);
                }
            }
        }
    }
    None
}

#[derive(Clone, Debug)]
pub struct LocalOutcome {
    /// The command's exit code (128 + signal when it was killed), as a shell reports it.
    pub exit_code: i32,
    pub stats: RecorderStats,
    pub counters: Counters,
    pub events: u64,
    pub files: u64,
    pub store_bytes: u64,
    pub elapsed: Duration,
    /// Set when recording stopped before the command did (the store could not be written):
    /// the command went on unrecorded.
    pub stopped: Option<StoppedEarly>,
}

/// Why and when a recording stopped before its command.
#[derive(Clone, Debug)]
pub struct StoppedEarly {
    /// Time from the start of `record` to the stop.
    pub after: Duration,
    /// The error that stopped it.
    pub reason: String,
}

/// How often appended events are made durable: the store promises at most this much loss.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// The kernel wakes us only past a data threshold; this bounds the latency below it.
const POLL_EVERY: Duration = Duration::from_millis(20);

pub fn record_local(opts: &LocalOptions) -> Result<LocalOutcome, RecordError> {
    let started = Instant::now();
    let (program, cwd) = preflight(opts)?;
    let mut cgroup = Some(RecordingCgroup::create(&format!(
        "rec-{}",
        std::process::id()
    ))?);
    let mut command = Command::new(program);
    command.args(&opts.command[1..]);
    let launch = Launch::fork(cgroup.as_ref().expect("just made"), command).map_err(|cause| {
        RecordError::Spawn {
            command: program.to_string_lossy().into_owned(),
            cause,
        }
    })?;
    let mut run = match Run::prepare(opts, cwd, &mut cgroup) {
        Ok(run) => run,
        Err(error) => {
            // The parked command gives up first, so its cgroup is empty when it goes.
            drop(launch);
            drop(cgroup);
            return Err(error);
        }
    };
    // Caught from before the command can run: a SIGINT or SIGTERM that comes between its exec
    // and the watch below is passed on there, rather than killing the recorder.
    let signals = Signals::catch();
    let mut child = match launch.go() {
        Ok(child) => child,
        Err(cause) => {
            // Gone or changed since it was checked: still leave nothing behind (the store is
            // closed first, so nothing writes into the removed dir).
            let made_dir = run.made_dir;
            drop(run);
            remove_stub(&opts.state_dir, made_dir);
            return Err(RecordError::Spawn {
                command: program.to_string_lossy().into_owned(),
                cause,
            });
        }
    };
    let status = match run.watch(&mut child, &signals) {
        Ok(status) => status,
        Err(error) => return run.abandon(opts, child, error, started),
    };
    run.finish(opts, status, started)
}

/// What a shell would check before anything is made: a command that cannot start, or a
/// working directory too large to snapshot, leaves no recording behind to block the state dir.
fn preflight(opts: &LocalOptions) -> Result<(&std::ffi::OsStr, PathBuf), RecordError> {
    let Some(program) = opts.command.first() else {
        return Err(RecordError::NoCommand);
    };
    check_runnable(program)?;
    let cwd = std::env::current_dir().unwrap_or("/".into());
    if !opts.no_cwd_baseline {
        let state = std::path::absolute(&opts.state_dir).unwrap_or(opts.state_dir.clone());
        if let Some(seen) = tree_exceeds(&cwd, opts.cwd_baseline_limit, &state) {
            return Err(RecordError::CwdTooLarge {
                dir: cwd,
                seen,
                limit: opts.cwd_baseline_limit,
            });
        }
    }
    Ok((program, cwd))
}

/// SIGINT and SIGTERM sent to the recorder, noted to be passed on to the command.
struct Signals {
    interrupted: Arc<AtomicBool>,
    terminated: Arc<AtomicBool>,
}

impl Signals {
    fn catch() -> Signals {
        let interrupted = Arc::new(AtomicBool::new(false));
        let terminated = Arc::new(AtomicBool::new(false));
        // Registration fails only for forbidden signals; INT and TERM are not.
        let _ = signal_hook::flag::register(signal_hook::consts::SIGINT, interrupted.clone());
        let _ = signal_hook::flag::register(signal_hook::consts::SIGTERM, terminated.clone());
        Signals {
            interrupted,
            terminated,
        }
    }
}

/// One local recording from its store's creation to its end: the probe, the recorder over the
/// new store, the cgroup the command runs in.
struct Run {
    probe: Probe,
    rec: Recorder,
    cgroup: RecordingCgroup,
    /// Lets `log`, `export`, `mount`... in other processes read the recording while it runs;
    /// dropped before the store is finished, after which they open it directly.
    live: Option<LiveServer>,
    made_dir: bool,
}

impl Run {
    /// Loads the probe, creates the private store, and snapshots the baselines. `cgroup` is
    /// taken into the run only once all of that worked: on an error it stays with the caller,
    /// whose parked command must leave it before it can be removed.
    ///
    /// The probe loads (mostly the kernel's verifier, on its own threads) while this thread
    /// creates the store and snapshots the baselines: the command is parked until both are
    /// done, so the snapshot still precedes everything it does.
    fn prepare(
        opts: &LocalOptions,
        cwd: PathBuf,
        cgroup: &mut Option<RecordingCgroup>,
    ) -> Result<Run, RecordError> {
        let (cgroup_id, cgroup_level) = {
            let cgroup = cgroup.as_ref().expect("the caller's cgroup");
            (cgroup.id(), cgroup.level())
        };
        let (probe, store) = std::thread::scope(|scope| {
            let loading = std::thread::Builder::new()
                .name("dk-load".into())
                .spawn_scoped(scope, || Probe::load(&opts.probe));
            let store = Self::store_and_baselines(opts, cwd, cgroup_id);
            let probe = match loading {
                Ok(loading) => loading.join().expect("loading the probe panicked"),
                // No thread to spare: load it here.
                Err(_) => Probe::load(&opts.probe),
            };
            (probe, store)
        });
        // The probe's error first, as when it loaded before the store: not being root, say,
        // is what a person must fix, whatever else failed.
        let (mut probe, (rec, live, made_dir)) = match (probe, store) {
            (Ok(probe), store) => (probe, store?),
            (Err(e), Ok((rec, live, made_dir))) => {
                // The store holds nothing of the command's yet: leave nothing behind.
                drop(live);
                drop(rec);
                remove_stub(&opts.state_dir, made_dir);
                return Err(e.into());
            }
            (Err(e), Err(_)) => return Err(e.into()),
        };
        let settings = CgroupSettings {
            scoped: !opts.scope.is_everything(),
            ..CgroupSettings::default()
        };
        probe.record_cgroup_with(cgroup_id, cgroup_level, settings)?;
        for file in rec.known_files().collect::<Vec<_>>() {
            probe.mark_known(file)?;
        }
        Ok(Run {
            probe,
            rec,
            cgroup: cgroup.take().expect("the caller's cgroup"),
            live,
            made_dir,
        })
    }

    /// The private store, its live server, and the baselines in it. Returns the recorder over
    /// it and whether the state dir was made here.
    fn store_and_baselines(
        opts: &LocalOptions,
        cwd: PathBuf,
        cgroup_id: u64,
    ) -> Result<(Recorder, Option<LiveServer>, bool), RecordError> {
        let info = RecordingInfo {
            command: opts
                .command
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect(),
            started_wall_ns: wall_ns(),
            started_mono_ns: monotonic_ns(),
            hostname: hostname(),
            labels: Default::default(),
        };
        let start_mono = info.started_mono_ns;
        // The recording holds copies of whatever the workload wrote: private to its owner, as
        // the files the store creates (now and later, e.g. sled's segments) are. The workload
        // keeps the umask it was given: it was forked before this.
        unsafe { libc::umask(0o077) };
        let made_dir = make_private_dir(&opts.state_dir)?;
        let mut writer = Writer::create(&opts.state_dir, info)?;
        // Reading a live recording is a convenience: recording goes on without it.
        let live = writer
            .serve_live()
            .inspect_err(|e| {
                tracing::warn!("other commands cannot read this recording until it ends: {e}")
            })
            .ok();
        let state_dir = std::fs::canonicalize(&opts.state_dir).unwrap_or(opts.state_dir.clone());
        // `finish` reads back whatever is still dirty while the files are still there.
        let mut rec = Recorder::new(writer, "/".into(), vec![state_dir], cgroup_id)
            .scoped(opts.scope.clone())?
            .defer_heals_while_losing(true);
        let mut baselines = opts.baselines.clone();
        if !opts.no_cwd_baseline {
            baselines.insert(0, cwd);
        }
        for dir in &baselines {
            let n = rec.baseline(dir, start_mono)?;
            tracing::info!("baseline {}: {n} entries", dir.display());
        }
        rec.writer_mut().flush()?;
        Ok((rec, live, made_dir))
    }

    /// Records until the command and everything it started have exited; passes signals on.
    fn watch(
        &mut self,
        child: &mut std::process::Child,
        signals: &Signals,
    ) -> Result<ExitStatus, RecordError> {
        let Signals {
            interrupted,
            terminated,
        } = signals;
        let from_terminal = unsafe { libc::isatty(0) } == 1;

        let reader = self
            .probe
            .take_reader()
            .expect("a fresh probe has its reader");
        // Commits, keyframes and read-backs below must not stop the ring from being emptied.
        let mut ring = RingDrain::start(reader)?;
        watch_exit(child.id(), ring.nudger());
        let mut status = None;
        let mut last_flush = Instant::now();
        let mut last_check = Instant::now();
        let mut forwarded = 0u32;
        loop {
            if let Some(batch) = ring.next(POLL_EVERY)? {
                for ev in batch {
                    self.rec.record(ev, &mut self.probe)?;
                }
                if last_check.elapsed() < POLL_EVERY {
                    continue;
                }
            }
            last_check = Instant::now();
            self.rec.check_losses(&mut self.probe, monotonic_ns())?;
            if last_flush.elapsed() >= FLUSH_EVERY {
                self.rec.writer_mut().flush()?;
                last_flush = Instant::now();
            }
            if status.is_none() {
                status = child.try_wait().ok().flatten();
            }
            if status.is_some() && !self.cgroup.populated()? {
                break;
            }
            // Ctrl-C from a terminal already reached the child (same process group); a signal
            // sent to us alone is passed on. A second one kills whatever is left.
            let int = interrupted.swap(false, Ordering::Relaxed);
            let term = terminated.swap(false, Ordering::Relaxed);
            if int || term {
                forwarded += 1;
                if forwarded > 1 {
                    self.cgroup.kill_all();
                } else if term || !from_terminal {
                    self.cgroup
                        .signal_all(if term { libc::SIGTERM } else { libc::SIGINT });
                }
            }
        }
        // What the last processes did may still be in the ring.
        for batch in ring.finish()? {
            for ev in batch {
                self.rec.apply(ev, &mut self.probe)?;
            }
        }
        Ok(status.expect("the loop exits only after the child"))
    }

    /// The normal end: heal what is left, note the exit, close the store.
    fn finish(
        mut self,
        opts: &LocalOptions,
        status: ExitStatus,
        started: Instant,
    ) -> Result<LocalOutcome, RecordError> {
        let end = monotonic_ns();
        self.rec.finish_healing(&mut self.probe, end)?;
        let exit_code = shell_code(status);
        self.rec.writer_mut().append(Event {
            time: end,
            process: None,
            op: Op::Marker {
                kind: MarkerKind::Note,
                detail: format!("command exited with code {exit_code}"),
            },
        })?;
        let counters = self.probe.counters()?;
        let stats = self.rec.stats();
        let writer = self.rec.into_writer();
        let files = writer.file_count();
        let wstats = writer.stats();
        drop(self.live);
        writer.finish(end)?;
        drop(self.probe); // detach before the cgroup goes
        drop(self.cgroup);
        Ok(LocalOutcome {
            exit_code,
            stats,
            counters,
            events: wstats.events,
            files,
            store_bytes: diffkeeper_locate::dir_size(&opts.state_dir),
            elapsed: started.elapsed(),
            stopped: None,
        })
    }

    /// Recording failed while the command runs (the state dir's disk is full, its store was
    /// damaged): the command is not the recorder's to kill, so the probe detaches, the command
    /// goes on unrecorded, and its exit code is still the one returned. What was committed
    /// before stays readable; the store is closed with a marker saying where and why recording
    /// stopped if it still can be written, and readers call the history cut short if not.
    fn abandon(
        self,
        opts: &LocalOptions,
        mut child: std::process::Child,
        error: RecordError,
        started: Instant,
    ) -> Result<LocalOutcome, RecordError> {
        let stopped_at = monotonic_ns();
        let after = started.elapsed();
        tracing::error!("recording stopped: {error}; the command goes on unrecorded");
        let Run {
            probe,
            rec,
            cgroup,
            live,
            ..
        } = self;
        let counters = probe.counters().unwrap_or_default();
        drop(probe);
        let stats = rec.stats();
        let mut writer = rec.into_writer();
        let closed = writer
            .append(Event {
                time: stopped_at,
                process: None,
                op: Op::Marker {
                    kind: MarkerKind::Gap,
                    detail: format!(
                        "recording stopped here: {error}; later changes were not recorded"
                    ),
                },
            })
            .and_then(|_| writer.flush());
        let status = child.wait().map_err(|cause| RecordError::Spawn {
            command: opts.command[0].to_string_lossy().into_owned(),
            cause,
        })?;
        while cgroup.populated().unwrap_or(false) {
            std::thread::sleep(POLL_EVERY);
        }
        let files = writer.file_count();
        let events = writer.stats().events;
        drop(live);
        let closed = closed.and_then(|()| writer.finish(monotonic_ns()));
        if let Err(e) = &closed {
            tracing::warn!("could not close the recording ({e}): readers will call it cut short");
        }
        drop(cgroup);
        Ok(LocalOutcome {
            exit_code: shell_code(status),
            stats,
            counters,
            events,
            files,
            store_bytes: diffkeeper_locate::dir_size(&opts.state_dir),
            elapsed: started.elapsed(),
            stopped: Some(StoppedEarly {
                after,
                reason: error.to_string(),
            }),
        })
    }
}

/// The exit code as a shell reports it: 128 + the signal for a command killed by one.
fn shell_code(status: ExitStatus) -> i32 {
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// Whether `program` can be started, found the way execvp finds it (through PATH unless it
/// names a path).
fn check_runnable(program: &std::ffi::OsStr) -> Result<(), RecordError> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::PermissionsExt;
    let command = program.to_string_lossy().into_owned();
    let executable = |path: &std::path::Path| {
        std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.as_bytes().contains(&b'/') {
        let path = std::path::Path::new(program);
        return match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(RecordError::CommandNotFound { command })
            }
            Err(e) => Err(RecordError::NotExecutable {
                command,
                why: e.to_string(),
            }),
            Ok(m) if m.is_dir() => Err(RecordError::NotExecutable {
                command,
                why: "is a directory".into(),
            }),
            Ok(_) if !executable(path) => Err(RecordError::NotExecutable {
                command,
                why: "permission denied (not executable)".into(),
            }),
            Ok(_) => Ok(()),
        };
    }
    let search = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    let candidates: Vec<_> = std::env::split_paths(&search)
        .map(|dir| dir.join(program))
        .collect();
    if candidates.iter().any(|path| executable(path)) {
        Ok(())
    } else if candidates.iter().any(|path| path.is_file()) {
        // As bash: found, but not executable.
        Err(RecordError::NotExecutable {
            command,
            why: "permission denied (not executable)".into(),
        })
    } else {
        Err(RecordError::CommandNotFound { command })
    }
}

/// Removes what a recording that never started left: the whole dir when this run made it.
fn remove_stub(dir: &std::path::Path, made_dir: bool) {
    let removed = if made_dir {
        std::fs::remove_dir_all(dir)
    } else {
        std::fs::remove_dir_all(dir.join("db"))
            .and_then(|()| std::fs::remove_file(dir.join("LOCK")))
    };
    if let Err(e) = removed {
        tracing::warn!(
            "cannot remove the empty recording in {}: {e}",
            dir.display()
        );
    }
}

/// Creates the state dir 0700, or makes an existing one so. Returns whether it made it.
fn make_private_dir(dir: &std::path::Path) -> Result<bool, RecordError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let private = |cause| RecordError::StateDir {
        path: dir.to_path_buf(),
        cause,
    };
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(private)?;
            Ok(false)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // Missing parents are ordinary directories; only the state dir itself is private.
            if let Some(parent) = dir.parent() {
                std::fs::create_dir_all(parent).map_err(private)?;
            }
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(dir)
                .map_err(private)?;
            Ok(true)
        }
        Err(e) => Err(private(e)),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Nudges the loop in `watch` as soon as the command exits, rather than at its next poll (up
/// to 20 ms of every recording's end). A thread parked in poll(2) on the command's pidfd; where
/// pidfds are missing (Linux < 5.3) the poll alone notices.
fn watch_exit(pid: u32, nudger: diffkeeper_capture::Nudger) {
    // SAFETY: pidfd_open takes a pid and flags; the descriptor is owned from here on.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return;
    }
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
    let spawned = std::thread::Builder::new()
        .name("dk-exit".into())
        .spawn(move || {
            let mut pfd = libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one pollfd on the stack, for an fd this thread owns.
            while unsafe { libc::poll(&mut pfd, 1, -1) } < 0
                && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
            {
            }
            nudger.nudge();
        });
    if let Err(e) = spawned {
        tracing::debug!("no thread to watch the command's exit: {e}");
    }
}
