//! Loading, attaching and reading the kernel programs.

use crate::attach::{self, AttachPoint};
use crate::event::{Assembler, DirtyReason, Event, FileKey};
use crate::wire::{
    self, cgroup_settings, dirty_mark, file_key, filter_knobs, loss_counts, maps, unsent_key,
    unsent_name,
};
use aya::maps::{Array, HashMap, MapData, PerCpuArray, RingBuf};
use aya::programs::trace_point::TracePointLinkId;
use aya::programs::{Program, TracePoint};
use aya::{Btf, Ebpf, EbpfLoader};
use std::os::fd::AsRawFd;
use std::time::Duration;

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/diffkeeper.bpf.o"));

/// (program, BTF tracepoint it attaches to): the process programs. The syscall programs depend
/// on the [`AttachPoint`].
const PROCESS_PROGRAMS: [(&str, &str); 3] = [
    ("dk_fork", "sched_process_fork"),
    ("dk_exec", "sched_process_exec"),
    ("dk_exit", "sched_process_exit"),
];

/// Why capture could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// Not root (nor CAP_BPF + CAP_PERFMON).
    #[error(
        "capturing file changes needs root (or CAP_BPF + CAP_PERFMON): run diffkeeper with sudo"
    )]
    NotPrivileged,
    /// The kernel has no BTF.
    #[error(
        "this kernel has no BTF (/sys/kernel/btf/vmlinux is missing): DiffKeeper needs a kernel \
         built with CONFIG_DEBUG_INFO_BTF=y (the default of most distributions since 5.x)"
    )]
    NoBtf,
    /// The object could not be loaded.
    #[error("cannot load the eBPF programs: {0}")]
    Load(#[source] aya::EbpfError),
    /// The kernel refused a program.
    #[error(
        "the kernel refused eBPF program {program} ({source}); it needs BTF tracepoints \
         (tp_btf, Linux >= 5.5) and bpf_loop (Linux >= 5.17)"
    )]
    Program {
        /// The program's name.
        program: &'static str,
        /// Why.
        #[source]
        source: aya::programs::ProgramError,
    },
    /// The attach point asked for cannot be used on this machine.
    #[error(
        "cannot attach to the {point} syscall tracepoints: {why}; leave the attach point \
         unset to fall back to the raw syscall tracepoints"
    )]
    AttachPoint {
        /// The one asked for.
        point: AttachPoint,
        /// Why not.
        why: String,
    },
    /// A map could not be used.
    #[error("eBPF map {map}: {source}")]
    Map {
        /// The map's name.
        map: &'static str,
        /// Why.
        #[source]
        source: aya::maps::MapError,
    },
    /// The object writes another wire version than this decoder reads.
    #[error(
        "the embedded eBPF object writes records of another format: {0}; rebuild diffkeeper \
         (`cargo clean -p diffkeeper-capture` if a stale build keeps it)"
    )]
    WireVersion(String),
    /// Polling the ring buffer failed.
    #[error("waiting for capture records: {0}")]
    Poll(#[source] std::io::Error),
    /// The drain thread could not start.
    #[error("cannot start the thread that drains the ring buffer: {0}")]
    DrainThread(#[source] std::io::Error),
    /// The drain thread is gone.
    #[error("the thread that drains the ring buffer stopped (it panicked, or failed before)")]
    DrainStopped,
}

/// Tunables of the kernel side.
#[derive(Clone, Debug)]
pub struct ProbeConfig {
    /// Ring buffer size in bytes (a power of two, at least one page).
    pub ring_bytes: u32,
    /// Writes larger than this are not copied; the file is read back instead.
    pub max_write_capture: u64,
    /// The reader is woken only when this much data waits (it also polls on a short timer):
    /// a wakeup per record was measured to double the cost of small writes.
    pub wakeup_bytes: u64,
    /// Where the syscall programs attach; None: the per-syscall tracepoints where this machine
    /// has them, else the raw syscall tracepoints.
    pub attach: Option<AttachPoint>,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            ring_bytes: 64 << 20,
            max_write_capture: 1 << 20,
            wakeup_bytes: 256 << 10,
            attach: None,
        }
    }
}

/// What one recorded cgroup asks of the kernel side, beyond the probe's [`ProbeConfig`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CgroupSettings {
    /// Its writes larger than this are not copied but read back (the probe's own
    /// `max_write_capture` still bounds every recording).
    pub max_write_capture: u64,
    /// The recording keeps only some paths: the kernel drops the writes of the files user
    /// space names with [`Probe::skip_file`].
    pub scoped: bool,
}

