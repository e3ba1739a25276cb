//! A vCPU's frames from its registers. TODO(helper B).

use kdump::elfcore::Regs;
use kdump::PhysMem;

use crate::kallsyms::Kallsyms;
use crate::orc::Orc;
use crate::{CpuStack, Frame, KernelMem, VcpuRegs};

/// The frames from a register state (a vCPU's, or a sleeping task's `inactive_task_frame`
/// turned into registers), innermost first, and the unwinder that found them (`orc`,
/// `frame-pointer`, `scan`, `none`). `cpu`: the CPU whose IRQ/exception stacks may be crossed.
pub fn frames<M: PhysMem + ?Sized>(
    _kmem: &KernelMem<'_, M>,
    _syms: &Kallsyms,
    _orc: Option<&Orc>,
    _regs: &Regs,
    _cpu: Option<u32>,
) -> (Vec<Frame>, &'static str) {
    (Vec::new(), "none")
}

/// A vCPU's stack: its frames and what it was running.
pub fn cpu_stack<M: PhysMem + ?Sized>(
    _kmem: &KernelMem<'_, M>,
    _syms: &Kallsyms,
    _orc: Option<&Orc>,
    regs: &VcpuRegs,
    source: &str,
) -> CpuStack {
    CpuStack { cpu: regs.cpu, registers: source.to_string(), ip: format!("{:#x}", regs.regs.rip), ..Default::default() }
}
