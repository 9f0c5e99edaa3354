//! Empty programs on sys_enter/sys_exit: the floor under DiffKeeper's outside-the-filter cost.

use anyhow::{Context, Result};
use aya::programs::BtfTracePoint;
use aya::{Btf, Ebpf};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/floor.bpf.o"));

/// Attached while alive; dropping it detaches the programs.
pub struct Floor {
    _ebpf: Ebpf,
}

impl Floor {
    pub fn attach() -> Result<Floor> {
        let btf = Btf::from_sys_fs().context("reading /sys/kernel/btf/vmlinux")?;
        let mut ebpf = Ebpf::load(OBJECT).context("loading bpf/floor.bpf.c")?;
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
        Ok(Floor { _ebpf: ebpf })
    }
}