impl Default for CgroupSettings {
    fn default() -> Self {
        CgroupSettings {
            max_write_capture: u64::MAX,
            scoped: false,
        }
    }
}

/// Kernel-side counters, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Records that did not fit in the ring buffer.
    pub lost: u64,
    /// Of those, path-based changes (rename, unlink, ...): the namespace needs a rescan.
    pub lost_namespace: u64,
    /// Payload bytes captured.
    pub captured_bytes: u64,
}

/// Records one recorded cgroup lost to a full ring buffer (its processes', its sub-cgroups'
/// included): what that recording's history must mark as a gap, and no other's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupLosses {
    /// Records that did not fit in the ring buffer.
    pub lost: u64,
    /// Of those, path-based changes: the recording's namespace needs a rescan.
    pub lost_namespace: u64,
}

impl From<FileKey> for file_key {
    fn from(k: FileKey) -> Self {
        file_key {
            dev: k.kernel_dev(),
            ino: k.ino,
        }
    }
}

/// The loaded, attached kernel programs and the reading end of their ring buffer.
pub struct Probe {
    ebpf: Ebpf,
    /// None once taken by [`Probe::take_reader`].
    reader: Option<RingReader>,
    /// Each recorded cgroup's hierarchy level and settings, to keep the kernel's summaries.
    recorded: std::collections::HashMap<u64, (u32, CgroupSettings)>,
    /// Where the syscall programs are attached.
    attach: AttachPoint,
    /// The last generation written to `filter_knobs` (see [`Probe::write_summaries`]).
    generation: u64,
    /// The per-syscall tracepoints' links (none at the raw ones), released at drop.
    links: Option<SyscallLinks>,
}

impl Drop for Probe {
    fn drop(&mut self) {
        if let Some(links) = self.links.take() {
            links.release(&mut self.ebpf);
        }
    }
}

/// The reading end of the ring buffer. It can leave the probe (see [`Probe::take_reader`]) so
/// the ring is drained on a thread of its own ([`crate::RingDrain`]): a reader that also does the store's work stops
/// draining during every commit, and a fast writer overruns the ring meanwhile.
pub struct RingReader {
    ring: RingBuf<MapData>,
    assembler: Assembler,
    /// Record bytes taken from the ring so far.
    drained_bytes: u64,
}

impl RingReader {
    /// Waits up to `timeout` for records (the kernel wakes us only past a threshold, so callers
    /// poll on a short timer anyway), or until `also` (another descriptor, such as an eventfd a
    /// consumer signals) is readable. Returns whether either signalled.
    pub fn wait(
        &self,
        timeout: Duration,
        also: Option<std::os::fd::BorrowedFd<'_>>,
    ) -> Result<bool, CaptureError> {
        let pfd = |fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // poll(2) skips an entry whose descriptor is negative.
        let mut pfds = [
            pfd(self.ring.as_raw_fd()),
            pfd(also.map_or(-1, |fd| fd.as_raw_fd())),
        ];
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), 2, ms) };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                return Ok(false);
            }
            return Err(CaptureError::Poll(err));
        }
        Ok(n > 0)
    }

    /// Decodes every record waiting in the ring, in order, handing completed events to `sink`.
    /// Returns the number of records consumed. A record's space goes back to the kernel once
    /// `sink` returns, so a sink that blocks holds the kernel back (and it counts losses).
    pub fn drain(&mut self, mut sink: impl FnMut(Event)) -> usize {
        let mut n = 0;
        while let Some(item) = self.ring.next() {
            n += 1;
            self.drained_bytes += item.len() as u64;
            if let Some(ev) = self.assembler.push(&item) {
                // The record's space is released (item dropped) before the sink may block.
                drop(item);
                sink(ev);
            }
        }
        n
    }

    /// Record bytes taken from the ring since it was opened.
    pub fn drained_bytes(&self) -> u64 {
        self.drained_bytes
    }

    /// Records that could not be decoded (wire version skew).
    pub fn malformed(&self) -> u64 {
        self.assembler.malformed
    }
}

