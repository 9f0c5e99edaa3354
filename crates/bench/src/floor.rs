//! Empty programs on DiffKeeper's attach points: the floor under its outside-the-filter cost.

use anyhow::{Context, Result};
use aya::programs::{BtfTracePoint, TracePoint};
use aya::{Btf, Ebpf};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/floor.bpf.o"));

/// Which attach points the empty programs take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FloorAt {
    /// tp_btf sys_enter/sys_exit: every syscall runs them.
    Raw,
    /// syscalls/sys_enter_NAME and sys_exit_NAME of the syscalls DiffKeeper hooks.
    Syscalls,
}

/// Attached while alive; dropping it detaches the programs.
pub struct Floor {
    _ebpf: Ebpf,
}

impl Floor {
    pub fn attach(at: FloorAt) -> Result<Floor> {
        let mut ebpf = Ebpf::load(OBJECT).context("loading bpf/floor.bpf.c")?;
        match at {
            FloorAt::Raw => {
                let btf = Btf::from_sys_fs().context("reading /sys/kernel/btf/vmlinux")?;
                for (program, tracepoint) in [
                    ("floor_sys_enter", "sys_enter"),
                    ("floor_sys_exit", "sys_exit"),
                ] {
                    let prog: &mut BtfTracePoint = ebpf
                        .program_mut(program)
                        .context("program missing from floor.bpf.o")?
                        .try_into()?;
                    prog.load(tracepoint, &btf)
                        .with_context(|| format!("loading {program}"))?;
                    prog.attach()
                        .with_context(|| format!("attaching {program} to {tracepoint}"))?;
                }
            }
            FloorAt::Syscalls => {
                // Mounts tracefs if it is missing, as the recorder would.
                diffkeeper_capture::syscall_events_dir().map_err(anyhow::Error::msg)?;
                let (enter, exit) = diffkeeper_capture::hooked_syscalls();
                for (program, prefix, names) in [
                    ("floor_tp_enter", "sys_enter_", enter),
                    ("floor_tp_exit", "sys_exit_", exit),
                ] {
                    let prog: &mut TracePoint = ebpf
                        .program_mut(program)
                        .context("program missing from floor.bpf.o")?
                        .try_into()?;
                    prog.load().with_context(|| format!("loading {program}"))?;
                    for name in names {
                        // A syscall this kernel lacks has no tracepoint (nor callers).
                        let event = format!("{prefix}{name}");
                        if let Err(e) = prog.attach("syscalls", &event) {
                            eprintln!("floor: {event} not attached: {e}");
                        }
                    }
                }
            }
        }
        Ok(Floor { _ebpf: ebpf })
    }
}
