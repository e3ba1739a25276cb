//! Every CPU's registers as the kernel saved them in `crash_notes` on its way to the crash
//! kernel (`crash_save_cpu`, kernel/kexec_core.c), and the `NT_PRSTATUS` note they are saved
//! in.
//!
//! `crash_notes` is a `note_buf_t __percpu *` (kernel/crash_core.c): CPU n's buffer is at
//! `*crash_notes + __per_cpu_offset[n]`. `crash_save_cpu` writes one `NT_PRSTATUS` note named
//! `CORE` there, then an empty note; the buffer stays zero on a CPU that never saved.

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
    Some((pid, VcpuRegs { cpu: 0, regs, cs, gs_base, source: "crash_notes" }))
}

/// `sizeof(note_buf_t)`: `CRASH_CORE_NOTE_BYTES` (include/linux/crash_core.h): two note
/// headers (12 bytes each), the name `CORE` padded (8), and `struct elf_prstatus` (336).
pub const NOTE_BUF_BYTES: usize = 12 * 2 + 8 + 336;
/// The most CPUs read (`NR_CPUS` of distribution kernels).
pub const MAX_CPUS: usize = 8192;

/// Per CPU (index = CPU number), the saved registers where the kernel saved them.
pub fn read<M: PhysMem + ?Sized>(kmem: &KernelMem<'_, M>, syms: &Kallsyms, ncpus: usize) -> Vec<Option<VcpuRegs>> {
    let ncpus = ncpus.min(MAX_CPUS);
    let mut out = vec![None; ncpus];
    let (Some(notes), Some(pcpu)) = (syms.lookup("crash_notes"), syms.lookup("__per_cpu_offset")) else {
        return out;
    };
    let Ok(base) = kmem.u64(notes) else { return out };
    if base == 0 {
        return out;
    }
    for (cpu, slot) in out.iter_mut().enumerate() {
        let Ok(off) = kmem.u64(pcpu.wrapping_add(8 * cpu as u64)) else { continue };
        let Ok(buf) = kmem.bytes(base.wrapping_add(off), NOTE_BUF_BYTES) else { continue };
        *slot = from_note_buf(&buf).map(|(_, mut r)| {
            r.cpu = cpu as u32;
            r
        });
    }
    out
}

/// The registers in one CPU's `note_buf_t`: its `NT_PRSTATUS` note, if it was written.
pub fn from_note_buf(buf: &[u8]) -> Option<(u32, VcpuRegs)> {
    if buf.iter().all(|&b| b == 0) {
        return None;
    }
    kdump::vmcoreinfo::iter_notes(buf)
        .find(|n| n.n_type == NT_PRSTATUS && n.name == b"CORE")
        .and_then(|n| prstatus_regs(n.desc))
}