impl Probe {
    /// Loads and attaches the programs. Nothing is recorded until [`Probe::record_cgroup`].
    pub fn load(cfg: &ProbeConfig) -> Result<Probe, CaptureError> {
        if unsafe { libc::geteuid() } != 0 {
            return Err(CaptureError::NotPrivileged);
        }
        if !std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
            return Err(CaptureError::NoBtf);
        }
        check_wire_version(OBJECT)?;
        let started = std::time::Instant::now();
        let btf = Btf::from_sys_fs().map_err(|_| CaptureError::NoBtf)?;
        tracing::debug!(elapsed = ?started.elapsed(), "kernel BTF read");
        let mut ebpf = EbpfLoader::new()
            // The loader would otherwise parse the kernel's BTF a second time (tens of ms).
            .btf(Some(&btf))
            .override_global("max_write_capture", &cfg.max_write_capture, true)
            .override_global("wakeup_bytes", &cfg.wakeup_bytes, true)
            .map_max_entries(maps::EVENTS, cfg.ring_bytes)
            .load(OBJECT)
            .map_err(CaptureError::Load)?;
        // Start-up is mostly this function (issue 15): say where it goes.
        tracing::debug!(elapsed = ?started.elapsed(), "object relocated, maps created");
        let (attach, links) = attach_programs(&mut ebpf, &btf, cfg.attach)?;
        tracing::debug!(elapsed = ?started.elapsed(), %attach, "all programs verified and attached");
        let ring = RingBuf::try_from(ebpf.take_map(maps::EVENTS).expect("events map")).map_err(
            |source| CaptureError::Map {
                map: maps::EVENTS,
                source,
            },
        )?;
        tracing::debug!(ring_bytes = cfg.ring_bytes, "eBPF programs attached");
        Ok(Probe {
            ebpf,
            reader: Some(RingReader {
                ring,
                assembler: Assembler::default(),
                drained_bytes: 0,
            }),
            recorded: Default::default(),
            attach,
            generation: 0,
            links: Some(links),
        })
    }

    /// Where the syscall programs are attached.
    pub fn attach_point(&self) -> AttachPoint {
        self.attach
    }

    /// Records the processes of cgroup v2 `id` (and of its descendants). `level` is the cgroup's
    /// depth below the cgroup2 root (the root is 0).
    pub fn record_cgroup(&mut self, id: u64, level: u32) -> Result<(), CaptureError> {
        self.record_cgroup_with(id, level, CgroupSettings::default())
    }

    /// [`Probe::record_cgroup`], with settings of this recording's own.
    pub fn record_cgroup_with(
        &mut self,
        id: u64,
        level: u32,
        settings: CgroupSettings,
    ) -> Result<(), CaptureError> {
        // Its loss counters first: a loss between the two inserts is then counted, not missed.
        let losses = maps::CGROUP_LOSSES;
        let zero = loss_counts {
            lost: 0,
            lost_ns: 0,
        };
        let mut counts: HashMap<_, u64, loss_counts> = self.hash_map(losses)?;
        counts.insert(id, zero, 0).map_err(map_error(losses))?;
        let name = maps::RECORDED_CGROUPS;
        let value = cgroup_settings {
            max_write_capture: settings.max_write_capture,
            scoped: settings.scoped.into(),
            _pad: 0,
        };
        let mut cgroups: HashMap<_, u64, cgroup_settings> = self.hash_map(name)?;
        cgroups.insert(id, value, 0).map_err(map_error(name))?;
        self.recorded.insert(id, (level, settings));
        self.write_summaries()
    }

    /// Stops recording cgroup `id`.
    pub fn forget_cgroup(&mut self, id: u64) -> Result<(), CaptureError> {
        let name = maps::RECORDED_CGROUPS;
        let mut cgroups: HashMap<_, u64, cgroup_settings> = self.hash_map(name)?;
        absent_is_fine(cgroups.remove(&id), name)?;
        let scoped = self.recorded.remove(&id).is_some_and(|(_, s)| s.scoped);
        self.write_summaries()?;
        // What the kernel kept aside for this recording is nobody else's.
        let losses = maps::CGROUP_LOSSES;
        let mut counts: HashMap<_, u64, loss_counts> = self.hash_map(losses)?;
        absent_is_fine(counts.remove(&id), losses)?;
        self.take_unsent_names(id)?;
        let name = maps::DIRTY_FILES;
        let mut dirty: HashMap<_, file_key, dirty_mark> = self.hash_map(name)?;
        let theirs: Vec<file_key> = dirty
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, mark)| mark.cgroup == id)
            .map(|(k, _)| k)
            .collect();
        for k in theirs {
            absent_is_fine(dirty.remove(&k), name)?;
        }
        if scoped {
            let name = maps::SKIPPED_FILES;
            let mut skipped: HashMap<_, unsent_key, u8> = self.hash_map(name)?;
            let theirs: Vec<unsent_key> = skipped
                .keys()
                .filter_map(Result::ok)
                .filter(|k| k.cgroup == id)
                .collect();
            for k in theirs {
                absent_is_fine(skipped.remove(&k), name)?;
            }
        }
        Ok(())
    }

    /// Tells the kernel not to copy the writes of `file` for recorded cgroup `cgroup` (one
    /// recorded with `scoped`): the file lies outside what that recording keeps.
    pub fn skip_file(&mut self, cgroup: u64, file: FileKey) -> Result<(), CaptureError> {
        let name = maps::SKIPPED_FILES;
        let mut skipped: HashMap<_, unsent_key, u8> = self.hash_map(name)?;
        skipped
            .insert(skip_key(cgroup, file), 1, 0)
            .map_err(map_error(name))
    }

    /// Undoes [`Probe::skip_file`]: the file moved into the recording's scope.
    pub fn unskip_file(&mut self, cgroup: u64, file: FileKey) -> Result<(), CaptureError> {
        let name = maps::SKIPPED_FILES;
        let mut skipped: HashMap<_, unsent_key, u8> = self.hash_map(name)?;
        absent_is_fine(skipped.remove(&skip_key(cgroup, file)), name)
    }

    /// The kernel's view across recordings: the levels recorded cgroups sit at, and whether any
    /// recording might want less than every byte of a write (see `filter_knobs`). Written after
    /// every change to `recorded_cgroups`, and the knobs last: their new generation expires the
    /// per-CPU verdicts made before the change.
    fn write_summaries(&mut self) -> Result<(), CaptureError> {
        let mask = self
            .recorded
            .values()
            .filter(|(l, _)| *l < 16)
            .fold(0u32, |m, (l, _)| m | (1 << l));
        let name = maps::FILTER_LEVELS;
        let mut levels: Array<_, u32> =
            Array::try_from(self.ebpf.map_mut(name).expect("map is in the object"))
                .map_err(map_error(name))?;
        levels.set(0, mask, 0).map_err(map_error(name))?;
        let knobs = filter_knobs {
            cap_floor: self
                .recorded
                .values()
                .map(|(_, s)| s.max_write_capture)
                .min()
                .unwrap_or(u64::MAX),
            scoped: self.recorded.values().any(|(_, s)| s.scoped).into(),
            _pad: 0,
            generation: {
                self.generation += 1;
                self.generation
            },
        };
        let name = maps::FILTER_KNOBS;
        let mut map: Array<_, filter_knobs> =
            Array::try_from(self.ebpf.map_mut(name).expect("map is in the object"))
                .map_err(map_error(name))?;
        map.set(0, knobs, 0).map_err(map_error(name))
    }

    fn hash_map<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<HashMap<&mut MapData, K, V>, CaptureError> {
        HashMap::try_from(self.ebpf.map_mut(name).expect("map is in the object"))
            .map_err(map_error(name))
    }

    /// Takes the ring's reading end, to drain it (None once taken).
    pub fn take_reader(&mut self) -> Option<RingReader> {
        self.reader.take()
    }

    /// The kernel side's counters, summed over CPUs.
    pub fn counters(&self) -> Result<Counters, CaptureError> {
        let name = maps::COUNTERS;
        let counters: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.ebpf.map(name).expect("map is in the object"))
                .map_err(map_error(name))?;
        let sum = |i: u32| -> Result<u64, CaptureError> {
            Ok(counters.get(&i, 0).map_err(map_error(name))?.iter().sum())
        };
        Ok(Counters {
            lost: sum(wire::DK_CNT_LOST)?,
            lost_namespace: sum(wire::DK_CNT_LOST_NS)?,
            captured_bytes: sum(wire::DK_CNT_CAPTURED)?,
        })
    }

    /// Records recorded cgroup `cgroup` lost so far (None if it is not recorded).
    pub fn cgroup_losses(&self, cgroup: u64) -> Result<Option<CgroupLosses>, CaptureError> {
        let name = maps::CGROUP_LOSSES;
        let counts: HashMap<_, u64, loss_counts> =
            HashMap::try_from(self.ebpf.map(name).expect("map is in the object"))
                .map_err(map_error(name))?;
        match counts.get(&cgroup, 0) {
            Ok(c) => Ok(Some(CgroupLosses {
                lost: c.lost,
                lost_namespace: c.lost_ns,
            })),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(CaptureError::Map { map: name, source }),
        }
    }

    /// Files the kernel marked for read-back on behalf of recorded cgroup `cgroup`, with why.
    pub fn dirty_files(
        &mut self,
        cgroup: u64,
    ) -> Result<Vec<(FileKey, DirtyReason)>, CaptureError> {
        let name = maps::DIRTY_FILES;
        let dirty: HashMap<_, file_key, dirty_mark> = self.hash_map(name)?;
        let mut out = Vec::new();
        for item in dirty.iter() {
            let (k, mark) = item.map_err(map_error(name))?;
            if mark.cgroup == cgroup {
                out.push((
                    FileKey::from_kernel(k.dev, k.ino),
                    DirtyReason::from_wire(mark.reason as u64),
                ));
            }
        }
        Ok(out)
    }

    /// Marks a file for read-back by recorded cgroup `cgroup`'s recorder (so its close is
    /// reported).
    pub fn mark_dirty(
        &mut self,
        file: FileKey,
        reason: DirtyReason,
        cgroup: u64,
    ) -> Result<(), CaptureError> {
        let name = maps::DIRTY_FILES;
        let mut dirty: HashMap<_, file_key, dirty_mark> = self.hash_map(name)?;
        let mark = dirty_mark {
            reason: reason.to_wire(),
            _pad: 0,
            cgroup,
        };
        dirty
            .insert(file_key::from(file), mark, 0)
            .map_err(map_error(name))
    }

    /// Clears a file's read-back mark once it has been read back.
    pub fn clear_dirty(&mut self, file: FileKey) -> Result<(), CaptureError> {
        let name = maps::DIRTY_FILES;
        let mut dirty: HashMap<_, file_key, u32> = self.hash_map(name)?;
        absent_is_fine(dirty.remove(&file_key::from(file)), name)
    }

    /// Takes the names of files recorded cgroup `cgroup`'s processes made whose naming record
    /// was lost to a full ring buffer; other recordings' names stay for their recorders.
    pub fn take_unsent_names(
        &mut self,
        cgroup: u64,
    ) -> Result<Vec<(FileKey, Vec<u8>)>, CaptureError> {
        let mut names: HashMap<_, unsent_key, unsent_name> = self.hash_map(maps::UNSENT_NAMES)?;
        let mut out = Vec::new();
        let keys: Vec<unsent_key> = names
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.cgroup == cgroup)
            .collect();
        for k in keys {
            if let Ok(v) = names.get(&k, 0) {
                let len = (v.len as usize).min(v.path.len());
                out.push((FileKey::from_kernel(k.dev, k.ino), v.path[..len].to_vec()));
            }
            let _ = names.remove(&k);
        }
        Ok(out)
    }

    /// Tells the kernel side user space already has this file (e.g. from the baseline), so its
    /// first write is neither named again nor read back.
    pub fn mark_known(&mut self, file: FileKey) -> Result<(), CaptureError> {
        let name = maps::KNOWN_INODES;
        let mut known: HashMap<_, file_key, u8> = self.hash_map(name)?;
        known
            .insert(file_key::from(file), 1, 0)
            .map_err(map_error(name))
    }
}

