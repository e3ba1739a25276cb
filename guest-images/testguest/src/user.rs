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

/// Ring 0's stack while ring 3 runs (the TSS's RSP0: exceptions, the way back).
#[repr(C, align(16))]
struct Ring0Stack([u8; RING0_STACK_SIZE]);
const RING0_STACK_SIZE: usize = 16384;
static RING0_STACK: Global<Ring0Stack> = Global::new(Ring0Stack([0; RING0_STACK_SIZE]));

/// The new GDT (kernel code and data as boot.rs has them, user data and code, the TSS), the
/// TSS with ring 0's stack for exceptions in ring 3, and the IDT for [`call`]: idt.rs's gates
/// with #UD pointed at the way back.
pub fn init() {
    let ring0_stack_top = RING0_STACK.get() as u64 + RING0_STACK_SIZE as u64;
    // SAFETY: only the BSP (no AP runs where ring 3 is used), interrupts off; the GDT, TSS and
    // MSRs are this guest's own.
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

// Bulk memory work for the bench scenarios: an identity map ring 3 can use, and a ring-0 first
// touch of every page (the host's first-touch faults cost 30-80 us each from ring 3 here).

/// Where [`identity_map`] builds its tables.
pub const PT_AREA: u64 = 0x00a0_0000;
const PT_AREA_END: u64 = 0x00c0_0000;
const GB: u64 = 1 << 30;
const PTE_P: u64 = 1;
const PTE_RW: u64 = 2;
const PTE_US: u64 = 4;
const PTE_PS: u64 = 0x80;
const PTE_UC: u64 = 0x18;

fn w64(pa: u64, v: u64) {
    // SAFETY: the page-table area, identity-mapped RAM no other code uses.
    unsafe { core::ptr::write_volatile(pa as *mut u64, v) }
}

/// Identity map of [0, end) (rounded up to 1 GiB, at least 4 GiB) with 2 MiB user pages;
/// 3-4 GiB uncached, as boot.rs maps it, in [`PT_AREA`, `PT_AREA_END`). Loaded into CR3.
pub fn identity_map(end: u64) -> bool {
    let gibs = end.div_ceil(GB).max(4);
    if PT_AREA + (2 + gibs) * 0x1000 > PT_AREA_END {
        return false;
    }
    let (pml4, pdpt, pd) = (PT_AREA, PT_AREA + 0x1000, PT_AREA + 0x2000);
    for i in 0..512 {
        w64(pml4 + i * 8, 0);
        w64(pdpt + i * 8, 0);
    }
    w64(pml4, pdpt | PTE_P | PTE_RW | PTE_US);
    for g in 0..gibs {
        w64(pdpt + g * 8, (pd + g * 0x1000) | PTE_P | PTE_RW | PTE_US);
        let uc = if g == 3 { PTE_UC } else { 0 };
        for i in 0..512 {
            w64(pd + g * 0x1000 + i * 8, (g << 30) | (i << 21) | PTE_P | PTE_RW | PTE_US | PTE_PS | uc);
        }
    }
    // SAFETY: the new tables map everything the boot tables did, with the same attributes.
    unsafe { core::arch::asm!("mov cr3, {}", in(reg) pml4, options(nostack, preserves_flags)) };
    true
}

/// Touches one quadword per page of [start, end) (64 KiB-aligned) from ring 0: 19
/// instructions per 16 pages.
pub fn touch(start: u64, end: u64) {
    if end <= start {
        return;
    }
    // SAFETY: identity-mapped RAM the calling scenario owns; ring 3 overwrites it afterwards.
    unsafe {
        core::arch::asm!(
            "2:",
            "mov [rdi], rax", "mov [rdi + 0x1000], rax", "mov [rdi + 0x2000], rax", "mov [rdi + 0x3000], rax",
            "mov [rdi + 0x4000], rax", "mov [rdi + 0x5000], rax", "mov [rdi + 0x6000], rax", "mov [rdi + 0x7000], rax",
            "mov [rdi + 0x8000], rax", "mov [rdi + 0x9000], rax", "mov [rdi + 0xa000], rax", "mov [rdi + 0xb000], rax",
            "mov [rdi + 0xc000], rax", "mov [rdi + 0xd000], rax", "mov [rdi + 0xe000], rax", "mov [rdi + 0xf000], rax",
            "add rdi, 0x10000",
            "cmp rdi, rsi",
            "jb 2b",
            inout("rdi") start => _, in("rsi") end, in("rax") 1u64,
            options(nostack),
        );
    }
}
