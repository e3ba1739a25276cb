//! Every CPU's registers as the kernel saved them in `crash_notes` on its way to the crash
//! kernel (`crash_save_cpu`), and the `NT_PRSTATUS` note they are saved in. TODO(helper B):
//! `read`.

use kdump::elfcore::Regs;
use kdump::PhysMem;

use crate::kallsyms::Kallsyms;
use crate::{KernelMem, VcpuRegs};

/// `NT_PRSTATUS`.
pub const NT_PRSTATUS: u32 = 1;
/// `offsetof(struct elf_prstatus, pr_reg)` on x86_64.
const PR_REG: usize = 112;
/// `pr_pid`'s offset.
const PR_PID: usize = 32;

/// The registers of an x86_64 `struct elf_prstatus` (`user_regs_struct` order), with `pr_pid`.
pub fn prstatus_regs(desc: &[u8]) -> Option<(u32, VcpuRegs)> {
    let r = |i: usize| -> Option<u64> {
        Some(u64::from_le_bytes(desc.get(PR_REG + 8 * i..PR_REG + 8 * i + 8)?.try_into().ok()?))
    };
    let pid = u32::from_le_bytes(desc.get(PR_PID..PR_PID + 4)?.try_into().ok()?);
    let regs = Regs {
        r15: r(0)?,
        r14: r(1)?,
        r13: r(2)?,
        r12: r(3)?,
        rbp: r(4)?,
        rbx: r(5)?,
        r11: r(6)?,
        r10: r(7)?,
        r9: r(8)?,
        r8: r(9)?,
        rax: r(10)?,
        rcx: r(11)?,
        rdx: r(12)?,
        rsi: r(13)?,
        rdi: r(14)?,
        // 15: orig_rax
        rip: r(16)?,
        rflags: r(18)?,
        rsp: r(19)?,
    };
    let cs = r(17)? as u16;
    let gs_base = r(22)?;
    Some((pid, VcpuRegs { cpu: 0, regs, cs, gs_base }))
}

/// Per CPU (index = CPU number), the saved registers where the kernel saved them.
pub fn read<M: PhysMem + ?Sized>(_kmem: &KernelMem<'_, M>, _syms: &Kallsyms, ncpus: usize) -> Vec<Option<VcpuRegs>> {
    vec![None; ncpus]
}