/// Verifies and attaches the process programs and the syscall programs of the attach point
/// asked for, or of the best one this machine has. Returns where the syscall programs went.
fn attach_programs(
    ebpf: &mut Ebpf,
    btf: &Btf,
    asked: Option<AttachPoint>,
) -> Result<(AttachPoint, SyscallLinks), CaptureError> {
    let preferred = asked.unwrap_or(AttachPoint::SyscallTracepoints);
    let events_dir = match preferred {
        AttachPoint::SyscallTracepoints => match attach::syscall_events_dir() {
            Ok(dir) => Some(dir),
            Err(why) if asked.is_none() => {
                tracing::info!(%why, "using the raw syscall tracepoints");
                None
            }
            Err(why) => {
                return Err(CaptureError::AttachPoint {
                    point: preferred,
                    why,
                })
            }
        },
        AttachPoint::RawSyscalls => None,
    };
    let point = if events_dir.is_some() {
        preferred
    } else {
        AttachPoint::RawSyscalls
    };
    let process: Vec<Loading> = PROCESS_PROGRAMS
        .iter()
        .map(|(program, tracepoint)| Loading::Raw {
            program,
            tracepoint,
        })
        .collect();
    let plan: Vec<Loading> = point
        .programs()
        .iter()
        .map(|p| syscall_loading(p, events_dir.as_deref()))
        .collect();
    let mut results = verify(ebpf, btf, &process.iter().chain(&plan).collect::<Vec<_>>());
    let syscalls_verified: Result<(), _> = results.split_off(process.len()).into_iter().collect();
    results.into_iter().collect::<Result<(), _>>()?;
    // Attached once all are verified: fork and exit tracking start together with the syscalls.
    attach(ebpf, &process)?;
    match syscalls_verified.and_then(|()| attach(ebpf, &plan)) {
        Ok(links) => Ok((point, links)),
        // The raw tracepoints need nothing the per-syscall ones do not: fall back from those,
        // and only when no attach point was asked for.
        Err(e) if asked.is_none() && point == AttachPoint::SyscallTracepoints => {
            tracing::warn!(error = %e, "the per-syscall tracepoints failed; using the raw syscall tracepoints");
            // Unloading detaches what was attached of them.
            for loading in &plan {
                let prog: Option<&mut TracePoint> = ebpf
                    .program_mut(loading.program())
                    .and_then(|p| p.try_into().ok());
                if let Some(prog) = prog {
                    let _ = prog.unload();
                }
            }
            let raw: Vec<Loading> = AttachPoint::RawSyscalls
                .programs()
                .iter()
                .map(|p| syscall_loading(p, None))
                .collect();
            verify(ebpf, btf, &raw.iter().collect::<Vec<_>>())
                .into_iter()
                .collect::<Result<(), _>>()?;
            Ok((AttachPoint::RawSyscalls, attach(ebpf, &raw)?))
        }
        Err(e) => Err(e),
    }
}

