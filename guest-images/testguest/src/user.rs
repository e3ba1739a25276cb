//! Ring 3, for bulk memory work: on the development machines' software KVM, guest kernel mode
//! is emulated instruction by instruction (a `rep stosq` writes about 17 MB/s) while user mode
//! runs natively. [`init`] adds user segments and a TSS to a new GDT and builds a copy of the
//! IDT whose #UD gate is the way back; [`call`] runs `entry(arg)` in ring 3 on its own stack
//! (with that IDT loaded) until it calls [`exit`] (UD2).
//! Every page this guest maps is user-accessible and CR4.SMEP/SMAP are off, so ring 3 reaches
//! all of RAM through the identity map, and ring 0 still runs the same pages.

use core::arch::{asm, global_asm};

use crate::boot::KERNEL_CS;
use crate::global::Global;

const USER_DS: u16 = 0x18 | 3;
const USER_CS: u16 = 0x20 | 3;
const TSS_SEL: u16 = 0x28;
/// How ring 3 ends: UD2, whose #UD gate points at the way back while ring 3 runs (the
/// software KVM here mishandles SYSCALL and turns INT n from ring 3 into #UD).
const RETURN_VECTOR: u8 = 6;
/// 64-bit interrupt gate, present, DPL 0.
const GATE_INTERRUPT: u16 = 0x8e00;
const STACK_SIZE: usize = 64 * 1024;

#[repr(C, align(16))]
struct Gdt([u64; 7]);
#[repr(C, align(16))]
struct Tss([u32; 26]);
#[repr(C, align(16))]
struct Stack([u8; STACK_SIZE]);

static GDT: Global<Gdt> = Global::new(Gdt([0; 7]));
#[repr(C, align(16))]
struct Idt([u64; 2 * 32]);
static IDT: Global<Idt> = Global::new(Idt([0; 2 * 32]));
/// idt.rs's IDT, loaded again after ring 3.
static SAVED_IDT: Global<(u16, u64)> = Global::new((0, 0));
static TSS: Global<Tss> = Global::new(Tss([0; 26]));
static USER_STACK: Global<Stack> = Global::new(Stack([0; STACK_SIZE]));
/// Where ring 0 continues: the kernel stack pointer `tg_user_call` saved.
#[no_mangle]
static TG_KERNEL_RSP: Global<u64> = Global::new(0);

global_asm!(
    r#"
    .pushsection .text.tg_user, "ax", @progbits
    // tg_user_call(entry: RDI, arg: RSI, user_rsp: RDX): iretq to ring 3 at entry(arg); returns
    // when ring 3 executes UD2 (exit).
    .globl tg_user_call
tg_user_call:
    push %rbx
    push %rbp
    push %r12
    push %r13
    push %r14
    push %r15
    mov %rsp, TG_KERNEL_RSP(%rip)
    pushq ${user_ds}
    push %rdx
    pushq $2
    pushq ${user_cs}
    push %rdi
    mov %rsi, %rdi
    iretq

    // #UD while ring 3 runs: it is done. On the TSS's ring 0 stack; continue where
    // tg_user_call left ring 0 (the exception frame is dropped).
    .globl tg_user_return
tg_user_return:
    mov TG_KERNEL_RSP(%rip), %rsp
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %rbp
    pop %rbx
    ret
    .popsection
    "#,
    user_ds = const USER_DS,
    user_cs = const USER_CS,
    options(att_syntax)
);

extern "C" {
    fn tg_user_call(entry: u64, arg: u64, user_rsp: u64);
    fn tg_user_return();
}

#[repr(C, packed)]
struct DescriptorPointer {
    limit: u16,
    base: u64,
}

/// The new GDT (kernel code and data as boot.rs has them, user data and code, the TSS), the
/// TSS with ring 0's stack for exceptions in ring 3, and the IDT for [`call`]: idt.rs's gates
/// with #UD pointed at the way back.
pub fn init(ring0_stack_top: u64) {
    // SAFETY: one CPU, interrupts off; the GDT, TSS and MSRs are this guest's own.
    unsafe {
        let tss = &mut *TSS.get();
        tss.0[1] = ring0_stack_top as u32;
        tss.0[2] = (ring0_stack_top >> 32) as u32;
        // I/O map base past the limit: no I/O permission bitmap.
        tss.0[25] = 104 << 16;
        let base = TSS.get() as u64;
        let gdt = &mut *GDT.get();
        gdt.0[0] = 0;
        gdt.0[1] = 0x00af_9a00_0000_ffff;
        gdt.0[2] = 0x00cf_9200_0000_ffff;
        gdt.0[3] = 0x00cf_f200_0000_ffff;
        gdt.0[4] = 0x00af_fa00_0000_ffff;
        gdt.0[5] = 103 | (base & 0xff_ffff) << 16 | 0x89 << 40 | ((base >> 24) & 0xff) << 56;
        gdt.0[6] = base >> 32;
        let p = DescriptorPointer { limit: (7 * 8 - 1) as u16, base: GDT.get() as u64 };
        asm!("lgdt [{}]", in(reg) &p, options(readonly, nostack, preserves_flags));
        asm!("ltr {0:x}", in(reg) TSS_SEL, options(nostack, preserves_flags));
        // This IDT: idt.rs's exception gates, plus the way back at RETURN_VECTOR.
        let mut cur = DescriptorPointer { limit: 0, base: 0 };
        asm!("sidt [{}]", in(reg) &mut cur, options(nostack, preserves_flags));
        let idt = &mut *IDT.get();
        let n = ((cur.limit as usize + 1) / 8).min(idt.0.len());
        for (i, slot) in idt.0.iter_mut().enumerate().take(n) {
            *slot = core::ptr::read((cur.base + i as u64 * 8) as *const u64);
        }
        let h = tg_user_return as *const () as u64;
        let v = RETURN_VECTOR as usize;
        idt.0[2 * v] =
            (h & 0xffff) | (KERNEL_CS as u64) << 16 | (GATE_INTERRUPT as u64) << 32 | ((h >> 16) & 0xffff) << 48;
        idt.0[2 * v + 1] = h >> 32;
        *SAVED_IDT.get() = (cur.limit, cur.base);
    }
}

/// Runs `entry(arg)` in ring 3; returns when it calls [`exit`].
pub fn call(entry: extern "C" fn(u64) -> !, arg: u64) {
    let top = USER_STACK.get() as u64 + STACK_SIZE as u64;
    // SAFETY: `init` set up the segments, the TSS and the IDT with the way back; the stack is
    // this module's own.
    unsafe {
        let (limit, base) = *SAVED_IDT.get();
        crate::idt::load(IDT.get() as u64, (32 * 16 - 1) as u16);
        tg_user_call(entry as *const () as u64, arg, top);
        crate::idt::load(base, limit);
    }
}

/// Back to ring 0 (the caller of [`call`] continues).
pub fn exit() -> ! {
    // SAFETY: #UD goes to tg_user_return while ring 3 runs, which never returns here.
    unsafe { asm!("ud2", options(noreturn)) }
}
