//! A vCPU's registers as KVM returned them: what the vCPU threads save when they stop, the
//! control plane hands around, and the vmcore's notes and the crash report hold. A leaf module:
//! it uses no other module of this crate.

use kdump::elfcore::{CpuState, DescTable, Regs, SRegs, Segment};
use kvm_bindings::{kvm_dtable, kvm_regs, kvm_segment, kvm_sregs};

/// One vCPU's registers, as `KVM_GET_REGS`/`KVM_GET_SREGS` returned them.
#[derive(Debug, Clone, Copy, Default)]
pub struct VcpuState {
    pub id: u32,
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
}

/// Where an x86 CPU starts after RESET or INIT: CS.base + RIP = 0xfffffff0.
const RESET_RIP: u64 = 0xfff0;
const RESET_CS_BASE: u64 = 0xffff_0000;

impl VcpuState {
    /// Whether these are the registers of a CPU just reset. On AMD, KVM reinitializes a vCPU
    /// that shut down (triple fault) before it reports the exit, because the VMCB is undefined
    /// after a SHUTDOWN intercept: its registers then say nothing about where the guest was.
    pub fn is_reset_state(&self) -> bool {
        self.regs.rip == RESET_RIP && self.sregs.cs.base == RESET_CS_BASE && self.sregs.cr0 & 1 == 0
    }

    /// The registers the vmcore's notes hold, in the `kdump` crate's terms.
    pub fn cpu_state(&self) -> CpuState {
        let r = &self.regs;
        let s = &self.sregs;
        let seg = |k: &kvm_segment| Segment {
            base: k.base,
            limit: k.limit,
            selector: k.selector,
            type_: k.type_,
            present: k.present,
            dpl: k.dpl,
            db: k.db,
            s: k.s,
            l: k.l,
            g: k.g,
            avl: k.avl,
            unusable: k.unusable,
        };
        let table = |t: &kvm_dtable| DescTable { base: t.base, limit: t.limit };
        CpuState {
            id: self.id,
            regs: Regs {
                rax: r.rax,
                rbx: r.rbx,
                rcx: r.rcx,
                rdx: r.rdx,
                rsi: r.rsi,
                rdi: r.rdi,
                rsp: r.rsp,
                rbp: r.rbp,
                r8: r.r8,
                r9: r.r9,
                r10: r.r10,
                r11: r.r11,
                r12: r.r12,
                r13: r.r13,
                r14: r.r14,
                r15: r.r15,
                rip: r.rip,
                rflags: r.rflags,
            },
            sregs: SRegs {
                cs: seg(&s.cs),
                ds: seg(&s.ds),
                es: seg(&s.es),
                fs: seg(&s.fs),
                gs: seg(&s.gs),
                ss: seg(&s.ss),
                tr: seg(&s.tr),
                ldt: seg(&s.ldt),
                gdt: table(&s.gdt),
                idt: table(&s.idt),
                cr0: s.cr0,
                cr2: s.cr2,
                cr3: s.cr3,
                cr4: s.cr4,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_state_carries_every_register_the_notes_use() {
        let mut v = VcpuState { id: 3, ..Default::default() };
        let r = &mut v.regs;
        for (i, reg) in [
            &mut r.rax,
            &mut r.rbx,
            &mut r.rcx,
            &mut r.rdx,
            &mut r.rsi,
            &mut r.rdi,
            &mut r.rsp,
            &mut r.rbp,
            &mut r.r8,
            &mut r.r9,
            &mut r.r10,
            &mut r.r11,
            &mut r.r12,
            &mut r.r13,
            &mut r.r14,
            &mut r.r15,
            &mut r.rip,
            &mut r.rflags,
        ]
        .into_iter()
        .enumerate()
        {
            *reg = 0x100 + i as u64;
        }
        let s = &mut v.sregs;
        for (i, seg) in [&mut s.cs, &mut s.ds, &mut s.es, &mut s.fs, &mut s.gs, &mut s.ss, &mut s.tr, &mut s.ldt]
            .into_iter()
            .enumerate()
        {
            let i = i as u8;
            *seg = kvm_segment {
                base: 0x1000 + u64::from(i),
                limit: 0x2000 + u32::from(i),
                selector: 0x30 + u16::from(i),
                type_: i,
                present: 1,
                dpl: 3,
                db: 1,
                s: 1,
                l: 1,
                g: 1,
                avl: 1,
                unusable: i % 2,
                padding: 0,
            };
        }
        s.gdt = kvm_dtable { base: 0x5000, limit: 0x7f, ..Default::default() };
        s.idt = kvm_dtable { base: 0x6000, limit: 0xfff, ..Default::default() };
        (s.cr0, s.cr2, s.cr3, s.cr4) = (0x8000_0011, 0x22, 0x1234_5000, 0x6f0);
        let c = v.cpu_state();
        assert_eq!(c.id, 3);
        assert_eq!((c.regs.rax, c.regs.r15, c.regs.rip, c.regs.rflags), (0x100, 0x10f, 0x110, 0x111));
        assert_eq!((c.regs.rsp, c.regs.rbp, c.regs.r8), (0x106, 0x107, 0x108));
        assert_eq!(
            c.sregs.ldt,
            Segment {
                base: 0x1007,
                limit: 0x2007,
                selector: 0x37,
                type_: 7,
                present: 1,
                dpl: 3,
                db: 1,
                s: 1,
                l: 1,
                g: 1,
                avl: 1,
                unusable: 1
            }
        );
        assert_eq!((c.sregs.cs.selector, c.sregs.tr.base, c.sregs.ss.unusable), (0x30, 0x1006, 1));
        assert_eq!(
            (c.sregs.gdt, c.sregs.idt),
            (DescTable { base: 0x5000, limit: 0x7f }, DescTable { base: 0x6000, limit: 0xfff })
        );
        assert_eq!((c.sregs.cr0, c.sregs.cr2, c.sregs.cr3, c.sregs.cr4), (0x8000_0011, 0x22, 0x1234_5000, 0x6f0));
    }

    #[test]
    fn recognizes_the_reset_state() {
        let mut v = VcpuState::default();
        (v.regs.rip, v.sregs.cs.base) = (0xfff0, 0xffff_0000);
        assert!(v.is_reset_state());
        v.sregs.cr0 = 1;
        assert!(!v.is_reset_state(), "protected mode");
    }
}