/// One program to verify and attach.
enum Loading {
    /// A BTF raw tracepoint.
    Raw {
        program: &'static str,
        tracepoint: &'static str,
    },
    /// A tracepoint program, attached to each of `events` (names under `syscalls/`).
    Syscalls {
        program: &'static str,
        events: Vec<String>,
    },
}

impl Loading {
    fn program(&self) -> &'static str {
        match self {
            Loading::Raw { program, .. } | Loading::Syscalls { program, .. } => program,
        }
    }
}

fn syscall_loading(p: &attach::SyscallProgram, events_dir: Option<&std::path::Path>) -> Loading {
    match events_dir {
        None => Loading::Raw {
            program: p.program,
            tracepoint: p.tracepoint,
        },
        Some(dir) => {
            let (events, missing) = attach::present_events(dir, p);
            if !missing.is_empty() {
                // Syscalls newer than this kernel: nothing can make them here.
                tracing::debug!(
                    program = p.program,
                    ?missing,
                    "syscall tracepoints this kernel lacks"
                );
            }
            Loading::Syscalls {
                program: p.program,
                events,
            }
        }
    }
}

/// Verifies `plan`'s programs, each in a thread of its own: privileged loads do not share the
/// verifier's lock, so on a node with cores to spare start-up is the largest program's
/// verification, not the sum of all (issue 15). One result per program, in the plan's order.
fn verify(ebpf: &mut Ebpf, btf: &Btf, plan: &[&Loading]) -> Vec<Result<(), CaptureError>> {
    let mut programs: Vec<(&Loading, &mut Program)> = ebpf
        .programs_mut()
        .filter_map(|(name, prog)| Some((*plan.iter().find(|l| l.program() == name)?, prog)))
        .collect();
    assert_eq!(programs.len(), plan.len(), "every program is in the object");
    programs.sort_by_key(|(l, _)| plan.iter().position(|p| p.program() == l.program()));
    std::thread::scope(|scope| {
        let loads: Vec<_> = programs
            .iter_mut()
            .map(|(loading, prog)| {
                let loading: &Loading = loading;
                scope.spawn(move || {
                    let program = loading.program();
                    let started = std::time::Instant::now();
                    let failed = |source| CaptureError::Program { program, source };
                    let verified = match (loading, &mut **prog) {
                        (Loading::Raw { tracepoint, .. }, Program::BtfTracePoint(p)) => {
                            p.load(tracepoint, btf).map_err(failed)?;
                            p.info().ok().and_then(|i| i.verified_instruction_count())
                        }
                        (Loading::Syscalls { .. }, Program::TracePoint(p)) => {
                            p.load().map_err(failed)?;
                            p.info().ok().and_then(|i| i.verified_instruction_count())
                        }
                        _ => panic!("{program} is not of the type its attach point needs"),
                    };
                    tracing::debug!(program, elapsed = ?started.elapsed(), ?verified, "program verified");
                    Ok::<(), CaptureError>(())
                })
            })
            .collect();
        loads
            .into_iter()
            .map(|load| load.join().expect("a program's load panicked"))
            .collect()
    })
}

/// Attaches `plan`'s verified programs, in its order. Returns the per-syscall tracepoints'
/// links, to release them in parallel at the end (see [`Probe`]'s `Drop`).
fn attach(ebpf: &mut Ebpf, plan: &[Loading]) -> Result<SyscallLinks, CaptureError> {
    let mut links = SyscallLinks::default();
    for loading in plan {
        let program = loading.program();
        let failed = |source| CaptureError::Program { program, source };
        match (
            loading,
            ebpf.program_mut(program).expect("program is in the object"),
        ) {
            (Loading::Raw { .. }, Program::BtfTracePoint(p)) => {
                p.attach().map_err(failed)?;
            }
            (Loading::Syscalls { events, .. }, Program::TracePoint(p)) => {
                let started = std::time::Instant::now();
                let mut ids = Vec::with_capacity(events.len());
                for event in events {
                    ids.push(p.attach("syscalls", event).map_err(failed)?);
                }
                links.0.push((program, ids));
                tracing::debug!(program, tracepoints = events.len(), elapsed = ?started.elapsed(), "attached");
            }
            _ => unreachable!("checked at load"),
        }
    }
    Ok(links)
}

/// The per-syscall tracepoint attachments of each program.
#[derive(Default)]
struct SyscallLinks(Vec<(&'static str, Vec<TracePointLinkId>)>);

impl SyscallLinks {
    /// Detaches them all at once. The kernel waits for a grace period as it releases each
    /// tracepoint's last perf event (about 70 ms here, 5.5 s for the 75 one after the other);
    /// released from parallel threads the waits overlap, in about half that.
    fn release(self, ebpf: &mut Ebpf) {
        let started = std::time::Instant::now();
        let mut links = Vec::new();
        for (program, ids) in self.0 {
            let prog: Option<&mut TracePoint> =
                ebpf.program_mut(program).and_then(|p| p.try_into().ok());
            if let Some(prog) = prog {
                links.extend(ids.into_iter().filter_map(|id| prog.take_link(id).ok()));
            }
        }
        let n = links.len();
        std::thread::scope(|scope| {
            for link in links {
                // A thread that cannot start leaves its link to this one.
                let kept = std::thread::Builder::new().spawn_scoped(scope, move || drop(link));
                drop(kept);
            }
        });
        tracing::debug!(tracepoints = n, elapsed = ?started.elapsed(), "syscall tracepoints released");
    }
}

fn skip_key(cgroup: u64, file: FileKey) -> unsent_key {
    let k = file_key::from(file);
    unsent_key {
        cgroup,
        dev: k.dev,
        ino: k.ino,
    }
}

fn map_error(map: &'static str) -> impl Fn(aya::maps::MapError) -> CaptureError {
    move |source| CaptureError::Map { map, source }
}

/// Removing a key that is not there is what the caller wanted anyway.
fn absent_is_fine(
    result: Result<(), aya::maps::MapError>,
    map: &'static str,
) -> Result<(), CaptureError> {
    match result {
        Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(source) => Err(CaptureError::Map { map, source }),
    }
}

/// Refuses an object whose records this decoder would misread.
fn check_wire_version(object: &[u8]) -> Result<(), CaptureError> {
    match wire::object_wire_version(object) {
        Ok(v) if v == wire::WIRE_VERSION => Ok(()),
        Ok(v) => Err(CaptureError::WireVersion(format!(
            "its DK_WIRE_VERSION is {v}, this decoder reads {}",
            wire::WIRE_VERSION
        ))),
        Err(why) => Err(CaptureError::WireVersion(why)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_object_passes_the_version_check_and_another_does_not() {
        check_wire_version(OBJECT).unwrap();
        let e = check_wire_version(b"\x7fELF garbage").unwrap_err();
        assert!(matches!(e, CaptureError::WireVersion(_)), "{e}");
    }
}
